"""Loading models by name: OpenAI CLIP through the `clip` package here, other families by prefix (families/)."""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from . import families
from . import weights as weights_sources
from .encoder import MEAN as MEAN
from .encoder import STD as STD
from .encoder import LearntHead, Preprocessing
from .encoder import Model as Model
from .errors import ModelLoadError, SettingsError
from .families import family_of

DEFAULT_MODEL = "ViT-B/32"
# Small models that ship with the project, so that everything runs offline.
BUNDLED = {"shapes-demo": Path(__file__).parent / "weights" / "shapes-demo.pt"}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def available_models() -> list[str]:
    """Names `load` accepts: the `clip` package's models, then the bundled ones that are present."""
    clip = clip_package()
    return list(clip.available_models()) + [name for name, path in BUNDLED.items() if path.is_file()]


def weights_on_disk(name: str, download_root: str | None = None) -> weights_sources.Found | None:
    """Where the weights of model `name` are on this machine (so it loads offline), or None."""
    if family_of(name) is not None:  # open_clip:, hf: (families/)
        path = families.on_disk(name)
        return weights_sources.Found(Path(path), "hub cache") if path else None
    if name in BUNDLED:
        return weights_sources.Found(BUNDLED[name], "bundled") if BUNDLED[name].is_file() else None
    return weights_sources.on_disk(name, download_root)


def download(name: str, download_root: str | None = None) -> weights_sources.Found:
    """Fetch model `name`'s weights ahead of time, to where the next `load` finds them offline."""
    if family_of(name) is not None:
        path, source = families.download(name)
        return weights_sources.Found(Path(path), source)
    if name in BUNDLED:
        return weights_on_disk(name) or weights_sources.Found(BUNDLED[name], "bundled (missing)")
    if name not in clip_package().available_models():
        raise ModelLoadError(f"Unknown model {name!r}; choose one of: {', '.join(available_models())}.")
    return weights_sources.find(name, download_root)


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

    def token_ids(self, text: str) -> tuple[int, ...]:
        tokenizer = clip_package().clip._tokenizer
        return (tokenizer.encoder["<|startoftext|>"], *tokenizer.encode(text), tokenizer.encoder["<|endoftext|>"])

    def _embed_captions(self, texts: list[str]) -> torch.Tensor:
        tokens = clip_package().tokenize(texts, context_length=self.context_length, truncate=True)
        return self.net.encode_text(tokens.to(self.device))


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """CLIP's input normalisation: (B, 3, H, W) RGB in [0, 1] -> what the image encoder takes."""
    return Preprocessing(1).normalize(pixels)


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
    """Load a model by name, or OpenAI CLIP from a local checkpoint.

    Names with a family prefix go to that family's adapter (families/): `open_clip:ARCH[:TAG]`
    (with `weights`, a checkpoint for ARCH) and `hf:REPO_ID` or `hf:DIR`. For other names `weights`
    is a path to an OpenAI JIT archive, a plain CLIP state dict or an open_clip-format safetensors
    file; it wins over `name`. A name's weights come from the first source that works (the clip
    package's cache and URL, the Hugging Face hub copy: see weights.py); `download_root` is the clip
    package's cache folder. Raises ModelLoadError with what to do when the weights cannot be had.

    >>> model = load("shapes-demo")                                     # doctest: +SKIP
    >>> model = load(weights="ViT-B-32.pt")                             # doctest: +SKIP
    >>> model = load("open_clip:ViT-B-16-SigLIP-256:webli")             # doctest: +SKIP
    >>> model = load("hf:openai/clip-vit-base-patch32")                 # doctest: +SKIP
    """
    device = _device(device)
    precision = _precision(precision, device)
    family = family_of(name)
    if family is not None:
        return family.load(name, weights=weights, device=device, precision=precision)
    clip = clip_package()
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


def _precision(precision: str, device: torch.device) -> str:
    precision = resolve_precision(precision, device)
    if precision == "fp16" and device.type != "cuda":
        raise SettingsError("fp16 runs on CUDA only; use fp32 or bf16 on the CPU.")
    return precision


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
def eval_mode(model: Model) -> Iterator[None]:
    """No autograd and the model's batched precision: how every forward-only pass runs.

    no_grad rather than inference_mode, so that results can later serve as constants in a backward pass.
    """
    with torch.no_grad(), model.autocast():
        yield
