"""Explanation targets: what scalar of the image embedding an attribution explains.

Every target of the paper is a linear functional of the (unit-normalised) image
embedding z = f(x)/|f(x)| (Proposition 3.3): score(x) = <z, d> for a direction d.

=======================  ==============================================  ===============
target                   direction d (cosine similarity)                 paper's name
=======================  ==============================================  ===============
cocoa                    mean_c z(c) - mean_f z(f)                       COCOA
corpus                   mean_c z(c)                                     corpus
label-free               z(x), the explicand itself                      label-free/RELAX
contrastive-label-free   z(x) - mean_f z(f)                              contrastive label-free
=======================  ==============================================  ===============

With `similarity="dot"` the embeddings are not normalised (paper, appendix M).
Corpus and foil may mix captions (wrapped by a template) and images.
"""
from __future__ import annotations

import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch

from ..errors import QuestionError
from ..models import Model, eval_mode
from .images import ImageSource, frame, load_image
from .presets import DEFAULT_TEMPLATE, PRESET_NAMES, preset_foil, preset_note

TARGETS = ("cocoa", "corpus", "label-free", "contrastive-label-free")
SIMILARITIES = ("cosine", "dot")
_NEEDS_CORPUS = ("cocoa", "corpus")
_NEEDS_FOIL = ("cocoa", "contrastive-label-free")
SAME_NOTE = ("The corpus and the foil are the same to the model, so the question compares a caption with itself: "
             "the score is zero whatever the picture shows.")


@dataclass(frozen=True)
class Question:
    """What to explain: "why does this image look like the corpus rather than the foil?"

    >>> Question(corpus=["dog"], foil=["cat"]).describe()
    '"dog" rather than "cat"'
    """

    corpus: Sequence[str] = ()
    foil: Sequence[str] = ()
    foil_preset: str | None = None  # "cifar100" or "imagenet": the preset's classes minus the corpus
    corpus_images: Sequence[ImageSource] = ()
    foil_images: Sequence[ImageSource] = ()
    target: str = "cocoa"
    template: str = DEFAULT_TEMPLATE  # "{}" uses captions as written
    similarity: str = "cosine"

    def __post_init__(self) -> None:
        for name in ("corpus", "foil", "corpus_images", "foil_images"):
            value = getattr(self, name)
            single = isinstance(value, (str, bytes)) or not isinstance(value, Sequence)  # one caption or picture
            value = (value,) if single else tuple(value)
            object.__setattr__(self, name, value)
        for name in ("corpus", "foil"):
            captions = tuple(clean_caption(c, name, i) for i, c in enumerate(getattr(self, name), 1))
            object.__setattr__(self, name, captions)
        if self.target not in TARGETS:
            raise QuestionError(f"Unknown target {self.target!r}; choose one of {', '.join(TARGETS)}.")
        if self.similarity not in SIMILARITIES:
            raise QuestionError(f"Unknown similarity {self.similarity!r}; choose cosine or dot.")
        _check_template(self.template)
        if self.target in _NEEDS_CORPUS and not (self.corpus or self.corpus_images):
            raise QuestionError(f"The {self.target} target needs a corpus: at least one caption or corpus image.")
        if self.target in _NEEDS_FOIL and not (self.foil or self.foil_images or self.foil_preset):
            raise QuestionError(f"The {self.target} target needs a foil: captions, a foil preset or foil images.")
        if self.foil_preset is not None:
            preset_foil(self.foil_preset)  # unknown presets fail here, not mid-run

    @property
    def foil_captions(self) -> tuple[str, ...]:
        """Foil captions before templating: those given, then the preset's classes not in the corpus."""
        preset = preset_foil(self.foil_preset, self.corpus, self.template) if self.foil_preset else ()
        return tuple(dict.fromkeys(self.foil + preset))

    def swapped(self) -> Question:
        """The reverse question: the foil becomes the corpus. Needs explicit foil captions or images."""
        if self.foil_preset:
            raise QuestionError("A question with a foil preset cannot be swapped; give the foil as captions.")
        if self.target != "cocoa":
            raise QuestionError("Only COCOA questions (corpus rather than foil) can be swapped.")
        return Question(**{**_as_dict(self), "corpus": self.foil, "foil": self.corpus,
                           "corpus_images": self.foil_images, "foil_images": self.corpus_images})

    def describe(self) -> str:
        """A short human label, e.g. '"dog" rather than "cat"'."""
        corpus = _listing(self.corpus, self.corpus_images)
        preset = f"the {PRESET_NAMES[self.foil_preset]} classes" if self.foil_preset else ""
        foil = _listing(self.foil, self.foil_images) if not self.foil_preset else preset
        if (self.foil or self.foil_images) and self.foil_preset:
            foil = f"{_listing(self.foil, self.foil_images)} and {preset}"
        return {
            "cocoa": f"{corpus} rather than {foil}",
            "corpus": f"{corpus}",
            "label-free": "the image itself",
            "contrastive-label-free": f"the image itself rather than {foil}",
        }[self.target]


