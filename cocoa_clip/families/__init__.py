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
