"""The Hugging Face hub, as every family reaches it: reachability in seconds, the offline switch, its cache."""
from __future__ import annotations

import socket
import urllib.parse
import urllib.request

from ..errors import AUDIENCE, ModelLoadError, spelled


def reachable(url: str, timeout: float = 5.0) -> None:
    """Raise OSError unless a TCP connection to the URL's host (or its proxy) opens within `timeout` seconds."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(f"cannot reach {parts.hostname} ({error.strerror or error})") from error


def check_hub(name: str) -> None:
    """Refuse in seconds when model `name` must come from the Hugging Face hub and the hub cannot be reached
    (the hub client alone retries for about a minute). With HF_HUB_OFFLINE the client itself fails at once."""
    if hub_offline():
        return
    from huggingface_hub import constants

    try:
        reachable(constants.ENDPOINT)
    except OSError as error:
        elsewhere = "" if AUDIENCE.get() == "download" else spelled(
            f' (or run cocoa_clip.models.download("{name}") where you can)', f" (or run `cocoa-clip download {name}` "
            "where you can)")
        raise ModelLoadError(f"Could not get {name}: {error}. Connect to the internet once{elsewhere}, or point "
                             "HF_ENDPOINT at a mirror.") from error


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cached(repo: str, filenames: tuple[str, ...], revision: str | None = None) -> str | None:
    """The path of the first of `filenames` that the Hugging Face hub cache holds for `repo` (at `revision`, else
    its main branch), or None (no network)."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return None
    for filename in filenames:
        path = try_to_load_from_cache(repo, filename, cache_dir=constants.HF_HUB_CACHE, revision=revision)
        if isinstance(path, str):
            return path
    return None


def hub_first(repo: str, filenames: tuple[str, ...], revision: str | None, cached_only: bool = False) -> str:
    """Fetch (or find in the hub cache) the first of `filenames` that `repo` has at `revision`; its local path.

    Raises FileNotFoundError when it has none of them.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    absent = LocalEntryNotFoundError if cached_only else RemoteEntryNotFoundError
    for filename in filenames:
        try:
            return hf_hub_download(repo, filename, revision=revision, local_files_only=cached_only,
                                   cache_dir=constants.HF_HUB_CACHE)
        except absent:  # this file is not there: the next one may be
            continue
    raise FileNotFoundError(f"{repo}: {'not in the hub cache' if cached_only else 'no weights file on the hub'}")
