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
from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import platform
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from ..engine.evaluate import insertion_deletion
from ..engine.explain import explain
from ..engine.images import load_image
from ..engine.render import save_heatmap
from ..engine.targets import Question
from ..errors import CocoaError, SettingsError, check_seed
from ..models import ClipModel, available_models, load, split_revision
from ..models.registry import family_of
from .report import write_report

ENGINES = ("local", "ray")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")
TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
TABLE_COLUMNS = ("image", "corpus", "foil", "target", "seed")
SEPARATOR = "|"  # between captions in a table cell
TOP_SHARE = 0.1  # top10_share: share of the positive attribution in this top fraction of pixels
THUMBNAIL_PX = 160
FLUSH_ROWS, FLUSH_SECONDS = 64, 10.0
RAY_BUFFER_BYTES = 256 * 2 ** 20
RESULTS, MANIFEST, REPORT = "results.parquet", "manifest.json", "report.html"
ResultCallback = Callable[[dict], None]


@dataclass(frozen=True)
class ModelSpec:
    """How each worker loads its own copy of the model (cc.load's arguments)."""

    name: str
    weights: str | None = None
    device: str | None = None
    precision: str = "auto"
    revision: str | None = None
    trust_checkpoint: bool = False  # unsafe: lets the weights file run code (models/trust.py)

    def load(self) -> ClipModel:
        return load(self.name, weights=self.weights, device=self.device, precision=self.precision,
                    revision=self.revision, trust_checkpoint=self.trust_checkpoint)

    def check(self, gpus_per_worker: float) -> None:
        """Refuse, before Ray starts, what every actor would fail on (each loads the model on its node)."""
        name, _ = split_revision(self.name, self.revision)
        if self.weights is None and family_of(name) is None and name not in available_models():
            raise SettingsError(f"Unknown model {self.name!r}; choose one of: {', '.join(available_models())}.")
        if self.weights is not None and not Path(self.weights).is_file():
            raise SettingsError(f"No checkpoint file at {self.weights}; the Ray actors load it from that path.")
        if self.device == "cuda" and not gpus_per_worker:
            raise SettingsError("--device cuda on Ray needs --gpus-per-worker (1: one GPU per actor).")


@dataclass(frozen=True)
class Job:
    """What every row of a batch shares.

    question: Question keywords that rows do not set themselves (template, similarity, corpus and foil
        images, and the corpus, foil, foil_preset and target that rows leave out).
    options: cc.explain keywords but the seed (method, masks, framing, estimator, batch_size, ...).
    seed: the seed of rows that give none.
    """

    out_dir: str
    model: ModelSpec
    question: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    seed: int = 0
    evaluate: bool = False
    overlays: bool = False

    def settings(self) -> dict:
        """Everything a row's result depends on but the row itself (a resumed job must match it)."""
        return json.loads(json.dumps({"model": dataclasses.asdict(self.model), "question": self.question,
                                      "explain": self.options, "seed": self.seed, "evaluate": self.evaluate,
                                      "overlays": self.overlays}, default=str))

    def question_of(self, row: dict) -> Question:
        """The row's question: its own corpus, foil and target, the job's for the rest."""
        return Question(**{**self.question, "corpus": _split(row["corpus"]), "foil": _split(row["foil"]),
                           "foil_preset": row["foil_preset"] or None, "target": row["target"]})


@dataclass(frozen=True)
class Summary:
    """How a batch went. failed counts the rows of the final table whose error is filled."""

    rows: int
    explained: int
    skipped: int
    failed: int
    seconds: float
    out_dir: Path


# Rows -------------------------------------------------------------------------------------------------------------

