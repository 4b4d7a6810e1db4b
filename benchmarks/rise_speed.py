"""RISE speed and fidelity: cocoa_clip's batched RISE against the paper-style loop.

    python benchmarks/rise_speed.py --device cpu --masks 2000
    python benchmarks/rise_speed.py --device cuda --masks 20000

Speed runs on a ViT-B/32-shaped CLIP with random weights (speed does not depend on the weight
values), written to disk and loaded through the normal loader. The paper-style loop pushes one
masked image at a time through the encoder in the dtype `clip.load` gives on the device (fp32 on
CPU, fp16 on CUDA), as the paper's RISE code does; it runs a shorter count and is reported per mask.

Fidelity (masks needed for a heatmap whose correlation with a 20,000-mask heatmap is >= 0.97)
needs a model whose maps mean something, so it runs on the bundled shapes-demo CLIP, on a few
two-object scenes, for both estimators.
"""
from __future__ import annotations

import argparse
import datetime
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cocoa_clip as cc  # noqa: E402
from cocoa_clip.images import blur, frame, load_image  # noqa: E402
from cocoa_clip.masks import sample_masks  # noqa: E402
from cocoa_clip.models import normalize  # noqa: E402
from cocoa_clip.random_models import write_checkpoint  # noqa: E402
from cocoa_clip.rise import RiseSettings, masked_pass, saliency  # noqa: E402
from cocoa_clip.targets import resolve  # noqa: E402

ASTRONAUT = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"
QUESTION = cc.Question(corpus=["woman"], foil=["rocket"])
LADDER = (250, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 20000)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS


def ours(model: cc.ClipModel, image, n_masks: int, batch_size: int | None) -> dict:
    """End to end: masks, blur, forward passes, accumulation, heatmap at the image's size."""
    cc.explain(model, image, QUESTION, masks=min(n_masks, 256), batch_size=batch_size, cache=None)  # warm-up
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    sync(model.device)
    started = time.perf_counter()
    answer = cc.explain(model, image, QUESTION, masks=n_masks, batch_size=batch_size, cache=None)
    sync(model.device)
    seconds = time.perf_counter() - started
    cache = cc.PassCache()
    cc.explain(model, image, QUESTION, masks=n_masks, batch_size=batch_size, cache=cache)
    requeries = []
    for _ in range(3):
        started = time.perf_counter()
        again = cc.explain(model, image, QUESTION.swapped(), masks=n_masks, cache=cache)
        sync(model.device)
        requeries.append(time.perf_counter() - started)
        assert again.details["cached"]
    requery = float(np.median(requeries))
    return {"seconds": seconds, "rate": n_masks / seconds, "peak_mb": peak_memory_mb(model.device),
            "requery_ms": requery * 1e3, "batch": answer.details["batch_size"], "precision": model.precision}


def paper_loop(model: cc.ClipModel, image, n_masks: int) -> dict:
    """One masked image per forward pass, masks generated up front, as the paper's RISE code."""
    framed = frame(load_image(image), model.n_px, "crop")
    canvas = framed.canvas.to(model.device)
    baseline = blur(canvas, model.n_px)
    masks = sample_masks(n_masks, tuple(canvas.shape[1:])).render(0, n_masks, model.device)
    net = model.net  # in clip.load's dtype: fp32 on CPU, fp16 on CUDA
    with torch.no_grad():
        target = resolve(model, QUESTION, net.encode_image(normalize(canvas[None])).float()[0])
        heatmap = torch.zeros_like(masks[0])
        sync(model.device)
        started = time.perf_counter()
        for mask in masks:
            masked = canvas * mask + baseline * (1 - mask)
            score = target(net.encode_image(normalize(masked[None])).float())[0]
            heatmap += score * mask
        heatmap /= n_masks * 0.5
        sync(model.device)
    seconds = time.perf_counter() - started
    dtype = str(next(net.parameters()).dtype).replace("torch.", "")
    return {"seconds": seconds, "rate": n_masks / seconds, "dtype": dtype}


