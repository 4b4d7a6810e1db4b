"""RISE speed and fidelity: cocoa_clip's batched RISE against the paper-style loop.

    python benchmarks/rise_speed.py --device cpu --masks 2000
    python benchmarks/rise_speed.py --device cuda --masks 20000

Speed runs on a ViT-B/32-shaped CLIP with random weights (speed does not depend on the weight
values), written to disk and loaded through the normal loader. The paper-style loop pushes one
masked image at a time through the encoder in the dtype `clip.load` gives on the device (fp32 on
CPU, fp16 on CUDA), as the paper's RISE code does; it runs a shorter count and is reported per mask.

Fidelity (masks needed for a heatmap whose correlation with a 20,000-mask paper heatmap is
>= 0.97) needs a model whose maps mean something, so it runs on the bundled shapes-demo CLIP, on
a few two-object scenes, for each estimator and sampler (i.i.d. masks; antithetic pairs, a mask
and its complement). It also checks the split-half stability estimate against the real
correlation, and times `masks="auto"` to a stable map.
"""
from __future__ import annotations

import argparse
import datetime
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cocoa_clip as cc  # noqa: E402
from cocoa_clip.engine.images import blur, frame, load_image  # noqa: E402
from cocoa_clip.engine.masks import MaskSet, sample_masks  # noqa: E402
from cocoa_clip.engine.rise import DEFAULT_ESTIMATOR, ESTIMATORS, RiseSettings, estimate, masked_pass, scores, stability  # noqa: E402,E501
from cocoa_clip.engine.targets import resolve  # noqa: E402
from cocoa_clip.models import normalize  # noqa: E402
from cocoa_clip.models.random_models import ARCHITECTURES, write_checkpoint  # noqa: E402

ASTRONAUT = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"
QUESTION = cc.Question(corpus=["woman"], foil=["rocket"])
LADDER = (25, 50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 4000)


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


def encode(model: cc.ClipModel, framed, masks: MaskSet, batch: int = 256) -> torch.Tensor:
    """Embeddings of the framed picture under given masks (for samplers the library does not draw)."""
    content = framed.content.to(model.device)
    baseline = blur(content, model.n_px)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(masks), batch):
            mask = masks.render(start, min(start + batch, len(masks)), model.device)[:, None]
            chunks.append(model.encode_images(framed.with_content(baseline + mask * (content - baseline))))
    return torch.cat(chunks)


def antithetic(masks: MaskSet) -> MaskSet:
    """Each mask followed by its complement (same shift, every cell flipped)."""
    grids = torch.stack([masks.grids, ~masks.grids], 1).flatten(0, 1)
    return MaskSet(grids, masks.shifts.repeat_interleave(2, 0), masks.size, masks.p_keep)


