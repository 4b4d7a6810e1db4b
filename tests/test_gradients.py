import numpy as np
import pytest
import torch
from PIL import Image

import cocoa_clip as cc
from cocoa_clip.engine.gradients import GradientSettings, attribute
from cocoa_clip.engine.gradients import precision as gradient_precision
from cocoa_clip.engine.images import blur, frame
from cocoa_clip.engine.targets import resolve

DOG_CAT = cc.Question(corpus=["dog"], foil=["cat"])


def target_and_framed(model, picture):
    framed = frame(picture, model.n_px)
    with torch.no_grad():
        embedding = model.encode_images(framed.canvas[None])[0]
    return resolve(model, DOG_CAT, embedding), framed


def test_integrated_gradients_is_complete(tiny, photo):
    """Attributions sum to target(picture) - target(blurred picture)."""
    target, framed = target_and_framed(tiny, photo)
    heatmap, delta = attribute(tiny, framed, target, "integrated-gradients", GradientSettings(n_steps=100))
    with torch.no_grad():
        baseline = framed.with_content(blur(framed.content[None], tiny.n_px))
        expected = (target(tiny.encode_images(framed.canvas[None])) - target(tiny.encode_images(baseline))).item()
    assert abs(expected) > 1e-4
    assert heatmap.sum().item() == pytest.approx(expected, rel=0.02, abs=1e-6)
    assert abs(delta) < 0.02 * abs(expected) + 1e-6


def test_gradient_shap_is_seeded_and_leaves_the_global_generator_alone(tiny, photo):
    target, framed = target_and_framed(tiny, photo)
    torch.manual_seed(5)
    expected_next = torch.rand(2)
    torch.manual_seed(5)
    first, _ = attribute(tiny, framed, target, "gradient-shap", GradientSettings(n_samples=8, seed=1))
    assert torch.equal(torch.rand(2), expected_next)
    second, _ = attribute(tiny, framed, target, "gradient-shap", GradientSettings(n_samples=8, seed=1))
    third, _ = attribute(tiny, framed, target, "gradient-shap", GradientSettings(n_samples=8, seed=2))
    assert torch.equal(first, second) and not torch.equal(first, third)


def test_swapping_negates_gradient_maps(tiny, photo):
    forward, backward = cc.explain(tiny, photo, [DOG_CAT, DOG_CAT.swapped()], method="integrated-gradients")
    np.testing.assert_allclose(backward.heatmap, -forward.heatmap, rtol=1e-4, atol=1e-9)
    assert forward.scale == "signed"


def test_the_map_covers_the_picture_and_the_padding_gets_none(planted):
    """A tall picture (64 x 32) sits between two padding strips 16 px wide. The planted encoder reads canvas
    pixels [0:20, 0:20], so only the picture's pixels [0:20, 0:4] may get attribution, and they get all of it."""
    tall = Image.fromarray((np.random.default_rng(0).integers(0, 2, (64, 32, 1)) * 255).repeat(3, 2).astype(np.uint8))
    answer = cc.explain(planted, tall, DOG_CAT, method="integrated-gradients")
    assert answer.heatmap.shape == (64, 32)
    outside = np.ones((64, 32), dtype=bool)
    outside[:20, :4] = False
    assert (answer.heatmap[outside] == 0).all()
    assert (answer.heatmap[:20, :4] != 0).mean() > 0.5
    framed = frame(tall, planted.n_px)
    with torch.no_grad():
        baseline = framed.with_content(blur(framed.content[None], planted.n_px))
        target = resolve(planted, DOG_CAT, None)
        expected = (target(planted.encode_images(framed.canvas[None])) - target(planted.encode_images(baseline))).item()
    assert answer.heatmap.sum() == pytest.approx(expected, rel=0.02)


def test_bad_gradient_settings():
    with pytest.raises(cc.SettingsError, match="n_steps"):
        GradientSettings(n_steps=0)
    with pytest.raises(cc.SettingsError, match="stdev"):
        GradientSettings(stdev=-1)


def test_explain_seed_drives_gradient_shap_noise(tiny, photo):
    maps = [cc.explain(tiny, photo, DOG_CAT, method="gradient-shap", seed=s,
                       gradient=GradientSettings(n_samples=6)).heatmap for s in (1, 1, 2)]
    np.testing.assert_array_equal(maps[0], maps[1])
    assert not np.array_equal(maps[0], maps[2])


@pytest.mark.parametrize("seed", [-1, 2 ** 64, 1.5])
def test_gradient_methods_check_the_seed(tiny, photo, seed):
    with pytest.raises(cc.SettingsError, match="seed must be a whole number"):
        cc.explain(tiny, photo, DOG_CAT, method="gradient-shap", seed=seed)


def test_score_and_map_share_the_precision_of_the_gradients(tiny_checkpoint, photo):
    """A bf16-autocast model still takes gradients in fp32: the reported score is the fp32 one."""
    bf16 = cc.load(weights=tiny_checkpoint, device="cpu", precision="bf16")
    answer = cc.explain(bf16, photo, DOG_CAT, method="integrated-gradients")
    fp32 = cc.load(weights=tiny_checkpoint, device="cpu", precision="fp32")
    expected = cc.explain(fp32, photo, DOG_CAT, method="integrated-gradients")
    assert answer.details["precision"] == "fp32"
    assert answer.score == pytest.approx(expected.score, abs=1e-7)
    np.testing.assert_allclose(answer.heatmap, expected.heatmap, atol=1e-7)


def test_integrated_gradients_runs_from_the_chosen_baseline(tiny, photo):
    """Completeness against a black picture: the map sums to target(picture) - target(black content)."""
    target, framed = target_and_framed(tiny, photo)
    heatmap, _ = attribute(tiny, framed, target, "integrated-gradients",
                           GradientSettings(n_steps=100, baseline="black"))
    with torch.no_grad():
        black = framed.with_content(torch.zeros_like(framed.content)[None])
        expected = (target(tiny.encode_images(framed.canvas[None])) - target(tiny.encode_images(black))).item()
    assert heatmap.sum().item() == pytest.approx(expected, rel=0.02, abs=1e-6)




@pytest.mark.parametrize(("precision", "weights"), [("fp32", "fp32"), ("bf16", "fp32"), ("bf16", "fp16"),
                                                    ("fp16", "fp16")])
def test_precision_reports_say_what_ran(tiny_checkpoint, photo, precision, weights):
    """RISE reports its batched precision, gradients the dtype of the weights they run in. fp16 weights are faked
    on the CPU, where they cannot run (the old CUDA bf16 model held fp16 weights and its gradients reported fp32)."""
    model = cc.load(weights=tiny_checkpoint, device="cpu", precision="bf16" if precision == "bf16" else "fp32")
    assert next(model.net.parameters()).dtype == torch.float32  # bf16 autocast runs over fp32 weights
    if weights == "fp32":
        assert cc.explain(model, photo, DOG_CAT, masks=20, cache=None).details["precision"] == precision
        ig = cc.explain(model, photo, DOG_CAT, method="integrated-gradients", gradient=GradientSettings(n_steps=2))
        assert ig.details["precision"] == "fp32"
    model.net.to(torch.float16 if weights == "fp16" else torch.float32)
    model.precision = precision
    assert gradient_precision(model) == weights
