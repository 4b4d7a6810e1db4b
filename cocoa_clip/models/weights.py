"""Where OpenAI's CLIP weights come from: the sources tried, in order, until one works.

    1. the `clip` package's cache file (~/.cache/clip/ViT-B-32.pt), when its SHA-256 matches the
       one in the package's URL;
    2. the Hugging Face hub copy already in the hub's cache (no network);
    3. the `clip` package's URL (openaipublic.azureedge.net: reported dead since January 2025);
    4. the Hugging Face hub copy, downloaded into the hub's cache (honours HF_HOME, HF_ENDPOINT
       for a mirror, HF_HUB_OFFLINE).

A revision (`ViT-B/32@REVISION`, or `revision=`) pins the hub copy: then only the two hub sources
are tried, at that revision (the clip package's file has no revisions; its SHA-256 pins it).

(`--weights PATH` comes before all of them; `load` handles it.) The hub copies are the
same OpenAI weights in open_clip's format, what open_clip's own `openai` tags download: their
state dict has the keys and shapes of OpenAI's checkpoint, so `clip.model.build_model` reads
them unchanged. The two local caches are looked at before any network, so a machine that has
the weights never waits on a dead host. Each source tried is logged in one line.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import AUDIENCE, ModelLoadError, spelled
from .families.openai_package import clip_package
from .hub import hub_first, hub_offline, reachable
from .registry import BUNDLED
from .trust import sha256

log = logging.getLogger(__name__)

URL_TIMEOUT_S = 20.0
# open_clip's file names: the safetensors file first (no pickle), the PyTorch one where only it exists.
HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# The hub repository of each OpenAI model (open_clip's pretrained.py, tag "openai"). No revision is pinned by
# default (the repositories' commit hashes could not be looked up from here); a user pins one with NAME@REVISION.
HUB_REPOS = {
    "RN50": "timm/resnet50_clip.openai",
    "RN101": "timm/resnet101_clip.openai",
    "RN50x4": "timm/resnet50x4_clip.openai",
    "RN50x16": "timm/resnet50x16_clip.openai",
    "RN50x64": "timm/resnet50x64_clip.openai",
    "ViT-B/32": "timm/vit_base_patch32_clip_224.openai",
    "ViT-B/16": "timm/vit_base_patch16_clip_224.openai",
    "ViT-L/14": "timm/vit_large_patch14_clip_224.openai",
    "ViT-L/14@336px": "timm/vit_large_patch14_clip_336.openai",
}


@dataclass(frozen=True)
class Found:
    """A weights file on disk, which source gave it ("clip cache", "hub cache", "clip URL", "hub"), the hub
    revision asked for, and its SHA-256 where the source has checked it already."""

    path: Path
    source: str
    revision: str | None = None
    sha256: str | None = None


class _Stderr(logging.Handler):
    """Writes to whatever sys.stderr is at the time (so redirections and test captures see it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def report_sources(enabled: bool = True) -> None:
    """Print each source tried on stderr, one line each, or stop (the CLI and the app call this; libraries stay
    quiet)."""
    for handler in [h for h in log.handlers if isinstance(h, _Stderr)]:
        log.removeHandler(handler)
    if enabled:
        log.addHandler(_Stderr())
        log.setLevel(logging.INFO)


def default_root() -> Path:
    """The `clip` package's own download folder."""
    return Path(os.path.expanduser("~/.cache/clip"))


def package_url(name: str) -> str:
    return clip_package().clip._MODELS[name]


def cache_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where the `clip` package keeps (and looks for) the checkpoint of `name`."""
    return Path(root or default_root()) / os.path.basename(package_url(name))


def expected_sha256(name: str) -> str:
    """The checksum the `clip` package expects: the folder name in its URL."""
    return package_url(name).split("/")[-2]


def find(name: str, root: str | os.PathLike | None = None, *, network: bool = True,
         revision: str | None = None) -> Found:
    """The weights of OpenAI model `name` (a `clip.available_models()` name), from the first source that works.

    network=False looks at the two caches only; revision pins the hub copy (and skips the clip package's
    sources). Raises ModelLoadError listing every source tried and what to do, when none works.
    """
    tried: dict[str, str] = {}  # source -> why it failed
    for source, attempt in _sources(name, root, network, revision):
        try:
            path = attempt()
        except Exception as error:  # a dead URL, DNS, a missing hub entry, a bad checksum: try the next source
            tried[source] = _reason(error)
            log.info("weights for %s: %s: %s", name, source, tried[source])
            continue
        log.info("weights for %s: %s: %s", name, source, path)
        checked = expected_sha256(name) if source in ("clip cache", "clip URL") else None
        return Found(Path(path), source, revision, checked)
    raise ModelLoadError(_advice(name, root, tried), tried=tuple(tried))


def on_disk(name: str, root: str | os.PathLike | None = None, revision: str | None = None) -> Found | None:
    """The weights of `name` if a cache holds them (no network), else None."""
    try:
        return find(name, root, network=False, revision=revision)
    except ModelLoadError:
        return None


def _sources(name: str, root: str | os.PathLike | None, network: bool,
             revision: str | None) -> list[tuple[str, object]]:
    pinned = revision is not None  # the clip package's file has no revisions
    sources = [] if pinned else [("clip cache", lambda: _from_clip_cache(name, root))]
    sources.append(("hub cache", lambda: _from_hub(name, True, revision)))
    if not network:
        return sources
    if hub_offline():
        sources.append(("network", _refuse_offline))
    else:
        sources += [] if pinned else [("clip URL", lambda: _from_url(name, root))]
        sources.append(("hub", lambda: _from_hub(name, False, revision)))
    return sources


def _from_clip_cache(name: str, root: str | os.PathLike | None) -> Path:
    path = cache_path(name, root)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    if sha256(path) != expected_sha256(name):
        raise ValueError(f"{path} has the wrong SHA-256, not used")
    return path


def _from_url(name: str, root: str | os.PathLike | None) -> Path:
    """Download the package's URL into its cache, checking the SHA-256 before the file takes its name."""
    target = cache_path(name, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with urllib.request.urlopen(package_url(name), timeout=URL_TIMEOUT_S) as response, \
            tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as part:
        try:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                part.write(chunk)
        except BaseException:
            os.unlink(part.name)
            raise
    if digest.hexdigest() != expected_sha256(name):
        os.unlink(part.name)
        raise ValueError("the download's SHA-256 does not match")
    os.replace(part.name, target)
    return target


def _from_hub(name: str, cached_only: bool, revision: str | None) -> Path:
    """The hub copy through huggingface_hub (its cache, HF_ENDPOINT and HF_HUB_OFFLINE), safetensors first."""
    from huggingface_hub import constants

    repo = HUB_REPOS.get(name)
    if repo is None:
        raise LookupError("no hub copy is known for this model")
    if not cached_only:
        reachable(constants.ENDPOINT)  # fail in seconds offline, not after the hub client's retries
    return Path(hub_first(repo, HUB_FILES, revision, cached_only))


def _refuse_offline() -> Path:
    raise ConnectionError("skipped: HF_HUB_OFFLINE is set")


def _reason(error: BaseException) -> str:
    """One line about why a source failed (a hub error's first line; never a traceback)."""
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        error = error.reason if isinstance(error.reason, BaseException) else error  # DNS, refused, timed out
    text = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
    return text or type(error).__name__


def _advice(name: str, root: str | os.PathLike | None, tried: dict[str, str]) -> str:
    """What failed, and what to do about it in the reader's terms (errors.AUDIENCE): a download command never
    advises downloading, and the library's callers get Python rather than flags."""
    bundled = next((n for n, p in BUNDLED.items() if p.is_file()), None)
    mirror = f"point HF_ENDPOINT at a Hugging Face mirror that has {HUB_REPOS.get(name, 'a copy')}"
    if AUDIENCE.get() == "download":
        steps = ["connect this machine to the internet (with HF_HUB_OFFLINE unset)",
                 f"copy the OpenAI checkpoint from a machine that has it to {cache_path(name, root)}", mirror]
    else:
        steps = [spelled(f'run cocoa_clip.models.download("{name}") on a machine with internet',
                         f"run `cocoa-clip download {name}` on a machine with internet"),
                 f"place the OpenAI checkpoint at {cache_path(name, root)}",
                 spelled("pass weights=PATH", "pass --weights PATH"), mirror]
        if bundled:
            steps.append(spelled(f'try the library offline with the bundled model: cc.load("{bundled}")',
                                 f"try the tool offline with the bundled model: --model {bundled}"))
    reasons = "; ".join(f"{source} ({why})" for source, why in tried.items())
    return f"Could not get the {name} weights. Tried: {reasons}. To fix it: {', or '.join(steps)}."
