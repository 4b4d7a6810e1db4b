import numpy as np
import pytest
import torch
from conftest import PLANTED_REGION
from PIL import Image

import cocoa_clip as cc
from cocoa_clip.engine.evaluate import Curves, alike, content_ranking, insertion_deletion, pointing_hit, positive_share
from cocoa_clip.engine.images import blur, frame
from cocoa_clip.engine.targets import resolve
from cocoa_clip.models import clip_package, normalize

DOG_CAT = cc.Question(corpus=["dog"], foil=["cat"])


def region_heatmap() -> np.ndarray:
    heatmap = np.zeros((64, 64), dtype=np.float32)
    heatmap[PLANTED_REGION] = 1.0
    return heatmap + np.linspace(0, 1e-3, 64 * 64).reshape(64, 64)  # a strict order


def test_true_region_beats_random_order(planted, noise_square):
    curves = insertion_deletion(planted, noise_square, region_heatmap(), DOG_CAT, steps=20)
    aucs = curves.aucs()
    assert aucs["insertion_auc"] > aucs["random_insertion_auc"] + 0.01
    assert aucs["deletion_auc"] < aucs["random_deletion_auc"] - 0.01


def test_every_curve_runs_between_the_blurred_picture_and_the_picture(planted, noise_square):
    """Insertion (heatmap or random order) starts at the blurred picture's score and ends at the picture's;
    deletion runs the other way."""
    curves = insertion_deletion(planted, noise_square, region_heatmap(), DOG_CAT, steps=5)
    framed = frame(noise_square, planted.n_px)
    with torch.no_grad():
        blurred = planted.encode_images(framed.with_content(blur(framed.content[None], planted.n_px)))
    blurred_score = resolve(planted, DOG_CAT, None)(blurred).item()
    picture_score = cc.score(planted, noise_square, DOG_CAT)
    assert abs(picture_score - blurred_score) > 0.1
    for name in ("insertion", "random_insertion"):
        start, end = getattr(curves, name)[[0, -1]]
        assert start == pytest.approx(blurred_score, abs=1e-6) and end == pytest.approx(picture_score, abs=1e-6)
    for name in ("deletion", "random_deletion"):
        start, end = getattr(curves, name)[[0, -1]]
        assert start == pytest.approx(picture_score, abs=1e-6) and end == pytest.approx(blurred_score, abs=1e-6)


def test_reversed_heatmap_is_worse_than_random(planted, noise_square):
    aucs = insertion_deletion(planted, noise_square, -region_heatmap(), DOG_CAT, steps=20).aucs()
    assert aucs["insertion_auc"] < aucs["random_insertion_auc"]
    assert aucs["deletion_auc"] > aucs["random_deletion_auc"]


def test_measure_is_contrastive_corpus_similarity_whatever_the_target(planted, noise_square):
    cosine = insertion_deletion(planted, noise_square, region_heatmap(), DOG_CAT, steps=10)
    for other in (cc.Question(corpus=["dog"], foil=["cat"], target="label-free"),
                  cc.Question(corpus=["dog"], foil=["cat"], similarity="dot")):  # planted embeddings are not unit
        curves = insertion_deletion(planted, noise_square, region_heatmap(), other, steps=10)
        np.testing.assert_allclose(curves.insertion, cosine.insertion)
        np.testing.assert_allclose(curves.random_deletion, cosine.random_deletion)


def test_rise_heatmap_of_planted_encoder_beats_random(planted, noise_square):
    answer = cc.explain(planted, noise_square, DOG_CAT, masks=1000, cache=None)
    aucs = insertion_deletion(planted, noise_square, answer.heatmap, DOG_CAT, steps=20).aucs()
    assert aucs["insertion_auc"] > aucs["random_insertion_auc"]
    assert aucs["deletion_auc"] < aucs["random_deletion_auc"]


def test_area_is_the_trapezoid_rule():
    fractions = np.linspace(0, 1, 5)
    assert Curves.area(fractions, fractions) == pytest.approx(0.5)
    curves = Curves(fractions, np.ones(5), np.zeros(5), np.ones(5) * 0.5, np.ones(5) * 0.5)
    assert curves.aucs() == {"insertion_auc": 1.0, "deletion_auc": 0.0, "random_insertion_auc": 0.5,
                             "random_deletion_auc": 0.5}
    assert curves.plot("x").mode == "RGB"


def test_evaluation_needs_a_corpus_and_foil_and_a_matching_heatmap(planted, noise_square):
    with pytest.raises(cc.QuestionError, match="corpus and a foil"):
        insertion_deletion(planted, noise_square, region_heatmap(), cc.Question(target="label-free"))
    with pytest.raises(cc.SettingsError, match="heatmap is"):
        insertion_deletion(planted, noise_square, np.zeros((3, 3)), DOG_CAT)
    with pytest.raises(cc.SettingsError, match="steps"):
        insertion_deletion(planted, noise_square, region_heatmap(), DOG_CAT, steps=1)


