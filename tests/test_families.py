"""Model families: open_clip, Hugging Face transformers (CLIP, SigLIP) and cc.wrap, on tiny random models
written in each library's own format; each checked against that library's own preprocessing, tokenizer
and forward pass."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cocoa_clip as cc
from cocoa_clip.engine.evaluate import measure_score
from cocoa_clip.engine.gradients import GradientSettings
from cocoa_clip.engine.images import frame
from cocoa_clip.models.random_models import OPEN_CLIP_TINY, random_state_dict, write_hf_dir, write_open_clip_dir

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

QUESTION = cc.Question(corpus=["a red circle"], foil=["a blue star", "grass"], template="{}")


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    return {
        "open_clip": write_open_clip_dir(root / "open_clip"),
        "open_clip-siglip": write_open_clip_dir(root / "open_clip-siglip", sigmoid=True, seed=1),
        "hf-clip": write_hf_dir(root / "hf-clip", "clip"),
        "hf-siglip": write_hf_dir(root / "hf-siglip", "siglip"),
    }


def name_of(family: str, dirs: dict[str, str]) -> str:
    return f"open_clip:local-dir:{dirs[family]}" if family.startswith("open_clip") else f"hf:{dirs[family]}"


@pytest.fixture(scope="session")
def models(family_dirs) -> dict[str, cc.Model]:
    return {family: cc.load(name_of(family, family_dirs), device="cpu", precision="fp32") for family in family_dirs}


@pytest.fixture
def picture() -> Image.Image:
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 256, (41, 67, 3), dtype=np.uint8))


def cosine_score(image: torch.Tensor, texts: torch.Tensor) -> float:
    """Contrastive corpus similarity from (1, D) image and (3, D) text embeddings: corpus first, then two foils."""
    image = image / image.norm(dim=-1, keepdim=True)
    texts = texts / texts.norm(dim=-1, keepdim=True)
    sims = (image @ texts.T)[0]
    return float(sims[0] - sims[1:].mean())


def own_score(family: str, folder: str, picture: Image.Image) -> float:
    """The question's score computed by the family's own library: its preprocessing, tokenizer and forward."""
    captions = [*QUESTION.corpus, *QUESTION.foil]
    with torch.no_grad():
        if family.startswith("open_clip"):
            net, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
            tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
            return cosine_score(net.encode_image(preprocess(picture)[None]), net.encode_text(tokenizer(captions)))
        net = transformers.AutoModel.from_pretrained(folder)
        processor = transformers.AutoProcessor.from_pretrained(folder)
        inputs = processor(text=captions, images=picture, padding="max_length", return_tensors="pt",
                           max_length=net.config.text_config.max_position_embeddings)
        output = net(**inputs)
        return cosine_score(output.image_embeds, output.text_embeds)


@pytest.mark.parametrize("family", ["open_clip", "open_clip-siglip", "hf-clip", "hf-siglip"])
def test_scores_equal_the_librarys_own(family, family_dirs, models, picture):
    ours = cc.score(models[family], picture, QUESTION, framing="model")
    # open_clip resamples with PIL as we do: the same score to float rounding. transformers 5 resamples with
    # torchvision's tensor kernels, we with PIL: pixels differ by about 1/255, scores by about 1e-4 at most.
    tolerance = 1e-6 if family.startswith("open_clip") else 2e-4
    assert ours == pytest.approx(own_score(family, family_dirs[family], picture), abs=tolerance)
    assert cc.score(models[family], picture, QUESTION, framing="pad") != pytest.approx(ours, abs=1e-4)


def test_each_family_reads_pictures_its_own_way(models):
    clip_like, siglip = models["hf-clip"].preprocessing, models["hf-siglip"].preprocessing
    assert (clip_like.resize, clip_like.mean) == ("shortest", cc.models.MEAN)
    assert (siglip.resize, siglip.mean, siglip.std) == ("squash", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert models["open_clip-siglip"].preprocessing.interpolation == "bilinear"
    # SigLIP's own framing squashes the whole picture: nothing is cut, so no pixel of the heatmap is NaN.
    strip = Image.new("RGB", (90, 30), "white")
    assert frame(strip, siglip, "model").source_box == (0, 0, 30, 90)
    assert frame(strip, clip_like, "crop").source_box == frame(strip, clip_like, "model").source_box == (0, 30, 30, 30)
    # The pad colour is the model's mean: zero after its own normalisation.
    padded = frame(strip, siglip, "pad").canvas
    assert torch.allclose(padded[:, 0, 0], torch.tensor([0.5, 0.5, 0.5]))


def test_siglip_text_is_padded_to_its_context_and_lower_cased(models):
    siglip = models["hf-siglip"]
    assert siglip.context_length == 16
    tokens = siglip.tokenizer(["a dog"], padding="max_length", max_length=16, return_tensors="pt")
    assert tokens["input_ids"].shape == (1, 16)
    with torch.no_grad():
        own = siglip.net.get_text_features(**tokens)
    own = own if isinstance(own, torch.Tensor) else own.pooler_output
    torch.testing.assert_close(siglip.encode_texts(["a dog"])[0], own)
    assert siglip.token_ids("A Dog") == siglip.token_ids("a dog")  # SigLIP's tokenizer lower-cases


@pytest.mark.parametrize("family", ["open_clip-siglip", "hf-siglip"])
def test_siglip_probability_is_the_corpus_share_of_its_logits_over_corpus_and_foil(family, models, picture):
    """By hand: the SigLIP head's logits (scale x cosine + bias) over "dog", "cat", "bird"; the softmax's first."""
    model = models[family]
    assert model.logit_bias == pytest.approx(-2.5) and model.logit_scale == pytest.approx(10.0, rel=1e-5)
    probability = measure_score(model, cc.Question(corpus=["dog"], foil=["cat", "bird"], template="{}"),
                                "probability", framing="model")
    image = model.encode_canvas(frame(picture, model.preprocessing, "model").canvas).double()
    texts = model.encode_texts(["dog", "cat", "bird"])[0].double()
    logits = [10.0 * float(image @ text / (image.norm() * text.norm())) - 2.5 for text in texts]
    expected = np.exp(logits[0]) / np.exp(logits).sum()
    sigmoid_alone = 1 / (1 + np.exp(-logits[0]))  # SigLIP's own head on the corpus: the foil plays no part
    assert abs(expected - sigmoid_alone) > 0.05
    assert float(probability(image.float()[None])[0]) == pytest.approx(expected, abs=1e-5)


def test_probability_is_the_softmax_head_for_clip_models(models, picture):
    model = models["hf-clip"]
    assert model.logit_bias is None
    probability = measure_score(model, cc.Question(corpus=["dog"], foil=["cat"], template="{}"), "probability")
    inputs = model.tokenizer(["dog", "cat"], padding="max_length", max_length=77, return_tensors="pt")
    pixels = frame(picture, model.preprocessing, "pad").canvas[None]
    with torch.no_grad():
        logits = model.net(pixel_values=model.normalize(pixels), **inputs).logits_per_image
    expected = torch.softmax(logits, dim=-1)[0, 0]
    assert float(probability(model.encode_images(pixels))[0]) == pytest.approx(float(expected), abs=1e-5)


def test_siglip2_sees_the_patches_its_own_processor_makes(tmp_path):
    model = cc.load(f"hf:{write_hf_dir(tmp_path, 'siglip2')}", device="cpu", precision="fp32")
    assert model.n_px == 32 and model.preprocessing.resize == "squash" and model.logit_bias == pytest.approx(-2.5)
    square = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    inputs = transformers.Siglip2ImageProcessor()(square, patch_size=8, max_num_patches=16, return_tensors="pt")
    with torch.no_grad():
        own = model.net.get_image_features(**inputs)
    own = own if isinstance(own, torch.Tensor) else own.pooler_output
    torch.testing.assert_close(model.encode_canvas(frame(square, model.preprocessing, "model").canvas), own[0],
                               atol=1e-5, rtol=1e-5)
    read = []  # SigLIP 2 reads lower-cased captions (its model card); older tokenizers do not lower-case
    model.tokenizer = lambda texts, **options: read.append(texts) or {"input_ids": [1]}
    model.token_ids("A Dog")
    assert read == ["a dog"]


def test_an_openai_checkpoint_gives_the_same_answers_through_clip_and_open_clip(tmp_path, picture):
    # clip.load keeps fp16 weights (upcast on the CPU); so does this checkpoint, so both read the same numbers.
    path = tmp_path / "tiny.pt"
    torch.save({k: v.half().float() for k, v in random_state_dict("tiny", seed=3).items()}, path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "cocoa-tiny.json").write_text(json.dumps(OPEN_CLIP_TINY))
    open_clip.add_model_config(tmp_path / "configs")
    through_clip = cc.load(weights=path, device="cpu", precision="fp32")
    through_open_clip = cc.load("open_clip:cocoa-tiny", weights=path, device="cpu", precision="fp32")
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(through_open_clip.encode_images(pixels), through_clip.encode_images(pixels),
                               atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(through_open_clip.encode_texts(["a dog", "grass"])[0],
                               through_clip.encode_texts(["a dog", "grass"])[0], atol=2e-5, rtol=1e-5)
    maps = [cc.explain(m, picture, QUESTION, masks=64, cache=None).heatmap for m in (through_clip, through_open_clip)]
    np.testing.assert_allclose(maps[1], maps[0], atol=1e-4 * np.abs(maps[0]).max())
    assert through_clip.key != through_open_clip.key and through_open_clip.key.startswith("open_clip:open_clip:cocoa")


TARGET_QUESTIONS = [cc.Question(corpus=["a red circle"], foil=["grass"], target=target) for target in cc.TARGETS]


@pytest.mark.parametrize("method", cc.METHODS)
@pytest.mark.parametrize("family", ["open_clip-siglip", "hf-clip", "hf-siglip"])
def test_every_method_and_target_runs_on_each_family(family, method, models, picture):
    answers = cc.explain(models[family], picture, TARGET_QUESTIONS, method=method, masks=40, cache=None,
                         gradient=GradientSettings(n_steps=4, n_samples=3, internal_batch_size=4))
    for answer in answers:
        assert answer.heatmap.shape == (41, 67) and np.isfinite(answer.heatmap).all()
        assert np.ptp(answer.heatmap) > 0 and np.isfinite(answer.score)
        assert answer.details["model"] == models[family].name


@pytest.mark.parametrize("family", ["open_clip", "hf-siglip"])
def test_integrated_gradients_are_complete_on_each_family(family, models, picture):
    answer = cc.explain(models[family], picture, QUESTION, method="integrated-gradients",
                        gradient=GradientSettings(n_steps=64, internal_batch_size=16))
    delta = answer.details["convergence_delta"][0]
    assert abs(delta) < 0.02 * max(np.abs(np.nansum(answer.heatmap)), 1e-3)


@pytest.mark.parametrize("family", ["open_clip", "hf-clip"])
def test_evaluate_and_compare_run_on_each_family(family, models, picture):
    model = models[family]
    answer = cc.explain(model, picture, QUESTION, masks=40, cache=None)
    for measure in cc.MEASURES:
        curves = cc.insertion_deletion(model, picture, answer.heatmap, QUESTION, steps=4, measure=measure)
        assert np.isfinite(curves.insertion).all() and curves.insertion.shape == (5,)
    comparison = cc.compare(model, picture, ["red circle", "blue star"], masks=40, cache=None)
    assert comparison.labels.shape == (41, 67)


def test_the_pass_cache_keeps_families_apart(models, picture):
    cache = cc.PassCache()
    for model in models.values():
        cc.explain(model, picture, QUESTION, masks=20, cache=cache)
    assert len(cache) == len(models)
    assert all(m.key.startswith(f"{m.family}:{m.name}:{m.weights}:") for m in models.values())
    assert {m.family for m in models.values()} == {"open_clip", "hf"}


def test_compare_reads_captions_with_the_models_tokenizer(models, picture):
    with pytest.raises(cc.QuestionError, match="reads 'dog' twice"):
        cc.compare(models["hf-siglip"], picture, ["dog", "Dog"], masks=20)


@pytest.fixture
def offline(monkeypatch):
    """No network, at once: the hub client raises instead of retrying."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent/hub-cache")


