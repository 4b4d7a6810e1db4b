"""Faithfulness: insertion and deletion curves (Petsiuk et al., 2018; the paper's section 4.1).

Pixels of the picture are ranked by attribution (the map as computed, over the model's input,
when the answer has it). Deletion starts from the picture and replaces the most important pixels
first with the baseline (the blurred picture, as in the paper, or the one the heatmap used);
insertion starts from the baseline and puts the most important pixels back. After each step the curve records one of the
paper's two measures for the question's corpus and foil, whatever target produced the heatmap,
so that targets can be compared as in its tables:

- "similarity": the contrastive corpus similarity;
- "probability": the corpus majority probability, with the model's own zero-shot head as the
  downstream classifier (`CorpusProbability`): a softmax over the corpus and foil logits, for
  CLIP-style and SigLIP models alike.

A faithful heatmap gives a high insertion area and a low deletion area; a random ranking of
the pixels gives the baseline both should beat.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ..errors import QuestionError, SettingsError, check_seed
from ..models import Model, eval_mode
from . import fonts
from .images import Framed, ImageSource, check_baseline, frame, load_image
from .images import baseline as baseline_of
from .targets import Question, members, resolve

MEASURES = ("similarity", "probability")
MEASURE_LABELS = {"similarity": "contrastive corpus similarity", "probability": "probability of the corpus (zero-shot)"}
Score = Callable[[torch.Tensor], torch.Tensor]  # (B, D) raw image embeddings -> (B,) scores


@dataclass(frozen=True)
class Curves:
    """Insertion and deletion curves; every curve is (steps + 1,) values of `measure` (see MEASURES)
    at `fractions` (share of the picture's pixels inserted or deleted, 0 to 1)."""

    fractions: np.ndarray
    insertion: np.ndarray
    deletion: np.ndarray
    random_insertion: np.ndarray
    random_deletion: np.ndarray
    measure: str = "similarity"

    @staticmethod
    def area(curve: np.ndarray, fractions: np.ndarray) -> float:
        return float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(fractions)))

    def aucs(self) -> dict[str, float]:
        """Areas under the curves (trapezoid rule over the fraction of pixels)."""
        return {f"{name}_auc": self.area(getattr(self, name), self.fractions)
                for name in ("insertion", "deletion", "random_insertion", "random_deletion")}

    def verdict(self) -> str:
        """One sentence: does the heatmap beat a random pixel order on both curves, and by how much?"""
        aucs = self.aucs()
        gain = aucs["insertion_auc"] - aucs["random_insertion_auc"]  # higher is better
        drop = aucs["random_deletion_auc"] - aucs["deletion_auc"]  # lower is better
        beats = "beats" if gain > 0 and drop > 0 else "does not clearly beat"
        gain_text, drop_text = alike(gain, -drop)
        return (f"This heatmap {beats} a random ranking of the pixels: insertion area {gain_text} and deletion area "
                f"{drop_text} against the random order's.")

    def to_dict(self) -> dict:
        curves = {f.name: getattr(self, f.name).tolist() for f in dataclasses.fields(self) if f.name != "measure"}
        return {"measure": self.measure, **self.aucs(), **curves}

    def plot(self, title: str = "") -> Image.Image:
        """Both curves next to the random baseline, as an RGB image."""
        figure = Figure(figsize=(8, 3.4), dpi=100)
        FigureCanvasAgg(figure)
        aucs = self.aucs()
        for index, name in enumerate(("insertion", "deletion")):
            axes = figure.add_subplot(1, 2, index + 1)
            axes.plot(self.fractions, getattr(self, name), color="C3", label=f"heatmap (AUC {aucs[name + '_auc']:.3f})")
            axes.plot(self.fractions, getattr(self, "random_" + name), color="0.5", linestyle="--",
                      label=f"random (AUC {aucs['random_' + name + '_auc']:.3f})")
            better = "higher" if name == "insertion" else "lower"
            axes.set_title(f"{name.capitalize()} ({better} is better)", fontsize=10)
            axes.set_xlabel(f"share of pixels {'inserted' if name == 'insertion' else 'deleted'}")
            axes.set_ylabel(MEASURE_LABELS[self.measure])
            axes.legend(fontsize=8)
        if title:
            figure.suptitle(fonts.drawable(title), fontsize=10, fontfamily=fonts.families())
        figure.tight_layout()
        figure.canvas.draw()
        return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())


def alike(*values: float, digits: int = 4) -> list[str]:
    """Signed numbers for one sentence, all with the same decimals: `digits` significant digits of the largest.

    Not a fixed 4 decimals: probabilities against 999 foils are tiny and still ordered.
    >>> alike(0.041, -0.03452)
    ['+0.04100', '-0.03452']
    """
    largest = max((abs(value) for value in values if math.isfinite(value)), default=0.0)
    decimals = max(0, digits - 1 - math.floor(math.log10(largest))) if largest > 0 else digits
    return [f"{value:+.{decimals}f}" for value in values]