def test_probability_measure_is_clips_own_zero_shot_probability(tiny, photo):
    """On the whole picture (deletion's start) it is softmax(CLIP's logits)[corpus], as CLIP's forward computes it."""
    question = cc.Question(corpus=["dog"], foil=["cat", "bird"], template="{}")
    heatmap = np.random.default_rng(0).random((45, 70)).astype(np.float32)
    curves = insertion_deletion(tiny, photo, heatmap, question, steps=4, measure="probability")
    with torch.no_grad():
        pixels = normalize(frame(photo, tiny.n_px).canvas[None])
        logits, _ = tiny.net(pixels, clip_package().tokenize(["dog", "cat", "bird"]))
        blurred = framed_blur(tiny, photo)
        logits_blurred, _ = tiny.net(normalize(blurred), clip_package().tokenize(["dog", "cat", "bird"]))
    assert curves.deletion[0] == pytest.approx(logits.softmax(-1)[0, 0].item(), abs=1e-5)
    assert curves.random_deletion[-1] == pytest.approx(logits_blurred.softmax(-1)[0, 0].item(), abs=1e-5)
    assert curves.measure == "probability" and curves.to_dict()["measure"] == "probability"


def framed_blur(model, picture) -> torch.Tensor:
    """The blurred picture the curves start or end at, on the model's canvas: (1, 3, n_px, n_px)."""
    framed = frame(picture, model.n_px)
    return framed.with_content(blur(framed.content[None], model.n_px))


def test_a_corpus_of_several_captions_is_one_class_with_the_renormalised_mean_prototype(tiny, photo):
    """CLIP's prompt ensembling: the corpus class is the mean of its unit text embeddings, renormalised."""
    question = cc.Question(corpus=["dog", "a red car"], foil=["cat", "bird"], template="{}")
    heatmap = np.random.default_rng(2).random((45, 70)).astype(np.float32)
    curves = insertion_deletion(tiny, photo, heatmap, question, steps=3, measure="probability")
    with torch.no_grad():
        texts = tiny.net.encode_text(clip_package().tokenize(["dog", "a red car", "cat", "bird"])).float()
        image = tiny.net.encode_image(normalize(frame(photo, tiny.n_px).canvas[None])).float()
    texts = texts / texts.norm(dim=-1, keepdim=True)
    prototype = texts[:2].mean(0)
    image = image / image.norm()
    scale = tiny.net.logit_scale.exp()
    expected = (scale * image @ torch.stack([prototype / prototype.norm(), texts[2], texts[3]]).T).softmax(-1)[0, 0]
    not_renormalised = (scale * image @ torch.stack([prototype, texts[2], texts[3]]).T).softmax(-1)[0, 0]
    assert abs(expected - not_renormalised) > 1e-3  # the two captions differ enough for it to matter
    assert curves.deletion[0] == pytest.approx(expected.item(), abs=1e-5)


def test_with_one_caption_each_probability_is_a_sigmoid_of_similarity(tiny, photo):
    heatmap = np.random.default_rng(1).random((45, 70)).astype(np.float32)
    similarity = insertion_deletion(tiny, photo, heatmap, DOG_CAT, steps=6)
    probability = insertion_deletion(tiny, photo, heatmap, DOG_CAT, steps=6, measure="probability")
    scale = tiny.net.logit_scale.exp().item()
    for name in ("insertion", "deletion", "random_insertion", "random_deletion"):
        expected = 1 / (1 + np.exp(-scale * getattr(similarity, name)))
        np.testing.assert_allclose(getattr(probability, name), expected, atol=1e-5)


def test_an_unknown_measure_is_refused(tiny, photo):
    with pytest.raises(cc.SettingsError, match="measure 'accuracy'.*similarity, probability"):
        insertion_deletion(tiny, photo, np.zeros((45, 70)), DOG_CAT, measure="accuracy")


def test_infinite_pixels_rank_first_or_last_and_unseen_ones_last():
    framed = frame(Image.new("RGB", (4, 1)), 4, "pad")  # the content box is the picture, 1 x 4
    heatmap = np.array([[np.nan, -np.inf, 0.5, np.inf]], dtype=np.float32)
    ranking = content_ranking(heatmap, framed)
    assert ranking.tolist()[:2] == [3, 2] and set(ranking.tolist()[2:]) == {0, 1}


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, "batch size"),
    ({"steps": 1}, "steps"),
])
def test_bad_curve_settings_are_refused(planted, noise_square, options, message):
    with pytest.raises(cc.SettingsError, match=message):
        insertion_deletion(planted, noise_square, region_heatmap(), DOG_CAT, **options)


