"""Does `masks="auto"` keep its promise? How often an auto run stops below its stability target.

    python benchmarks/auto_promise.py --scenes 4 --seeds 25 --cache /tmp/auto_promise

On shapes-demo scenes, three questions a scene: a clear one (one object rather than the other), a
near-synonym foil (the same object, its shape in a neighbouring colour) and an absent object (a
colour and shape the scene does not have, rather than the second object). Each question's
converged map is the mean of two independent 20,000-mask maps (the default estimator). For each
of `--seeds` mask seeds, one pass serves the three questions; every stopping rule below is
replayed on that pass at the engine's own checkpoints, so all rules see the same masks. A run
ends below its target when the map it stops with correlates with the converged map below the
target (the target is the estimated correlation with the infinite-mask limit).

Passes are stored in --cache (scores only, a few MB) so the rules can be compared again without
the encoder. Forward passes dominate: about 40,000 masks a scene for the references plus up to
`--most` a seed.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cocoa_clip as cc  # noqa: E402
from cocoa_clip.engine import auto  # noqa: E402
from cocoa_clip.engine.images import frame  # noqa: E402
from cocoa_clip.engine.masks import MaskSet  # noqa: E402
from cocoa_clip.engine.rise import RiseSettings, estimate, masked_pass, scores, stability  # noqa: E402
from cocoa_clip.engine.targets import resolve  # noqa: E402
from cocoa_clip.models.shapes import COLORS, SHAPES, two_object_scene  # noqa: E402

REFERENCE_SEEDS = (10_001, 10_002)
NEIGHBOUR = {"red": "orange", "orange": "yellow", "yellow": "orange", "green": "yellow", "blue": "purple",
             "purple": "blue"}
KINDS = ("clear", "near-synonym foil", "absent object")
COUNTS = (100, 200, 300, 500, 750, 1000, 1500, 2000, 3000)


def questions(scene) -> list[cc.Question]:
    """The scene's clear, near-synonym and absent-object questions."""
    first, second = scene.objects
    present = {o.color for o in scene.objects}, {o.shape for o in scene.objects}
    absent = next(f"{c} {s}" for c in COLORS for s in SHAPES if c not in present[0] and s not in present[1])
    return [cc.Question(corpus=[first.name], foil=[second.name]),
            cc.Question(corpus=[first.name], foil=[f"{NEIGHBOUR[first.color]} {first.shape}"]),
            cc.Question(corpus=[absent], foil=[second.name])]


def scene_scores(model, scene, seeds: range, most: int, reference_masks: int, path: Path | None) -> dict:
    """Scores of the three questions on the reference passes and on each seed's pass (cached in `path`)."""
    if path is not None and path.is_file():
        return dict(np.load(path))
    framed = frame(scene.image, model.n_px)
    out = {}
    targets = None
    for seed in (*REFERENCE_SEEDS, *seeds):
        run = masked_pass(model, framed, RiseSettings(reference_masks if seed in REFERENCE_SEEDS else most, seed=seed))
        targets = targets or [resolve(model, q, run.image_embedding) for q in questions(scene)]
        out[f"seed{seed}"] = scores(run, targets).cpu().numpy()
        print(f"  seed {seed}: {len(run.masks)} masks in {run.seconds:.0f} s", file=sys.stderr, flush=True)
    if path is not None:
        np.savez(path, **out)
    return out


