"""Explaining a whole collection: (image, question) rows in; a results table, heatmaps, a manifest and a report out.

    INPUT (folder, glob or table) -> rows                                  (collect)
    row -> decoded picture                                                 (read_row: a CPU task on Ray)
    model, picture -> cc.explain -> heatmap file, thumbnail, summary row   (explain_row: an actor on Ray)
    summary rows -> DIR/parts/*.parquet -> DIR/results.parquet, manifest.json, report.html   (this process)

Both engines run the same `read_row` and `explain_row`, so their tables agree row for row, and each
row's heatmap is what `cc.explain` gives for that picture, question and seed. "local" runs them here
without importing Ray; "ray" runs them as a Ray Data pipeline: reads in CPU tasks, explanations in an
actor pool with one model per actor.

Memory: rows are only paths and captions. The local engine holds one picture and its heatmap at a
time; the Ray engine one per actor (one batch of one row in flight each), plus decoded pictures waiting
for an actor, which Ray Data keeps under RAY_BUFFER_BYTES. Finished rows are scalars and paths: at
most FLUSH_ROWS wait in memory before they are written to a part file, so a killed job loses at most
those (and --resume redoes them).
"""
from .engines import ENGINES, REPORT, check_engine, failed_status, run
from .job import Job, ModelSpec, Summary, collect
from .store import MANIFEST, RESULTS

__all__ = ["ENGINES", "REPORT", "RESULTS", "MANIFEST", "Job", "ModelSpec", "Summary", "check_engine", "collect",
           "failed_status", "run"]