@pytest.mark.parametrize("name, message", [
    ("open_clip:ViT-B-32:laion2b_s34b_b79k", r'Connect to the internet .*cc\.load\("open_clip:ViT-B-32", weights=PATH'),
    ("hf:openai/clip-vit-base-patch32", r"Connect to the internet once .*hf:DIR"),
    ("open_clip:ViT-B-32", r"needs its weights: open_clip:ViT-B-32:TAG"),
    ("open_clip:ViT-B-32:nonsense", r"no weights 'nonsense' for ViT-B-32"),
    ("open_clip:Nope-1", r"Unknown open_clip architecture 'Nope-1'"),
    ("hf:./no/such/folder", r"No folder at ./no/such/folder"),
    ("open_clip:local-dir:/no/such/folder", r"No folder at /no/such/folder"),
])
def test_offline_and_bad_names_get_one_sentence(offline, name, message):
    with pytest.raises(cc.ModelLoadError, match=message) as caught:
        cc.load(name, device="cpu")
    assert "\n" not in str(caught.value)


def test_models_lists_and_download_finds_what_the_hub_cache_holds(family_dirs, tmp_path, monkeypatch, capsys):
    import os
    import shutil

    import huggingface_hub.constants

    from cocoa_clip.cli import main

    repo = tmp_path / "hub" / "models--tiny--siglip"  # the hub client's cache layout: blobs, a snapshot, refs/main
    snapshot = repo / "snapshots" / ("a" * 40)
    for folder in (snapshot, repo / "blobs", repo / "refs"):
        folder.mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    for file in sorted(os.listdir(family_dirs["hf-siglip"])):
        shutil.copy(os.path.join(family_dirs["hf-siglip"], file), repo / "blobs" / file)
        os.symlink(repo / "blobs" / file, snapshot / file)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "open_clip:ARCH[:TAG]" in listing and f"on disk: hf:tiny/siglip  {snapshot}" in listing
    assert main(["download", "hf:tiny/siglip"]) == 0 and "(on disk)" in capsys.readouterr().out
    assert cc.load("hf:tiny/siglip", device="cpu").logit_bias == pytest.approx(-2.5)  # offline, from the cache
    assert main(["download", "hf:tiny/clip"]) == 2 and "HF_HUB_OFFLINE is set" in capsys.readouterr().err


