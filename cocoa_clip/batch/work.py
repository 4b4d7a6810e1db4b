"""The per-row work, the same for both engines: read a row's picture, explain it, write its files, summarise."""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from ..engine.evaluate import curves_of
from ..engine.explain import explain
from ..engine.images import load_image
from ..engine.render import save_heatmap
from ..errors import CocoaError, DiskFullError, writing
from ..models import ClipModel
from .job import Job, outputs

TOP_SHARE = 0.1  # top10_share: share of the positive attribution in this top fraction of pixels
THUMBNAIL_PX = 160


def read_row(row: dict) -> dict:
    """The row with its picture decoded: `pixels` (H, W, 3) uint8, or `error` filled and `pixels` (0, 0, 3)."""
    try:
        pixels, error = np.asarray(load_image(row["path"])), ""
    except (CocoaError, OSError) as problem:
        pixels, error = np.zeros((0, 0, 3), np.uint8), str(problem)
    return {**row, "pixels": pixels, "error": error}


def explain_row(model: ClipModel, job: Job, row: dict) -> dict:
    """Explain one read row with cc.explain; write its heatmap (and thumbnail, overlay); return its result row."""
    started = time.perf_counter()
    result = {name: row[name] for name in ("image", "stamp", "corpus", "foil", "foil_preset", "target")}
    result.update(seed=int(row["seed"]), method=job.options.get("method", "rise"), score=math.nan, heatmap="",
                  overlay="", peak_x=-1, peak_y=-1, top10_share=math.nan, masks=0, zero_shot="",
                  error=str(row["error"]))
    if job.evaluate:
        result.update(insertion_auc=math.nan, deletion_auc=math.nan)
    if not result["error"]:
        try:
            result.update(_explain(model, job, row))
        except DiskFullError:
            raise  # not the row's fault: the job stops, with the sentence that names the file
        except (CocoaError, OSError) as problem:
            result["error"] = str(problem)
    result["seconds"] = time.perf_counter() - started
    return result


def _explain(model: ClipModel, job: Job, row: dict) -> dict:
    question = job.question_of(row)
    # An empty caption cache for each row: CLIP's text encoder rounds a caption differently in different
    # batches (~1e-7), so cached captions would make a row depend on the rows its worker did before.
    # This way every row is what cc.explain gives on a freshly loaded model, whichever worker runs it.
    model = dataclasses.replace(model, _texts=type(model._texts)())
    answer = explain(model, row["pixels"], question, seed=int(row["seed"]), **{**job.options, "cache": None})
    paths = outputs(row)
    folder = Path(job.out_dir)
    save_heatmap(folder / paths["heatmap"], answer.heatmap)
    overlay = answer.overlay()
    if job.overlays:
        with writing(folder / paths["overlay"]):
            overlay.save(folder / paths["overlay"], format="PNG")
    overlay.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    with writing(folder / paths["thumbnail"]):
        overlay.save(folder / paths["thumbnail"], format="JPEG", quality=85)
    peak_x, peak_y, share = summarize(answer.heatmap)
    result = {"score": answer.score, "heatmap": paths["heatmap"], "overlay": paths["overlay"] if job.overlays else "",
              "peak_x": peak_x, "peak_y": peak_y, "top10_share": share, "masks": answer.details.get("masks", 0),
              "zero_shot": answer.zero_shot.text if answer.zero_shot else ""}
    if job.evaluate:
        # What `cocoa-clip evaluate` and the app give: the answer's framing, baseline and map as computed.
        aucs = curves_of(model, answer, seed=int(row["seed"])).aucs()
        result.update(insertion_auc=aucs["insertion_auc"], deletion_auc=aucs["deletion_auc"])
    return result


def summarize(heatmap: np.ndarray) -> tuple[int, int, float]:
    """The peak pixel (x, y) and the share of the positive attribution in the top 10% of pixels.

    Only finite pixels count (crop framing leaves NaN outside the crop). The share is
    sum(max(h, 0) over the top ceil(10% n) pixels) / sum(max(h, 0) over all n); NaN when no pixel is
    positive. (-1, -1, NaN) for a map without finite pixels.
    """
    finite = np.isfinite(heatmap)
    if not finite.any():
        return -1, -1, math.nan
    peak_y, peak_x = np.unravel_index(np.argmax(np.where(finite, heatmap, -np.inf)), heatmap.shape)
    values = np.sort(heatmap[finite].astype(np.float64))
    positive = np.clip(values, 0, None)
    total = positive.sum()
    top = positive[-math.ceil(TOP_SHARE * values.size):].sum()
    return int(peak_x), int(peak_y), float(top / total) if total > 0 else math.nan
