"""Which weights files are opened how: tensors only, never a file's own code, unless the file is known or trusted.

=============================  ===============================================================
file                           what happens
=============================  ===============================================================
.safetensors                   read by safetensors (tensors only, no code at all)
pickle (.pt, .bin, .pth)       torch.load(weights_only=True): tensors and plain containers only;
                               anything else is refused in a sentence
TorchScript archive (a zip     opened by torch.jit.load (which runs the archive's code) only when
with code/ and constants.pkl)  its SHA-256 is one of OpenAI's checkpoints or a bundled model's;
                               otherwise refused in a sentence
any of them, trusted           `--trust-checkpoint` / trust_checkpoint=True: pickles unrestricted,
                               TorchScript opened whatever its hash (unsafe: the file's code runs)
=============================  ===============================================================

Reading a TorchScript archive's tensors without its code is not attempted: its tensors are reached
through a pickle of TorchScript objects whose `__setstate__` is code, so a reader that skips the code
would be a second, hand-written unpickler to keep safe. The archives people use are OpenAI's own,
which are known by hash; the rest can be converted once, by their owner, to safetensors.
"""
from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from ..errors import UnsafeCheckpointError, spelled
from .encoder import Provenance
from .families.openai_package import clip_package

# The bundled checkpoints are TorchScript archives (scripts/train_shapes_demo.py); pinned so they open as OpenAI's do.
BUNDLED_SHA256 = {"shapes-demo": "336e9d6cd49304a69d0b9097af48e9c88818a987238e458f072621a138a211be"}
TRUST_HELP = ("UNSAFE: also open weights files that can run code (pickles with more than tensors, TorchScript "
              "archives that are not OpenAI's); only for files whose maker you trust")


def known_archives() -> set[str]:
    """SHA-256 of the TorchScript archives that may be opened: OpenAI's (the `clip` package's URLs carry them as
    their second-last part) and the bundled models'."""
    return {url.split("/")[-2] for url in clip_package().clip._MODELS.values()} | set(BUNDLED_SHA256.values())


def sha256(path: str | Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_torchscript(path: str | Path) -> bool:
    """Whether the file is a TorchScript archive (a zip with constants.pkl, as torch's own check reads it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_state_dict(path: str | Path, *, trust: bool, digest: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (safetensors, pickle or TorchScript archive), read as the table above says.

    digest: the file's SHA-256 (computed once per load, by the caller, which also reports it).
    Raises UnsafeCheckpointError when the file would need to run code and is neither known nor trusted.
    """
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if is_torchscript(path):
        if not trust and digest not in known_archives():
            raise refusal(path, "a TorchScript archive that is not one of OpenAI's checkpoints")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:  # weights_only met something other than tensors and containers
        raise refusal(path, "a pickle that holds more than tensors") from error


def refusal(path: object, kind: str, trust_helps: bool = True) -> UnsafeCheckpointError:
    """The one sentence that refuses a file whose loading could run code, and says what to do (the opt-in as its
    reader types it: errors.AUDIENCE)."""
    opt_in = spelled("pass trust_checkpoint=True", "pass --trust-checkpoint")
    return UnsafeCheckpointError(
        f"Refused {path}: it is {kind}, and loading it could run code, so convert it to safetensors where you got it"
        + (f", or {opt_in} only if you trust whoever made it, as its code then runs." if trust_helps else ".")
    )


def refused_by_torch(error: BaseException) -> bool:
    """Whether a library's load failed because torch.load(weights_only=True) would not run a file's code
    (a pickle with more than tensors, or a TorchScript archive), anywhere in the error's chain."""
    while error is not None:
        if isinstance(error, pickle.UnpicklingError) or "with TorchScript archives" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def commit_of(path: str | Path) -> str | None:
    """The hub commit a file of the Hugging Face cache belongs to (…/snapshots/COMMIT/file), or None."""
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def provenance(source: str, path: str | Path | None, *, revision: str | None = None,
               digest: str | None = None) -> Provenance:
    """What was loaded: `source` (where from), the file, the hub revision asked for and the commit it was read
    from, and the file's SHA-256 (computed here unless the caller has it)."""
    if path is None or not Path(path).is_file():
        return Provenance(source=source, file=str(path) if path else None, revision=revision)
    return Provenance(source=source, file=str(path), revision=revision, commit=commit_of(path),
                      sha256=digest or sha256(path))
