"""The exceptions cocoa_clip raises for bad input: one sentence a person can act on."""
from __future__ import annotations


class CocoaError(ValueError):
    """Base class: the message is meant for the user, not a traceback."""


class ImageError(CocoaError):
    """An image could not be read, or is too large to read safely."""


class ModelLoadError(CocoaError):
    """CLIP weights could not be found, downloaded or read. `tried`: the weight sources tried, by name."""

    def __init__(self, message: str, *, tried: tuple[str, ...] = ()):
        super().__init__(message)
        self.tried = tuple(tried)


class QuestionError(CocoaError):
    """Corpus, foil, template or target do not make a question."""


class SettingsError(CocoaError):
    """A method setting (masks, seed, device, ...) is out of range."""


class Cancelled(CocoaError):
    """The caller's `should_stop` said stop (its client left, or the server is shutting down): no answer."""

    def __init__(self, message: str = "The run was stopped before it finished; ask again for an answer."):
        super().__init__(message)


def check_seed(seed: object) -> None:
    """Refuse a seed that is not a whole number from 0 to 2**63 - 1 (what torch's generators take)."""
    if isinstance(seed, bool) or not (isinstance(seed, int) and 0 <= seed < 2 ** 63):
        raise SettingsError(f"The seed must be a whole number from 0 to 2**63 - 1; got {seed!r}.")
