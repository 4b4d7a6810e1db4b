import numpy as np
import pytest

import cocoa_clip as cc
from cocoa_clip.evaluate import Curves, insertion_deletion

from conftest import PLANTED_REGION

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
    # The curves start and end at the picture's and the blurred picture's scores.
    assert curves.insertion[-1] == pytest.approx(curves.deletion[0], abs=1e-6)
    assert curves.insertion[0] == pytest.approx(curves.deletion[-1], abs=1e-6)
    assert curves.deletion[0] == pytest.approx(cc.score(planted, noise_square, DOG_CAT), abs=1e-6)


def test_reversed_heatmap_is_worse_than_random(planted, noise_square):
    aucs = insertion_deletion(planted, noise_square, -region_heatmap(), DOG_CAT, steps=20).aucs()
    assert aucs["insertion_auc"] < aucs["random_insertion_auc"]
    assert aucs["deletion_auc"] > aucs["random_deletion_auc"]


def test_measure_is_contrastive_corpus_similarity_whatever_the_target(planted, noise_square):
    label_free = cc.Question(corpus=["dog"], foil=["cat"], target="label-free")
    a = insertion_deletion(planted, noise_square, region_heatmap(), label_free, steps=10)
    b = insertion_deletion(planted, noise_square, region_heatmap(), DOG_CAT, steps=10)
    np.testing.assert_allclose(a.insertion, b.insertion)


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
