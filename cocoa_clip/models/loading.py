"""Loading a model by name: the device and precision settled, then the name's family adapter (registry.py)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ModelLoadError, SettingsError
from .encoder import Model
from .hub import check_hub, hub_offline
from .quantize import int8_image_tower
from .registry import OPENAI, resolve
from .weights import Found

DEFAULT_MODEL = "ViT-B/32"
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 and Arm /proc/cpuinfo flags of bf16 arithmetic in hardware


def available_models() -> list[str]:
    """Names `load` accepts without a prefix: the `clip` package's models, then the bundled ones that are present."""
    return OPENAI.adapter().available()


def split_revision(name: str, revision: str | None = None) -> tuple[str, str | None]:
    """`NAME@REVISION` -> (NAME, REVISION), the hub revision (branch, tag or commit) to pin; `revision` is the one
    given apart (--revision), which must agree. A name whose own spelling has an "@" (ViT-L/14@336px, a folder)
    is kept whole."""
    family, rest = resolve(name)
    head, at, tail = name.rpartition("@")
    whole = rest in available_models() if family is OPENAI else \
        Path(rest.removeprefix("local-dir:")).expanduser().exists()
    if whole or not at or not tail:
        return name, revision
    if revision is not None and revision != tail:
        raise SettingsError(f"{name} names revision {tail!r} but --revision says {revision!r}; give one of them.")
    return head, tail


def weights_on_disk(name: str, download_root: str | None = None) -> Found | None:
    """Where the weights of model `name` (NAME@REVISION too) are on this machine (so it loads offline), or None."""
    name, revision = split_revision(name)
    family, rest = resolve(name)
    if family is OPENAI:
        return family.adapter().on_disk(rest, download_root, revision)
    path = family.adapter().on_disk(rest, revision)
    return Found(Path(path), "hub cache", revision) if path else None


def download(name: str, download_root: str | None = None, *, revision: str | None = None,
             trust_checkpoint: bool = False) -> Found:
    """Fetch model `name`'s weights ahead of time, to where the next `load` finds them offline.

    For a family model, loading it is what fetches exactly the files a later load needs (weights,
    tokenizer, processor), through the library's own hub client; the hub's reachability is checked
    first, so that an offline machine gets its sentence in seconds rather than after the client's retries.
    """
    bare, revision = split_revision(name, revision)
    family, rest = resolve(bare)
    if family is OPENAI:
        return family.adapter().download(rest, download_root, revision)
    name = f"{bare}@{revision}" if revision else bare
    if (found := weights_on_disk(name)) is not None:
        return Found(found.path, "on disk")
    if hub_offline():
        raise ModelLoadError(f"{name} is not in the Hugging Face hub cache and HF_HUB_OFFLINE is set; "
                             "fetch it where the hub can be reached (HF_HUB_OFFLINE unset).")
    check_hub(name)
    load(name, device="cpu", precision="fp32", trust_checkpoint=trust_checkpoint)
    found = weights_on_disk(name)
    return Found(found.path if found else Path("the library's cache"), "hub")


def load(
    name: str = DEFAULT_MODEL,
    *,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    download_root: str | None = None,
    revision: str | None = None,
    trust_checkpoint: bool = False,
) -> Model:
    """Load a model by name, or OpenAI CLIP from a local checkpoint.

    Names with a family prefix go to that family's adapter (registry.py): `open_clip:ARCH[:TAG]`
    (with `weights`, a checkpoint for ARCH) and `hf:REPO_ID` or `hf:DIR`. For other names `weights`
    is a path to an OpenAI JIT archive, a plain CLIP state dict or an open_clip-format safetensors
    file; it wins over `name`. A name's weights come from the first source that works (the clip
    package's cache and URL, the Hugging Face hub copy: see weights.py); `download_root` is the clip
    package's cache folder. Raises ModelLoadError with what to do when the weights cannot be had.

    A hub name takes a revision to pin (`NAME@REVISION`, or `revision`); `model.provenance` names the file
    loaded, its commit and SHA-256. No file runs code: pickles are read as tensors only, and TorchScript
    archives open only when known by SHA-256 (OpenAI's, the bundled ones); others are refused with an
    UnsafeCheckpointError (trust.py). `trust_checkpoint=True` lifts that, and is unsafe: the file's code runs.

    >>> model = load("shapes-demo")                                     # doctest: +SKIP
    >>> model = load(weights="ViT-B-32.pt")                             # doctest: +SKIP
    >>> model = load("open_clip:ViT-B-16-SigLIP-256:webli")             # doctest: +SKIP
    >>> model = load("hf:openai/clip-vit-base-patch32@main")            # doctest: +SKIP
    """
    device = _device(device)
    precision = _precision(precision, device)
    name, revision = split_revision(name, revision)
    family, rest = resolve(name)
    options = {"download_root": download_root} if family is OPENAI else {}
    model = family.adapter().load(rest, weights=weights, device=device, precision=precision, revision=revision,
                                  trust=trust_checkpoint, **options)
    if precision == "int8":
        int8_image_tower(model.net)
    return model


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: fp16 on CUDA (the weights `clip.load` gives there); on a CPU, bf16 autocast where the CPU
    has bf16 arithmetic (`native_bf16`), else fp32."""
    if precision not in PRECISIONS:
        raise SettingsError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    return "bf16" if native_bf16() else "fp32"


def native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16, AMX or Arm BF16), from /proc/cpuinfo's
    flags; where there is no /proc/cpuinfo, oneDNN's own check. Elsewhere bf16 is emulated, several times
    slower than fp32 (oneDNN's check alone says yes for any AVX-512 CPU)."""
    flags = cpu_flags()
    if flags is None:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return any(flag in flags for flag in BF16_FLAGS)


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags as /proc/cpuinfo lists them (x86 "flags", Arm "Features"); None without the file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    lines = [value for key, _, value in (line.partition(":") for line in text.splitlines())
             if key.strip() in ("flags", "Features")]
    return frozenset(lines[0].split()) if lines else frozenset()


def _precision(precision: str, device: torch.device) -> str:
    precision = resolve_precision(precision, device)
    if precision == "fp16" and device.type != "cuda":
        raise SettingsError("fp16 runs on CUDA only; use fp32, int8 or bf16 on the CPU.")
    if precision == "int8" and device.type != "cpu":
        raise SettingsError("int8 runs on CPUs only; use fp16 or fp32 on CUDA.")
    if precision == "bf16" and device.type == "cpu" and not native_bf16():
        raise SettingsError("This CPU has no bf16 arithmetic (no avx512_bf16 or amx_bf16 flag), so bf16 would be "
                            "emulated, several times slower than fp32; use fp32 or int8.")
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
