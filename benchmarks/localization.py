"""Zero-shot localisation on held-out two-object scenes with the bundled shapes-demo CLIP.

    python benchmarks/localization.py --scenes 100 --masks 2000

Each scene holds objects A and B of different colour and shape. Every scene is asked
(A rather than B) and (B rather than A); each target explains its own question, the one the
paper's ablations ask:

    cocoa                   corpus "A", foil "B"
    corpus                  corpus "A"
    contrastive-label-free  the image itself, foil "B"
    label-free              the image itself (the same map for both questions)

The named object is A. Reported per target and method: the pointing game (the map's maximum on
A, 1-pixel tolerance), the share of positive attribution inside A, and insertion/deletion areas
for (A rather than B) as gains over a random pixel order (insertion AUC - random insertion AUC,
random deletion AUC - deletion AUC; both higher is better) of the paper's two measures:
contrastive corpus similarity and the zero-shot probability of A against B (its corpus majority
probability). Raw areas would cancel: the two questions of a scene measure opposite things.
"random" is a map of uniform noise.

Every method (RISE, the gradient methods, and the vision-transformer methods legrad and
attention-relevance; shapes-demo is a ViT) then meets the model-randomisation sanity check
(Adebayo et al., 2018): the same scenes with every weight redrawn; a method whose maps still point
at the object explains the picture, not what the model learnt.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cocoa_clip as cc  # noqa: E402
from cocoa_clip.engine.evaluate import MEASURES, insertion_deletion, pointing_hit, positive_share  # noqa: E402
from cocoa_clip.models.random_models import randomised  # noqa: E402
from cocoa_clip.models.shapes import two_object_scene  # noqa: E402

TARGETS = ("cocoa", "corpus", "contrastive-label-free", "label-free")
SEED = 31_337  # held out: training draws scenes from other seeds


def questions(a: str, b: str) -> dict[str, cc.Question]:
    """Each target's question about object `a` when `b` is the other object."""
    return {
        "cocoa": cc.Question(corpus=[a], foil=[b]),
        "corpus": cc.Question(corpus=[a], target="corpus"),
        "contrastive-label-free": cc.Question(foil=[b], target="contrastive-label-free"),
        "label-free": cc.Question(target="label-free"),
    }


def run(model: cc.ClipModel, scenes: int = 100, masks: int = 2000, methods: tuple[str, ...] = cc.METHODS,
        steps: int = 20, seed: int = SEED, curves: bool = True) -> dict:
    """Scores per (method, target): mean pointing, positive share, and (when `curves`) AUCs."""
    rng = np.random.default_rng(seed)
    noise = np.random.default_rng(seed + 1)
    totals: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _ in range(scenes):
        scene = two_object_scene(rng, model.n_px)
        for first, second in ((0, 1), (1, 0)):
            a, b = scene.objects[first].name, scene.objects[second].name
            region = scene.masks[first]
            measure = cc.Question(corpus=[a], foil=[b])
            asked = questions(a, b)
            for method in methods:
                answers = cc.explain(model, scene.image, list(asked.values()), method=method, masks=masks)
                rows = dict(zip(TARGETS, answers, strict=True))
                if method == methods[0]:
                    rows["random"] = cc.Explanation(noise.random(region.shape).astype(np.float32), 0.0,
                                                    scene.image, measure, "random")
                for target, answer in rows.items():
                    key = ("-" if target == "random" else method, target)
                    totals[key]["pointing"].append(pointing_hit(answer.heatmap, region))
                    totals[key]["share"].append(positive_share(answer.heatmap, region))
                    for kind in MEASURES if curves and target != "random" else ():
                        aucs = insertion_deletion(model, scene.image, answer.heatmap, measure, steps=steps,
                                                  measure=kind).aucs()
                        totals[key][f"{kind} insertion"].append(aucs["insertion_auc"] - aucs["random_insertion_auc"])
                        totals[key][f"{kind} deletion"].append(aucs["random_deletion_auc"] - aucs["deletion_auc"])
    return {key: {name: float(np.mean(values)) for name, values in metrics.items()} for key, metrics in totals.items()}


def compare_accuracy(model: cc.ClipModel, scenes: int = 100, masks: int = 2000, seed: int = SEED) -> float:
    """`cc.compare` with the two object names: the mean share of each object's pixels that go to its
    own caption (chance: 0.5)."""
    rng = np.random.default_rng(seed)
    shares = []
    for _ in range(scenes):
        scene = two_object_scene(rng, model.n_px)
        comparison = cc.compare(model, scene.image, [obj.name for obj in scene.objects], masks=masks)
        shares += [float(np.mean(comparison.labels[mask] == index)) for index, mask in enumerate(scene.masks)]
    return float(np.mean(shares))


def table(results: dict) -> str:
    heads = {"pointing": "pointing game", "share": "positive share in object"}
    for kind in MEASURES:
        heads[f"{kind} insertion"] = f"{kind}: insertion AUC - random"
        heads[f"{kind} deletion"] = f"{kind}: random - deletion AUC"
    columns = [c for c in heads if c in next(iter(results.values()))]
    lines = ["| method | target | " + " | ".join(heads[c] for c in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for (method, target), metrics in results.items():
        lines.append(f"| {method} | {target} | " + " | ".join(f"{metrics[c]:.3f}" if c in metrics else "-"
                                                            for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--masks", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=20, help="points on each insertion/deletion curve")
    parser.add_argument("--methods", nargs="+", default=list(cc.METHODS), choices=cc.METHODS)
    parser.add_argument("--no-curves", action="store_true", help="skip insertion/deletion (much faster)")
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"))
    args = parser.parse_args()
    model = cc.load("shapes-demo", device=args.device)
    started = time.perf_counter()
    results = run(model, args.scenes, args.masks, tuple(args.methods), args.steps, curves=not args.no_curves)
    print(f"shapes-demo, {args.scenes} held-out scenes x 2 questions, RISE {args.masks} masks, "
          f"{model.precision} on {model.device}, {time.perf_counter() - started:.0f} s\n")
    print(table(results))
    if "rise" in args.methods:
        accuracy = compare_accuracy(model, args.scenes, args.masks)
        print(f"\nwhich caption where (cc.compare, the two object names): {accuracy:.1%} of each object's pixels "
              "go to its own caption (chance 50%)")
    sanity = run(randomised(model), args.scenes, args.masks, tuple(args.methods), curves=False)
    print("\nsanity check, the same scenes with shapes-demo's weights redrawn (Adebayo et al.): pointing game\n")
    print(sanity_table(results, sanity))


def sanity_table(trained: dict, redrawn: dict) -> str:
    """Pointing game per method and target with the trained weights and with the weights redrawn."""
    lines = ["| method | target | pointing, trained | pointing, weights redrawn |", "|---|---|---|---|"]
    for (method, target), metrics in trained.items():
        if method != "-":
            lines.append(f"| {method} | {target} | {metrics['pointing']:.2f} | "
                         f"{redrawn[(method, target)]['pointing']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
