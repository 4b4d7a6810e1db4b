import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PLANTED_REGION, PlantedNet
from PIL import Image
from test_masks import reference_mask

import cocoa_clip as cc
from cocoa_clip.engine.images import blur, frame
from cocoa_clip.engine.rise import PassCache, RiseSettings, masked_pass, saliency
from cocoa_clip.engine.targets import resolve
from cocoa_clip.models import MEAN, STD, ClipModel, clip_package

DOG_CAT = cc.Question(corpus=["dog"], foil=["cat"])


def test_matches_a_plain_one_mask_at_a_time_reference(tiny, photo):
    """Batching, grid-resolution accumulation and the cache change nothing beyond float error."""
    answer = cc.explain(tiny, photo, DOG_CAT, masks=60, seed=4, estimator="paper", batch_size=16, cache=None)
    expected = reference_rise(tiny, photo, 60, seed=4, baseline=blur)
    np.testing.assert_allclose(answer.heatmap, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def reference_rise(model, photo, n_masks: int, seed: int, baseline) -> np.ndarray:
    """The paper's RISE map, one masked picture per forward pass: masked pixels show baseline(content, n_px)."""
    framed = frame(photo, model.n_px)
    content = framed.content
    behind = baseline(content, model.n_px)
    masks = cc.engine.rise.sample_masks(n_masks, tuple(content.shape[1:]), seed=seed)
    with torch.no_grad():
        target = resolve(model, DOG_CAT, model.encode_images(framed.canvas[None])[0])
        total = torch.zeros(content.shape[1:])
        for grid, shift in zip(masks.grids, masks.shifts, strict=True):
            mask = reference_mask(grid, shift, masks.size, masks.cells)
            pixels = framed.with_content((behind + mask * (content - behind))[None])
            total += target(model.encode_images(pixels))[0] * mask
    return cc.engine.images.unframe(total / (n_masks * 0.5), framed)


def test_reproducible_with_a_seed_and_independent_of_batch_size(tiny, photo):
    runs = [cc.explain(tiny, photo, DOG_CAT, masks=200, seed=s, batch_size=b, cache=None)
            for s, b in ((3, 7), (3, 200), (4, 200))]
    np.testing.assert_allclose(runs[0].heatmap, runs[1].heatmap, rtol=1e-4, atol=1e-7)
    assert not np.allclose(runs[1].heatmap, runs[2].heatmap)


def test_swapping_corpus_and_foil_negates_score_and_map(tiny, photo):
    for estimator in ("paper", "centered"):
        forward, backward = cc.explain(tiny, photo, [DOG_CAT, DOG_CAT.swapped()], masks=150, estimator=estimator,
                                       cache=None)
        assert backward.score == pytest.approx(-forward.score, abs=1e-6)
        np.testing.assert_allclose(backward.heatmap, -forward.heatmap, atol=1e-6)
        assert np.abs(forward.heatmap).max() > 0


def test_many_questions_in_one_pass_equal_separate_passes(tiny, photo):
    questions = [DOG_CAT, cc.Question(corpus=["a red car"], foil_preset="cifar100"),
                 cc.Question(target="label-free"), cc.Question(corpus=["tree"], target="corpus", similarity="dot")]
    together = cc.explain(tiny, photo, questions, masks=120, cache=None)
    for question, joint in zip(questions, together, strict=True):
        alone = cc.explain(tiny, photo, question, masks=120, cache=None)
        np.testing.assert_allclose(joint.heatmap, alone.heatmap, rtol=1e-5, atol=1e-7)
        assert joint.score == pytest.approx(alone.score)


def test_a_cached_second_question_runs_no_image_forward_pass(planted, noise_square):
    cache = PassCache()
    first = cc.explain(planted, noise_square, DOG_CAT, masks=100, cache=cache)
    calls = planted.net.calls
    second = cc.explain(planted, noise_square, DOG_CAT.swapped(), masks=100, cache=cache)
    assert planted.net.calls == calls
    assert second.details["cached"] and not first.details["cached"]
    fresh = cc.explain(planted, noise_square, DOG_CAT.swapped(), masks=100, cache=None)
    np.testing.assert_allclose(second.heatmap, fresh.heatmap, atol=1e-7)
    # Other mask settings are another entry.
    cc.explain(planted, noise_square, DOG_CAT, masks=100, seed=1, cache=cache)
    assert planted.net.calls > calls and len(cache) == 2


def test_a_second_picture_of_the_same_size_gets_its_own_map(planted, noise_square):
    """The cache is keyed by the pixels: a new upload of the same size never gets another picture's pass."""
    other = Image.fromarray(255 - np.asarray(noise_square)[::-1])
    cache = PassCache()
    cc.explain(planted, noise_square, DOG_CAT, masks=100, cache=cache)
    second = cc.explain(planted, other, DOG_CAT, masks=100, cache=cache)
    fresh = cc.explain(planted, other, DOG_CAT, masks=100, cache=None)
    assert not second.details["cached"] and len(cache) == 2
    np.testing.assert_array_equal(second.heatmap, fresh.heatmap)
    assert second.score == fresh.score


def test_the_cache_evicts_the_least_recently_used_pass(planted, noise_square):
    """Room for two passes: after asking about A again, a third picture pushes out B, not A."""
    pictures = [Image.fromarray(np.roll(np.asarray(noise_square), shift, axis=1)) for shift in (0, 1, 2)]
    size = masked_pass(planted, frame(pictures[0], planted.n_px), RiseSettings(50)).nbytes
    cache = PassCache(max_bytes=int(size * 2.5))

    def cached(index: int) -> bool:
        return cc.explain(planted, pictures[index], DOG_CAT, masks=50, cache=cache).details["cached"]

    assert [cached(0), cached(1), cached(0), cached(2)] == [False, False, True, False]
    assert cached(0) and not cached(1)


def test_cache_stays_within_its_byte_budget(tiny, photo):
    framed = frame(photo, tiny.n_px)
    run = masked_pass(tiny, framed, RiseSettings(50))
    cache = PassCache(max_bytes=int(run.nbytes * 2.5))
    for seed in range(4):
        cache.put(("key", seed), run)
    assert len(cache) == 2 and cache.get(("key", 0)) is None
    assert torch.equal(cache.get(("key", 3)).embeddings, run.embeddings)


@pytest.mark.parametrize("method", ["rise", "integrated-gradients"])
def test_planted_region_gets_the_maximum(planted, noise_square, method):
    answer = cc.explain(planted, noise_square, DOG_CAT, method=method, masks=1500, cache=None)
    row, col = np.unravel_index(np.argmax(answer.heatmap), answer.heatmap.shape)
    assert row < PLANTED_REGION[0].stop and col < PLANTED_REGION[1].stop
    inside = answer.heatmap[PLANTED_REGION].mean()
    outside = answer.heatmap[30:, 30:].mean()
    assert inside > outside


def test_out_of_memory_halves_the_batch_and_carries_on(tiny, photo, monkeypatch):
    framed = frame(photo, tiny.n_px)
    expected = masked_pass(tiny, framed, RiseSettings(100, batch_size=100))
    encode = tiny.net.encode_image
    sizes = []

    def small_memory(pixels):
        sizes.append(len(pixels))
        if len(pixels) > 24:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return encode(pixels)

    monkeypatch.setattr(tiny.net, "encode_image", small_memory)
    run = masked_pass(tiny, framed, RiseSettings(100, batch_size=100))
    assert run.batch_size == 12 and 100 in sizes and 50 in sizes and 25 in sizes
    torch.testing.assert_close(run.embeddings, expected.embeddings, rtol=1e-4, atol=1e-5)


def test_time_budget_stops_early_and_a_later_run_resumes_the_pass(tiny, photo):
    cache = PassCache()
    answer = cc.explain(tiny, photo, DOG_CAT, masks=20_000, batch_size=10, time_budget=1.0, cache=cache)
    done = answer.details["masks"]
    assert not answer.details["complete"] and 0 < done < 20_000 and done % 10 == 0
    assert np.isfinite(answer.heatmap).all() and len(cache) == 1
    calls = []
    resumed = cc.explain(tiny, photo, DOG_CAT, masks=done + 25, batch_size=10, cache=cache,
                         progress=lambda d, t: calls.append(d))
    fresh = cc.explain(tiny, photo, DOG_CAT, masks=done + 25, cache=None)
    assert calls[-3:] == [done + 10, done + 20, done + 25] and not resumed.details["cached"]
    np.testing.assert_allclose(resumed.heatmap, fresh.heatmap, rtol=1e-4, atol=1e-7)
    shorter = cc.explain(tiny, photo, DOG_CAT, masks=done - 5, cache=cache)  # a prefix of the stored pass
    assert shorter.details["cached"] and shorter.details["masks"] == done - 5
    again = cc.explain(tiny, photo, DOG_CAT, masks=done + 25, cache=cache)  # the cache kept the longer pass
    assert again.details["cached"] and len(cache) == 1


def test_progress_reports_masks_done(tiny, photo):
    seen = []
    cc.explain(tiny, photo, DOG_CAT, masks=100, batch_size=30, progress=lambda d, t: seen.append((d, t)), cache=None)
    assert seen == [(30, 100), (60, 100), (90, 100), (100, 100)]


class LinearNet(PlantedNet):
    """embedding = b + <w, pixels> u: with dot similarity "dog rather than cat" scores 4 <w, pixels>,
    linear in the pixels, so RISE's expected map follows from the mask distribution alone."""

    def __init__(self, weights: torch.Tensor):
        super().__init__(PLANTED_REGION)
        self.register_buffer("w", weights)

    def encode_image(self, normalised: torch.Tensor) -> torch.Tensor:
        pixels = normalised * normalised.new_tensor(STD).view(1, 3, 1, 1) + normalised.new_tensor(MEAN).view(1, 3, 1, 1)
        return self.b + (pixels * self.w).sum((1, 2, 3))[:, None] * self.u


DOG_CAT_DOT = cc.Question(corpus=["dog"], foil=["cat"], similarity="dot")


@pytest.fixture
def linear() -> ClipModel:
    weights = torch.zeros(3, 64, 64)
    weights[:, 8:24, 30:50] = 1 / 960  # one region raises the score, another lowers it
    weights[:, 40:56, 4:24] = -1 / 960
    return ClipModel(net=LinearNet(weights), name="linear", device=torch.device("cpu"), precision="fp32")


def expected_rise_maps(model: ClipModel, picture: Image.Image, grid: int = 7, p: float = 0.5):
    """RISE's exact expected maps (paper, centered) for LinearNet, from the mask distribution.

    With masked picture  blur + m * (x - blur)  the score is  c + sum_j a_j m_j. Grid cells are
    independent Bernoulli(p) and the shift uniform over a cell, so for mask pixel m_q
    E[s m_q] = c E[m_q] + sum_j a_j E[m_j m_q]  and  Cov(s, m_q) = sum_j a_j Cov(m_j, m_q),
    where each mask pixel is R[q] . cells, R the bilinear upsampling of unit grids cropped at the shift.
    """
    content = frame(picture, model.n_px).content.double()
    height, width = content.shape[1:]
    baseline = blur(content, model.n_px)
    direction = 4.0  # <t_dog - t_cat, u>: PlantedNet embeds "dog" as b + 2u and "cat" as b - 2u
    a = direction * (model.net.w * (content - baseline)).sum(0).flatten()
    c = direction * float((model.net.w * baseline).sum())
    cells = (-(-height // grid), -(-width // grid))
    units = torch.eye(grid * grid, dtype=torch.float64).view(-1, 1, grid, grid)
    upsampled = F.interpolate(units, size=((grid + 1) * cells[0], (grid + 1) * cells[1]), mode="bilinear",
                              align_corners=False)[:, 0]
    paper, centered = torch.zeros(height * width, dtype=torch.float64), torch.zeros(height * width, dtype=torch.float64)
    for dy in range(cells[0]):
        for dx in range(cells[1]):
            weights = upsampled[:, dy:dy + height, dx:dx + width].flatten(1).T  # shape = [h * w, g * g]
            per_cell = weights.T @ a
            covariance = (p - p * p) * (weights @ per_cell)  # the cells' own variance
            centered += covariance
            paper += (c + p * per_cell.sum()) * p * weights.sum(1) + covariance
    scale = cells[0] * cells[1] * p
    return (paper / scale).view(height, width).numpy(), (centered / scale).view(height, width).numpy()


def test_rise_maps_converge_to_the_exact_expected_map(linear, noise_square):
    """An oracle independent of the implementation: the closed-form expectation of RISE's estimators."""
    paper, centered = expected_rise_maps(linear, noise_square)
    for estimator, expected in (("centered", centered), ("paper", paper)):
        heatmap = cc.explain(linear, noise_square, DOG_CAT_DOT, masks=2000, estimator=estimator, cache=None).heatmap
        assert heatmap.mean() == pytest.approx(expected.mean(), abs=0.02 * np.abs(expected).max())
        if estimator == "centered":  # the paper's estimator is too noisy at 2,000 masks to check pixel by pixel
            x, y = expected.ravel() - expected.mean(), heatmap.ravel() - heatmap.mean()
            assert np.corrcoef(x, y)[0, 1] > 0.97
            assert (x @ y) / (x @ x) == pytest.approx(1.0, abs=0.08)  # the map's scale, not only its shape


def test_centered_estimator_reaches_the_expected_map_with_fewer_masks(linear, noise_square):
    """Both estimators converge to the same map up to a constant; the centred one gets there sooner."""
    expected = expected_rise_maps(linear, noise_square)[1]

    def correlation(estimator: str) -> float:
        heatmap = cc.explain(linear, noise_square, DOG_CAT_DOT, masks=300, estimator=estimator, cache=None).heatmap
        return np.corrcoef(heatmap.ravel(), expected.ravel())[0, 1]

    assert correlation("centered") > max(0.9, correlation("paper") + 0.2)


def test_default_mask_counts_are_auto_on_a_cpu_and_20000_on_a_gpu(planted, noise_square):
    assert RiseSettings().masks_for(torch.device("cuda")) == 20_000
    assert RiseSettings().masks_for(torch.device("cpu")) == 4_000  # auto's cap
    answer = cc.explain(planted, noise_square, DOG_CAT, cache=None)
    assert answer.details["auto"] and answer.details["masks"] < 4_000 and answer.details["stability"] >= 0.97


def test_fp16_weights_as_on_a_gpu_keep_the_map(tiny, tiny_checkpoint, photo):
    """The GPU's default path, checked on the CPU: fp16 weights as clip's build_model makes them."""
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    net = clip_package().model.build_model(dict(state)).eval().requires_grad_(False)
    assert net.visual.conv1.weight.dtype == torch.float16
    fp16 = ClipModel(net=net, name="tiny-fp16", device=torch.device("cpu"), precision="fp16")
    cache = PassCache()
    half, full = (cc.explain(m, photo, DOG_CAT, masks=300, cache=cache) for m in (fp16, tiny))
    assert not full.details["cached"] and len(cache) == 2  # precisions never share a pass
    assert half.details["precision"] == "fp16" and half.heatmap.dtype == np.float32
    assert np.corrcoef(half.heatmap.ravel(), full.heatmap.ravel())[0, 1] > 0.999
    assert half.score == pytest.approx(full.score, abs=2e-3)


def test_bf16_autocast_keeps_the_map(tiny_checkpoint, photo):
    fp32 = cc.load(weights=tiny_checkpoint, device="cpu", precision="fp32")
    bf16 = cc.load(weights=tiny_checkpoint, device="cpu", precision="bf16")
    maps = [cc.explain(m, photo, DOG_CAT, masks=300, cache=None).heatmap for m in (fp32, bf16)]
    assert np.corrcoef(maps[0].ravel(), maps[1].ravel())[0, 1] > 0.9


@pytest.mark.parametrize("settings", [dict(n_masks=-5), dict(n_masks=10**9), dict(n_masks=2.5),
                                      dict(p_keep=1.0), dict(seed=-1), dict(grid=1), dict(batch_size=0)])
def test_bad_settings_are_refused_with_a_sentence(settings):
    with pytest.raises(cc.SettingsError, match="must"):
        RiseSettings(**settings)


def test_saliency_refuses_an_unknown_estimator(tiny, photo):
    framed = frame(photo, tiny.n_px)
    run = masked_pass(tiny, framed, RiseSettings(10))
    with pytest.raises(cc.SettingsError, match="estimator"):
        saliency(run, [resolve(tiny, DOG_CAT, run.image_embedding)], "median")


def test_the_baseline_is_what_masked_pixels_show_and_part_of_the_cache_key(tiny, photo):
    """A black baseline: the one-mask reference with black where masks hide; never served from a blur's pass."""
    cache = PassCache()
    blurred = cc.explain(tiny, photo, DOG_CAT, masks=40, seed=2, estimator="paper", cache=cache)
    black = cc.explain(tiny, photo, DOG_CAT, masks=40, seed=2, estimator="paper", baseline="black", cache=cache)
    assert not black.details["cached"] and black.details["baseline"] == "black"
    assert len(cache) == 2
    expected = reference_rise(tiny, photo, 40, seed=2, baseline=lambda content, n_px: torch.zeros_like(content))
    np.testing.assert_allclose(black.heatmap, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert not np.allclose(blurred.heatmap, black.heatmap)
    sharp = cc.explain(tiny, photo, DOG_CAT, masks=40, seed=2, blur_sigma=1.0, cache=cache)
    assert not sharp.details["cached"] and sharp.details["blur_sigma"] == 1.0
    with pytest.raises(cc.SettingsError, match="baseline"):
        RiseSettings(baseline="white")
