"""Model families as data: which adapter loads a model name, chosen by the name's prefix.

=============  ===========================  ==============================================
prefix         names                        adapter
=============  ===========================  ==============================================
(none)         ViT-B/32, RN50, shapes-demo  OpenAI `clip` (cocoa_clip/models.py)
open_clip:     open_clip:ARCH[:TAG]         open_clip, incl. SigLIP (families/openclip.py)
hf:            hf:REPO_ID or hf:DIR         transformers CLIP / SigLIP (families/hf.py)
=============  ===========================  ==============================================

Any other PyTorch encoder is wrapped from Python with `cocoa_clip.wrap` (families/wrapped.py).
Adapters import their library only when a name of theirs is loaded.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch

from ..encoder import Model


@dataclass(frozen=True)
class Family:
    """One model family: how its names look, an example, and the module whose `load` reads them."""

    prefix: str  # "open_clip": names start "open_clip:"
    title: str
    names: str
    example: str
    module: str  # cocoa_clip.families.<module>.load(rest, weights=..., device=..., precision=...)
    package: str  # the PyPI distribution it needs

    def load(self, name: str, *, weights: str | os.PathLike | None, device: torch.device, precision: str) -> Model:
        rest = name[len(self.prefix) + 1:]
        adapter = importlib.import_module(f"{__name__}.{self.module}")
        return adapter.load(rest, weights=weights, device=device, precision=precision)


FAMILIES = (
    Family("open_clip", "OpenCLIP (incl. SigLIP)", "open_clip:ARCH[:TAG]", "open_clip:ViT-B-32:laion2b_s34b_b79k",
           "openclip", "open_clip_torch"),
    Family("hf", "Hugging Face transformers (CLIPModel, SiglipModel, Siglip2Model)", "hf:REPO_ID or hf:DIR",
           "hf:google/siglip-base-patch16-224", "hf", "transformers"),
)


def family_of(name: object) -> Family | None:
    """The family whose prefix the name carries; None for OpenAI `clip` names (no prefix)."""
    if not isinstance(name, str):
        return None
    return next((family for family in FAMILIES if name.startswith(family.prefix + ":")), None)


def ready(net: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    """A loaded network for inference: on the device, frozen, in eval mode, fp16 weights when asked (CUDA)."""
    net = net.to(device).eval().requires_grad_(False)
    return net.half() if precision == "fp16" else net.float()


def hub_cached(repo: str, filenames: tuple[str, ...]) -> str | None:
    """The path of the first of `filenames` that the Hugging Face hub cache holds for `repo`, or None (no network)."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return None
    for filename in filenames:
        path = try_to_load_from_cache(repo, filename, cache_dir=constants.HF_HUB_CACHE)
        if isinstance(path, str):
            return path
    return None


def on_disk(name: str) -> str | None:
    """Where a family model's weights are on this machine (so it loads offline), or None."""
    family = family_of(name)
    adapter = importlib.import_module(f"{__name__}.{family.module}")
    return adapter.on_disk(name[len(family.prefix) + 1:])


def cached_names() -> list[tuple[str, str]]:
    """(name, path) of every family model the hub cache holds: what `cocoa-clip models` lists as on disk."""
    try:
        from huggingface_hub import constants, scan_cache_dir

        repos = [repo.repo_id for repo in scan_cache_dir(constants.HF_HUB_CACHE).repos if repo.repo_type == "model"]
    except Exception:  # no hub client, or no cache folder yet
        return []
    found = []
    for family in FAMILIES:
        adapter = importlib.import_module(f"{__name__}.{family.module}")
        found += [(f"{family.prefix}:{rest}", path) for rest, path in adapter.cached(repos)]
    return found


def download(name: str) -> tuple[str, str]:
    """Fetch a family model ahead of time, into the cache its library reads offline: (path, source).

    Loading it is what fetches exactly the files a later load needs (weights, tokenizer, processor),
    through the library's own hub client; the hub's reachability is checked first, so that an
    offline machine gets its sentence in seconds rather than after the client's retries.
    """
    from .. import weights
    from ..errors import ModelLoadError
    from ..models import load

    if (path := on_disk(name)) is not None:
        return path, "on disk"
    if weights.hub_offline():
        raise ModelLoadError(f"{name} is not in the Hugging Face hub cache and HF_HUB_OFFLINE is set; "
                             "fetch it where the hub can be reached (HF_HUB_OFFLINE unset).")
    weights.check_hub(name)
    load(name, device="cpu", precision="fp32")
    return on_disk(name) or "the library's cache", "hub"
