"""Loading CLIP through the OpenAI `clip` package, and encoding pixels and captions with it."""
from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import weights as weights_sources
from .errors import ModelLoadError, SettingsError

# CLIP's own normalisation constants (clip/clip.py, _transform).
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULT_MODEL = "ViT-B/32"
# Small models that ship with the project, so that everything runs offline.
BUNDLED = {"shapes-demo": Path(__file__).parent / "weights" / "shapes-demo.pt"}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_TEXT_CACHE_SIZE = 4096


def available_models() -> list[str]:
    """Names `load` accepts: the `clip` package's models, then the bundled ones that are present."""
    clip = clip_package()
    return list(clip.available_models()) + [name for name, path in BUNDLED.items() if path.is_file()]


def weights_on_disk(name: str, download_root: str | None = None) -> weights_sources.Found | None:
    """Where the weights of model `name` are on this machine (so it loads offline), or None."""
    if name in BUNDLED:
        return weights_sources.Found(BUNDLED[name], "bundled") if BUNDLED[name].is_file() else None
    return weights_sources.on_disk(name, download_root)


def download(name: str, download_root: str | None = None) -> weights_sources.Found:
    """Fetch model `name`'s weights ahead of time, to where the next `load` finds them offline."""
    if name in BUNDLED:
        return weights_on_disk(name) or weights_sources.Found(BUNDLED[name], "bundled (missing)")
    if name not in clip_package().available_models():
        raise ModelLoadError(f"Unknown model {name!r}; choose one of: {', '.join(available_models())}.")
    return weights_sources.find(name, download_root)


