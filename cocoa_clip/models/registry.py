"""Model families as data: the one place that maps a model name to the adapter that loads it.

=============  ===========================  ==============================================
prefix         names                        adapter
=============  ===========================  ==============================================
(none)         ViT-B/32, RN50, shapes-demo  OpenAI `clip` (families/openai.py)
open_clip:     open_clip:ARCH[:TAG]         open_clip, incl. SigLIP (families/openclip.py)
hf:            hf:REPO_ID or hf:DIR         transformers CLIP / SigLIP (families/hf.py)
=============  ===========================  ==============================================

Any other PyTorch encoder is wrapped from Python with `cocoa_clip.wrap` (families/wrapped.py).
Adapters are imported by name, so each imports its library only when a name of its own is loaded.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

# Small models that ship with the project (OpenAI clip format), so that everything runs offline.
BUNDLED = {"shapes-demo": Path(__file__).parent / "checkpoints" / "shapes-demo.pt"}


@dataclass(frozen=True)
class Family:
    """One model family: how its names look, an example, and the adapter module that reads them."""

    prefix: str  # "open_clip": names start "open_clip:"; "" for OpenAI clip names, which have no prefix
    title: str
    names: str
    example: str
    module: str  # cocoa_clip.models.families.<module>: load(rest, ...), on_disk(rest), cached(repos)
    package: str  # the PyPI distribution it needs
    note: str = ""  # where the family's models are read otherwise than their own library reads them

    def adapter(self) -> ModuleType:
        return importlib.import_module(f"{__package__}.families.{self.module}")

    def rest(self, name: str) -> str:
        """The part of the name the adapter reads (after `prefix:`)."""
        return name[len(self.prefix) + 1:] if self.prefix else name


SIGLIP2_SQUASHED = ("SigLIP 2 (Siglip2Model, NaFlex) sees a square grid of patches: --framing model squashes a "
                    "non-square picture to the square, where its own processor keeps the aspect ratio; --framing pad "
                    "(the default) keeps the whole picture undistorted.")
OPENAI = Family("", "OpenAI CLIP (the clip package)", "ViT-B/32, RN50, ... or a CLIP .pt file", "ViT-B/32",
                "openai", "openai-clip")
FAMILIES = (
    Family("open_clip", "OpenCLIP (incl. SigLIP)", "open_clip:ARCH[:TAG]", "open_clip:ViT-B-32:laion2b_s34b_b79k",
           "openclip", "open_clip_torch"),
    Family("hf", "Hugging Face transformers (CLIPModel, SiglipModel, Siglip2Model)", "hf:REPO_ID or hf:DIR",
           "hf:google/siglip-base-patch16-224", "hf", "transformers",
           SIGLIP2_SQUASHED),
)


def family_of(name: object) -> Family | None:
    """The family whose prefix the name carries; None for OpenAI `clip` names (no prefix)."""
    if not isinstance(name, str):
        return None
    return next((family for family in FAMILIES if name.startswith(family.prefix + ":")), None)


def resolve(name: str) -> tuple[Family, str]:
    """The family that loads `name` (OpenAI clip when it has no prefix), and the rest of the name for its adapter."""
    family = family_of(name) or OPENAI
    return family, family.rest(name)


def cached_names() -> list[tuple[str, str]]:
    """(name, path) of every family model the hub cache holds: what `cocoa-clip models` lists as on disk."""
    try:
        from huggingface_hub import constants, scan_cache_dir

        repos = [repo.repo_id for repo in scan_cache_dir(constants.HF_HUB_CACHE).repos if repo.repo_type == "model"]
    except Exception:  # no hub client, or no cache folder yet
        return []
    return [(f"{family.prefix}:{rest}", path) for family in FAMILIES for rest, path in family.adapter().cached(repos)]