def collect(source: str, job: Job) -> list[dict]:
    """The rows of INPUT: a folder (its image files, recursively), a glob, an image, or a table.

    A table (.csv, .jsonl, .parquet) has an `image` column (paths relative to the table's folder) and
    optionally `corpus`, `foil` (captions separated by "|"), `target` and `seed`; empty cells take the
    job's values. A row's foil replaces the job's foil captions and foil preset. Every row's question
    is checked here, before any model loads.
    """
    path = Path(source)
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        entries, folder = _read_table(path), path.parent
        where = f"{path.name} row {{}}"
    else:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
            if not files and not glob.has_magic(source):
                raise SettingsError(f"No folder, image or table at {source}.")
        out = Path(job.out_dir).resolve()
        files = [p for p in files if out not in p.resolve().parents]  # not the thumbnails of an earlier run
        if not files:
            raise SettingsError(f"{source} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
        entries, folder, where = [{"image": str(p)} for p in files], Path("."), "image {}"
    rows = [_row(index, entry, folder, job, where.format(index + 1)) for index, entry in enumerate(entries)]
    seen: dict[str, int] = {}
    for row in rows:
        if row["key"] in seen:
            raise SettingsError(f"{where.format(seen[row['key']] + 1)} and {where.format(row['index'] + 1)} "
                                "ask the same question of the same image with the same seed.")
        seen[row["key"]] = row["index"]
    return rows


def _read_table(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as stream:
                entries = list(csv.DictReader(stream))
        elif suffix == ".jsonl":
            with open(path, encoding="utf-8") as stream:
                entries = [json.loads(line) for line in stream if line.strip()]
        else:
            entries = _pyarrow().parquet.read_table(path).to_pylist()
    except (ValueError, UnicodeDecodeError) as error:  # json, csv and Arrow errors are ValueErrors
        raise SettingsError(f"Could not read {path} as a {suffix[1:]} table ({error}).") from error
    if not entries:
        raise SettingsError(f"{path} has no rows.")
    if not all(isinstance(entry, dict) and "image" in entry for entry in entries):
        raise SettingsError(f"Every row of {path} needs an image column (and may have "
                            f"{', '.join(TABLE_COLUMNS[1:])}).")
    return entries


def _row(index: int, entry: dict, folder: Path, job: Job, where: str) -> dict:
    """One row as plain values (what travels through Ray Data), its question checked."""
    image = _cell(entry.get("image"))
    if not isinstance(image, str):
        raise SettingsError(f"{where} has no image path.")
    corpus, foil, target, seed = (_cell(entry.get(name)) for name in ("corpus", "foil", "target", "seed"))
    defaults = job.question
    row = {"index": index, "image": image, "path": str(folder / image),
           "corpus": _join(corpus if corpus is not None else defaults.get("corpus", ()), where),
           "foil": _join(foil if foil is not None else defaults.get("foil", ()), where),
           "foil_preset": "" if foil is not None else defaults.get("foil_preset") or "",
           "target": target if target is not None else defaults.get("target", "cocoa"),
           "seed": _seed(seed, where) if seed is not None else job.seed}
    try:
        job.question_of(row)
    except CocoaError as error:
        raise SettingsError(f"{where}: {error}") from error
    return {**row, "key": row_key(row)}


def _cell(value: object) -> object:
    """A table cell, None when it is empty (blank text, null or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value.strip() or None
    return value


def _join(captions: object, where: str) -> str:
    """Captions as one cell: a "|"-separated string, or a list of strings."""
    if isinstance(captions, str):
        return SEPARATOR.join(_split(captions))
    if not isinstance(captions, (list, tuple)) or not all(isinstance(c, str) for c in captions):
        raise SettingsError(f"{where}: captions are text, several separated by {SEPARATOR!r}; got {captions!r}.")
    if any(SEPARATOR in c for c in captions):
        raise SettingsError(f"{where}: a caption in a batch cannot contain {SEPARATOR!r}, which separates captions.")
    return SEPARATOR.join(c.strip() for c in captions if c.strip())


def _split(cell: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in cell.split(SEPARATOR) if part.strip())


def _seed(value: object, where: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\d+", value):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():  # integers in a table with empty cells read as floats
        value = int(value)
    try:
        check_seed(value)
    except SettingsError as error:
        raise SettingsError(f"{where}: {error}") from error
    return value


def row_key(row: dict) -> str:
    """What identifies a row across runs: its image and question (a resumed job skips the keys it has)."""
    fields = [row[name] for name in ("image", "corpus", "foil", "foil_preset", "target")] + [int(row["seed"])]
    return hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:12]


def outputs(row: dict) -> dict[str, str]:
    """The row's files, relative to the output folder: heatmap (.npy), thumbnail and overlay."""
    stem = re.sub(r"[^\w.-]", "_", Path(row["image"]).stem)[:60]
    name = f"{stem}-{row_key(row)}"
    return {"heatmap": f"heatmaps/{name}.npy", "thumbnail": f"thumbnails/{name}.jpg", "overlay": f"overlays/{name}.png"}


# The per-row work, the same for both engines ----------------------------------------------------------------------

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
    result = {name: row[name] for name in ("image", "corpus", "foil", "foil_preset", "target")}
    result.update(seed=int(row["seed"]), method=job.options.get("method", "rise"), score=math.nan, heatmap="",
                  overlay="", peak_x=-1, peak_y=-1, top10_share=math.nan, masks=0, error=str(row["error"]))
    if job.evaluate:
        result.update(insertion_auc=math.nan, deletion_auc=math.nan)
    if not result["error"]:
        try:
            result.update(_explain(model, job, row))
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
        overlay.save(folder / paths["overlay"], format="PNG")
    overlay.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    overlay.save(folder / paths["thumbnail"], format="JPEG", quality=85)
    peak_x, peak_y, share = summarize(answer.heatmap)
    result = {"score": answer.score, "heatmap": paths["heatmap"], "overlay": paths["overlay"] if job.overlays else "",
              "peak_x": peak_x, "peak_y": peak_y, "top10_share": share, "masks": answer.details.get("masks", 0)}
    if job.evaluate:
        curves = insertion_deletion(model, answer.image, answer.heatmap, question,
                                    framing=job.options.get("framing", "pad"), seed=int(row["seed"]))
        aucs = curves.aucs()
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


# Engines ----------------------------------------------------------------------------------------------------------

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


# The job ----------------------------------------------------------------------------------------------------------

def run(rows: Sequence[dict], job: Job, *, engine: str = "local", workers: int = 1, gpus_per_worker: float = 0.0,
        ray_address: str | None = None, resume: bool = False, on_result: ResultCallback | None = None) -> Summary:
    """Explain every row not done yet; write results.parquet, manifest.json and report.html in job.out_dir.

    resume: go on with the results already in the folder (rows that failed are tried again); without it
    a folder that holds results is refused. on_result: called with each new result row (a progress bar).
    """
    check_engine(engine, workers, gpus_per_worker, ray_address)
    if engine == "ray":
        job.model.check(gpus_per_worker)
    store = ResultStore(Path(job.out_dir), evaluate=job.evaluate)
    manifest = _start_manifest(store, job, resume)
    previous = store.load()
    done = {key for key, result in previous.items() if not result["error"]}
    todo = [row for row in rows if row["key"] not in done]
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
                      failed=sum(1 for result in table if result["error"]), seconds=seconds, out_dir=store.folder)
    manifest.update(engine=engine, workers=workers if engine == "ray" else 1, seconds=round(seconds, 3),
                    counts={name: getattr(summary, name) for name in ("rows", "explained", "skipped", "failed")},
                    finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if engine == "ray":
        manifest["versions"]["ray"] = _ray().__version__
    _write_json(store.folder / MANIFEST, manifest)
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
    _pyarrow()
    if engine == "ray":
        _ray()


def _start_manifest(store: ResultStore, job: Job, resume: bool) -> dict:
    """The manifest of a new job, or of the job being resumed (whose settings must be these)."""
    path = store.folder / MANIFEST
    settings = job.settings()
    if store.has_results():
        if not resume:
            raise SettingsError(f"{store.folder} already holds results; pass --resume to go on with them, "
                                "or choose another --out-dir.")
        try:
            before = json.loads(path.read_text()).get("settings")
        except (OSError, ValueError):
            before = None
        if before != settings:
            changed = sorted(k for k in settings if not isinstance(before, dict) or before.get(k) != settings[k])
            raise SettingsError(f"The results in {store.folder} were made with other settings "
                                f"({', '.join(changed) or 'no manifest.json'}); resume with the same options, "
                                "or choose another --out-dir.")
    store.folder.mkdir(parents=True, exist_ok=True)
    manifest = {"settings": settings, "versions": _versions(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_json(path, manifest)
    return manifest


def _versions() -> dict[str, str]:
    import torch

    try:
        own = metadata.version("cocoa-clip")
    except metadata.PackageNotFoundError:  # run from a checkout
        own = "source"
    return {"cocoa_clip": own, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "pyarrow": _pyarrow().__version__}


def _write_json(path: Path, value: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(temporary, path)


# Results on disk --------------------------------------------------------------------------------------------------

class ResultStore:
    """results.parquet, plus the part files written since it was last gathered.

    Each part is written whole under a temporary name, then renamed, so a killed job leaves only
    complete parts; `load` reads them all (a later row replaces an earlier one with the same key).
    """

    def __init__(self, folder: Path, evaluate: bool = False):
        self.folder = folder
        self.parts = folder / "parts"
        pa = _pyarrow()
        columns = [("image", pa.string()), ("corpus", pa.string()), ("foil", pa.string()),
                   ("foil_preset", pa.string()), ("target", pa.string()), ("seed", pa.int64()),
                   ("method", pa.string()), ("score", pa.float64()), ("heatmap", pa.string()),
                   ("overlay", pa.string()), ("peak_x", pa.int64()), ("peak_y", pa.int64()),
                   ("top10_share", pa.float64()), ("masks", pa.int64()), ("seconds", pa.float64()),
                   ("error", pa.string())]
        if evaluate:
            columns += [("insertion_auc", pa.float64()), ("deletion_auc", pa.float64())]
        self.schema = pa.schema(columns)
        self.buffer: list[dict] = []
        self.flushed = time.monotonic()

    def has_results(self) -> bool:
        return (self.folder / RESULTS).is_file() or any(self.parts.glob("*.parquet"))

    def load(self) -> dict[str, dict]:
        """Every result on disk, by row key."""
        parquet = _pyarrow().parquet
        files = ([self.folder / RESULTS] if (self.folder / RESULTS).is_file() else []) + sorted(
            self.parts.glob("*.parquet"))
        results: dict[str, dict] = {}
        for path in files:
            for result in parquet.read_table(path, schema=self.schema).to_pylist():
                results[row_key(result)] = result
        return results

    def add(self, result: dict) -> None:
        self.buffer.append(result)
        if len(self.buffer) >= FLUSH_ROWS or time.monotonic() - self.flushed > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered results as one part file."""
        self.flushed = time.monotonic()
        if not self.buffer:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        self._write(self.parts / f"part-{time.time_ns():020d}.parquet", self.buffer)
        self.buffer = []

    def gather(self, keys: Sequence[str]) -> list[dict]:
        """Write results.parquet with the rows of `keys` that have results, in that order; drop the parts."""
        results = self.load()
        table = [results[key] for key in keys if key in results]
        self._write(self.folder / RESULTS, table)
        if self.parts.is_dir():
            for part in self.parts.iterdir():  # parts, and any half-written one a killed job left
                part.unlink()
            self.parts.rmdir()
        return table

    def _write(self, path: Path, rows: list[dict]) -> None:
        pa = _pyarrow()
        temporary = path.with_name(path.name + ".tmp")
        pa.parquet.write_table(pa.Table.from_pylist(rows, schema=self.schema), temporary)
        os.replace(temporary, path)


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (pyarrow.parquet is a submodule)
    except ImportError as error:
        raise SettingsError("Batch results are Parquet files, which need pyarrow: "
                            "pip install 'cocoa-clip[batch]' (or pip install pyarrow).") from error
    return pyarrow


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