def test_a_checkpoint_of_the_wrong_architecture_is_refused(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "cocoa-wrong.json").write_text(json.dumps({**OPEN_CLIP_TINY, "embed_dim": 48}))
    open_clip.add_model_config(tmp_path / "configs")
    torch.save(random_state_dict("tiny"), tmp_path / "tiny.pt")
    with pytest.raises(cc.ModelLoadError, match="as cocoa-wrong weights"):
        cc.load("open_clip:cocoa-wrong", weights=tmp_path / "tiny.pt", device="cpu")


def test_the_command_line_explains_with_each_family(family_dirs, tmp_path, capsys, picture):
    from cocoa_clip.cli import main

    picture.save(tmp_path / "picture.png")
    for family in ("hf-siglip", "open_clip"):
        code = main(["explain", str(tmp_path / "picture.png"), "--corpus", "dog", "--foil", "cat", "--model",
                     name_of(family, family_dirs), "--framing", "model", "--masks", "20", "--json", "--quiet",
                     "--device", "cpu", "--out", str(tmp_path / f"{family}.png")])
        assert code == 0 and (tmp_path / f"{family}.png").is_file()
        assert json.loads(capsys.readouterr().out)["details"]["model"] == name_of(family, family_dirs)
    assert main(["explain", str(tmp_path / "picture.png"), "--corpus", "dog", "--foil", "cat",
                 "--model", f"hf:{family_dirs['hf-clip']}", "--weights", str(tmp_path / "picture.png")]) == 2
    assert "drop --weights" in capsys.readouterr().err