@dataclass(frozen=True)
class CorpusProbability:
    """The model's zero-shot probability that a picture shows the corpus rather than any foil item.

    The classes are the corpus (its mean unit embedding, renormalised, as CLIP's prompt
    ensembles) and each foil caption or image on its own; the logits are the model's learnt scale
    times cosine similarity. The probability is the softmax over them, the corpus's share: the
    paper's corpus majority probability with the model's own head as the classifier (with the
    CIFAR-100 foil preset, the zero-shot CIFAR-100 probability of the corpus class). With one
    caption each it is sigmoid(scale x contrastive corpus similarity), a monotone function of it.

    Sigmoid heads (SigLIP) get the same softmax over their logits: their learnt bias adds the same
    to every class's logit and cancels. Their own sigmoid, sigmoid(corpus logit + bias), would
    score the corpus alone, and the foil would play no part in the measure.
    """

    classes: torch.Tensor  # (1 + F, D) unit rows, the corpus first
    scale: float  # the model's logit scale, exp(logit_scale): 100 for OpenAI's released models

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) raw image embeddings -> (B,) probabilities in [0, 1]."""
        return self.distribution(embeddings)[:, 0]

    def distribution(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) raw image embeddings -> (B, 1 + F) probabilities of every class, the corpus first: a softmax
        (each row sums to 1), for sigmoid heads too (their bias cancels, as above)."""
        units = embeddings.float() / embeddings.float().norm(dim=-1, keepdim=True)
        logits = self.scale * units @ self.classes.T  # shape = [B, 1 + F]
        return torch.softmax(logits, dim=-1)


def measure_of(question: Question) -> Question:
    """The question as COCOA measures it (cosine, corpus rather than foil), whatever its target."""
    has_foil = question.foil or question.foil_images or question.foil_preset
    if not (question.corpus or question.corpus_images) or not has_foil:
        raise QuestionError("Insertion and deletion measure the corpus against the foil: give a corpus and a foil.")
    return dataclasses.replace(question, target="cocoa", similarity="cosine")


def measure_score(model: Model, question: Question, measure: str = "similarity", framing: str = "pad") -> Score:
    """The function of image embeddings that insertion and deletion curves record (see MEASURES)."""
    if measure not in MEASURES:
        raise SettingsError(f"Unknown measure {measure!r}; choose one of {', '.join(MEASURES)}.")
    question = measure_of(question)
    if measure == "similarity":
        return resolve(model, question, None, framing)  # the cocoa target needs no explicand embedding
    if model.logit_scale is None:
        raise SettingsError(f"{model.name} has no zero-shot head (logit scale) for the probability measure; "
                            "use the similarity measure.")
    corpus, foil = (members(model, question, side, framing) for side in ("corpus", "foil"))
    corpus = corpus / corpus.norm(dim=-1, keepdim=True)
    prototype = corpus.mean(0, keepdim=True)
    classes = torch.cat([prototype / prototype.norm(), foil / foil.norm(dim=-1, keepdim=True)])
    return CorpusProbability(classes=classes, scale=model.logit_scale)


