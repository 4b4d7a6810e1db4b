"""Hugging Face transformers models: `hf:REPO_ID` (downloaded and cached by the hub client) or `hf:DIR`
(a folder written by `save_pretrained`), for CLIPModel, SiglipModel and Siglip2Model.

Pictures are read with the model's image processor settings (size, shortest-side crop or squash,
resampling filter, mean, std); captions with its tokenizer, padded to the context length as
SigLIP was trained ("max_length"; CLIP pools at the end token, so its padding changes nothing)
and lower-cased for SigLIP 2, as its model card asks.

Siglip2Model (NaFlex) takes a variable grid of patches; here it sees a square of
sqrt(max_num_patches) x sqrt(max_num_patches) patches, which is what its processor gives square pictures.

`hf:REPO_ID@REVISION` pins the hub revision. No weights file runs code: transformers reads safetensors
first and a .bin with torch.load(weights_only=True), even with --trust-checkpoint; a .bin that needs more
is refused in trust.py's sentence, which then says to convert it.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import ModelLoadError
from ..encoder import LearntHead, Model, Preprocessing
from ..hub import check_hub, hub_cached
from ..tracing import AttentionTrace, differentiable_input, no_attention, pooling_head
from ..trust import is_torchscript, provenance, refusal, refused_by_torch
from . import ready

MODEL_TYPES = ("clip", "siglip", "siglip2")
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # transformers' own names, in the order it prefers
_FILTERS = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's resampling codes, as image processors store them


@dataclass(eq=False, kw_only=True)
class HfModel(LearntHead, Model):
    """A transformers CLIPModel, SiglipModel or Siglip2Model with its tokenizer."""

    net: torch.nn.Module
    tokenizer: object
    lower_case: bool = False  # SigLIP 2 reads lower-cased captions
    patch_size: int | None = None  # Siglip2Model: its pixels arrive as flattened patches
    family: str = "hf"

    @property
    def context_length(self) -> int:
        return int(self.net.config.text_config.max_position_embeddings)

    def encode_normalised(self, normalised: torch.Tensor) -> torch.Tensor:
        return _features(self.net.get_image_features(**self._pixels(normalised)))

    def _pixels(self, normalised: torch.Tensor) -> dict[str, torch.Tensor]:
        """The image tower's inputs for normalised (B, 3, n_px, n_px) pictures."""
        if self.patch_size is None:
            return {"pixel_values": normalised}
        patch = self.patch_size
        batch, channels, height, width = normalised.shape
        rows, cols = height // patch, width // patch
        # As Siglip2ImageProcessor's convert_image_to_patches: each patch flattened as (row, col, channel).
        patches = normalised.reshape(batch, channels, rows, patch, cols, patch).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(batch, rows * cols, patch * patch * channels)  # shape = [B, patches, p * p * 3]
        mask = torch.ones(batch, rows * cols, dtype=torch.long, device=normalised.device)
        shapes = torch.tensor([[rows, cols]] * batch, device=normalised.device)
        return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}

    def attention_trace(self, normalised: torch.Tensor) -> AttentionTrace:
        vision = self.net.vision_model
        head = getattr(vision, "head", None)
        if self.net.config.model_type != "clip" and head is None:
            raise no_attention(self.name, "has neither a class token nor an attention-pooling head")
        before = self.net.config._attn_implementation
        self.net.set_attn_implementation("eager")  # the only one that returns probabilities autograd can reach
        try:
            output = vision(**self._pixels(differentiable_input(normalised, vision)), output_attentions=True,
                            output_hidden_states=True)
        finally:
            self.net.set_attn_implementation(before)

        def readout(block_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            if head is None:  # CLIP: the class token, layer-normed, then projected (CLIPModel.get_image_features)
                return self.net.visual_projection(vision.post_layernorm(block_tokens[:, 0])), None
            return pooling_head(head, vision.post_layernorm(block_tokens))  # SigLIP: its pooler_output

        patch = self.patch_size or int(self.net.config.vision_config.patch_size)
        side = self.n_px // patch
        return AttentionTrace(output.attentions, output.hidden_states[1:], readout, (side, side))

    def _read(self, text: str) -> str:
        return text.lower() if self.lower_case else text

    def token_ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(self._read(text))["input_ids"])

    def _embed_captions(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer([self._read(t) for t in texts], padding="max_length", max_length=self.context_length,
                                truncation=True, return_tensors="pt")
        inputs = {key: tokens[key].to(self.device) for key in ("input_ids", "attention_mask") if key in tokens}
        return _features(self.net.get_text_features(**inputs))


def _features(output: object) -> torch.Tensor:
    """transformers 5 returns the projected embeddings as an output's pooler_output; 4.x as a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load(source: str, *, weights: str | os.PathLike | None, device: torch.device, precision: str,
         revision: str | None = None, trust: bool = False) -> HfModel:
    """source: a hub repository id ("google/siglip-base-patch16-224") or a save_pretrained folder; revision: the
    repository's branch, tag or commit. trust changes nothing: transformers reads tensors only (see below)."""
    name = f"hf:{source}"
    if weights is not None:
        raise ModelLoadError(f"{name} reads its weights from the repository or folder; drop --weights "
                             "(or pass hf:DIR, a folder written by save_pretrained).")
    if source.startswith(("/", ".", "~")) and not Path(source).expanduser().is_dir():
        raise ModelLoadError(f"No folder at {source}; pass hf:DIR with a folder written by save_pretrained, "
                             "or hf:REPO_ID.")
    source = str(Path(source).expanduser()) if Path(source).expanduser().is_dir() else source
    if revision is not None and Path(source).is_dir():
        raise ModelLoadError(f"A revision pins a hub repository; the folder {source} has none, so drop @{revision}.")
    try:
        import transformers
    except ImportError as error:
        raise ModelLoadError("hf: names need the transformers package: pip install transformers.") from error
    if on_disk(source, revision) is None:
        check_hub(name)  # offline: a sentence in seconds, not after the hub client's retries
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = transformers.AutoConfig.from_pretrained(source, revision=revision)
            if config.model_type not in MODEL_TYPES:
                raise ModelLoadError(f"{name} is a {config.model_type!r} model; cocoa-clip reads CLIP, SigLIP and "
                                     "SigLIP 2 models from transformers.")
            # No remote code (its default, said aloud). transformers reads safetensors first, and a .bin with
            # torch.load(weights_only=True) whatever it is asked (5.25.0's _load_pretrained_model), so `trust`
            # cannot open more here.
            net = transformers.AutoModel.from_pretrained(source, revision=revision, trust_remote_code=False)
            processor = transformers.AutoImageProcessor.from_pretrained(source, revision=revision)
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, revision=revision)
    except ModelLoadError:
        raise
    except Exception as error:  # hub, file and format errors all mean "no usable model"
        if refused_by_torch(error):
            file = _weights_file(source, revision) or name
            raise refusal(file, "a TorchScript archive" if is_torchscript(file) else
                          "a pickle that holds more than tensors", trust_helps=False) from error
        raise ModelLoadError(_advice(name, source, error)) from error
    patch_size = None
    if config.model_type == "siglip2":
        patch_size = int(config.vision_config.patch_size)
        n_px = patch_size * math.isqrt(int(processor.max_num_patches))
        resize = "squash"
    elif getattr(processor, "do_center_crop", False):
        n_px, resize = int(processor.crop_size["height"]), "shortest"
    elif processor.size.get("shortest_edge"):
        n_px, resize = int(processor.size["shortest_edge"]), "shortest"
    else:
        n_px, resize = int(processor.size["height"]), "squash"
    preprocessing = Preprocessing(n_px, tuple(processor.image_mean), tuple(processor.image_std), resize,
                                  _FILTERS.get(int(processor.resample), "bicubic"))
    return HfModel(net=ready(net, device, precision), tokenizer=tokenizer, lower_case=config.model_type == "siglip2",
                   patch_size=patch_size, name=name, device=device, precision=precision, preprocessing=preprocessing,
                   weights=source, provenance=provenance("folder" if Path(source).is_dir() else "hub",
                                                         _weights_file(source, revision), revision=revision))