# --- cc.wrap -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet() -> cc.Model:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    backbone = torchvision.models.resnet18(num_classes=16)
    return cc.wrap(backbone, n_px=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), name="resnet18")


def test_a_wrapped_resnet_explains_with_image_corpora(resnet, picture):
    rng = np.random.default_rng(2)
    corpus = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    foil = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    question = cc.Question(corpus_images=corpus, foil_images=foil)
    rise = cc.explain(resnet, picture, question, masks=40, cache=None)
    assert rise.heatmap.shape == (41, 67) and np.ptp(rise.heatmap) > 0
    # The score is the contrastive corpus similarity of the ResNet's own outputs.
    with torch.no_grad():
        def unit(image):
            pixels = frame(Image.fromarray(image) if isinstance(image, np.ndarray) else image, 32, "pad").canvas
            out = resnet.image_encoder(resnet.normalize(pixels[None]))[0]
            return out / out.norm()
        direction = torch.stack([unit(c) for c in corpus]).mean(0) - unit(foil[0])
        # Near-parallel random ResNet features: the score is a small difference of cosines near 1.
        assert rise.score == pytest.approx(float(unit(picture) @ direction), abs=1e-4)
    assert cc.score(resnet, picture, question.swapped()) == pytest.approx(-rise.score, abs=1e-6)
    ig = cc.explain(resnet, picture, question, method="integrated-gradients",
                    gradient=GradientSettings(n_steps=16, internal_batch_size=16))
    assert abs(ig.details["convergence_delta"][0]) < 0.05 * abs(np.nansum(ig.heatmap))  # completeness
    assert resnet.key.startswith("wrap:resnet18:")


def test_a_wrapped_encoder_without_text_refuses_captions(resnet, picture):
    with pytest.raises(cc.QuestionError, match="resnet18 has no text encoder: give the corpus and foil as images"):
        cc.explain(resnet, picture, cc.Question(corpus=["dog"], foil=["cat"]), masks=10)
    with pytest.raises(cc.SettingsError, match="no zero-shot head"):
        measure_score(resnet, cc.Question(corpus_images=[picture], foil_images=[picture]), "probability")