@dataclass(eq=False)
class ClipModel:
    """A CLIP model with what the explainers need to know about it.

    `net` is a `clip.model.CLIP`; `precision` is what batched forward passes use
    ("fp32"; "bf16" autocast over fp32 weights; or "fp16" weights on CUDA, as `clip.load` gives).
    """

    net: torch.nn.Module
    name: str
    device: torch.device
    precision: str
    key: str = field(default_factory=lambda: uuid.uuid4().hex)  # this loaded instance, for caches
    _texts: OrderedDict = field(default_factory=OrderedDict, repr=False)  # caption -> (embedding, note or None)

    @property
    def n_px(self) -> int:
        """Side of the square image the model takes, in pixels."""
        return int(self.net.visual.input_resolution)

    @property
    def context_length(self) -> int:
        return int(self.net.context_length)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context batched forward passes run in (bf16 autocast on CPU when chosen)."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed images.

        pixels: (B, 3, n_px, n_px) RGB in [0, 1] on `device`. Returns (B, D) float32,
        not normalised. Differentiable; callers choose no_grad or autocast.
        """
        return self.net.encode_image(normalize(pixels)).float()

    def encode_canvas(self, canvas: torch.Tensor) -> torch.Tensor:
        """Embed one picture as forward-only passes do: (3, n_px, n_px) in [0, 1] -> (D,) float32, raw."""
        with eval_mode(self):
            return self.encode_images(canvas[None].to(self.device))[0]

    def encode_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """Embed captions as written (no template). Returns ((T, D) float32, notes).

        Captions longer than the model's context are truncated; each one gets a note, every time.
        Embeddings are cached per caption, so preset foils cost one pass per model.
        """
        clip = clip_package()
        unique = list(dict.fromkeys(texts))
        missing = [t for t in unique if t not in self._texts]
        for start in range(0, len(missing), 256):
            chunk = missing[start:start + 256]
            tokens = clip.tokenize(chunk, context_length=self.context_length, truncate=True).to(self.device)
            with torch.no_grad():
                embedded = self.net.encode_text(tokens).float()
            for text, row in zip(chunk, embedded, strict=True):
                too_long = len(clip.clip._tokenizer.encode(text)) + 2 > self.context_length
                note = f"Caption {_excerpt(text)!r} is longer than CLIP's {self.context_length} tokens: truncated."
                self._texts[text] = (row, note if too_long else None)  # kept, so every later call says it too
        for text in texts:
            self._texts.move_to_end(text)
        notes = [self._texts[t][1] for t in unique if self._texts[t][1] is not None]
        embeddings = torch.stack([self._texts[t][0] for t in texts])
        while len(self._texts) > max(_TEXT_CACHE_SIZE, len(texts)):
            self._texts.popitem(last=False)
        return embeddings, notes


def _excerpt(text: str, length: int = 60) -> str:
    """The text, or its start and end around an ellipsis (a long caption's own words come last)."""
    return text if len(text) <= length else f"{text[:20]}...{text[-(length - 23):]}"


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """CLIP's input normalisation: (B, 3, H, W) RGB in [0, 1] -> what the image encoder takes."""
    mean = pixels.new_tensor(MEAN).view(1, 3, 1, 1)
    std = pixels.new_tensor(STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def clip_text(text: str) -> str:
    """A caption as CLIP's tokenizer reads it: its text clean-up, white space collapsed, lower case."""
    tokenizer = clip_package().simple_tokenizer
    return tokenizer.whitespace_clean(tokenizer.basic_clean(text)).lower()


def clip_package():
    """The OpenAI `clip` package, imported without its pkg_resources deprecation notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import clip
        import clip.model
    return clip


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: fp16 on CUDA (the weights `clip.load` gives there), bf16 autocast on CPUs with bf16 units, else fp32."""
    if precision not in PRECISIONS:
        raise SettingsError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def load(
    name: str = DEFAULT_MODEL,
    *,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    download_root: str | None = None,
) -> ClipModel:
    """Load CLIP by name or from a local checkpoint.

    `weights` is a path to an OpenAI JIT archive, a plain CLIP state dict or an open_clip-format
    safetensors file; it wins over `name`. A name's weights come from the first source that works
    (the clip package's cache and URL, the Hugging Face hub copy: see weights.py); `download_root`
    is the clip package's cache folder. Raises ModelLoadError with what to do when the weights
    cannot be had.

    >>> model = load("shapes-demo")            # doctest: +SKIP
    >>> model = load(weights="ViT-B-32.pt")    # doctest: +SKIP
    """
    clip = clip_package()
    device = _device(device)
    precision = resolve_precision(precision, device)
    if precision == "fp16" and device.type != "cuda":
        raise SettingsError("fp16 runs on CUDA only; use fp32 or bf16 on the CPU.")
    if weights is not None:
        source, label = Path(weights), str(weights)
        if not source.is_file():
            raise ModelLoadError(f"No checkpoint file at {label}; pass --weights with the path of a CLIP .pt file.")
    elif name in BUNDLED:
        source, label = BUNDLED[name], name
        if not source.is_file():
            raise ModelLoadError(f"The bundled model {name!r} is missing at {source}; reinstall cocoa-clip.")
    elif name in clip.available_models():
        source, label = name, name
    else:
        raise ModelLoadError(f"Unknown model {name!r}; choose one of: {', '.join(available_models())}.")

    if isinstance(source, str):  # a clip package name: the first weights source that works (weights.py)
        source = weights_sources.find(name, download_root).path
    try:
        net = _build(source, device)
    except Exception as error:  # zip, pickle and shape errors all mean "no usable weights"
        raise ModelLoadError(_load_advice(name, weights, source, error)) from error
    if precision != "fp16" and device.type == "cuda":  # bf16 autocast runs over fp32 weights, as its label says
        net = net.float()
    net.eval().requires_grad_(False)
    return ClipModel(net=net, name=label, device=device, precision=precision)


def _build(path: Path, device: torch.device) -> torch.nn.Module:
    """What `clip.load(path, jit=False)` does, reading JIT archives and plain state dicts alike.

    (clip.load reads a state dict from where the failed JIT attempt left the file, which recent
    torch versions leave at its end, so plain state dicts no longer load through it.)
    """
    build_model = clip_package().model.build_model
    if Path(path).suffix == ".safetensors":  # the hub copies in open_clip's format
        from safetensors.torch import load_file

        state_dict = load_file(str(path), device="cpu")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            try:
                state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
            except RuntimeError:
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    net = build_model(dict(state_dict)).to(device)
    return net.float() if device.type == "cpu" else net


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise SettingsError(f"Unknown device {device!r}; use cpu or cuda.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError("CUDA was asked for but no GPU is available here; use --device cpu.")
    if device.type not in ("cpu", "cuda"):
        raise SettingsError(f"Unsupported device {device.type!r}; use cpu or cuda.")
    return device


def _load_advice(name: str, weights: object, path: Path, error: Exception) -> str:
    if weights is not None:
        return (f"Could not read {weights} as a CLIP checkpoint ({type(error).__name__}); "
                "is it a complete OpenAI CLIP .pt file (or a state dict with its keys)?")
    if name in BUNDLED:
        return f"The bundled model {name!r} could not be read ({type(error).__name__}); reinstall cocoa-clip."
    return (f"The {name} weights at {path} could not be read ({type(error).__name__}); delete that file so that "
            "the next load fetches them again, or pass --weights PATH.")


@contextlib.contextmanager
def eval_mode(model: ClipModel) -> Iterator[None]:
    """No autograd and the model's batched precision: how every forward-only pass runs.

    no_grad rather than inference_mode, so that results can later serve as constants in a backward pass.
    """
    with torch.no_grad(), model.autocast():
        yield