@dataclass(frozen=True)
class Target:
    """A resolved target, callable on image embeddings: (B, D) -> (B,) scores."""

    direction: torch.Tensor  # (D,) float32, on the model's device
    normalize: bool  # True for cosine similarity: embeddings are unit-normalised first
    question: Question
    notes: tuple[str, ...] = field(default=())

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Scores in float32, or float64 when given float64 embeddings."""
        if embeddings.dtype != torch.float64:
            embeddings = embeddings.float()
        if self.normalize:
            embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        return embeddings @ self.direction.to(embeddings.dtype)


def resolve(model: Model, question: Question, image_embedding: torch.Tensor | None, framing: str = "pad") -> Target:
    """Turn a question into a direction in the model's embedding space.

    image_embedding: (D,) raw embedding of the explicand; only the label-free targets use it.
    """
    cosine = question.similarity == "cosine"
    notes: list[str] = [note] if (note := script_note([*question.corpus, *question.foil])) else []

    def mean_of(side: str) -> torch.Tensor:
        embeddings = members(model, question, side, framing, notes)
        if cosine:
            embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        return embeddings.mean(0)

    if question.target in _NEEDS_CORPUS:
        direction = mean_of("corpus")
    else:
        direction = image_embedding.float() / (image_embedding.norm() if cosine else 1.0)
    if question.target in _NEEDS_FOIL:
        direction = direction - mean_of("foil")
        if question.target == "cocoa" and float(direction.norm()) <= 1e-6:  # cosine directions have norm <= 2
            notes.append(SAME_NOTE)
        if question.foil_preset:
            notes.append(preset_note(question.foil_preset, question.corpus, question.template))
    return Target(direction=direction, normalize=cosine, question=question, notes=tuple(notes))


def members(model: Model, question: Question, side: str, framing: str = "pad",
            notes: list[str] | None = None) -> torch.Tensor:
    """Raw (K, D) embeddings of the question's corpus or foil ("corpus" | "foil"): its captions,
    templated (foil: the preset's classes too), then its images."""
    if side == "corpus":
        captions, images = question.corpus, question.corpus_images
    else:
        captions, images = question.foil_captions, question.foil_images
    return embed(model, [question.template.format(c) for c in captions], images, framing, notes)


def embed(model: Model, captions: Sequence[str], images: Sequence[ImageSource], framing: str,
          notes: list[str] | None = None) -> torch.Tensor:
    """Embed captions (as written) and images into one (K, D) float32 tensor, raw (not normalised)."""
    parts = []
    if captions:
        texts, text_notes = model.encode_texts(list(captions))
        parts.append(texts)
        if notes is not None:
            notes.extend(text_notes)
    if images:
        canvases = torch.stack([frame(load_image(image), model.preprocessing, framing).canvas for image in images])
        with eval_mode(model):
            parts.append(model.encode_images(canvases.to(model.device)))
    return torch.cat(parts)


def script_note(captions: Sequence[str]) -> str | None:
    """One note for the captions written mostly in a script other than Latin (or in emoji), or None.

    CLIP and its kin learnt from English captions: such a caption is accepted, but its answer may mean little.
    """
    foreign = [caption for caption in captions if _mostly_non_latin(caption)]
    if not foreign:
        return None
    listed = ", ".join(repr(caption) for caption in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    return (f"CLIP reads English: {listed} {'is' if len(foreign) == 1 else 'are'} mostly in another script, which "
            "a model trained on English captions reads poorly, so the answer may mean little; try English words.")


def _mostly_non_latin(caption: str) -> bool:
    """Fewer than half of the caption's letters and pictographs (emoji) are Latin letters; digits, punctuation
    and spaces do not count."""
    marks = [c for c in caption if unicodedata.category(c)[0] == "L" or unicodedata.category(c) == "So"]
    latin = sum(unicodedata.name(c, "").startswith("LATIN") for c in marks)
    return latin < len(marks) / 2


def clean_caption(caption: object, where: str, index: int) -> str:
    """A caption with its white space tidied; refuses non-text and empty captions, naming which one."""
    if not isinstance(caption, str):
        raise QuestionError(f"{where.capitalize()} caption {index} is a {type(caption).__name__}, not text.")
    caption = " ".join(caption.split())
    if not caption:
        raise QuestionError(f"{where.capitalize()} caption {index} is empty; write what to look for, e.g. 'dog'.")
    return caption


def _check_template(template: str) -> None:
    """Exactly one plain `{}` once str.format's rules are applied: '{{}}' is a literal '{}', not a field."""
    advice = "e.g. 'This is a photo of a {}', or '{}' for captions as written"
    if not isinstance(template, str):
        raise QuestionError(f"The template must be text with {{}} where the caption goes ({advice}).")
    try:
        fields = [part[1:] for part in string.Formatter().parse(template) if part[1] is not None]
    except ValueError:
        fields = None
    if fields is None or any(field != ("", "", None) for field in fields):
        raise QuestionError(f"The template has stray braces ({advice}).")
    if len(fields) != 1:
        doubled = " ('{{}}' is a literal '{}', not a place for the caption)" if "{{" in template else ""
        raise QuestionError(f"The template must contain {{}} exactly once, where the caption goes{doubled} "
                            f"({advice}).")


def _listing(captions: Sequence[str], images: Sequence[ImageSource]) -> str:
    parts = [f'"{c}"' for c in captions[:3]] + (["..."] if len(captions) > 3 else [])
    if images:
        parts.append(f"{len(images)} image{'s' if len(images) > 1 else ''}")
    return " / ".join(parts)


def _as_dict(question: Question) -> dict:
    return {f.name: getattr(question, f.name) for f in fields(question)}
