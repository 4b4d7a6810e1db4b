"""Seconds per map of each method on a ViT-B/32-shaped CLIP with random weights (speed does not depend on the
weight values), beside RISE with masks="auto", on this machine's CPU (or --device cuda).

    python benchmarks/method_speed.py
    python benchmarks/method_speed.py --methods legrad attention-relevance rise --repeats 3

Each method explains the same picture and question end to end (framing, passes, map at the picture's size),
after one warm-up call, with no cache; the median of --repeats runs is reported, as wall-clock seconds and as
the process's CPU seconds (all threads). The CPU's model, its vector flags and torch's thread count come first:
the numbers mean little without them.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cocoa_clip as cc  # noqa: E402
from cocoa_clip.models.random_models import write_checkpoint  # noqa: E402

ASTRONAUT = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"
QUESTION = cc.Question(corpus=["woman"], foil=["rocket"])
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def machine() -> str:
    """The CPU's model and its vector flags that matter to torch, threads, and the load average."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"{model}; {os.cpu_count()} logical cores; flags: {' '.join(f for f in FLAGS if f in flags) or 'none'}"
            f"; torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load}")


def timed(model: cc.Model, method: str, repeats: int) -> dict:
    """Median wall and CPU seconds of `repeats` maps, after a warm-up; RISE runs with masks="auto"."""
    options = {"masks": "auto"} if method == "rise" else {}
    cc.explain(model, ASTRONAUT, QUESTION, method=method, cache=None, **({"masks": 64} if options else {}))
    walls, cpus, masks = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        answer = cc.explain(model, ASTRONAUT, QUESTION, method=method, cache=None, **options)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        masks = answer.details.get("masks")
    return {"wall": float(np.median(walls)), "cpu": float(np.median(cpus)), "masks": masks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["legrad", "attention-relevance", "rise"],
                        choices=cc.METHODS)
    parser.add_argument("--repeats", type=int, default=3, help="maps per method (RISE auto: 1 is plenty)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as folder:
        path = write_checkpoint(Path(folder) / "vit-b-32-random.pt", "ViT-B/32", seed=0)
        model = cc.load(weights=path, device=args.device, precision=args.precision)
    print(f"ViT-B/32 shape, random weights, {model.n_px} px, {model.precision} on {model.device}\n")
    print("| method | seconds per map (wall) | CPU seconds per map | masks |")
    print("|---|---|---|---|")
    for method in args.methods:
        result = timed(model, method, 1 if method == "rise" else args.repeats)
        print(f"| {method}{' (masks=auto)' if method == 'rise' else ''} | {result['wall']:.2f} | {result['cpu']:.2f} | "
              f"{result['masks'] if result['masks'] is not None else '-'} |", flush=True)


if __name__ == "__main__":
    main()
