"""The exceptions cocoa_clip raises for bad input: one sentence a person can act on."""
from __future__ import annotations

import contextlib
import contextvars
import errno
import os
from collections.abc import Iterator

# Who reads the messages raised in this context, so that advice names what they would type: "python" (the
# library's callers: the default), "cli" (a command line: cocoa-clip, app.py) or "download" (`cocoa-clip download`,
# which must not advise running itself). A surface sets it around its work and resets it after.
AUDIENCE: contextvars.ContextVar[str] = contextvars.ContextVar("audience", default="python")


def spelled(python: str, cli: str) -> str:
    """A step of advice as its reader types it: a Python call for the library, flags and commands otherwise."""
    return python if AUDIENCE.get() == "python" else cli


class CocoaError(ValueError):
    """Base class: the message is meant for the user, not a traceback."""


class ImageError(CocoaError):
    """An image could not be read, or is too large to read safely."""


class ModelLoadError(CocoaError):
    """CLIP weights could not be found, downloaded or read. `tried`: the weight sources tried, by name."""

    def __init__(self, message: str, *, tried: tuple[str, ...] = ()):
        super().__init__(message)
        self.tried = tuple(tried)


class UnsafeCheckpointError(ModelLoadError):
    """A weights file would run code when loaded (a pickle with more than tensors, an unknown TorchScript archive)."""


class QuestionError(CocoaError):
    """Corpus, foil, template or target do not make a question."""


class SettingsError(CocoaError):
    """A method setting (masks, seed, device, ...) is out of range."""


class Cancelled(CocoaError):
    """The caller's `should_stop` said stop (its client left, or the server is shutting down): no answer."""

    def __init__(self, message: str = "The run was stopped before it finished; ask again for an answer."):
        super().__init__(message)


def shown(value: object) -> str:
    """A refused value as a message shows it: a whole number with thousands separators, like the limits beside it
    ("from 1 to 100,000; got 1,000,000,000"), anything else as Python writes it."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else repr(value)


class DiskFullError(CocoaError):
    """A file could not be written because its disk is full (ENOSPC)."""


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Around the writing of `path`: a full disk becomes one sentence that names the file (the OSError does not)."""
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise DiskFullError(f"The disk is full: {os.fspath(path)} could not be written; free some space, "
                            "or write somewhere else.") from error


def check_seed(seed: object) -> None:
    """Refuse a seed that is not a whole number from 0 to 2**63 - 1 (what torch's generators take)."""
    if isinstance(seed, bool) or not (isinstance(seed, int) and 0 <= seed < 2 ** 63):
        raise SettingsError(f"The seed must be a whole number from 0 to 2**63 - 1; got {seed!r}.")