def fidelity(device: torch.device, scenes: int, reference_masks: int, eval_masks: int, threshold: float = 0.97) -> dict:
    """On shapes-demo scenes against a reference-mask paper map: correlation by mask count for each
    estimator and sampler, the stability estimate's bias, "auto" runs (masks, time, real correlation)."""
    from cocoa_clip.models.shapes import two_object_scene

    model = cc.load("shapes-demo", device=device)
    rng = np.random.default_rng(2023)
    ladder = [n for n in LADDER if n <= eval_masks]
    curves: dict[tuple[str, str], list[list[float]]] = {}
    bias: dict[int, list[float]] = {}
    auto: dict[str, list[tuple[int, float, float, float]]] = {}
    agreement = []
    for _ in range(scenes):
        scene = two_object_scene(rng, model.n_px)
        question = cc.Question(corpus=[scene.objects[0].name], foil=[scene.objects[1].name])
        framed = frame(scene.image, model.n_px)
        reference_run = masked_pass(model, framed, RiseSettings(reference_masks, seed=10_001))
        target = resolve(model, question, reference_run.image_embedding)
        reference_scores = scores(reference_run, [target])
        reference = estimate(reference_run.masks, reference_scores, "paper")[0].flatten()
        agreement.append(correlation(estimate(reference_run.masks, reference_scores, "regression")[0], reference))
        run = masked_pass(model, framed, RiseSettings(eval_masks, seed=7))
        samplers = {"iid": (run.masks, scores(run, [target]))}
        pairs = antithetic(run.masks[:eval_masks // 4])
        samplers["antithetic"] = (pairs, target(encode(model, framed, pairs).double())[:, None])
        for sampler, (masks, values) in samplers.items():
            for estimator in ESTIMATORS:
                row = []
                for n in ladder:
                    if n > len(masks):
                        row.append(math.nan)
                        continue
                    # Disjoint runs of n masks (up to 4) averaged: less noise in the curve at small n.
                    starts = range(0, min(len(masks) - n, 3 * n) + 1, n)
                    row.append(float(np.mean([correlation(estimate(masks[s:s + n], values[s:s + n], estimator)[0],
                                                          reference) for s in starts])))
                    if sampler == "iid" and estimator == DEFAULT_ESTIMATOR:
                        bias.setdefault(n, []).extend(
                            float(stability(masks[s:s + n], values[s:s + n])[0])
                            - correlation(estimate(masks[s:s + n], values[s:s + n])[0], reference) for s in starts)
                curves.setdefault((sampler, estimator), []).append(row)
        for estimator in ESTIMATORS:  # time to a stable map: a fresh "auto" run, no cache
            started = time.perf_counter()
            answer = cc.explain(model, scene.image, question, masks="auto", estimator=estimator, seed=7,
                                stability=threshold, max_masks=eval_masks, cache=None)
            seconds = time.perf_counter() - started
            real = correlation(cc.engine.rise.estimate(run.masks[:answer.details["masks"]],
                                                samplers["iid"][1][:answer.details["masks"]], estimator)[0], reference)
            auto.setdefault(estimator, []).append((answer.details["masks"], seconds, answer.details["stability"], real))
    table = {key: np.nanmean(np.array(rows), 0) for key, rows in curves.items()}
    needed = {key: next((n for n, value in zip(ladder, row, strict=True) if value >= threshold), None)
              for key, row in table.items()}
    return {"ladder": ladder, "table": table, "needed": needed, "agreement": agreement,
            "bias": {n: float(np.mean(values)) for n, values in bias.items()}, "auto": auto}


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().double().cpu().numpy(), b.flatten().double().cpu().numpy())[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--masks", type=int, default=None, help="masks for our RISE (default 20000 GPU, 2000 CPU)")
    parser.add_argument("--paper-masks", type=int, default=None,
                        help="masks for the paper-style loop (default 2000 GPU, 64 CPU)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--precision", default="auto", choices=cc.models.PRECISIONS)
    parser.add_argument("--architecture", default="ViT-B/32", choices=tuple(ARCHITECTURES),
                        help="random CLIP for the speed part (tiny: a quick check of this script)")
    parser.add_argument("--scenes", type=int, default=4, help="scenes for the fidelity measurement (0 skips it)")
    parser.add_argument("--reference-masks", type=int, default=20_000)
    parser.add_argument("--eval-masks", type=int, default=1_000, help="masks per scene for the fidelity ladder")
    args = parser.parse_args()
    device = torch.device(args.device)
    n_masks = args.masks or (20_000 if device.type == "cuda" else 2_000)
    paper_masks = args.paper_masks or (2_000 if device.type == "cuda" else 64)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; date {datetime.date.today()}", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_checkpoint(Path(folder) / "random.pt", args.architecture)
        model = cc.load(weights=checkpoint, device=device, precision=args.precision)
        reference = cc.load(weights=checkpoint, device=device, precision="fp16" if device.type == "cuda" else "fp32")
    image = load_image(ASTRONAUT)

    fast = ours(model, image, n_masks, args.batch_size)
    print(f"cocoa_clip RISE ({args.architecture}): {n_masks} masks in {fast['seconds']:.3f} s = "
          f"{fast['rate']:.1f} masks/s ({fast['precision']}, batch {fast['batch']}), "
          f"peak memory {fast['peak_mb']:.0f} MB")
    print(f"asking again (cached pass, new question): {fast['requery_ms']:.1f} ms")
    slow = paper_loop(reference, image, paper_masks)
    print(f"paper-style loop: {paper_masks} masks in {slow['seconds']:.2f} s = {slow['rate']:.1f} masks/s "
          f"({slow['dtype']}, batch 1)")
    print(f"speed-up: {fast['rate'] / slow['rate']:.1f}x masks per second", flush=True)
    if args.scenes <= 0:
        return
    if not cc.models.BUNDLED["shapes-demo"].is_file():
        print("fidelity: skipped (the bundled shapes-demo model is missing)")
        return
    result = fidelity(device, args.scenes, args.reference_masks, args.eval_masks)
    print(f"\nfidelity on shapes-demo, {args.scenes} scenes: mean r with a {args.reference_masks}-mask paper map")
    print("sampler     estimator    masks to r>=0.97  " + " ".join(f"{n:>6}" for n in result["ladder"]))
    for (sampler, estimator), row in result["table"].items():
        needed = result["needed"][(sampler, estimator)]
        print(f"{sampler:<11} {estimator:<12} {str(needed or '> ' + str(args.eval_masks)):>16}  "
              + " ".join(f"{value:6.3f}" for value in row))
    print(f"regression vs paper at {args.reference_masks} masks (same masks): r = "
          + ", ".join(f"{value:.4f}" for value in result["agreement"]))
    print("stability estimate minus real r (regression, mean over runs; > 0 is optimistic): "
          + ", ".join(f"{n}: {value:+.3f}" for n, value in result["bias"].items()))
    for estimator, runs in result["auto"].items():
        masks, seconds, estimated, real = (np.array(column, dtype=float) for column in zip(*runs, strict=True))
        print(f"masks auto, {estimator}: masks {masks.astype(int).tolist()}, time to a stable map "
              f"{seconds.mean():.2f} s on average (shapes-demo, {device.type}), stability reported "
              f"{estimated.mean():.3f} vs real r {real.mean():.3f} (bias {np.mean(estimated - real):+.3f})")
    paper_n, ours_n = result["needed"][("iid", "paper")], result["needed"][("iid", DEFAULT_ESTIMATOR)]
    if paper_n and ours_n:
        ratio = (paper_n / slow["rate"]) / (ours_n / fast["rate"])
        print(f"time to a 0.97 map on the {args.architecture}-shaped model: paper loop + paper estimator "
              f"{paper_n / slow['rate']:.1f} s, cocoa_clip + {DEFAULT_ESTIMATOR} {ours_n / fast['rate']:.2f} s: "
              f"{ratio:.0f}x faster")


if __name__ == "__main__":
    main()