def test_wrap_takes_a_text_side_too(tiny, photo):
    net = tiny.net
    wrapped = cc.wrap(net.encode_image, n_px=32, text_encoder=net.encode_text, logit_scale=100.0,
                      tokenizer=lambda texts: cc.models.clip_package().tokenize(texts))
    question = cc.Question(corpus=["dog"], foil=["cat"])
    assert cc.score(wrapped, photo, question) == pytest.approx(cc.score(tiny, photo, question), abs=1e-6)


@pytest.mark.parametrize("arguments, message", [
    (dict(image_encoder=None, n_px=32), "needs an image encoder"),
    (dict(image_encoder=torch.nn.Identity(), n_px=0), "n_px is the side"),
    (dict(image_encoder=torch.nn.Identity(), n_px=32, mean=(0.5,)), "three numbers"),
    (dict(image_encoder=torch.nn.Identity(), n_px=32, tokenizer=str), "together"),
    (dict(image_encoder=torch.nn.Identity(), n_px=32, resize="fill"), "resize 'shortest' or 'squash'"),
])
def test_wrap_refuses_bad_arguments(arguments, message):
    encoder = arguments.pop("image_encoder")
    with pytest.raises(cc.SettingsError, match=message):
        cc.wrap(encoder, **arguments)


# --- the app's model dropdown (--models) -------------------------------------------------------------

def test_the_app_offers_several_models_loads_them_on_first_use_and_names_each_answer(family_dirs, tiny, tmp_path,
                                                                                    monkeypatch):
    from cocoa_clip.web import handlers
    from tests.conftest_app import app, write_photo

    names = ["tiny", f"hf:{family_dirs['hf-siglip']}", f"open_clip:local-dir:{family_dirs['open_clip']}"]
    public = ["tiny", "hf:hf-siglip", f"open_clip:local-dir:{Path(family_dirs['open_clip']).name}"]  # no folders
    loads = []

    def load(name):
        loads.append(name)
        return tiny if name == "tiny" else cc.load(name, device="cpu", precision="fp32")

    shelf = app.ModelShelf(names, load, keep=2, loaded=tiny)
    web = app.CocoaApp(tiny, shelf=shelf)
    photo = str(write_photo(tmp_path / "photo.png", 50, 30))
    answers = {}
    for name in (public[1], public[2], public[0], None):
        result = web.explain(photo, corpus="dog", foil="cat", masks=100, model_name=name)
        answers[name] = result
        assert len(shelf.loaded) <= 2
    assert loads == [names[1], names[2], "tiny"]  # on first use; "tiny" came loaded, then made room for two others
    assert "Model: hf:hf-siglip." in answers[public[1]][5] and "Model: tiny." in answers[None][5]
    assert float(answers[public[1]][3]) != pytest.approx(float(answers[public[0]][3]))  # another model, another score
    latest = web.explain(photo, corpus="dog", foil="cat", masks=100, model_name=public[1])
    assert loads[3:] == [names[1]]  # hf-siglip had made room for the others, so it loads again
    curves_of, measured = handlers.curves_of, []
    monkeypatch.setattr(handlers, "curves_of", lambda model, *args, **options: measured.append(model.name)
                        or curves_of(model, *args, **options))
    plot, text = web.check(latest[7])  # each visitor's latest answer; its curves use the model that gave it
    assert "Insertion area" in text and measured == [names[1]] and len(loads) == 4
    with pytest.raises(app.gr.Error, match="model"):
        web.explain(photo, corpus="dog", foil="cat", masks=100, model_name="ViT-H/99")
    demo = app.build_demo(tiny, shelf=shelf, calibrate=False)
    dropdowns = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model"]
    assert len(dropdowns) == 1 and [c[1] for c in dropdowns[0].choices] == public
    assert app.parse_args(["--models", "ViT-B/32,hf:x"]).models == "ViT-B/32,hf:x"


@pytest.mark.parametrize("name", ["open_clip:ViT-B-32:laion2b_s34b_b79k", "hf:openai/clip-vit-base-patch32"])
def test_an_unreachable_hub_is_said_at_once(name, monkeypatch, tmp_path):
    """Not cached and the hub (here a closed local port) unreachable: one sentence before any hub client retries."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(cc.ModelLoadError, match=r"cannot reach 127\.0\.0\.1 .*HF_ENDPOINT") as caught:
        cc.load(name, device="cpu")
    assert "\n" not in str(caught.value)
