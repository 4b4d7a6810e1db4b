import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cocoa_clip as cc
from cocoa_clip.engine.presets import class_names, preset_foil
from cocoa_clip.engine.targets import resolve


def test_direction_form_equals_mean_of_pairwise_similarities(tiny, photo):
    """Proposition 3.3: mean cos to corpus - mean cos to foil = <z, contrastive direction>."""
    corpus, foil = ["dog", "puppy", "a dog on grass"], ["cat", "kitten"]
    question = cc.Question(corpus=corpus, foil=foil, template="{}")
    z = torch.randn(5, 512 // 16, generator=torch.Generator().manual_seed(0))  # 5 image embeddings, D = 32
    texts_c, _ = tiny.encode_texts(corpus)
    texts_f, _ = tiny.encode_texts(foil)
    pairwise = (F.cosine_similarity(z[:, None], texts_c[None], dim=-1).mean(1)
                - F.cosine_similarity(z[:, None], texts_f[None], dim=-1).mean(1))
    target = resolve(tiny, question, z[0])
    torch.testing.assert_close(target(z), pairwise, rtol=1e-5, atol=1e-6)


def test_dot_similarity_uses_raw_embeddings(tiny):
    question = cc.Question(corpus=["dog"], foil=["cat"], similarity="dot", template="{}")
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    texts, _ = tiny.encode_texts(["dog", "cat"])
    torch.testing.assert_close(resolve(tiny, question, z[0])(z), z @ texts[0] - z @ texts[1])


def test_label_free_targets_use_the_image_itself(tiny):
    z = torch.randn(4, 32, generator=torch.Generator().manual_seed(2))
    label_free = resolve(tiny, cc.Question(target="label-free"), z[0])
    torch.testing.assert_close(label_free(z), F.cosine_similarity(z, z[:1]))
    assert label_free(z[:1]).item() == pytest.approx(1.0)
    contrastive = resolve(tiny, cc.Question(target="contrastive-label-free", foil=["cat"], template="{}"), z[0])
    cat, _ = tiny.encode_texts(["cat"])
    torch.testing.assert_close(contrastive(z), F.cosine_similarity(z, z[:1]) - F.cosine_similarity(z, cat))


def test_corpus_target_ignores_the_foil(tiny):
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    with_foil = resolve(tiny, cc.Question(corpus=["dog"], foil=["cat"], target="corpus"), z[0])
    without = resolve(tiny, cc.Question(corpus=["dog"], target="corpus"), z[0])
    torch.testing.assert_close(with_foil(z), without(z))


def test_template_wraps_captions(tiny):
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(4))
    templated = resolve(tiny, cc.Question(corpus=["dog"], target="corpus"), z[0])
    written = resolve(tiny, cc.Question(corpus=["This is a photo of a dog"], target="corpus", template="{}"), z[0])
    torch.testing.assert_close(templated(z), written(z))


def test_an_image_can_be_its_own_corpus(tiny, photo, tmp_path):
    """Image corpus: the picture as its own corpus is the contrastive label-free question."""
    path = tmp_path / "corpus.png"
    photo.save(path)
    as_corpus, label_free = cc.explain(
        tiny, photo, [cc.Question(corpus_images=[path], foil=["cat"]),
                      cc.Question(target="contrastive-label-free", foil=["cat"])], masks=50, cache=None)
    assert as_corpus.score == pytest.approx(label_free.score, abs=1e-5)
    assert abs(as_corpus.score) > 1e-3
    torch.testing.assert_close(torch.from_numpy(as_corpus.heatmap), torch.from_numpy(label_free.heatmap),
                               atol=1e-6, rtol=1e-4)


def test_preset_foils_are_the_other_classes():
    assert len(class_names("cifar100")) == 100 and len(class_names("imagenet")) == 1000
    foil = preset_foil("cifar100", ("Woman",))
    assert len(foil) == 99 and "woman" not in foil and "man" in foil
    assert cc.Question(corpus=["rocket"], foil_preset="cifar100").foil_captions == preset_foil("cifar100", ("rocket",))


@pytest.mark.parametrize(("caption", "template", "named"), [
    ("a bee", cc.DEFAULT_TEMPLATE, "bee"), ("Bees", cc.DEFAULT_TEMPLATE, "bee"),
    ("This is a photo of a bee", "{}", "bee"), ("the bee.", "{}", "bee"),
    ("aquarium_fish", cc.DEFAULT_TEMPLATE, "aquarium fish"), ("butterflies", "{}", "butterfly"),
    ("Maple Trees", cc.DEFAULT_TEMPLATE, "maple tree")])
def test_preset_foils_lose_the_class_the_corpus_names_in_any_form(caption, template, named):
    foil = cc.Question(corpus=[caption], foil_preset="cifar100", template=template).foil_captions
    assert set(class_names("cifar100")) - set(foil) == {named}


def test_the_notes_say_which_preset_class_left_the_foil(tiny, photo):
    bees = cc.explain(tiny, photo, cc.Question(corpus=["Bees"], foil_preset="cifar100"),
                      masks=10, cache=None)
    assert 'The foil is the CIFAR-100 classes without "bee", which the corpus names.' in bees.notes
    robot = cc.explain(tiny, photo, cc.Question(corpus=["robot"], foil_preset="cifar100"),
                       masks=10, cache=None)
    assert "No CIFAR-100 class matches the corpus, so the foil keeps all 100 classes." in robot.notes
    assert len(cc.Question(corpus=["women"], foil_preset="cifar100").foil_captions) == 100  # no irregular plurals


