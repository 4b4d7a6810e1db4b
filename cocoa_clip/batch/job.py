"""A batch job's settings and its rows: what every row shares, and the (image, question) rows of INPUT."""
from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from ..engine.rise import DEFAULT_ESTIMATOR, RiseSettings
from ..engine.targets import Question
from ..errors import CocoaError, SettingsError, check_seed
from ..models import ClipModel, available_models, load, split_revision
from ..models.loading import default_device, resolve_precision
from ..models.registry import BUNDLED, family_of, resolve
from ..models.trust import sha256

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")
TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
TABLE_COLUMNS = ("image", "corpus", "foil", "target", "seed")
SEPARATOR = "|"  # between captions in a table cell


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

    def resolved(self, device_type: str | None = None) -> Job:
        """The job as it runs: device, precision, method, estimator and mask count (auto's cap) written out.

        device_type: where the workers run ("cpu" or "cuda") when the model spec leaves it open; by
        default this machine's. Workers load the resolved spec, so the settings say what ran.
        """
        device = torch.device(self.model.device or device_type or default_device().type)
        model = dataclasses.replace(self.model, device=self.model.device or device.type,
                                    precision=resolve_precision(self.model.precision, device))
        options = {**self.options, "method": self.options.get("method") or "rise",
                   "estimator": self.options.get("estimator") or DEFAULT_ESTIMATOR}
        if options["method"] == "rise":  # None means 20,000 masks on a GPU and auto on a CPU
            rise = RiseSettings(options.get("masks"), max_masks=options.get("max_masks")).for_device(device)
            options.update(masks=rise.n_masks, **({"max_masks": rise.max_masks} if rise.auto else {}))
        return dataclasses.replace(self, model=model, options=options)

    def settings(self) -> dict:
        """Everything a row's result depends on but the row itself (a resumed job must match it): the
        resolved job's settings, the weights file's SHA-256 and the versions of the libraries that compute."""
        weights = self.model.weights or BUNDLED.get(self.model.name)
        device = torch.device(self.model.device).type if self.model.device else None
        model = {**dataclasses.asdict(self.model), "device": device,
                 "weights_sha256": sha256(Path(weights)) if weights and Path(weights).is_file() else None}
        libraries = ("cocoa-clip", "torch", "numpy", resolve(self.model.name)[0].package)
        return json.loads(json.dumps({"model": model, "question": self.question, "explain": self.options,
                                      "seed": self.seed, "evaluate": self.evaluate, "overlays": self.overlays,
                                      "versions": {name: _version(name) for name in libraries}}, default=str))

    def question_of(self, row: dict) -> Question:
        """The row's question: its own corpus, foil and target, the job's for the rest."""
        return Question(**{**self.question, "corpus": _split(row["corpus"]), "foil": _split(row["foil"]),
                           "foil_preset": row["foil_preset"] or None, "target": row["target"]})


@dataclass(frozen=True)
class Summary:
    """How a batch went. failed counts the rows of the final table whose error is filled; dropped the results of
    earlier runs left out of it because their row is no longer in INPUT (a picture deleted, changed or renamed)."""

    rows: int
    explained: int
    skipped: int
    failed: int
    seconds: float
    out_dir: Path
    dropped: int = 0


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
            entries = pyarrow_module().parquet.read_table(path).to_pylist()
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
    row = {"index": index, "image": image, "path": str(folder / image), "stamp": stamp(str(folder / image)),
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


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # cocoa-clip run from a checkout, or a family library not installed
        return "not installed"


def stamp(path: str) -> str:
    """The picture's size and modification time ("bytes:nanoseconds"), "" when there is no file: part of its key,
    so that a picture changed at the same path is explained again."""
    try:
        status = Path(path).stat()
    except OSError:
        return ""
    return f"{status.st_size}:{status.st_mtime_ns}"


def row_key(row: dict) -> str:
    """What identifies a row across runs: its image (path and stamp) and question (a resumed job skips the keys it
    has)."""
    fields = [row[name] for name in ("image", "stamp", "corpus", "foil", "foil_preset", "target")]
    fields.append(int(row["seed"]))
    return hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:12]


def outputs(row: dict) -> dict[str, str]:
    """The row's files, relative to the output folder: heatmap (.npy), thumbnail and overlay."""
    stem = re.sub(r"[^\w.-]", "_", Path(row["image"]).stem)[:60]
    name = f"{stem}-{row_key(row)}"
    return {"heatmap": f"heatmaps/{name}.npy", "thumbnail": f"thumbnails/{name}.jpg", "overlay": f"overlays/{name}.png"}


def pyarrow_module():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (pyarrow.parquet is a submodule)
    except ImportError as error:
        raise SettingsError("Batch results are Parquet files, which need pyarrow: "
                            "pip install 'cocoa-clip[batch]' (or pip install pyarrow).") from error
    return pyarrow