def test_a_heatmap_must_hold_real_numbers(planted, noise_square):
    with pytest.raises(cc.SettingsError, match="real numbers"):
        insertion_deletion(planted, noise_square, region_heatmap().astype(np.complex64), DOG_CAT)


def test_pointing_game_hits_within_the_tolerance_only():
    heatmap = np.zeros((6, 6))
    heatmap[1, 4] = 1.0
    heatmap[5, 0] = np.nan  # NaN pixels are never the maximum
    near, far, corner = (np.zeros((6, 6), dtype=bool) for _ in range(3))
    near[2, 5] = True  # one pixel away diagonally
    far[3, 4] = True  # two rows away
    corner[5, 0] = True
    assert pointing_hit(heatmap, near) and not pointing_hit(heatmap, near, tolerance=0)
    assert not pointing_hit(heatmap, far) and pointing_hit(heatmap, far, tolerance=2)
    assert not pointing_hit(heatmap, corner, tolerance=3)
    at_the_edge = np.zeros((6, 6))
    at_the_edge[0, 0] = 1.0  # the window must not wrap round to the last row or column
    bottom_right = np.zeros((6, 6), dtype=bool)
    bottom_right[-1, -1] = True
    assert not pointing_hit(at_the_edge, bottom_right)


def test_positive_share_counts_only_positive_attribution():
    heatmap = np.array([[3.0, -5.0, 0.5], [1.0, np.nan, 0.5]])
    region = np.array([[True, True, False], [False, True, False]])
    assert positive_share(heatmap, region) == pytest.approx(3.0 / 5.0)
    assert positive_share(heatmap, ~region) == pytest.approx(2.0 / 5.0)
    assert positive_share(-np.abs(heatmap), region) == 0.0


def test_the_curves_rank_the_map_as_computed(tiny):
    """A gradient answer's AUCs are those of its native (content-box) map, not of the map resampled to the photo
    and back. The photo is twice the content box, so the native map blown up 2 x 2 ranks exactly like it."""
    from cocoa_clip.engine.evaluate import curves_of

    rng = np.random.default_rng(3)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))  # content box 24 x 32 at 32 px
    answer = cc.explain(tiny, photo, DOG_CAT, method="integrated-gradients")
    assert answer.content_map.shape == (24, 32)
    blown_up = np.kron(answer.content_map, np.ones((2, 2), dtype=np.float32))
    expected = insertion_deletion(tiny, photo, blown_up, DOG_CAT, steps=20).aucs()
    assert curves_of(tiny, answer, steps=20).aucs() == pytest.approx(expected, abs=1e-6)
    resampled = insertion_deletion(tiny, photo, answer.heatmap, DOG_CAT, steps=20).aucs()
    assert resampled != pytest.approx(expected, abs=1e-6)  # what the curves scored before


def test_the_curves_remove_pixels_to_the_heatmaps_baseline(planted, noise_square):
    """Deletion ends, and insertion starts, at the baseline's score: the blur's, or the answer's own (black)."""
    from cocoa_clip.engine.evaluate import curves_of

    black = noise_square.point(lambda _: 0)
    answer = cc.explain(planted, noise_square, DOG_CAT, masks=100, baseline="black", cache=None)
    curves = curves_of(planted, answer, steps=10)
    assert curves.deletion[-1] == pytest.approx(cc.score(planted, black, DOG_CAT), abs=1e-5)
    blurred = insertion_deletion(planted, noise_square, answer.heatmap, DOG_CAT, steps=10)
    assert abs(blurred.deletion[-1] - curves.deletion[-1]) > 0.5  # black is all contrast to the planted encoder


@pytest.mark.parametrize(("values", "texts"), [
    ((0.041, -0.03452), ["+0.04100", "-0.03452"]),  # the "+0.041 (random order -0.03452)"
    ((2.5e-5, -3e-6), ["+0.00002500", "-0.00000300"]),  # tiny areas keep 4 significant digits of the largest
    ((12.5, 0.001), ["+12.50", "+0.00"]), ((0.0, 0.0), ["+0.0000", "+0.0000"])])
def test_numbers_in_one_sentence_share_their_decimals(values, texts):
    assert alike(*values) == texts


def test_the_verdict_writes_both_areas_alike():
    fractions = np.linspace(0, 1, 3)
    curves = Curves(fractions, insertion=np.array([0.0, 0.3, 0.4]), deletion=np.array([0.4, 0.1, 0.0]),
                    random_insertion=np.array([0.0, 0.2, 0.4]), random_deletion=np.array([0.4, 0.2, 0.0]))
    numbers = curves.verdict().split("insertion area ")[1].replace(" and deletion area", "").split()[:2]
    assert [len(number.split(".")[1]) for number in numbers] == [5, 5], curves.verdict()  # +0.05000, -0.05000
