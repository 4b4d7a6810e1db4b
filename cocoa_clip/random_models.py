"""CLIP-format models with random weights: for tests and speed benchmarks, and for the
model-randomisation sanity check (an explanation that survives re-initialising the weights
does not explain what the model learnt; Adebayo et al., 2018, and the paper's appendix).

A CLIP model is fully described by its state dict (`clip.model.build_model` reads every size off
the weight shapes), so a random one written to disk goes through exactly the loading path of
real weights. Speed does not depend on the weight values.
"""
from __future__ import annotations

import copy
import os

import torch

from .models import ClipModel, clip_package

# Sizes as clip.model.CLIP takes them. The text side keeps CLIP's tokenizer (vocabulary 49408,
# context 77); widths must be multiples of 64 (heads = width // 64).
ARCHITECTURES = {
    "tiny": dict(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=8,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1),
    # CLIP's ResNet image tower (RN50 and kin) at toy size: 64 px in, a 2 x 2 grid into attention pooling.
    "tiny-resnet": dict(embed_dim=32, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8,
                        vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                        transformer_heads=1, transformer_layers=1),
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
}


def random_state_dict(architecture: str = "tiny", seed: int = 0, **overrides: int) -> dict[str, torch.Tensor]:
    """The state dict of a randomly initialised CLIP (float32) of a named architecture."""
    CLIP = clip_package().model.CLIP
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**{**ARCHITECTURES[architecture], **overrides})
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def write_checkpoint(path: str | os.PathLike, architecture: str = "tiny", seed: int = 0, **overrides: int) -> str:
    """Save a random CLIP as a plain state dict that `clip.load` / `cocoa_clip.load(weights=...)` read."""
    torch.save(random_state_dict(architecture, seed, **overrides), path)
    return str(path)


def randomised(model: ClipModel, seed: int = 0) -> ClipModel:
    """A copy of `model` with every weight drawn afresh by CLIP's own initialisation (the original is untouched)."""
    net = copy.deepcopy(model.net).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in net.modules():
            reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
            if module is not net and reset is not None:  # linear, convolution, layer norm, attention
                reset()
        for module in net.visual.modules():  # the image tower's bare tensors, scaled as CLIP builds them
            for name, tensor in module.named_parameters(recurse=False):
                if name in ("class_embedding", "positional_embedding", "proj"):
                    width = tensor.shape[0] if name == "proj" else tensor.shape[-1]
                    torch.nn.init.normal_(tensor, std=width ** -0.5)
        net.initialize_parameters()  # token embedding, text tower, projections, attention pooling
    if model.device.type == "cuda" and model.precision == "fp16":
        clip_package().model.convert_weights(net)
    net = net.to(model.device).eval().requires_grad_(False)
    return ClipModel(net=net, name=f"{model.name} (randomised, seed {seed})", device=model.device,
                     precision=model.precision)
