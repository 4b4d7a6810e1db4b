import importlib

import numpy as np
import pytest
import torch
from PIL import Image

import cocoa_clip as cc
from cocoa_clip.engine.attention import ATTENTION_METHODS
from cocoa_clip.engine.compare import MAX_CAPTIONS, UNDECIDED, UNSEEN, compare
from cocoa_clip.engine.explain import Explanation
from cocoa_clip.models import MEAN, STD, ClipModel, clip_package
from cocoa_clip.models.shapes import two_object_scene

DOG, CAT = (slice(0, 20), slice(0, 20)), (slice(40, 64), slice(40, 64))


class TwoRegionNet(torch.nn.Module):
    """Image embedding b + r_dog(x) u + r_cat(x) v, with r the contrast of the DOG and CAT regions;
    "dog" captions embed along u, "cat" ones along v, anything else as b: each caption owns a region."""

    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.input_resolution = 64
        self.context_length = 77
        self.basis = torch.eye(4)
        tokenizer = clip_package().clip._tokenizer
        self.dog, self.cat = tokenizer.encode("dog")[0], tokenizer.encode("cat")[0]

    def encode_image(self, normalised: torch.Tensor) -> torch.Tensor:
        pixels = normalised * normalised.new_tensor(STD).view(1, 3, 1, 1) + normalised.new_tensor(MEAN).view(1, 3, 1, 1)
        contrast = [(pixels[:, :, rows, cols] - 0.5).abs().mean((1, 2, 3)) * 2 for rows, cols in (DOG, CAT)]
        return self.basis[0] + contrast[0][:, None] * self.basis[1] + contrast[1][:, None] * self.basis[2]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        dog = (tokens == self.dog).any(1).float()[:, None]
        cat = (tokens == self.cat).any(1).float()[:, None]
        return self.basis[0] + 4 * dog * self.basis[1] + 4 * cat * self.basis[2]


@pytest.fixture
def two_regions() -> ClipModel:
    return ClipModel(net=TwoRegionNet(), name="two-regions", device=torch.device("cpu"), precision="fp32")


def test_each_caption_wins_its_own_region(two_regions, noise_square):
    comparison = compare(two_regions, noise_square, ["dog", "cat", "grass"], masks=2000, cache=None)
    assert comparison.captions == ("dog", "cat", "grass")
    assert (comparison.labels[DOG] == 0).mean() > 0.9
    assert (comparison.labels[CAT] == 1).mean() > 0.9
    assert comparison.margin[DOG].mean() > comparison.margin[20:40, 20:40].mean()
    assert sum(comparison.shares.values()) + comparison.undecided_share == pytest.approx(1.0)
    assert sum(comparison.decided_shares.values()) == pytest.approx(1.0)


def test_pixels_without_a_clear_winner_go_to_no_caption(two_regions, noise_square):
    """Between the two regions the maps are close: within the margin no caption wins, and shares count both ways."""
    exact = compare(two_regions, noise_square, ["dog", "cat", "grass"], masks=2000, tie_margin=0.0, cache=None)
    clear = compare(two_regions, noise_square, ["dog", "cat", "grass"], masks=2000, tie_margin=0.3, cache=None)
    assert exact.undecided_share == 0.0 and 0.05 < clear.undecided_share < 0.9
    assert (clear.labels[DOG] == 0).mean() > 0.9 and (clear.labels[20:40, 20:40] == UNDECIDED).mean() > 0.5
    undecided = clear.labels == UNDECIDED
    assert (clear.margin[undecided] < 0.3 * clear.margin.max()).all()
    assert (clear.margin[~undecided] >= 0.3 * clear.margin.max()).all()
    decided = (~undecided).mean()
    for caption in clear.captions:
        assert clear.decided_shares[caption] == pytest.approx(clear.shares[caption] / decided)
    photo = np.asarray(noise_square)
    overlay = np.asarray(clear.overlay(opacity=0.6, legend=False))
    np.testing.assert_array_equal(overlay[undecided], photo[undecided])  # shown uncoloured
    with pytest.raises(cc.SettingsError, match="tie margin"):
        compare(two_regions, noise_square, ["dog", "cat"], masks=10, tie_margin=1.5)


def test_caption_colours_avoid_the_colour_words_of_every_caption():
    from cocoa_clip.engine.render import PALETTE, label_colours

    named = {colour: words for words, colour in PALETTE}
    colours = label_colours(["orange cross", "yellow square"])
    assert len(set(colours)) == 2
    for colour in colours:
        assert not {"orange", "yellow"} & named[colour]
    assert len(set(label_colours([f"thing {i}" for i in range(MAX_CAPTIONS)]))) == MAX_CAPTIONS
    many = label_colours(["a red car", "green grass", "blue sky"] + [f"thing {i}" for i in range(7)])
    assert len(set(many)) == 10 and not {"red", "green", "blue"} & named[many[0]]


@pytest.mark.parametrize("method", cc.METHODS)
def test_maps_of_caption_rather_than_the_others_sum_to_zero(tiny, photo, method):
    comparison = compare(tiny, photo, ["dog", "cat", "a red car"], method=method, masks=300, cache=None)
    maps = np.stack([answer.heatmap for answer in comparison.answers])
    assert np.abs(maps).max() > 0
    if method in ATTENTION_METHODS:  # ReLU keeps positive parts: not linear in the target, so no sum to zero
        assert (maps >= 0).all() and np.abs(maps.sum(0)).max() > 1e-3 * np.abs(maps).max()
    else:
        np.testing.assert_allclose(maps.sum(0), 0.0, atol=1e-5 * np.abs(maps).max())
    assert [a.question.describe() for a in comparison.answers][1] == '"cat" rather than "dog" / "a red car"'
    exact = compare(tiny, photo, ["dog", "cat", "a red car"], method=method, masks=300, tie_margin=0.0, cache=None)
    np.testing.assert_array_equal(exact.labels, maps.argmax(0))  # no ties on a noisy photo