def _weights_file(source: str, revision: str | None) -> str | None:
    """The weights file transformers read from the folder or the hub cache (safetensors before .bin, as it does)."""
    if Path(source).is_dir():
        return next((str(Path(source) / f) for f in WEIGHTS_FILES if (Path(source) / f).is_file()), None)
    return hub_cached(source, WEIGHTS_FILES, revision)


def on_disk(source: str, revision: str | None = None) -> str | None:
    """The folder, or the cached hub copy's config of a repository id, or None."""
    if Path(source).expanduser().is_dir():
        return str(Path(source).expanduser())
    return hub_cached(source, ("config.json",), revision)


def cached(repos: list[str]) -> list[tuple[str, str]]:
    """(repo id, path) of the cached `repos` that are CLIP or SigLIP models (their config says so)."""
    found = []
    for repo in repos:
        config = hub_cached(repo, ("config.json",))
        try:
            model_type = json.loads(Path(config).read_text()).get("model_type") if config else None
        except (OSError, ValueError):
            continue
        if model_type in MODEL_TYPES and hub_cached(repo, WEIGHTS_FILES):
            found.append((repo, str(Path(config).parent)))
    return found


def _advice(name: str, source: str, error: Exception) -> str:
    if Path(source).is_dir():
        return (f"Could not read {source} as a transformers model ({type(error).__name__}: {error}); "
                "is it a folder written by save_pretrained, with the model, its processor and its tokenizer?")
    cache = os.environ.get("HF_HUB_CACHE") or os.path.expanduser("~/.cache/huggingface/hub")
    return (f"Could not get {name} ({type(error).__name__}). Connect to the internet once (the Hugging Face hub "
            f"caches it in {cache}), or pass hf:DIR with a folder written by save_pretrained.")