def test_one_picture_of_any_kind_counts_as_one(tiny, photo):
    png = io.BytesIO()
    photo.save(png, format="PNG")
    for picture in (png.getvalue(), photo, np.asarray(photo), "some/path.png"):
        assert cc.Question(corpus=["dog"], foil_images=picture).foil_images == (picture,)
    question = cc.Question(corpus_images=png.getvalue(), foil=["cat"])
    by_bytes = cc.explain(tiny, photo, question, masks=20, cache=None)
    by_image = cc.explain(tiny, photo, cc.Question(corpus_images=[photo], foil=["cat"]), masks=20, cache=None)
    assert by_bytes.score == pytest.approx(by_image.score, abs=1e-6)


def test_description_names_foil_pictures_next_to_a_preset(photo):
    question = cc.Question(corpus=["dog"], foil_images=[photo], foil_preset="cifar100")
    assert question.describe() == '"dog" rather than 1 image and the CIFAR-100 classes'


def test_swapped_question_exchanges_corpus_and_foil():
    question = cc.Question(corpus=["dog"], foil=["cat", "cow"], template="{}")
    swapped = question.swapped()
    assert swapped.corpus == ("cat", "cow") and swapped.foil == ("dog",) and swapped.template == "{}"
    assert question.describe() == '"dog" rather than "cat" / "cow"'
    with pytest.raises(cc.QuestionError, match="preset"):
        cc.Question(corpus=["dog"], foil_preset="cifar100").swapped()


def test_the_reverse_question_swaps_corpus_and_foil_images_too(tiny, photo):
    """The app's reverse question: with pictures on both sides, the pictures change sides with the captions."""
    dog_picture = np.asarray(photo)[::-1]
    cat_picture = np.asarray(photo)[:, ::-1]
    question = cc.Question(corpus=["dog"], corpus_images=[dog_picture], foil=["cat", "cow"], foil_images=[cat_picture])
    swapped = question.swapped()
    assert swapped.corpus_images[0] is cat_picture and swapped.foil_images[0] is dog_picture
    forward, backward = cc.explain(tiny, photo, [question, swapped], masks=40, cache=None)
    assert abs(forward.score) > 1e-3 and backward.score == pytest.approx(-forward.score, abs=1e-6)
    np.testing.assert_allclose(backward.heatmap, -forward.heatmap, atol=1e-6)
    images_only = cc.Question(corpus_images=[dog_picture], foil_images=[cat_picture])
    assert cc.score(tiny, photo, images_only.swapped()) == pytest.approx(-cc.score(tiny, photo, images_only), abs=1e-6)


def test_long_captions_are_truncated_with_a_note(tiny, photo):
    long = "a very long caption about a dog " * 20 + "in the end a cat"
    question = cc.Question(corpus=[long], foil=["cat"])
    for _ in range(2):  # the second time the caption's embedding is cached: the note must still come
        answer = cc.explain(tiny, photo, question, masks=20, cache=None)
        assert len(answer.notes) == 1 and "truncated" in answer.notes[0] and "in the end a cat" in answer.notes[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(foil=["cat"]), "needs a corpus"),
    (dict(corpus=["dog"]), "needs a foil"),
    (dict(corpus=["  "], foil=["cat"]), "Corpus caption 1 is empty"),
    (dict(corpus=["dog"], foil=["cat", ""]), "Foil caption 2 is empty"),
    (dict(corpus=[3], foil=["cat"]), "not text"),
    (dict(corpus=["dog"], foil=["cat"], template="a photo"), "template must contain"),
    (dict(corpus=["dog"], foil=["cat"], template="{} and {}"), "template must contain"),
    (dict(corpus=["dog"], foil=["cat"], template="{name} {}"), "stray braces"),
    (dict(corpus=["dog"], foil=["cat"], target="relax"), "Unknown target"),
    (dict(corpus=["dog"], foil=["cat"], similarity="l2"), "Unknown similarity"),
    (dict(corpus=["dog"], foil_preset="coco"), "Unknown foil preset"),
    (dict(target="contrastive-label-free"), "needs a foil"),
])
def test_bad_questions_say_what_is_wrong(kwargs, message):
    with pytest.raises(cc.QuestionError, match=message):
        cc.Question(**kwargs)


def test_label_free_needs_no_corpus():
    assert cc.Question(target="label-free").describe() == "the image itself"


@pytest.mark.parametrize(("corpus", "foil", "named"), [
    (["赤い十字"], ["blue star"], "'赤い十字' is"), (["rocket"], ["🚀", "Москва"], "'🚀', 'Москва' are")])
def test_a_caption_mostly_in_another_script_gets_one_note(tiny, photo, corpus, foil, named):
    answer = cc.explain(tiny, photo, cc.Question(corpus=corpus, foil=foil), masks=8)
    english = [note for note in answer.notes if note.startswith("CLIP reads English")]
    assert len(english) == 1 and named in english[0]


@pytest.mark.parametrize("caption", ["café au lait", "a 🚀 rocket", "Ωmega red circle", "no. 3-4"])
def test_latin_captions_with_accents_a_symbol_or_digits_get_no_note(tiny, photo, caption):
    answer = cc.explain(tiny, photo, cc.Question(corpus=[caption], foil=["cat"]), masks=8)
    assert not any(note.startswith("CLIP reads English") for note in answer.notes)
