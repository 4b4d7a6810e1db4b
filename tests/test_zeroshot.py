"""The answer in words: the model's own zero-shot head over the corpus and the foil classes, beside the score."""
import math

import pytest
import torch

import cocoa_clip as cc
from cocoa_clip.engine.evaluate import measure_score
from cocoa_clip.engine.gradients import GradientSettings
from cocoa_clip.engine.images import frame
from cocoa_clip.engine.targets import members
from cocoa_clip.engine.zeroshot import SHOWN_FOILS, ZeroShot, percent, zero_shot
from cocoa_clip.models.random_models import write_open_clip_dir

ROCKET = cc.Question(corpus=["rocket"], foil=["woman", "flag"])


def embedding_of(model, picture):
    return model.encode_canvas(frame(picture, model.preprocessing, "pad").canvas)


def test_the_answer_is_clips_softmax_over_corpus_and_foil_captions(tiny, photo):
    """By hand: softmax of exp(logit_scale) x cosine over the three captions, most probable first."""
    answer = zero_shot(tiny, ROCKET, embedding_of(tiny, photo))
    image = embedding_of(tiny, photo)
    captions = torch.cat([members(tiny, ROCKET, side) for side in ("corpus", "foil")])
    cosines = torch.nn.functional.cosine_similarity(image[None], captions)
    expected = dict(zip(["rocket", "woman", "flag"], torch.softmax(tiny.logit_scale * cosines, 0).tolist(),
                        strict=True))
    assert dict(zip(answer.labels, answer.probabilities, strict=True)) == pytest.approx(expected, abs=1e-6)
    assert list(answer.probabilities) == sorted(answer.probabilities, reverse=True)
    assert answer.pick == answer.labels[0] and math.isclose(sum(answer.probabilities), 1, abs_tol=1e-6)
    assert answer.text == ", ".join(f"{label} {percent(p)}" for label, p in zip(answer.labels, answer.probabilities,
                                                                                  strict=True))


def test_the_corpus_probability_is_the_probability_measure(tiny, photo):
    """One head: the answer's corpus probability is evaluate's probability measure on the whole picture."""
    image = embedding_of(tiny, photo)
    answer = zero_shot(tiny, ROCKET, image)
    measured = float(measure_score(tiny, ROCKET, "probability")(image[None])[0])
    assert answer.probabilities[answer.labels.index("rocket")] == pytest.approx(measured, abs=1e-6)


def test_a_preset_names_the_top_foil_classes_and_sums_up_the_rest(tiny, photo):
    question = cc.Question(corpus=["woman"], foil_preset="cifar100")  # "woman" leaves the 100 classes: 99 foils
    answer = zero_shot(tiny, question, embedding_of(tiny, photo))
    assert "woman" in answer.labels and len(answer.labels) == 1 + SHOWN_FOILS
    assert answer.others == 99 - SHOWN_FOILS
    assert sum(answer.probabilities) + answer.others_probability == pytest.approx(1, abs=1e-5)
    assert answer.text.endswith(f"{answer.others} other classes {percent(answer.others_probability)}")


def test_explain_gives_the_answer_in_words_with_every_method(tiny, photo):
    for method in ("rise", "integrated-gradients"):
        answer = cc.explain(tiny, photo, ROCKET, method=method, masks=16, gradient=GradientSettings(n_steps=4))
        assert isinstance(answer.zero_shot, ZeroShot) and answer.zero_shot.text.count("%") == 3
        assert answer.zero_shot.probabilities == pytest.approx(
            zero_shot(tiny, ROCKET, embedding_of(tiny, photo)).probabilities, abs=1e-6)


def test_no_answer_without_a_foil_or_a_head(tiny, photo):
    assert cc.explain(tiny, photo, cc.Question(target="label-free"), masks=16).zero_shot is None
    assert cc.explain(tiny, photo, cc.Question(corpus=["rocket"], target="corpus"), masks=16).zero_shot is None
    encoder = cc.wrap(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(8)), n_px=16)
    pictures = cc.Question(corpus_images=[photo], foil_images=[photo.rotate(90)])
    assert cc.explain(encoder, photo, pictures, masks=16).zero_shot is None


def test_sigmoid_heads_answer_with_the_same_softmax_as_the_probability_measure(tmp_path, photo):
    pytest.importorskip("open_clip")
    model = cc.load(f"open_clip:local-dir:{write_open_clip_dir(tmp_path / 'siglip', sigmoid=True, seed=1)}",
                    device="cpu", precision="fp32")
    answer = zero_shot(model, ROCKET, embedding_of(model, photo))
    assert sum(answer.probabilities) == pytest.approx(1.0, abs=1e-6)  # the bias cancels: corpus and foil share 1
    measured = float(measure_score(model, ROCKET, "probability")(embedding_of(model, photo)[None])[0])
    assert answer.probabilities[answer.labels.index("rocket")] == pytest.approx(measured, abs=1e-6)


@pytest.mark.parametrize(("probability", "text"), [(0.87, "87%"), (0.004, "<1%"), (0.996, ">99%"), (0.0, "0%"),
                                                   (1.0, "100%"), (0.005, "<1%"), (0.9951, ">99%")])
def test_percentages_never_round_to_a_certainty(probability, text):
    assert percent(probability) == text
