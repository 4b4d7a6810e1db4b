"""Results on disk: part files as rows finish, the final table, and the manifest of the job."""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import SettingsError, writing
from .job import Job, pyarrow_module, row_key

FLUSH_ROWS, FLUSH_SECONDS = 64, 10.0
RESULTS, MANIFEST = "results.parquet", "manifest.json"
LOG = logging.getLogger(__name__)  # unconfigured, Python prints a warning as its bare message on stderr


def start_manifest(store: ResultStore, job: Job, resume: bool) -> dict:
    """The manifest of a new job, or of the job being resumed (whose settings must be these), with this run
    appended to its `runs`. job: resolved (Job.resolved), so that its settings say what runs."""
    path = store.folder / MANIFEST
    settings = job.settings()
    runs: list[dict] = []
    if store.has_results():
        if not resume:
            raise SettingsError(f"{store.folder} already holds results; pass --resume to go on with them, "
                                "or choose another --out-dir.")
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = {}
        changed = differences(before.get("settings"), settings) if before.get("settings") else ["no manifest.json"]
        if changed:
            raise SettingsError(f"The results in {store.folder} were made with other settings "
                                f"({'; '.join(changed)}); resume with the same options, or choose another --out-dir.")
        runs = before.get("runs", [])
    store.folder.mkdir(parents=True, exist_ok=True)
    manifest = {"settings": settings, "runs": runs + [{"started": now(), "versions": _versions()}]}
    write_json(path, manifest)
    return manifest


def differences(before: dict, after: dict, prefix: str = "") -> list[str]:
    """What differs between two settings, as "explain.masks 2000 then, 20000 now" (nested keys joined by dots)."""
    changed = []
    for key in sorted(set(before) | set(after), key=str):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            changed.append(f"{prefix}{key} {json.dumps(old)} then, {json.dumps(new)} now")
    return changed


def _versions() -> dict[str, str]:
    """What this run ran on besides the libraries in the settings (which must match on resume)."""
    return {"python": platform.python_version(), "pyarrow": pyarrow_module().__version__}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json(path: Path, value: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with writing(path):
        temporary.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(temporary, path)


class ResultStore:
    """results.parquet, plus the part files written since it was last gathered.

    Each part is written whole under a temporary name, then renamed, so a killed job leaves only
    complete parts; `load` reads them all (a later row replaces an earlier one with the same key).
    """

    def __init__(self, folder: Path, evaluate: bool = False):
        self.folder = folder
        self.parts = folder / "parts"
        pa = pyarrow_module()
        columns = [("image", pa.string()), ("stamp", pa.string()), ("corpus", pa.string()), ("foil", pa.string()),
                   ("foil_preset", pa.string()), ("target", pa.string()), ("seed", pa.int64()),
                   ("method", pa.string()), ("score", pa.float64()), ("heatmap", pa.string()),
                   ("overlay", pa.string()), ("peak_x", pa.int64()), ("peak_y", pa.int64()),
                   ("top10_share", pa.float64()), ("masks", pa.int64()), ("zero_shot", pa.string()),
                   ("seconds", pa.float64()), ("error", pa.string())]
        if evaluate:
            columns += [("insertion_auc", pa.float64()), ("deletion_auc", pa.float64())]
        self.schema = pa.schema(columns)
        self.buffer: list[dict] = []
        self.flushed = time.monotonic()

    def has_results(self) -> bool:
        return (self.folder / RESULTS).is_file() or any(self.parts.glob("*.parquet"))

    def load(self) -> dict[str, dict]:
        """Every result on disk, by row key. A file that cannot be read (truncated, corrupt) is set aside as
        NAME.damaged in the output folder, with a one-line warning, and its rows count as not done."""
        pa = pyarrow_module()
        files = ([self.folder / RESULTS] if (self.folder / RESULTS).is_file() else []) + sorted(
            self.parts.glob("*.parquet"))
        results: dict[str, dict] = {}
        for path in files:
            try:
                table = pa.parquet.read_table(path, schema=self.schema).to_pylist()
            except (pa.ArrowException, OSError) as error:
                aside = self.folder / (path.name + ".damaged")
                os.replace(path, aside)
                LOG.warning(f"warning: {path} could not be read ({str(error).splitlines()[0]}); set aside as "
                            f"{aside.name}, and its rows are explained again.")
                continue
            for result in table:
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
        pa = pyarrow_module()
        temporary = path.with_name(path.name + ".tmp")
        with writing(path):
            pa.parquet.write_table(pa.Table.from_pylist(rows, schema=self.schema), temporary)
        os.replace(temporary, path)
