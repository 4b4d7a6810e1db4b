"""What the explainers need of a model, whatever its family: the one small interface every adapter fills in.

An adapter (OpenAI `clip`, open_clip, Hugging Face transformers, `wrap` for any encoder; see
families/) says how the model reads a picture (`Preprocessing`: input size, resize
rule, interpolation, mean and std), embeds normalised pixels, reads and embeds captions, and
what its zero-shot head is (logit scale, and bias for sigmoid models such as SigLIP). RISE,
gradients, `evaluate`, `compare` and the app use only this interface, so they never ask which
family they hold.
"""
from __future__ import annotations

import contextlib
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import QuestionError
from .quantize import forward_only
from .tracing import AttentionTrace, no_attention

# OpenAI CLIP's normalisation constants (clip/clip.py, _transform), also open_clip's and most CLIP ports'.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
RESIZES = ("shortest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
_TEXT_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Preprocessing:
    """How the model's own pipeline turns a photo into its (3, n_px, n_px) input.

    resize: "shortest" (short side to n_px, then the centre square: CLIP) or "squash" (the whole
    photo resized to the square: SigLIP). interpolation: the resampling filter. mean and std: the
    per-channel normalisation of [0, 1] RGB (names as open_clip's preprocess config).
    """

    n_px: int
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    resize: str = "shortest"
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.resize not in RESIZES or self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"Unsupported preprocessing: resize {self.resize!r}, "
                             f"interpolation {self.interpolation!r}.")

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> what the image encoder takes."""
        mean = pixels.new_tensor(self.mean).view(1, 3, 1, 1)
        std = pixels.new_tensor(self.std).view(1, 3, 1, 1)
        return (pixels - mean) / std


@dataclass(frozen=True)
class Provenance:
    """What a model was loaded from, so that a user can pin what they saw.

    source: where the weights came from ("file", "bundled", "clip cache", "hub", "open_clip", "transformers", ...);
    file: the weights file read; revision: the hub revision asked for; commit: the hub commit the file came from;
    sha256: the file's SHA-256. Each is None where it does not apply or is not known.
    """

    source: str
    file: str | None = None
    revision: str | None = None
    commit: str | None = None
    sha256: str | None = None


@dataclass(eq=False, kw_only=True)
class Model:
    """An image encoder (and, for most families, a text encoder) with what the explainers need to know.

    `preprocessing` is how the model reads a picture. Subclasses fill in `encode_normalised` and, with a
    text side, `token_ids`, `context_length` and `_embed_captions`. `precision` is what batched forward
    passes use ("fp32", "bf16" autocast, the "int8" image tower on CPU, or "fp16" weights on CUDA). `family`
    and `weights` say where the model came from; they start `key`, which also names this loaded instance, so
    caches never mix models.
    `provenance` names the file loaded and its SHA-256 (None for a wrapped encoder).
    """

    name: str
    device: torch.device
    precision: str
    preprocessing: Preprocessing | None = None  # None only while a subclass's __post_init__ reads it off the net
    family: str = "clip"
    weights: str = ""
    provenance: Provenance | None = None
    key: str = ""
    _texts: OrderedDict = field(default_factory=OrderedDict, repr=False)  # caption -> (embedding, note or None)

    def __post_init__(self) -> None:
        self.key = f"{self.family}:{self.name}:{self.weights}:{self.key or uuid.uuid4().hex}"

    # --- the image side ---------------------------------------------------------------------------
    @property
    def n_px(self) -> int:
        """Side of the square image the model takes, in pixels."""
        return self.preprocessing.n_px

    def encode_normalised(self, normalised: torch.Tensor) -> torch.Tensor:
        """The image tower on normalised input: (B, 3, n_px, n_px) -> (B, D), differentiable."""
        raise NotImplementedError

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.preprocessing.normalize(pixels)

    def attention_trace(self, normalised: torch.Tensor) -> AttentionTrace:
        """One differentiable pass of a vision transformer's image tower, with its attention probabilities
        (tracing.AttentionTrace), for the attention-based methods. normalised: (B, 3, n_px, n_px).

        Families whose image tower is a ViT fill this in; other models refuse in a sentence.
        """
        raise no_attention(self.name, "is not a vision transformer whose attention maps cocoa-clip can reach")

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of the model's weights (its first module's first parameter; float32 without any)."""
        modules = [value for value in vars(self).values() if isinstance(value, torch.nn.Module)]
        return next((weight.dtype for module in modules for weight in module.parameters()), torch.float32)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed images.

        pixels: (B, 3, n_px, n_px) RGB in [0, 1] on `device`. Returns (B, D) float32,
        not normalised. Differentiable; callers choose no_grad or autocast.
        """
        return self.encode_normalised(self.normalize(pixels)).float()

    def encode_canvas(self, canvas: torch.Tensor) -> torch.Tensor:
        """Embed one picture as forward-only passes do: (3, n_px, n_px) in [0, 1] -> (D,) float32, raw."""
        with torch.no_grad(), self.autocast():
            return self.encode_images(canvas[None].to(self.device))[0]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context batched forward passes run in: bf16 autocast, or the int8 image tower (quantize.py)."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.precision == "int8":
            return forward_only()
        return contextlib.nullcontext()

    # --- the text side ----------------------------------------------------------------------------
    @property
    def has_text(self) -> bool:
        return True

    @property
    def context_length(self) -> int:
        raise NotImplementedError

    def token_ids(self, text: str) -> tuple[int, ...]:
        """The caption as the model's tokenizer reads it, specials included, before truncation."""
        raise NotImplementedError

    def _embed_captions(self, texts: list[str]) -> torch.Tensor:
        """(T,) captions -> (T, D) raw embeddings, tokenised, truncated and padded as the model's own code does."""
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """Embed captions as written (no template). Returns ((T, D) float32, notes).

        Captions longer than the model's context are truncated; each one gets a note, every time.
        Embeddings are cached per caption, so preset foils cost one pass per model.
        """
        if not self.has_text:
            raise QuestionError(f"{self.name} has no text encoder: give the corpus and foil as images "
                                "(corpus_images / foil_images, --corpus-image / --foil-image), not captions.")
        unique = list(dict.fromkeys(texts))
        missing = [t for t in unique if t not in self._texts]
        for start in range(0, len(missing), 256):
            chunk = missing[start:start + 256]
            with torch.no_grad():
                embedded = self._embed_captions(chunk).float()
            for text, row in zip(chunk, embedded, strict=True):
                too_long = len(self.token_ids(text)) > self.context_length
                note = (f"Caption {_excerpt(text)!r} is longer than the model's {self.context_length} tokens: "
                        "truncated.")
                self._texts[text] = (row, note if too_long else None)  # kept, so every later call says it too
        for text in texts:
            self._texts.move_to_end(text)
        notes = [self._texts[t][1] for t in unique if self._texts[t][1] is not None]
        embeddings = torch.stack([self._texts[t][0] for t in texts])
        while len(self._texts) > max(_TEXT_CACHE_SIZE, len(texts)):
            self._texts.popitem(last=False)
        return embeddings, notes

    # --- the zero-shot head -----------------------------------------------------------------------
    @property
    def logit_scale(self) -> float | None:
        """The learnt temperature, exp(logit_scale) (100 for OpenAI's models); None when the model has no head."""
        return None

    @property
    def logit_bias(self) -> float | None:
        """The learnt bias of sigmoid heads (SigLIP); None for softmax (CLIP-style) heads."""
        return None


class LearntHead:
    """The zero-shot head read off `self.net`: exp(logit_scale), and logit_bias where the model has one (SigLIP)."""

    net: torch.nn.Module

    @property
    def logit_scale(self) -> float | None:
        scale = getattr(self.net, "logit_scale", None)
        return float(scale.exp()) if scale is not None else None

    @property
    def logit_bias(self) -> float | None:
        bias = getattr(self.net, "logit_bias", None)
        return float(bias) if bias is not None else None


def _excerpt(text: str, length: int = 60) -> str:
    """The text, or its start and end around an ellipsis (a long caption's own words come last)."""
    return text if len(text) <= length else f"{text[:20]}...{text[-(length - 23):]}"


@contextlib.contextmanager
def eval_mode(model: Model) -> Iterator[None]:
    """No autograd and the model's batched precision: how every forward-only pass runs.

    no_grad rather than inference_mode, so that results can later serve as constants in a backward pass.
    """
    with torch.no_grad(), model.autocast():
        yield
