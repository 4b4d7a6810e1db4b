"""The adapter for OpenAI's `clip` package: its model names, the bundled models and CLIP checkpoint files."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import ModelLoadError, UnsafeCheckpointError
from .. import weights as weights_sources
from ..encoder import LearntHead, Model, Preprocessing
from ..registry import BUNDLED
from ..tracing import AttentionTrace, differentiable_input, no_attention, traced_blocks
from ..trust import provenance, read_state_dict, sha256
from .openai_package import clip_package


def available() -> list[str]:
    """The `clip` package's model names, then the bundled ones that are present."""
    return list(clip_package().available_models()) + [name for name, path in BUNDLED.items() if path.is_file()]


def load(name: str, *, weights: str | os.PathLike | None, device: torch.device, precision: str,
         download_root: str | None = None, revision: str | None = None, trust: bool = False) -> ClipModel:
    """OpenAI CLIP by `clip` package name or bundled name, or from a checkpoint file (`weights` wins over `name`).

    A package name's weights come from the first source that works (weights.py); `download_root` is
    the clip package's cache folder; `revision` pins its hub copy. Files are read as trust.py says:
    TorchScript archives only when known by hash, unless `trust`.
    """
    found = _locate(name, weights, download_root, revision)
    digest = found.sha256 or sha256(found.path)  # once per load: the trust check and the provenance share it
    try:
        net = _build(read_state_dict(found.path, trust=trust, digest=digest), device)
    except UnsafeCheckpointError:
        raise
    except Exception as error:  # zip, pickle and shape errors all mean "no usable weights"
        raise ModelLoadError(_load_advice(name, weights, found.path, error)) from error
    if precision != "fp16" and device.type == "cuda":  # bf16 autocast runs over fp32 weights, as its label says
        net = net.float()
    net.eval().requires_grad_(False)
    label = str(weights) if weights is not None else name
    return ClipModel(net=net, name=label, device=device, precision=precision,
                     provenance=provenance(found.source, found.path, revision=revision, digest=digest))


def _locate(name: str, weights: str | os.PathLike | None, download_root: str | None,
            revision: str | None) -> weights_sources.Found:
    """The file to read: the --weights file, a bundled model, or a `clip` package name's weights (weights.py)."""
    if revision is not None and (weights is not None or name not in clip_package().available_models()):
        raise ModelLoadError(f"A revision pins a hub copy; {weights or name} has none, so drop @{revision}.")
    if weights is not None:
        if not Path(weights).is_file():
            raise ModelLoadError(f"No checkpoint file at {weights}; pass --weights with the path of a CLIP .pt file.")
        return weights_sources.Found(Path(weights), "file")
    if name in BUNDLED:
        if not BUNDLED[name].is_file():
            raise ModelLoadError(f"The bundled model {name!r} is missing at {BUNDLED[name]}; reinstall cocoa-clip.")
        return weights_sources.Found(BUNDLED[name], "bundled")
    if name in clip_package().available_models():
        return weights_sources.find(name, download_root, revision=revision)
    raise ModelLoadError(f"Unknown model {name!r}; choose one of: {', '.join(available())}.")


def on_disk(name: str, download_root: str | None = None, revision: str | None = None) -> weights_sources.Found | None:
    """Where the weights of `name` are on this machine (so it loads offline), or None."""
    if name in BUNDLED:
        return weights_sources.Found(BUNDLED[name], "bundled") if BUNDLED[name].is_file() else None
    return weights_sources.on_disk(name, download_root, revision)


def download(name: str, download_root: str | None = None, revision: str | None = None) -> weights_sources.Found:
    """Fetch the weights of `name` ahead of time, to where the next `load` finds them offline."""
    if name in BUNDLED:
        return on_disk(name) or weights_sources.Found(BUNDLED[name], "bundled (missing)")
    if name not in clip_package().available_models():
        raise ModelLoadError(f"Unknown model {name!r}; choose one of: {', '.join(available())}.")
    return weights_sources.find(name, download_root, revision=revision)


@dataclass(eq=False, kw_only=True)
class ClipModel(LearntHead, Model):
    """An OpenAI `clip` model: the adapter for the `clip` package's names, bundled models and CLIP .pt files.

    `net` is a `clip.model.CLIP` (or anything with its encode_image, encode_text, visual.input_resolution
    and context_length); pictures go through CLIP's own preprocessing constants. `precision` is what batched
    forward passes use ("fp32"; "bf16" autocast over fp32 weights; or "fp16" weights on CUDA).
    """

    net: torch.nn.Module
    family: str = "clip"

    def __post_init__(self) -> None:
        self.preprocessing = self.preprocessing or Preprocessing(int(self.net.visual.input_resolution))
        super().__post_init__()

    @property
    def context_length(self) -> int:
        return int(self.net.context_length)

    def encode_normalised(self, normalised: torch.Tensor) -> torch.Tensor:
        return self.net.encode_image(normalised)

    def attention_trace(self, normalised: torch.Tensor) -> AttentionTrace:
        visual = getattr(self.net, "visual", None)
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None:
            raise no_attention(self.name, "has no vision transformer (its image tower is a ResNet or another network)")
        with traced_blocks(list(blocks), batch_first=False) as (attentions, tokens):  # clip's ViT runs in LND
            self.net.encode_image(differentiable_input(normalised, visual))

        def readout(block_tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
            pooled = visual.ln_post(block_tokens[:, 0, :])  # the class token, as VisionTransformer.forward
            return (pooled @ visual.proj if visual.proj is not None else pooled), None

        side = int(visual.input_resolution) // int(visual.conv1.kernel_size[0])
        return AttentionTrace(attentions, tokens, readout, (side, side))

    def token_ids(self, text: str) -> tuple[int, ...]:
        tokenizer = clip_package().clip._tokenizer
        return (tokenizer.encoder["<|startoftext|>"], *tokenizer.encode(text), tokenizer.encoder["<|endoftext|>"])

    def _embed_captions(self, texts: list[str]) -> torch.Tensor:
        tokens = clip_package().tokenize(texts, context_length=self.context_length, truncate=True)
        return self.net.encode_text(tokens.to(self.device))


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """CLIP's input normalisation: (B, 3, H, W) RGB in [0, 1] -> what the image encoder takes."""
    return Preprocessing(1).normalize(pixels)


def _build(state_dict: dict, device: torch.device) -> torch.nn.Module:
    """What `clip.load(path, jit=False)` does with the tensors of a JIT archive, a plain state dict or the hub's
    safetensors copy (trust.read_state_dict reads each; clip.load itself would run any archive's code)."""
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    net = clip_package().model.build_model(dict(state_dict)).to(device)
    return net.float() if device.type == "cpu" else net


def _load_advice(name: str, weights: object, path: Path, error: Exception) -> str:
    if weights is not None:
        return (f"Could not read {weights} as a CLIP checkpoint ({type(error).__name__}); "
                "is it a complete OpenAI CLIP .pt file (or a state dict with its keys)?")
    if name in BUNDLED:
        return f"The bundled model {name!r} could not be read ({type(error).__name__}); reinstall cocoa-clip."
    return (f"The {name} weights at {path} could not be read ({type(error).__name__}); delete that file so that "
            "the next load fetches them again, or pass --weights PATH.")
