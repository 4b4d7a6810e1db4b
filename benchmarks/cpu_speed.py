"""RISE on a CPU, in one run: masks/s per precision, the first live frame, and time to a 0.97 map
for the project's default against the paper's code.

    python benchmarks/cpu_speed.py --model ViT-B/32 --auto-count 142 --paper-count 1000
    python benchmarks/cpu_speed.py --model shapes-demo --scenes 3 --auto-count 142 --paper-count 1000

--model ViT-B/32 (or another `--architecture` of random_models) is a CLIP of that shape with random
weights (speed does not depend on the weight values); shapes-demo is the bundled model, whose
maps mean something: there the default (`explain` with no --masks, auto on a CPU) also runs for
real through the command line on shapes scenes. The paper's code pushes one masked image per
forward pass in fp32 and uses the paper's estimator; its time to a 0.97 map is its masks/s here
times the count its estimator needs for a 0.97 correlation with the converged map
(`--paper-count`, which benchmarks/auto_promise.py measures on shapes-demo scenes, as it measures
auto's mean stopping count, `--auto-count`). Every figure in one table comes from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rise_speed import ASTRONAUT, QUESTION, paper_loop  # noqa: E402

import cocoa_clip as cc  # noqa: E402
from cocoa_clip.models import loading  # noqa: E402
from cocoa_clip.models.random_models import ARCHITECTURES, write_checkpoint  # noqa: E402

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_line() -> str:
    """CPU model, the flags that matter for these precisions, threads, load."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    flags = loading.cpu_flags() or frozenset()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"CPU: {model}; flags {' '.join(f for f in FLAGS if f in flags) or 'none of ' + ' '.join(FLAGS)}; "
            f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads; "
            f"load average {load}")


def rate(model: cc.ClipModel, image, question: cc.Question, n_masks: int) -> float:
    """Masks per second of a fixed-count RISE run (after a warm-up batch), end to end."""
    cc.explain(model, image, question, masks=8, cache=None)
    started = time.perf_counter()
    cc.explain(model, image, question, masks=n_masks, cache=None)
    return n_masks / (time.perf_counter() - started)


def first_frame(model: cc.ClipModel, image, question: cc.Question, n_masks: int) -> tuple[float, int]:
    """Seconds from the call to the first live frame, and that frame's masks."""
    cc.explain(model, image, question, masks=8, cache=None)  # warm-up: the captions' embeddings are cached
    seen: list[tuple[float, int]] = []
    started = time.perf_counter()
    cc.explain(model, image, question, masks=n_masks, cache=None,
               on_update=lambda a: seen.append((time.perf_counter() - started, a.details["masks"])) if not seen
               else None)
    return seen[0]


def cli_default(image_path: Path, question: cc.Question) -> dict:
    """`cocoa-clip explain IMAGE --corpus X --foil Y` with no --masks, on shapes-demo: its JSON details."""
    out = image_path.with_suffix(".overlay.png")
    result = subprocess.run([sys.executable, "-m", "cocoa_clip", "explain", str(image_path), "--model", "shapes-demo",
                             "--device", "cpu", "--corpus", question.corpus[0], "--foil", question.foil[0],
                             "--json", "--quiet", "--out", str(out)],
                            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(result.stdout.splitlines()[-1])["details"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B/32", help="shapes-demo, or a random CLIP of this architecture: "
                        + ", ".join(ARCHITECTURES))
    parser.add_argument("--masks", type=int, default=64, help="masks per precision for masks/s")
    parser.add_argument("--paper-masks", type=int, default=16, help="masks for the paper loop's masks/s")
    parser.add_argument("--auto-count", type=float, required=True, help="auto's mean stopping count (auto_promise)")
    parser.add_argument("--paper-count", type=float, required=True,
                        help="masks the paper's estimator needs for r >= 0.97 (auto_promise)")
    parser.add_argument("--scenes", type=int, default=3, help="shapes-demo: scenes the default runs on")
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    precisions = [p for p in ("fp32", "bf16", "int8") if p != "bf16" or loading.native_bf16()]
    if "bf16" not in precisions:
        print("bf16: refused on this CPU (no bf16 arithmetic: it would be emulated)")
    with tempfile.TemporaryDirectory() as folder:
        if args.model == "shapes-demo":
            models = {p: cc.load("shapes-demo", device="cpu", precision=p) for p in precisions}
        else:
            checkpoint = write_checkpoint(Path(folder) / "random.pt", args.model)
            models = {p: cc.load(weights=checkpoint, device="cpu", precision=p) for p in precisions}
        default = cc.models.resolve_precision("auto", torch.device("cpu"))
        image = cc.load_image(ASTRONAUT)
        rates = {}
        for precision, model in models.items():
            rates[precision] = rate(model, image, QUESTION, args.masks)
            print(f"{args.model} {precision}: {rates[precision]:.1f} masks/s ({args.masks} masks, "
                  f"batch {cc.engine.rise.default_batch_size(model)})", flush=True)
        paper = paper_loop(models["fp32"], image, args.paper_masks)
        print(f"paper's code (1 mask a pass, fp32): {paper['rate']:.1f} masks/s", flush=True)
        seconds, masks = first_frame(models[default], image, QUESTION, args.masks)
        print(f"first frame ({default}): {seconds:.2f} s after the call, {masks} masks", flush=True)
        ours, theirs = args.auto_count / rates[default], args.paper_count / paper["rate"]
        print(f"time to a 0.97 map: default (auto, {default}) {args.auto_count:.0f} masks / {rates[default]:.1f} "
              f"masks/s = {ours:.1f} s; paper's code {args.paper_count:.0f} masks / {paper['rate']:.1f} masks/s = "
              f"{theirs:.1f} s: {theirs / ours:.1f}x sooner", flush=True)
        if args.model != "shapes-demo":
            return
        from cocoa_clip.models.shapes import two_object_scene

        rng = np.random.default_rng(7)
        for index in range(args.scenes):
            scene = two_object_scene(rng, models["fp32"].n_px)
            path = Path(folder) / f"scene{index}.png"
            scene.image.save(path)
            question = cc.Question(corpus=[scene.objects[0].name], foil=[scene.objects[1].name])
            details = cli_default(path, question)
            print(f"cocoa-clip explain scene{index}.png --corpus '{question.corpus[0]}' --foil '{question.foil[0]}' "
                  f"(no --masks): {details['masks']} masks, stability {details['stability']}, "
                  f"{details['precision']}, RISE {details['pass_seconds']:.2f} s, call {details['seconds']:.2f} s; "
                  f"paper's code to a 0.97 map: {theirs:.1f} s ({theirs / details['seconds']:.0f}x)", flush=True)


if __name__ == "__main__":
    main()
