"""Which caption where: a zero-shot parts map of several captions, from one RISE pass.

Each caption c_k is asked "c_k rather than the other captions" (COCOA). These targets share
their units and sum to zero over k for every picture,

    sum_k <z, t_k - mean_{j != k} t_j> = 0,

so their maps (RISE's regression or centred estimator, or gradients) compare pixel by pixel and
sum to zero as well. (The attention methods keep only positive parts, through a ReLU: their maps
compare pixel by pixel but do not sum to zero.) Each pixel goes to the caption whose map is
highest there; the margin over the runner-up says how clearly, and where it is below `tie_margin`
times the picture's largest margin, no caption wins the pixel ("no clear winner").
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import QuestionError, SettingsError
from ..models import Model, clip_text
from . import render
from .explain import Explanation, explain
from .images import ImageSource
from .presets import DEFAULT_TEMPLATE
from .rise import COMPARABLE, DEFAULT_ESTIMATOR
from .targets import Question, clean_caption

MAX_CAPTIONS = len(render.PALETTE)
UNDECIDED, UNSEEN = -1, -2  # labels of pixels no caption clearly wins, and of pixels the model never saw


@dataclass
class Comparison:
    """Where the picture looks most like each caption.

    answers: one Explanation per caption, for "caption k rather than the others".
    labels: (H, W) int, the index of the winning caption at each pixel; UNDECIDED (-1) where no caption
        leads by the tie margin (ties included, as on a featureless picture); UNSEEN (-2) where the model
        saw nothing (crop framing).
    margin: (H, W) float32 >= 0, the winning map's lead over the runner-up (attribution units).
    tie_margin: the share of the largest lead below which a pixel has no clear winner.
    """

    captions: tuple[str, ...]
    answers: list[Explanation]
    labels: np.ndarray
    margin: np.ndarray
    tie_margin: float = 0.0

    @property
    def shares(self) -> dict[str, float]:
        """Share of the whole picture's pixels each caption wins (0 to 1; unseen and undecided pixels go to none)."""
        return {caption: float(np.mean(self.labels == k)) for k, caption in enumerate(self.captions)}

    @property
    def decided_shares(self) -> dict[str, float]:
        """Share of the decided pixels (those with a clear winner) each caption wins; all 0 when none is decided."""
        decided = max(int(np.sum(self.labels >= 0)), 1)
        return {caption: float(np.sum(self.labels == k)) / decided for k, caption in enumerate(self.captions)}

    @property
    def undecided_share(self) -> float:
        """Share of the whole picture where the model saw the pixels but no caption clearly wins."""
        return float(np.mean(self.labels == UNDECIDED))

    def overlay(self, *, opacity: float = 0.6, legend: bool = True) -> Image.Image:
        """Each caption's region in its own colour (never one a caption names), faded where the lead is small,
        outlined; pixels with no clear winner uncoloured; with a legend strip below."""
        image = self.answers[0].image
        return render.label_overlay(image, self.labels, self.margin, self.captions if legend else None,
                                    opacity=opacity, undecided=f"no clear winner ({self.undecided_share:.0%})")


def compare(model: Model, image: ImageSource, captions: Sequence[str], *, template: str = DEFAULT_TEMPLATE,
            method: str = "rise", tie_margin: float = 0.1, **options: object) -> Comparison:
    """Split the picture among 2 to MAX_CAPTIONS captions: which one does each region look like most?

    tie_margin: pixels whose winner leads the runner-up by less than this share of the picture's
    largest lead (0 to 1) have no clear winner (0: only exact ties).
    options: what `explain` takes (masks, seed, framing, batch_size, progress, time_budget, cache, ...);
    RISE uses the regression estimator (or "centered"), whose maps compare across captions.
    """
    questions = caption_questions(captions, template, model)
    if isinstance(tie_margin, bool) or not isinstance(tie_margin, (int, float)) or not 0.0 <= tie_margin < 1.0:
        raise SettingsError(f"The tie margin must be a share from 0 up to 1 of the largest lead; got {tie_margin!r}.")
    if options.setdefault("estimator", DEFAULT_ESTIMATOR) not in COMPARABLE:
        raise SettingsError("A comparison needs the regression or centered estimator: the paper's adds to "
                            "each caption's map its own mean score times the mask coverage, which the captions do "
                            "not share.")
    answers = explain(model, image, questions, method=method, **options)
    maps = np.stack([answer.heatmap for answer in answers])  # shape = [K, H, W]
    seen = np.isfinite(maps).all(0)  # crop framing leaves the rest of the picture NaN
    maps = np.where(seen, maps, 0.0)
    top_two = np.sort(maps, axis=0)[-2:]
    margin = np.where(seen, top_two[1] - top_two[0], 0.0).astype(np.float32)
    clear = (margin > 0) & (margin >= tie_margin * margin.max(initial=0.0))
    labels = np.where(seen, np.where(clear, maps.argmax(0), UNDECIDED), UNSEEN)
    return Comparison(tuple(q.corpus[0] for q in questions), answers, labels, margin, float(tie_margin))


def caption_questions(captions: Sequence[str], template: str = DEFAULT_TEMPLATE,
                      model: Model | None = None) -> list[Question]:
    """The questions a comparison asks: each caption rather than the others. Refuses bad caption lists,
    and captions the model's tokenizer reads alike (OpenAI CLIP's when no model is given)."""
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise QuestionError("Give the captions to compare as a list, e.g. ['dog', 'cat', 'grass'].")
    cleaned = [clean_caption(caption, "compared", index) for index, caption in enumerate(captions, 1)]
    if not 2 <= len(cleaned) <= MAX_CAPTIONS:
        raise QuestionError(f"Compare 2 to {MAX_CAPTIONS} captions; got {len(cleaned)}.")
    read = model.token_ids if model is not None and model.has_text else clip_text  # "Dog" is "dog" to CLIP
    as_read = [read(caption) for caption in cleaned]
    if len(set(as_read)) < len(as_read):
        repeated = next(c for c, text in zip(cleaned, as_read, strict=True) if as_read.count(text) > 1)
        reader = "CLIP" if model is None else model.name
        raise QuestionError(f"Each caption can be compared only once; {reader} reads {repeated!r} twice "
                            "(its tokenizer ignores case or spacing).")
    return [Question(corpus=[c], foil=[o for o in cleaned if o != c], template=template) for c in cleaned]
