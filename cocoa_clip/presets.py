"""Ready-made foils: class lists to contrast a corpus caption with, as in the paper (section 4.3)."""
from __future__ import annotations

from functools import cache
from pathlib import Path

from .errors import QuestionError

DEFAULT_TEMPLATE = "This is a photo of a {}"  # the paper's caption form
_DATA = Path(__file__).parent / "data"
FOIL_PRESETS = {"cifar100": "cifar100_classes.txt", "imagenet": "imagenet_classes.txt"}


@cache
def class_names(preset: str) -> tuple[str, ...]:
    """The class names of a preset ("cifar100": 100 names, "imagenet": 1000 names)."""
    if preset not in FOIL_PRESETS:
        raise QuestionError(f"Unknown foil preset {preset!r}; choose one of {', '.join(FOIL_PRESETS)}.")
    lines = (_DATA / FOIL_PRESETS[preset]).read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


def preset_foil(preset: str, corpus: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The preset's classes minus those named in the corpus (the paper's "99 other CIFAR-100 classes")."""
    named = {caption.strip().lower() for caption in corpus}
    return tuple(name for name in class_names(preset) if name.lower() not in named)