def test_each_pixel_goes_to_the_highest_map_by_its_lead_over_the_runner_up(tiny, monkeypatch):
    """Hand-made maps of three captions: ties, and leads under the tie margin, go to no caption; NaN is unseen."""
    maps = np.array([[[3, 1, 0], [0, np.nan, 2]],
                     [[1, 2, 0], [0, np.nan, 2]],
                     [[0, 0, 0], [-1, np.nan, 5]]], dtype=np.float32)
    picture = Image.new("RGB", (3, 2))

    def explain(model, image, questions, **options):
        return [Explanation(heatmap, 0.0, picture, q, "rise") for heatmap, q in zip(maps, questions, strict=True)]

    # cc.compare is the function; the module that calls explain is the one imported under that name.
    monkeypatch.setattr(importlib.import_module("cocoa_clip.engine.compare"), "explain", explain)
    comparison = compare(tiny, picture, ["dog", "cat", "grass"], tie_margin=0.0)
    np.testing.assert_array_equal(comparison.labels, [[0, 1, UNDECIDED], [UNDECIDED, UNSEEN, 2]])
    np.testing.assert_array_equal(comparison.margin, [[2, 1, 0], [0, 0, 3]])
    assert comparison.shares == pytest.approx({"dog": 1 / 6, "cat": 1 / 6, "grass": 1 / 6})
    wide_margin = compare(tiny, picture, ["dog", "cat", "grass"], tie_margin=0.5)  # leads under 1.5 are ties
    np.testing.assert_array_equal(wide_margin.labels, [[0, UNDECIDED, UNDECIDED], [UNDECIDED, UNSEEN, 2]])


def test_the_demo_model_finds_both_objects():
    model = cc.load("shapes-demo", device="cpu")
    scene = two_object_scene(np.random.default_rng(11), model.n_px)
    names = [obj.name for obj in scene.objects]
    comparison = compare(model, scene.image, names, masks=2000, cache=None)
    for index, mask in enumerate(scene.masks):
        assert np.mean(comparison.labels[mask] == index) > 0.5, names


def test_a_featureless_picture_goes_to_no_caption(tiny):
    grey = Image.new("RGB", (40, 30), (90, 90, 90))  # every masked copy is the same picture: all maps are 0
    comparison = compare(tiny, grey, ["red", "blue"], masks=40, cache=None)
    assert (comparison.labels == -1).all() and comparison.shares == {"red": 0.0, "blue": 0.0}


def test_crop_framing_leaves_unseen_pixels_unlabelled(tiny, photo):
    comparison = compare(tiny, photo, ["dog", "cat"], masks=50, framing="crop", cache=None)
    assert (comparison.labels[:, :5] == UNSEEN).all() and (comparison.labels[:, 30] != UNSEEN).all()
    assert (comparison.margin[:, :5] == 0).all()


def test_overlay_keeps_the_picture_and_adds_a_legend(tiny, photo):
    comparison = compare(tiny, photo, ["dog", "cat"], masks=50, cache=None)
    assert comparison.overlay(legend=False).size == photo.size
    with_legend = comparison.overlay()
    assert with_legend.width >= photo.width and with_legend.height > photo.height + 3 * 12  # 2 captions, no winner
    np.testing.assert_array_equal(np.asarray(comparison.overlay(opacity=0.0, legend=False))[comparison.margin == 0],
                                  np.asarray(photo)[comparison.margin == 0])


@pytest.mark.parametrize("captions, message", [
    (["dog"], "Compare 2 to"),
    (["dog", " dog "], "only once"),
    (["orange cross", "Orange  Cross", "sky"], "reads 'orange cross' twice"),
    (["dog", ""], "Compared caption 2 is empty"),
    ("dog, cat", "as a list"),
    ([f"thing {i}" for i in range(MAX_CAPTIONS + 1)], "Compare 2 to"),
])
def test_bad_caption_lists_are_refused(tiny, photo, captions, message):
    with pytest.raises(cc.QuestionError, match=message):
        compare(tiny, photo, captions, masks=10)


def test_the_paper_estimator_is_refused(tiny, photo):
    with pytest.raises(cc.SettingsError, match="regression or centered estimator"):
        compare(tiny, photo, ["dog", "cat"], masks=10, estimator="paper")


def test_the_legend_shows_long_names_in_full_under_a_narrow_picture():
    from cocoa_clip.engine.render import label_overlay

    narrow = Image.new("RGB", (20, 30), (90, 90, 90))
    names = ["a golden retriever lying on the grass", "sky"]
    out = label_overlay(narrow, np.zeros((30, 20), dtype=int), np.ones((30, 20)), names)
    assert out.width > 200 and out.height > 30
    assert out.crop((0, 0, 20, 30)).tobytes() != narrow.tobytes()  # the picture sits at the top left, coloured
    assert out.getpixel((out.width - 1, 5)) == (255, 255, 255)  # white beside it


def test_unlabelled_pixels_keep_the_photo(tiny):
    from cocoa_clip.engine.render import label_overlay

    photo = Image.new("RGB", (4, 2), (10, 20, 30))
    labels = np.array([[-1, 0, 0, 1], [-1, 0, 1, 1]])
    out = np.asarray(label_overlay(photo, labels, np.ones((2, 4)), opacity=0.5))
    assert (out[:, 0] == [10, 20, 30]).all() and not (out[:, 1] == [10, 20, 30]).all()
    with pytest.raises(cc.SettingsError, match="label map is"):
        label_overlay(photo, labels[:, :3], np.ones((2, 3)))
