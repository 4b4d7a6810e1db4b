"""RISE's estimators, their stability estimate, "auto" mask counts and live frames."""
import numpy as np
import pytest
import torch
from PIL import Image

import cocoa_clip as cc
from cocoa_clip.engine.images import frame
from cocoa_clip.engine.masks import MaskSet, sample_masks
from cocoa_clip.engine.rise import BLOCKS, RiseSettings, estimate, masked_pass, scores, stability
from cocoa_clip.engine.targets import resolve

DOG_CAT = cc.Question(corpus=["dog"], foil=["cat"])


def correlation(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def footprints(size, grid, p_keep=0.5):
    """Every cell's rendered footprint at every shift, (shifts, g*g, h, w), by rendering one-cell grids."""
    cells = sample_masks(1, size, grid).cells
    shifts = torch.cartesian_prod(torch.arange(cells[0]), torch.arange(cells[1]))
    units = torch.eye(grid * grid, dtype=torch.bool).view(-1, grid, grid)
    n_cells = grid * grid
    masks = MaskSet(units.repeat(len(shifts), 1, 1), shifts.repeat_interleave(n_cells, 0), size, p_keep)
    return masks.render(0, len(masks)).view(len(shifts), n_cells, *size).double()


def test_pooled_features_are_block_means_of_the_rendered_masks():
    masks = sample_masks(30, (37, 61), grid=7, seed=2)
    rendered = masks.render(0, 30).double()
    rows, cols = [torch.tensor([round(j * n / BLOCKS) for j in range(BLOCKS + 1)]) for n in (37, 61)]
    expected = torch.stack([torch.stack([rendered[:, rows[a]:rows[a + 1], cols[b]:cols[b + 1]].mean((1, 2))
                                         for b in range(BLOCKS)], 1) for a in range(BLOCKS)], 1).flatten(1)
    torch.testing.assert_close(masks.pooled(BLOCKS), expected, rtol=1e-6, atol=1e-7)


def test_pooled_covariance_is_exact():
    """Cov(pooled_j, mask(x)) from enumerating every shift and cell, against the separable closed form."""
    size, grid, p = (20, 27), 4, 0.3
    phi = footprints(size, grid, p)  # shape = [shifts, cells, h, w]
    pool_y, pool_x = sample_masks(1, size, grid, p).block_means(5)
    pooled_phi = torch.einsum("ay,scyx,bx->scab", pool_y, phi, pool_x)
    # Bits are independent Bernoulli(p) and each shift's footprints sum to one: only the diagonal survives.
    expected = p * (1 - p) * torch.einsum("scab,scyx->abyx", pooled_phi, phi) / len(phi)
    ay, ax = MaskSet(torch.zeros(1, grid, grid, dtype=torch.bool), torch.zeros(1, 2, dtype=torch.long), size,
                     p).pooled_covariance(5)
    torch.testing.assert_close(p * (1 - p) * torch.einsum("ay,bx->abyx", ay, ax), expected, rtol=1e-6, atol=1e-9)
    assert torch.allclose(phi.sum(1), torch.ones(()).double())  # the partition of unity the closed form uses


def region_score(masks: MaskSet, region: tuple[slice, slice], offset: float = 0.0) -> torch.Tensor:
    """A planted linear encoder: the score is the mask's mean over a region, plus an offset. (N, 1) float64."""
    return masks.render(0, len(masks))[:, region[0], region[1]].mean((1, 2)).double()[:, None] + offset


def test_every_estimator_estimates_the_papers_map_up_to_its_mean_score():
    """The planted linear encoder has a known RISE map: E[paper] = E[s] + Cov(s, mask) / p, worked
    out by enumerating shifts and cells. The mean of many independent runs of each estimator lands
    on it (regression and centered without the E[s] offset)."""
    size, grid, p, offset = (24, 24), 4, 0.5, -0.45  # E[s] = p + offset = 0.05
    region = (slice(2, 9), slice(3, 12))
    phi = footprints(size, grid, p)
    region_phi = phi[:, :, region[0], region[1]].mean((2, 3))  # shape = [shifts, cells]
    covariance = p * (1 - p) * torch.einsum("sc,scyx->yx", region_phi, phi) / len(phi)
    truth = {"paper": p + offset + covariance / p, "centered": covariance / p, "regression": covariance / p}
    n, runs = 120, 150
    sums = {name: torch.zeros(size, dtype=torch.float64) for name in truth}
    for seed in range(runs):
        masks = sample_masks(n, size, grid, p, seed=seed)
        score = region_score(masks, region, offset)
        for name in truth:
            sums[name] += estimate(masks, score, name)[0].double() / runs
    spread = float(covariance.max() - covariance.min()) / p
    for name, expected in truth.items():
        # Monte Carlo error of 18,000 masks in all, and O(1/N) biases (a factor 1 - 1/N for centered):
        # a few percent; a wrong footprint, factor or sign errs by tens of percent.
        assert float((sums[name] - expected).abs().max()) < 0.08 * spread, name
    # One run from the same masks: regression is far closer to the truth than centered.
    masks = sample_masks(n, size, grid, p, seed=999)
    score = region_score(masks, region, offset)
    errors = {name: float((estimate(masks, score, name)[0] - truth[name]).abs().max()) for name in truth}
    assert errors["regression"] < errors["centered"] / 3


def test_regression_matches_the_paper_map_at_20000_masks():
    """A planted encoder that saturates (a sigmoid of the region's mean): 20,000-mask maps of the two
    estimators agree at r >= 0.999, and differ by the mean score (slope 1)."""
    masks = sample_masks(20_000, (64, 64), seed=5)
    score = torch.sigmoid(8 * (region_score(masks, (slice(0, 20), slice(0, 20))) - 0.5)) - 0.45
    paper, regression = (estimate(masks, score, name)[0].numpy() for name in ("paper", "regression"))
    assert correlation(paper, regression) >= 0.999
    slope, offset = np.polyfit(regression.ravel(), paper.ravel(), 1)
    assert slope == pytest.approx(1.0, abs=0.02) and offset == pytest.approx(float(score.mean()), abs=0.003)


def test_regression_needs_fewer_masks_than_centered(planted, noise_square):
    reference = cc.explain(planted, noise_square, DOG_CAT, masks=20_000, seed=99, estimator="paper", cache=None)

    def r(estimator: str, masks: int) -> float:
        return np.mean([correlation(cc.explain(planted, noise_square, DOG_CAT, masks=masks, seed=seed,
                                               estimator=estimator, cache=None).heatmap, reference.heatmap)
                        for seed in range(3)])

    assert r("regression", 100) > max(0.97, r("centered", 300))


@pytest.mark.parametrize("n_masks", [1, 2, 5, 40])
def test_regression_with_fewer_masks_than_features_stays_finite(planted, noise_square, n_masks):
    answer = cc.explain(planted, noise_square, DOG_CAT, masks=n_masks, cache=None)
    assert np.isfinite(answer.heatmap).all()
    assert (answer.details["stability"] is None) == (n_masks < 4)


def test_first_masks_of_a_seed_do_not_depend_on_the_count():
    long, short = sample_masks(500, (40, 50), seed=3), sample_masks(130, (40, 50), seed=3)
    assert torch.equal(long.grids[:130], short.grids) and torch.equal(long.shifts[:130], short.shifts)


@pytest.mark.parametrize("estimator, n", [("centered", 40), ("centered", 150)])
def test_stability_estimates_the_correlation_with_the_exact_map(estimator, n):
    """The planted linear encoder's exact map (see above) is the infinite-mask limit: over many runs,
    the split-half estimate matches the real correlation of each run's map with it."""
    size, grid, p = (24, 24), 4, 0.5
    region = (slice(2, 9), slice(3, 12))
    phi = footprints(size, grid, p)
    region_phi = phi[:, :, region[0], region[1]].mean((2, 3))
    limit = torch.einsum("sc,scyx->yx", region_phi, phi)
    gaps, real = [], []
    for seed in range(60):
        masks = sample_masks(n, size, grid, p, seed=seed)
        score = region_score(masks, region)
        real.append(correlation(estimate(masks, score, estimator)[0], limit))
        gaps.append(float(stability(masks, score, estimator)[0]) - real[-1])
    assert np.mean(real) < 0.97  # noisy enough for the estimate to matter
    assert abs(np.mean(gaps)) < 0.02


def test_stability_estimate_is_honest_against_a_long_run_on_the_demo_model():
    """Split-half stability vs the real correlation with a 3,000-mask map, on a shapes-demo scene."""
    from cocoa_clip.models.shapes import two_object_scene

    model = cc.load("shapes-demo", device="cpu")
    scene = two_object_scene(np.random.default_rng(11), model.n_px)
    framed = frame(scene.image, model.n_px)
    run = masked_pass(model, framed, RiseSettings(3_600, seed=1))
    target = resolve(model, cc.Question(corpus=[scene.objects[0].name], foil=[scene.objects[1].name]),
                     run.image_embedding)
    values = scores(run, [target])
    reference = estimate(run.masks[600:], values[600:])[0]
    gaps = []
    for start in range(0, 600, 100):  # six independent 100-mask maps (50 for the smallest count)
        for n in (50, 100):
            masks, part = run.masks[start:start + n], values[start:start + n]
            gaps.append(float(stability(masks, part)[0]) - correlation(estimate(masks, part)[0], reference))
    assert np.mean(gaps) < 0.02  # not optimistic
    assert np.mean(gaps) > -0.03  # nor uselessly pessimistic


def test_auto_stops_sooner_on_an_easy_picture_and_never_passes_its_cap(planted, noise_square):
    dot = np.full((64, 64, 3), 128, np.uint8)
    dot[8:12, 8:12] = 255  # a small feature: the planted score moves only when masks hit it
    easy = cc.explain(planted, noise_square, DOG_CAT, masks="auto", cache=None)
    hard = cc.explain(planted, Image.fromarray(dot), DOG_CAT, masks="auto", cache=None)
    assert easy.details["masks"] < hard.details["masks"]
    for answer in (easy, hard):
        assert answer.details["stability"] >= 0.97 and answer.details["auto"]
    capped = cc.explain(planted, Image.fromarray(dot), DOG_CAT, masks="auto", max_masks=150, cache=None)
    assert capped.details["masks"] == 150 and capped.details["stability"] < 0.97
    strict = cc.explain(planted, noise_square, DOG_CAT, masks="auto", stability=0.995, cache=None)
    assert strict.details["masks"] > easy.details["masks"]


def test_auto_waits_for_every_question(planted, noise_square):
    dot = np.full((64, 64, 3), 128, np.uint8)
    dot[8:12, 8:12] = 255
    picture = Image.fromarray(dot)
    questions = [DOG_CAT, cc.Question(corpus=["dog"], target="corpus")]
    both = cc.explain(planted, picture, questions, masks="auto", cache=None)
    alone = [cc.explain(planted, picture, q, masks="auto", cache=None) for q in questions]
    assert both[0].details["masks"] == max(a.details["masks"] for a in alone)
    assert all(a.details["stability"] >= 0.97 for a in both)


@pytest.mark.parametrize("batch_size", [7, 64])
def test_auto_reproduces_a_fixed_count_run_with_any_batch_size(planted, noise_square, batch_size):
    auto = cc.explain(planted, noise_square, DOG_CAT, masks="auto", seed=3, batch_size=batch_size, cache=None)
    fixed = cc.explain(planted, noise_square, DOG_CAT, masks=auto.details["masks"], seed=3, batch_size=50, cache=None)
    np.testing.assert_allclose(auto.heatmap, fixed.heatmap, rtol=1e-5, atol=1e-7)


def test_auto_on_a_cached_pass_stops_where_a_fresh_run_stops(planted, noise_square):
    cache = cc.PassCache()
    cc.explain(planted, noise_square, DOG_CAT, masks=1000, cache=cache)
    calls = planted.net.calls
    cached = cc.explain(planted, noise_square, DOG_CAT, masks="auto", cache=cache)
    assert planted.net.calls == calls and cached.details["cached"]
    fresh = cc.explain(planted, noise_square, DOG_CAT, masks="auto", cache=None)
    assert cached.details["masks"] == fresh.details["masks"]
    np.testing.assert_allclose(cached.heatmap, fresh.heatmap, rtol=1e-5, atol=1e-7)


def test_frames_arrive_in_order_and_the_last_is_the_answer(tiny, photo):
    frames = []
    answers = cc.explain(tiny, photo, [DOG_CAT, DOG_CAT.swapped()], masks=600, cache=None,
                         on_update=lambda update: frames.append(update))
    counts = [update[0].details["masks"] for update in frames]
    assert len(frames) >= 2 and counts == sorted(counts) and counts[-1] == 600 and counts[0] <= 16
    for last, final in zip(frames[-1], answers, strict=True):
        np.testing.assert_array_equal(last.heatmap, final.heatmap)
        assert last.details == final.details
    single = []
    answer = cc.explain(tiny, photo, DOG_CAT, masks=40, cache=None, on_update=single.append)
    assert isinstance(single[-1], cc.Explanation) and np.array_equal(single[-1].heatmap, answer.heatmap)


def test_frames_do_not_change_the_map(tiny, photo):
    plain = cc.explain(tiny, photo, DOG_CAT, masks=300, cache=None)
    live = cc.explain(tiny, photo, DOG_CAT, masks=300, cache=None, on_update=lambda update: None)
    np.testing.assert_allclose(live.heatmap, plain.heatmap, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("options, message", [
    (dict(n_masks="lots"), "or auto"), (dict(max_masks=0), "most masks"), (dict(max_masks="auto"), "most masks"),
    (dict(stability=1.0), "stability"), (dict(stability=0), "stability")])
def test_bad_auto_settings_are_refused_with_a_sentence(options, message):
    with pytest.raises(cc.SettingsError, match=message):
        RiseSettings(**options)


def test_auto_checkpoints_do_not_depend_on_the_batch_size():
    device = torch.device("cpu")
    points = RiseSettings("auto", max_masks=1000, batch_size=7).checkpoints(device)
    assert points == RiseSettings("auto", max_masks=1000).checkpoints(device)
    assert points[0] == 64 and points[-1] == 1000 and all(b > a for a, b in zip(points, points[1:], strict=False))