def insertion_deletion(
    model: Model,
    image: ImageSource,
    heatmap: np.ndarray,
    question: Question,
    *,
    framing: str = "pad",
    steps: int = 50,
    seed: int = 0,
    batch_size: int = 64,
    measure: str = "similarity",
    baseline: str = "blur",
    blur_sigma: float | None = None,
    content_map: np.ndarray | None = None,
) -> Curves:
    """Insertion and deletion curves of a heatmap for a question.

    heatmap: (H, W) at the picture's size, as `explain` returns it (NaN pixels rank last).
    content_map: (h, w), the map as computed over the content box (Explanation.content_map); when
    given, it is ranked instead of the heatmap brought back from the picture's size.
    baseline, blur_sigma: what removed pixels show (images.baseline); use the heatmap's own.
    steps: points on each curve after the first. seed: the random baseline's pixel order.
    measure: "similarity" (contrastive corpus similarity) or "probability" (zero-shot
    probability of the corpus), the paper's two measures.
    """
    check_steps(steps)
    check_seed(seed)
    check_baseline(baseline, blur_sigma)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise SettingsError(f"The batch size must be a positive whole number; got {batch_size!r}.")
    heatmap = np.asarray(heatmap)
    if heatmap.dtype.kind not in "biuf":
        raise SettingsError(f"A heatmap holds real numbers; this one holds {heatmap.dtype} values.")
    picture = load_image(image)
    if heatmap.shape != (picture.height, picture.width):
        raise SettingsError(f"The heatmap is {heatmap.shape[1]}x{heatmap.shape[0]} "
                            f"but the image is {picture.width}x{picture.height}.")
    framed = frame(picture, model.preprocessing, framing)
    content = framed.content.to(model.device)
    removed = baseline_of(content, model.preprocessing, baseline, blur_sigma)
    target = measure_score(model, question, measure, framing)

    ranking = content_ranking(heatmap, framed) if content_map is None else native_ranking(content_map, framed)
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(ranking.numel(), generator=generator)
    fractions = np.linspace(0.0, 1.0, steps + 1)

    def curve(order: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> np.ndarray:
        return _curve(model, framed, target, order.to(model.device), start, end, fractions, batch_size)

    return Curves(
        fractions=fractions,
        insertion=curve(ranking, removed, content),
        deletion=curve(ranking, content, removed),
        random_insertion=curve(shuffled, removed, content),
        random_deletion=curve(shuffled, content, removed),
        measure=measure,
    )


def curves_of(model: Model, answer, *, steps: int = 50, seed: int = 0, batch_size: int = 64,
              measure: str = "similarity") -> Curves:
    """Insertion and deletion curves of an `explain` answer (an Explanation): its map as computed,
    with its framing and baseline."""
    details = answer.details
    return insertion_deletion(model, answer.image, answer.heatmap, answer.question,
                              framing=details.get("framing", "pad"), steps=steps, seed=seed, batch_size=batch_size,
                              measure=measure, baseline=details.get("baseline", "blur"),
                              blur_sigma=details.get("blur_sigma"), content_map=answer.content_map)


def check_steps(steps: object) -> None:
    """Refuse a number of curve steps outside 2..1000."""
    if not (isinstance(steps, int) and 2 <= steps <= 1000):
        raise SettingsError(f"steps must be a whole number from 2 to 1000; got {steps!r}.")


def content_ranking(heatmap: np.ndarray, framed: Framed) -> torch.Tensor:
    """Pixel indices of the content box, most important first: (h * w,) int64.

    The picture-sized heatmap is brought back to the content box by area averaging.
    """
    top, left, height, width = framed.source_box
    region = heatmap[top:top + height, left:left + width].astype(np.float64)
    finite = region[np.isfinite(region)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    # NaN (unseen) and -inf rank last, +inf first.
    region = np.where(np.isnan(region), low - 1.0, np.clip(region, low - 1.0, high + 1.0))
    region = torch.from_numpy(region.astype(np.float32))
    box_height, box_width = framed.box[2:]
    small = F.interpolate(region[None, None], size=(box_height, box_width), mode="area")[0, 0]
    return torch.argsort(small.flatten(), descending=True, stable=True)


def native_ranking(content_map: np.ndarray, framed: Framed) -> torch.Tensor:
    """Pixel indices of the content box, most important first, from a map over the content box itself."""
    content_map = np.asarray(content_map, dtype=np.float32)
    if content_map.shape != tuple(framed.box[2:]):
        raise SettingsError(f"The content map is {content_map.shape[1]}x{content_map.shape[0]} but the model saw "
                            f"{framed.box[3]}x{framed.box[2]} pixels of the picture; was it made with this framing?")
    values = np.nan_to_num(content_map, nan=-np.inf)  # NaN ranks last
    return torch.argsort(torch.from_numpy(values).flatten(), descending=True, stable=True)


def _curve(model: Model, framed: Framed, target: Score, order: torch.Tensor, start: torch.Tensor,
           end: torch.Tensor, fractions: np.ndarray, batch_size: int) -> np.ndarray:
    """Scores of pictures where the first k pixels of `order` come from `end`, the rest from `start`."""
    n_pixels = order.numel()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n_pixels, device=order.device)
    rank = rank.view(start.shape[-2:])
    counts = torch.tensor(np.round(fractions * n_pixels), device=order.device)
    scores = []
    with eval_mode(model):
        for first in range(0, len(counts), batch_size):
            # shape = [B, 1, h, w]
            chosen = (rank[None] < counts[first:first + batch_size, None, None]).float()[:, None]
            pixels = framed.with_content(start + chosen * (end - start))
            scores.append(target(model.encode_images(pixels)))
    return torch.cat(scores).float().cpu().numpy()


def pointing_hit(heatmap: np.ndarray, region: np.ndarray, tolerance: int = 1) -> bool:
    """Pointing game: does the heatmap's maximum fall on the region (within `tolerance` pixels)?

    heatmap, region: (H, W); region is boolean. NaN pixels never count as the maximum.
    """
    row, col = np.unravel_index(np.nanargmax(heatmap), heatmap.shape)
    rows = slice(max(0, row - tolerance), row + tolerance + 1)
    cols = slice(max(0, col - tolerance), col + tolerance + 1)
    return bool(region[rows, cols].any())


def positive_share(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Share of the heatmap's positive attribution that lies inside the region (0..1)."""
    positive = np.clip(np.nan_to_num(heatmap), 0.0, None)
    total = positive.sum()
    return float(positive[region].sum() / total) if total > 0 else 0.0