def readings(size: tuple[int, int], values: np.ndarray, seed: int, points: list[int],
             reference: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Estimated stability and real correlation with `reference` at each checkpoint: two (P, Q) arrays."""
    masks = cc.engine.masks.sample_masks(len(values), size, seed=seed)
    values = torch.from_numpy(values)
    estimated, real = [], []
    for n in points:
        estimated.append(stability(masks[:n], values[:n]).numpy())
        maps = estimate(masks[:n], values[:n]).flatten(1).double()
        real.append([float(np.corrcoef(m.numpy(), r.numpy())[0, 1]) for m, r in zip(maps, reference, strict=True)])
    return np.array(estimated), np.array(real)


RULES = {  # name -> (first checkpoint, readings in a row at or above the target)
    "one reading from 64 (before)": (64, 1),
    "one reading from 128": (128, 1),
    "two in a row from 64": (64, 2),
    "two in a row from 128": (128, 2),
}


def replay(points: list[int], estimated: np.ndarray, target: float, first: int, in_a_row: int) -> int | None:
    """The checkpoint index where a rule stops on one question's readings (None: not by the last one)."""
    streak = 0
    for index, (n, value) in enumerate(zip(points, estimated, strict=True)):
        if n < first:
            continue
        streak = streak + 1 if value >= target else 0
        if streak >= in_a_row:
            return index
    return None


def ladder(size: tuple[int, int], stored: dict, seeds: range, most: int, reference: torch.Tensor,
           counts: tuple[int, ...]) -> dict[str, list[float]]:
    """Mean correlation with the converged map of fixed-count maps of the clear question, per estimator and
    count: the seeds' passes pooled (independent masks all), up to 4 disjoint runs of each count."""
    pooled = [cc.engine.masks.sample_masks(most, size, seed=seed) for seed in seeds]
    masks = MaskSet(torch.cat([m.grids for m in pooled]), torch.cat([m.shifts for m in pooled]), size, 0.5)
    values = torch.from_numpy(np.concatenate([stored[f"seed{seed}"] for seed in seeds]))[:, :1]
    curves = {}
    for estimator in ("paper", "regression"):
        curves[estimator] = [float(np.mean([
            np.corrcoef(estimate(masks[s:s + n], values[s:s + n], estimator)[0].flatten().double().numpy(),
                        reference[0].numpy())[0, 1] for s in range(0, min(len(masks) - n, 3 * n) + 1, n)]))
            if n <= len(masks) else float("nan") for n in counts]
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=25)
    parser.add_argument("--most", type=int, default=768, help="masks a seed's pass holds (rules replay up to it)")
    parser.add_argument("--reference-masks", type=int, default=20_000)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--precision", default="fp32", choices=cc.models.PRECISIONS)
    parser.add_argument("--cache", type=Path, default=None, help="folder for the passes' scores")
    args = parser.parse_args()
    model = cc.load("shapes-demo", device="cpu", precision=args.precision)
    print(f"auto's promise on shapes-demo ({model.precision}, CPU), {args.scenes} scenes x {len(KINDS)} questions "
          f"x {args.seeds} seeds; target {args.target}; converged map: mean of two {args.reference_masks:,}-mask "
          f"maps; {datetime.date.today()}", flush=True)
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    points = [n for n in RiseSettings("auto", max_masks=args.most).checkpoints(torch.device("cpu"))]
    rng = np.random.default_rng(2026)
    runs = []  # (kind, rule, stopped at masks or None, real r at the stop)
    agreement, curves = [], []
    for index in range(args.scenes):
        scene = two_object_scene(rng, model.n_px)
        size = frame(scene.image, model.n_px).content.shape[1:]
        path = args.cache / f"scene{index}_{args.precision}_{args.seeds}_{args.most}.npz" if args.cache else None
        print(f"scene {index}: {scene.names}", file=sys.stderr, flush=True)
        stored = scene_scores(model, scene, range(args.seeds), args.most, args.reference_masks, path)
        halves = [estimate(cc.engine.masks.sample_masks(args.reference_masks, size, seed=seed),
                           torch.from_numpy(stored[f"seed{seed}"])).flatten(1).double() for seed in REFERENCE_SEEDS]
        reference = (halves[0] + halves[1]) / 2
        agreement += [float(np.corrcoef(a.numpy(), b.numpy())[0, 1]) for a, b in zip(*halves, strict=True)]
        curves.append(ladder(size, stored, range(args.seeds), args.most, reference, COUNTS))
        for seed in range(args.seeds):
            estimated, real = readings(size, stored[f"seed{seed}"], seed, points, reference)
            for q, kind in enumerate(KINDS):
                for rule, (first, in_a_row) in RULES.items():
                    stop = replay(points, estimated[:, q], args.target, first, in_a_row)
                    runs.append((kind, rule, None if stop is None else points[stop],
                                 None if stop is None else real[stop, q]))
    print(f"the two {args.reference_masks:,}-mask maps of each question correlate at "
          f"{min(agreement):.4f} to {max(agreement):.4f}")
    print(f"{'rule':<30} {'questions':<18} {'runs':>5} {'below':>6} {'share':>6} {'worst r':>8} "
          f"{'mean masks':>10} {'not stopped':>11}")
    for rule in RULES:
        for kinds in [(kind,) for kind in KINDS] + [KINDS]:
            rows = [r for r in runs if r[1] == rule and r[0] in kinds]
            stopped = [r for r in rows if r[2] is not None]
            below = [r for r in stopped if r[3] < args.target]
            worst = min((r[3] for r in stopped), default=float("nan"))
            mean = np.mean([r[2] for r in stopped]) if stopped else float("nan")
            label = "all" if len(kinds) > 1 else kinds[0]
            print(f"{rule:<30} {label:<18} {len(rows):>5} {len(below):>6} {len(below) / max(1, len(stopped)):>6.1%} "
                  f"{worst:>8.3f} {mean:>10.0f} {len(rows) - len(stopped):>11}")
    print(f"engine rule: first check at {auto.FIRST_CHECK} masks, {auto.IN_A_ROW} readings in a row")
    print("fixed counts, clear questions: mean r with the converged map (" + ", ".join(map(str, COUNTS)) + " masks)")
    for estimator in ("paper", "regression"):
        row = np.nanmean([c[estimator] for c in curves], 0)
        needed = next((n for n, r in zip(COUNTS, row, strict=True) if r >= args.target), None)
        print(f"  {estimator:<10} " + " ".join(f"{r:.3f}" for r in row)
              + f"; masks for r >= {args.target}: {needed or '> ' + str(COUNTS[-1])}")


if __name__ == "__main__":
    main()
