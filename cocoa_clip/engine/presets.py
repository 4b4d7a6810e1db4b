"""Ready-made foils: class lists to contrast a corpus caption with, as in the paper (section 4.3)."""
from __future__ import annotations

from functools import cache
from pathlib import Path

from ..errors import QuestionError

DEFAULT_TEMPLATE = "This is a photo of a {}"  # the paper's caption form
_DATA = Path(__file__).parent / "data"
FOIL_PRESETS = {"cifar100": "cifar100_classes.txt", "imagenet": "imagenet_classes.txt"}
PRESET_NAMES = {"cifar100": "CIFAR-100", "imagenet": "ImageNet-1k"}  # how the README, CLI and app spell them
_ARTICLES = ("a ", "an ", "the ")


@cache
def class_names(preset: str) -> tuple[str, ...]:
    """The class names of a preset ("cifar100": 100 names, "imagenet": 1000 names)."""
    if preset not in FOIL_PRESETS:
        raise QuestionError(f"Unknown foil preset {preset!r}; choose one of {', '.join(FOIL_PRESETS)}.")
    lines = (_DATA / FOIL_PRESETS[preset]).read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


def preset_foil(preset: str, corpus: tuple[str, ...] = (), template: str = DEFAULT_TEMPLATE) -> tuple[str, ...]:
    """The preset's classes minus those named in the corpus (the paper's "99 other CIFAR-100 classes").

    A class is named when a corpus caption matches it after `template` (and the paper's template)
    is removed, folding case, underscores, articles and simple plurals: "a bee", "Bees" and
    "This is a photo of a bee" all name "bee"; "aquarium fish" names "aquarium_fish".
    """
    named = removed_classes(preset, corpus, template)
    return tuple(name for name in class_names(preset) if name not in named)


def removed_classes(preset: str, corpus: tuple[str, ...], template: str = DEFAULT_TEMPLATE) -> tuple[str, ...]:
    """The preset's classes that the corpus captions name (see `preset_foil`)."""
    named = set().union(*(_forms(caption, template) for caption in corpus))
    return tuple(name for name in class_names(preset) if _forms(name, "{}") & named)


def preset_note(preset: str, corpus: tuple[str, ...], template: str = DEFAULT_TEMPLATE) -> str:
    """One sentence saying which of the preset's classes left the foil because the corpus names them."""
    removed, label = removed_classes(preset, corpus, template), PRESET_NAMES[preset]
    if not removed:
        return f"No {label} class matches the corpus, so the foil keeps all {len(class_names(preset))} classes."
    listed = ", ".join(f'"{name}"' for name in removed)
    return f"The foil is the {label} classes without {listed}, which the corpus names."


def _forms(text: str, template: str) -> set[str]:
    """A caption folded for matching class names: template, case, underscores, articles and a plural removed."""
    text = " ".join(text.replace("_", " ").lower().split()).strip(" .!?")
    for form in dict.fromkeys((template, DEFAULT_TEMPLATE)):
        prefix, suffix = (" ".join(part.lower().split()) for part in form.split("{}", 1))
        if prefix + suffix and text.startswith(prefix) and text.endswith(suffix) \
                and len(text) > len(prefix) + len(suffix):
            text = text[len(prefix):len(text) - len(suffix)].strip()
            break
    while text.startswith(_ARTICLES):
        text = text.split(" ", 1)[1]
    forms = {text}
    if text.endswith("ies"):
        forms.add(text[:-3] + "y")
    if text.endswith("es"):
        forms.add(text[:-2])
    if text.endswith("s") and not text.endswith("ss"):
        forms.add(text[:-1])
    return forms
