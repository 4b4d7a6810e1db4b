"""Which method to trust, measured: every method's map of one question on one picture, scored side by side
with insertion and deletion curves (evaluate.py) in both of the paper's measures.

Convention (Petsiuk et al., 2018, as the paper's section 4.1 uses it): insertion, higher is better;
deletion, lower is better. Each row also gives both areas' gap to a random pixel order (its gain:
insertion above random, deletion below random; higher is better for both), and the seconds its map took.
The table is ranked by insertion area minus deletion area in the chosen measure: the random order is the
same for every row, so this orders the rows as the sum of the two gains does.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import SettingsError
from ..models import Model
from .attention import ATTENTION_METHODS
from .evaluate import MEASURE_LABELS, MEASURES, check_steps, curves_of, measure_of
from .explain import METHODS, explain
from .gradients import GradientSettings
from .images import ImageSource, load_image
from .targets import Question


@dataclass(frozen=True)
class MethodScore:
    """One method's row: its areas per measure ({"insertion_auc", "deletion_auc", "random_insertion_auc",
    "random_deletion_auc"}, as Curves.aucs) and the seconds its map took (the evaluation not included)."""

    method: str
    seconds: float
    aucs: dict[str, dict[str, float]]

    def gains(self, measure: str) -> tuple[float, float]:
        """(insertion area - random order's, random order's deletion area - deletion area): higher is better."""
        aucs = self.aucs[measure]
        return (aucs["insertion_auc"] - aucs["random_insertion_auc"],
                aucs["random_deletion_auc"] - aucs["deletion_auc"])

    def merit(self, measure: str) -> float:
        """Insertion area minus deletion area: what the table ranks by."""
        return self.aucs[measure]["insertion_auc"] - self.aucs[measure]["deletion_auc"]


@dataclass(frozen=True)
class MethodTable:
    """Every method's scores on one picture and question, best first by `rank_by` (a measure in `measures`)."""

    rows: tuple[MethodScore, ...]
    measures: tuple[str, ...]
    rank_by: str
    question: str
    notes: tuple[str, ...] = field(default=())

    def text(self) -> str:
        """A plain-text table, best first, with the convention stated under it."""
        heads = ["method", "seconds"]
        for measure in self.measures:
            heads += [f"{measure} ins", "gain", f"{measure} del", "gain"]
        lines = [[row.method, f"{row.seconds:.2f}"] + [
            f"{value:.4g}" for measure in self.measures for value in (
                row.aucs[measure]["insertion_auc"], row.gains(measure)[0],
                row.aucs[measure]["deletion_auc"], row.gains(measure)[1])] for row in self.rows]
        widths = [max(len(cells[i]) for cells in [heads, *lines]) for i in range(len(heads))]
        text = ["  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width)
                          in enumerate(zip(cells, widths, strict=True))) for cells in [heads, *lines]]
        text += ["", f"{self.question}; best first by {self.rank_by} ({MEASURE_LABELS[self.rank_by]}): "
                 "insertion area minus deletion area.",
                 "ins: insertion area, higher is better; del: deletion area, lower is better; gain: the gap to a "
                 "random pixel order in the better direction (above 0 beats random).", *self.notes]
        return "\n".join(text)

    def to_dict(self) -> dict:
        return {"question": self.question, "rank_by": self.rank_by, "measures": list(self.measures),
                "notes": list(self.notes),
                "methods": [{"method": row.method, "seconds": row.seconds, "merit": row.merit(self.rank_by),
                             **{measure: {**row.aucs[measure], "insertion_gain": row.gains(measure)[0],
                                          "deletion_gain": row.gains(measure)[1]} for measure in self.measures}}
                            for row in self.rows]}


def compare_methods(
    model: Model,
    image: ImageSource,
    question: Question,
    methods: Sequence[str] = METHODS,
    *,
    rank_by: str = "similarity",
    framing: str = "pad",
    steps: int = 20,
    seed: int = 0,
    masks: int | str | None = None,
    gradient: GradientSettings = GradientSettings(),
    baseline: str = "blur",
) -> MethodTable:
    """Explain the question with each method, then score each map with insertion and deletion curves.

    Both measures where the model has a zero-shot head (similarity only otherwise, with a note); `rank_by`
    picks the one that orders the table. steps: points on each curve; seed: RISE's masks, GradientSHAP's
    noise and the random pixel order. masks, gradient: RISE's and the gradient methods' settings.
    Methods that cannot apply to the model (legrad on a ResNet) refuse in their own sentence.

    >>> table = compare_methods(load("shapes-demo"), "scene.png", Question(corpus=["red circle"],
    ...                         foil=["blue star"]), ["rise", "legrad"])           # doctest: +SKIP
    >>> print(table.text())                                                         # doctest: +SKIP
    """
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        start = f"Unknown method {unknown[0]!r}" if unknown else "Name at least one method"
        raise SettingsError(f"{start}; choose from {', '.join(METHODS)}.")
    if rank_by not in MEASURES:
        raise SettingsError(f"Unknown measure {rank_by!r}; choose one of {', '.join(MEASURES)}.")
    measure_of(question)  # a corpus and a foil, before any work
    check_steps(steps)
    measures, notes = MEASURES, ()
    if model.logit_scale is None:
        if rank_by == "probability":
            raise SettingsError(f"{model.name} has no zero-shot head for the probability measure; rank by similarity.")
        measures, notes = ("similarity",), (f"{model.name} has no zero-shot head: the similarity measure only.",)
    picture = load_image(image)
    rows = []
    for method in methods:
        answer = explain(model, picture, question, method=method, masks=masks, seed=seed, framing=framing,
                         baseline=baseline, gradient=gradient, cache=None)  # no cache: honest seconds
        aucs = {measure: curves_of(model, answer, steps=steps, seed=seed, measure=measure).aucs()
                for measure in measures}
        rows.append(MethodScore(method, float(answer.details["seconds"]), aucs))
    rows.sort(key=lambda row: row.merit(rank_by), reverse=True)
    return MethodTable(tuple(rows), measures, rank_by, question.describe(), notes)


def applicable_methods(model: Model) -> tuple[str, ...]:
    """The methods that apply to `model`: all of METHODS where its attention can be traced (one forward pass on a
    blank input tells), the others elsewhere."""
    try:
        model.attention_trace(torch.zeros(1, 3, model.n_px, model.n_px, device=model.device))
    except SettingsError:
        return tuple(method for method in METHODS if method not in ATTENTION_METHODS)
    return METHODS
