"""CLIP's own answer to "is this X or Y?": the caption its zero-shot head picks, and with what probability.

COCOA's score says how much more the picture looks like the corpus than the foil, in cosine similarity; the
model's own classifier answers the question in words: "rocket 87%, woman 13%". It is the head the probability
measure of insertion and deletion uses (evaluate.CorpusProbability): a softmax of the model's logits (its logit
scale times cosine similarity; a SigLIP bias adds the same to every logit and cancels) over the corpus (its
captions as one class, as CLIP's prompt ensembles) and each foil class.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import QuestionError, SettingsError
from ..models import Model
from .evaluate import measure_score
from .targets import Question

SHOWN_FOILS = 3  # foil classes named (the most probable); a preset's other classes are summed up


@dataclass(frozen=True)
class ZeroShot:
    """The model's zero-shot answer: class names and probabilities, the most probable first.

    others: how many foil classes are not named; others_probability: their total.
    """

    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    others: int = 0
    others_probability: float = 0.0

    @property
    def pick(self) -> str:
        """The class the model picks."""
        return self.labels[0]

    @property
    def text(self) -> str:
        """The answer in words, e.g. "rocket 87%, woman 13%"."""
        parts = [f"{label} {percent(p)}" for label, p in zip(self.labels, self.probabilities, strict=True)]
        if self.others:
            classes = f"{self.others} other class{'es' if self.others > 1 else ''}"
            parts.append(f"{classes} {percent(self.others_probability)}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"text": self.text, "pick": self.pick, "labels": list(self.labels),
                "probabilities": [round(p, 4) for p in self.probabilities], "others": self.others,
                "others_probability": round(self.others_probability, 4)}


def percent(probability: float) -> str:
    """A probability as a whole percentage, never rounded to a certainty it does not have ("<1%", ">99%")."""
    text = f"{probability:.0%}"
    if text == "0%" and probability > 0:
        return "<1%"
    return ">99%" if text == "100%" and probability < 1 else text


def zero_shot(model: Model, question: Question, image_embedding: torch.Tensor, framing: str = "pad") -> ZeroShot | None:
    """The model's zero-shot answer for a picture's raw (D,) embedding; None when there is nothing to choose
    between (no corpus or no foil) or the model has no zero-shot head (e.g. a wrapped image encoder)."""
    try:
        head = measure_score(model, question, "probability", framing)
    except (QuestionError, SettingsError):  # the two things it checks: a corpus and a foil, and a logit scale
        return None
    probabilities = head.distribution(image_embedding[None].to(model.device))[0].tolist()
    labels = class_labels(question)
    corpus, foils = probabilities[0], sorted(zip(probabilities[1:], labels[1:], strict=True), reverse=True)
    shown = sorted([(corpus, labels[0]), *foils[:SHOWN_FOILS]], reverse=True)
    rest = [p for p, _ in foils[SHOWN_FOILS:]]
    return ZeroShot(labels=tuple(label for _, label in shown), probabilities=tuple(p for p, _ in shown),
                    others=len(rest), others_probability=float(sum(rest)))


def class_labels(question: Question) -> list[str]:
    """Names of the head's classes in its order: the corpus (its captions as one class), then each foil class."""
    corpus = " / ".join(question.corpus) or "the corpus pictures"
    pictures = [f"foil picture {index}" for index in range(1, len(question.foil_images) + 1)]
    return [corpus, *question.foil_captions, *pictures]
