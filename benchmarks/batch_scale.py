"""Images per minute of `batch` for 1 and 2 workers, local and Ray, and Ray's overhead against local.

One job (the bundled pictures x several seeds, one question) runs four ways on the same machine:
the local engine with torch on 1 and on 2 threads (it runs one model; a second "worker" can only
be a second thread), and the Ray engine with 1 and 2 actors (each actor: one model, 1 CPU, 1 thread).
Ray's runs include starting Ray and its actors, which `first result` shows; `s per image in a
worker` is the median time inside the per-row function. Every run's table must equal the first's
(timings aside).

    python benchmarks/batch_scale.py --images 24 --masks 200            # about 6 min on 2 busy cores
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cocoa_clip import batch  # noqa: E402
from cocoa_clip.batch import Job, ModelSpec  # noqa: E402

PICTURES = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg", "shapes_scene.png"]


def rows_for(count: int, job: Job) -> list[dict]:
    """`count` rows: the bundled pictures in turn, each new round with the next seed."""
    table = Path(job.out_dir).parent / "rows.jsonl"
    table.write_text("".join(f'{{"image": "{ROOT / "assets" / PICTURES[i % len(PICTURES)]}", '
                             f'"seed": {i // len(PICTURES)}}}\n' for i in range(count)))
    return batch.collect(str(table), job)


def timed_run(rows: list[dict], job: Job, engine: str, workers: int) -> dict:
    started = time.perf_counter()
    first: list[float] = []
    batch.run(rows, job, engine=engine, workers=workers,
              on_result=lambda _: first.append(time.perf_counter() - started) if not first else None)
    wall = time.perf_counter() - started
    table = pq.read_table(Path(job.out_dir) / "results.parquet").to_pylist()
    return {"wall": wall, "rate": len(rows) / wall * 60, "first": first[0],
            "per_image": statistics.median(row["seconds"] for row in table),  # inside explain_row, on a worker
            "table": [{k: v for k, v in row.items() if k != "seconds"} for row in table]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24, help="rows in the job")
    parser.add_argument("--masks", type=int, default=200, help="RISE masks per image")
    parser.add_argument("--model", default="shapes-demo")
    args = parser.parse_args()

    runs = [("local", 1, 1), ("local", 1, 2), ("ray", 1, 1), ("ray", 2, 1)]  # engine, workers, torch threads
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for engine, workers, threads in runs:
            torch.set_num_threads(threads)
            job = Job(out_dir=f"{scratch}/{engine}-{workers}-{threads}", question={"corpus": ("a red circle",),
                      "foil": ("a blue square",)}, model=ModelSpec(args.model, device="cpu", precision="fp32"),
                      options={"masks": args.masks})
            rows = rows_for(args.images, job)
            results[engine, workers, threads] = timed_run(rows, job, engine, workers)
            print(f"{engine} x{workers} ({threads} thread{'s' * (threads > 1)}): "
                  f"{results[engine, workers, threads]['wall']:.1f} s", flush=True)

    reference = results[runs[0]]["table"]
    same = all(result["table"] == reference for result in results.values())
    print(f"\n{args.images} images, {args.masks} masks, {args.model} fp32, {os.cpu_count()} CPUs "
          f"({platform.machine()}, load average {os.getloadavg()[0]:.1f}), {time.strftime('%Y-%m-%d')}; "
          f"tables identical: {same}\n")
    print("| engine | workers | torch threads each | wall s | images/min | first result s | s per image in a worker |")
    print("|---|---|---|---|---|---|---|")
    for (engine, workers, threads), result in results.items():
        print(f"| {engine} | {workers} | {threads} | {result['wall']:.1f} | {result['rate']:.1f} | "
              f"{result['first']:.1f} | {result['per_image']:.2f} |")
    local, ray = results["local", 1, 1], results["ray", 1, 1]
    print(f"\nRay's overhead, 1 worker against local on 1 thread: {ray['wall'] - local['wall']:+.1f} s on the job "
          f"({ray['wall'] / local['wall'] - 1:+.0%}), of which {ray['first'] - local['first']:+.1f} s before the "
          f"first result.")


if __name__ == "__main__":
    main()