def masks_for_fidelity(device: torch.device, scenes: int, reference_masks: int, threshold: float = 0.97) -> dict | None:
    """Masks each estimator needs to reach `threshold` mean correlation with a reference-mask map."""
    if not cc.models.BUNDLED["shapes-demo"].is_file():
        return None
    from cocoa_clip.shapes import two_object_scene

    model = cc.load("shapes-demo", device=device)
    rng = np.random.default_rng(2023)
    ladder = [n for n in LADDER if n <= reference_masks]
    correlations = {"paper": np.zeros(len(ladder)), "centered": np.zeros(len(ladder))}
    for _ in range(scenes):
        scene = two_object_scene(rng, model.n_px)
        question = cc.Question(corpus=[scene.objects[0].name], foil=[scene.objects[1].name])
        framed = frame(scene.image, model.n_px)
        reference_run = masked_pass(model, framed, RiseSettings(reference_masks, seed=10_001))
        target = resolve(model, question, reference_run.image_embedding)
        reference = saliency(reference_run, [target], "paper")[0].flatten().cpu().numpy()
        run = masked_pass(model, framed, RiseSettings(ladder[-1], seed=7))
        for estimator, values in correlations.items():
            for index, n in enumerate(ladder):
                heatmap = saliency(run.head(n), [target], estimator)[0].flatten().cpu().numpy()
                values[index] += np.corrcoef(heatmap, reference)[0, 1] / scenes

    def first_above(values: np.ndarray) -> int | None:
        reached = [n for n, value in zip(ladder, values, strict=True) if value >= threshold]
        return reached[0] if reached else None

    return {name: {"needed": first_above(values), "curve": dict(zip(ladder, np.round(values, 3).tolist(), strict=True))}
            for name, values in correlations.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--masks", type=int, default=None, help="masks for our RISE (default 20000 GPU, 2000 CPU)")
    parser.add_argument("--paper-masks", type=int, default=None,
                        help="masks for the paper-style loop (default 2000 GPU, 64 CPU)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--precision", default="auto", choices=cc.models.PRECISIONS)
    parser.add_argument("--scenes", type=int, default=8, help="scenes for the fidelity measurement (0 skips it)")
    parser.add_argument("--reference-masks", type=int, default=20_000)
    args = parser.parse_args()
    device = torch.device(args.device)
    n_masks = args.masks or (20_000 if device.type == "cuda" else 2_000)
    paper_masks = args.paper_masks or (2_000 if device.type == "cuda" else 64)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; date {datetime.date.today()}")

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_checkpoint(Path(folder) / "vit-b-32-random.pt", "ViT-B/32")
        model = cc.load(weights=checkpoint, device=device, precision=args.precision)
        reference = cc.load(weights=checkpoint, device=device, precision="fp16" if device.type == "cuda" else "fp32")
    image = load_image(ASTRONAUT)

    fast = ours(model, image, n_masks, args.batch_size)
    print(f"cocoa_clip RISE: {n_masks} masks in {fast['seconds']:.3f} s = {fast['rate']:.1f} masks/s "
          f"({fast['precision']}, batch {fast['batch']}), peak memory {fast['peak_mb']:.0f} MB")
    print(f"asking again (cached pass, new question): {fast['requery_ms']:.1f} ms")
    slow = paper_loop(reference, image, paper_masks)
    print(f"paper-style loop: {paper_masks} masks in {slow['seconds']:.2f} s = {slow['rate']:.1f} masks/s "
          f"({slow['dtype']}, batch 1)")
    print(f"speed-up: {fast['rate'] / slow['rate']:.1f}x masks per second")

    if args.scenes > 0:
        fidelity = masks_for_fidelity(device, args.scenes, args.reference_masks)
        if fidelity is None:
            print("fidelity: skipped (the bundled shapes-demo model is missing)")
        else:
            for estimator, result in fidelity.items():
                print(f"fidelity, {estimator} estimator: {result['needed']} masks for r >= 0.97 "
                      f"with a {args.reference_masks}-mask map (shapes-demo, {args.scenes} scenes); "
                      f"r by masks: {result['curve']}")
            paper_n, centered_n = fidelity["paper"]["needed"], fidelity["centered"]["needed"]
            if paper_n and centered_n:
                ratio = (paper_n / slow["rate"]) / (centered_n / fast["rate"])
                print(f"time to a trustworthy map: paper loop + paper estimator {paper_n / slow['rate']:.1f} s, "
                      f"cocoa_clip + centered {centered_n / fast['rate']:.1f} s: {ratio:.1f}x faster")


if __name__ == "__main__":
    main()
