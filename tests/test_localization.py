"""The bundled shapes-demo CLIP knows its scenes, and COCOA localises with it (a CI-sized benchmark)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cocoa_clip as cc
from cocoa_clip.models.shapes import CLASS_NAMES, two_object_scene

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import localization  # noqa: E402


@pytest.fixture(scope="module")
def demo() -> cc.ClipModel:
    return cc.load("shapes-demo", device="cpu")


def test_demo_checkpoint_loads_through_the_normal_loader(demo):
    assert "shapes-demo" in cc.available_models()
    assert cc.models.BUNDLED["shapes-demo"].stat().st_size <= 10 * 2**20
    assert isinstance(demo.net, cc.models.clip_package().model.CLIP) and demo.n_px == 64


def test_demo_scores_its_own_captions_above_absent_colours(demo):
    """Zero-shot on held-out scenes: each object's caption beats every caption of a colour not in the scene.

    (The demo model learnt colour, not shape: "red circle" and "red square" embed alike; see docs/models.md.)
    """
    rng = np.random.default_rng(7)
    texts, _ = demo.encode_texts([cc.DEFAULT_TEMPLATE.format(name) for name in CLASS_NAMES])
    texts = texts / texts.norm(dim=-1, keepdim=True)
    hits = []
    for _ in range(20):
        scene = two_object_scene(rng, demo.n_px)
        with torch.no_grad():
            embedding = demo.encode_images(cc.engine.images.frame(scene.image, demo.n_px).canvas[None])[0]
        similarity = texts @ (embedding / embedding.norm())
        colours = {obj.color for obj in scene.objects}
        absent = [i for i, name in enumerate(CLASS_NAMES) if name.split()[0] not in colours]
        hits += [similarity[CLASS_NAMES.index(name)] > similarity[absent].max() for name in scene.names]
    assert np.mean(hits) >= 0.8


def test_cocoa_points_at_the_named_object(demo):
    results = localization.run(demo, scenes=12, masks=1000, methods=("rise",), curves=False, seed=2024)
    cocoa, label_free = results[("rise", "cocoa")]["pointing"], results[("rise", "label-free")]["pointing"]
    assert cocoa >= 0.8 and cocoa > label_free
    assert results[("rise", "cocoa")]["share"] > results[("-", "random")]["share"]
