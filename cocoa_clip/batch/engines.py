"""The engines that run the rows (here, or on Ray Data), and the job: rows in, table, manifest and report out."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import SettingsError
from .job import Job, Summary, outputs, pyarrow_module
from .report import write_report
from .store import MANIFEST, ResultStore, now, start_manifest, write_json
from .work import explain_row, read_row

ENGINES = ("local", "ray")
RAY_BUFFER_BYTES = 256 * 2 ** 20
REPORT = "report.html"
ResultCallback = Callable[[dict], None]


def _local_engine(rows: Sequence[dict], job: Job, **_: object) -> Iterator[dict]:
    """In this process, one row at a time (no Ray import)."""
    model = job.model.load()
    for row in rows:
        yield explain_row(model, job, read_row(row))


class _Explainer:
    """A Ray actor's work: its own model, then one row per call."""

    def __init__(self, job: Job):
        self.job = job
        self.model = job.model.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        results = [explain_row(self.model, self.job, {name: values[i] for name, values in batch.items()})
                   for i in range(len(batch["key"]))]
        return {name: [result[name] for result in results] for name in results[0]}


def _ray_engine(rows: Sequence[dict], job: Job, *, workers: int = 1, gpus_per_worker: float = 0.0,
                ray_address: str | None = None) -> Iterator[dict]:
    """A Ray Data pipeline: one block per row; reads in CPU tasks, explanations in `workers` actors.

    Joins the cluster at `ray_address` ("auto": the one `ray start` made), or starts a local Ray;
    a Ray this process had already started is used as it is (its workers must import cocoa_clip).
    Each actor takes one row at a time (max_tasks_in_flight_per_actor=1) and 1 CPU (plus
    `gpus_per_worker` GPUs); reads take none, so they never wait for the actors' CPUs, at most
    workers + 1 run at once, and Ray Data stops reading ahead at RAY_BUFFER_BYTES.
    """
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        # The workers run this copy of cocoa_clip (a checkout need not be installed on the cluster's nodes).
        ray.init(address=ray_address, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"py_modules": [str(Path(__file__).parents[1])]})
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the batch has its own bar
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # not one line per dataset execution
        limits = context.execution_options.resource_limits
        context.execution_options.resource_limits = limits.copy(object_store_memory=RAY_BUFFER_BYTES)
        pipeline = (ray.data.from_items(list(rows), override_num_blocks=len(rows))
                    .map(read_row, num_cpus=0, concurrency=workers + 1)  # worker processes are reused
                    .map_batches(_Explainer, fn_constructor_args=(job,), batch_size=1, num_cpus=1,
                                 num_gpus=gpus_per_worker or None, batch_format="numpy",
                                 compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1)))
        for result in pipeline.iter_rows():
            yield {name: value.item() if isinstance(value, np.generic) else value for name, value in result.items()}
    finally:
        if started:
            ray.shutdown()


ENGINE_RUNNERS = {"local": _local_engine, "ray": _ray_engine}


def run(rows: Sequence[dict], job: Job, *, engine: str = "local", workers: int = 1, gpus_per_worker: float = 0.0,
        ray_address: str | None = None, resume: bool = False, on_result: ResultCallback | None = None) -> Summary:
    """Explain every row not done yet; write results.parquet, manifest.json and report.html in job.out_dir.

    resume: go on with the results already in the folder (rows that failed are tried again); without it
    a folder that holds results is refused, and so is a resume whose resolved settings (device type, precision,
    masks, estimator, weights' SHA-256, library versions ...) differ from the first run's. Earlier results whose
    row is no longer in `rows` (its picture deleted or changed) are dropped from the table and counted in the
    summary's `dropped`. on_result: called with each new result row (a progress bar).
    """
    check_engine(engine, workers, gpus_per_worker, ray_address)
    if engine == "ray":
        job.model.check(gpus_per_worker)
        job = job.resolved("cuda" if gpus_per_worker else "cpu")  # where the actors run, not this process
    else:
        job = job.resolved()
    store = ResultStore(Path(job.out_dir), evaluate=job.evaluate)
    manifest = start_manifest(store, job, resume)
    previous = store.load()
    done = {key for key, result in previous.items() if not result["error"]}
    todo = [row for row in rows if row["key"] not in done]
    # Results whose row is gone from INPUT (a picture deleted, changed or renamed) are left out of the table.
    dropped = len(set(previous) - {row["key"] for row in rows})
    for folder in ("heatmaps", "thumbnails") + (("overlays",) if job.overlays else ()):
        (store.folder / folder).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        if todo:
            runner = ENGINE_RUNNERS[engine]
            for result in runner(todo, job, workers=workers, gpus_per_worker=gpus_per_worker,
                                 ray_address=ray_address):
                store.add(result)
                if on_result is not None:
                    on_result(result)
    finally:
        store.flush()
    table = store.gather([row["key"] for row in rows])
    seconds = time.perf_counter() - started
    summary = Summary(rows=len(rows), explained=len(todo), skipped=len(rows) - len(todo),
                      failed=sum(1 for result in table if result["error"]), seconds=seconds, out_dir=store.folder,
                      dropped=dropped)
    this_run = manifest["runs"][-1]
    this_run.update(engine=engine, workers=workers if engine == "ray" else 1, seconds=round(seconds, 3),
                    counts={name: getattr(summary, name)
                            for name in ("rows", "explained", "skipped", "failed", "dropped")}, finished=now())
    if engine == "ray":
        this_run["versions"]["ray"] = _ray().__version__
    write_json(store.folder / MANIFEST, manifest)
    write_report(store.folder / REPORT, [{**result, "thumbnail": outputs(result)["thumbnail"]} for result in table],
                 manifest)
    return summary


def check_engine(engine: str, workers: int, gpus_per_worker: float, ray_address: str | None) -> None:
    """Refuse engine settings that cannot work, before any model loads."""
    if engine not in ENGINES:
        raise SettingsError(f"Unknown engine {engine!r}; choose local or ray.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SettingsError(f"The number of workers must be a positive whole number; got {workers!r}.")
    if not (isinstance(gpus_per_worker, (int, float)) and 0 <= gpus_per_worker < math.inf):
        raise SettingsError(f"GPUs per worker must be 0 or more; got {gpus_per_worker!r}.")
    if engine == "local" and (workers != 1 or gpus_per_worker or ray_address):
        raise SettingsError("--workers, --gpus-per-worker and --ray-address are for --engine ray; "
                            "the local engine runs one model in this process.")
    pyarrow_module()
    if engine == "ray":
        _ray()


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise SettingsError("The ray engine needs Ray Data: pip install 'cocoa-clip[batch]' "
                            "(or pip install 'ray[data]'); --engine local needs neither.") from error
    return ray


def failed_status(summary: Summary) -> int:
    """The exit status of a batch: the number of failed rows (capped at 125; shells keep 126 and up)."""
    return min(summary.failed, 125)
