"""The exceptions cocoa_clip raises for bad input: one sentence a person can act on."""
from __future__ import annotations


class CocoaError(ValueError):
    """Base class: the message is meant for the user, not a traceback."""


class ImageError(CocoaError):
    """An image could not be read, or is too large to read safely."""


class ModelLoadError(CocoaError):
    """CLIP weights could not be found, downloaded or read."""


class QuestionError(CocoaError):
    """Corpus, foil, template or target do not make a question."""


class SettingsError(CocoaError):
    """A method setting (masks, seed, device, ...) is out of range."""
