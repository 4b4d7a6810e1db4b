"""legrad and attention-relevance: against a hand computation on a tiny three-layer ViT, on every ViT family
with every target, and refused in a sentence where a model has no attention to read."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cocoa_clip as cc
from cocoa_clip.engine.attention import ATTENTION_METHODS, SELF_NOTE, grid_map, trace
from cocoa_clip.engine.gradients import GradientSettings
from cocoa_clip.engine.images import frame
from cocoa_clip.engine.targets import SAME_NOTE, resolve
from cocoa_clip.models.random_models import write_checkpoint, write_hf_dir, write_open_clip_dir
from cocoa_clip.models.tracing import OTHER_METHODS

QUESTION = cc.Question(corpus=["a red circle"], foil=["a blue star", "grass"], template="{}")
TARGET_QUESTIONS = [cc.Question(corpus=["a red circle"], foil=["grass"], target=target) for target in cc.TARGETS]


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> cc.ClipModel:
    """A random OpenAI-format CLIP with a 3-block, 2-head image tower on a 4 x 4 grid of 8 px patches."""
    path = write_checkpoint(tmp_path_factory.mktemp("vit") / "vit.pt", "tiny", seed=4, vision_layers=3,
                            vision_width=128)
    return cc.load(weights=path, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def families(tmp_path_factory, vit) -> dict[str, cc.Model]:
    root = tmp_path_factory.mktemp("families")
    names = {"open_clip": f"open_clip:local-dir:{write_open_clip_dir(root / 'oc')}",
             "open_clip-siglip": f"open_clip:local-dir:{write_open_clip_dir(root / 'ocs', sigmoid=True, seed=1)}",
             "hf-clip": f"hf:{write_hf_dir(root / 'hfc', 'clip')}",
             "hf-siglip": f"hf:{write_hf_dir(root / 'hfs', 'siglip')}",
             "hf-siglip2": f"hf:{write_hf_dir(root / 'hfs2', 'siglip2')}"}
    return {"clip": vit, **{family: cc.load(name, device="cpu", precision="fp32") for family, name in names.items()}}


@pytest.fixture
def picture() -> Image.Image:
    return Image.fromarray(np.random.default_rng(5).integers(0, 256, (41, 67, 3), dtype=np.uint8))


def by_hand(state: dict[str, torch.Tensor], normalised: torch.Tensor):
    """OpenAI CLIP's ViT written out from its weights: (embedding (1, D), per-block attention probabilities
    (1, H, N, N) and output tokens (1, N, C), the readout of any block's tokens)."""
    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"])

    patch = state["visual.conv1.weight"]
    x = F.conv2d(normalised, patch, stride=patch.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([state["visual.class_embedding"].expand(1, 1, -1), x], 1) + state["visual.positional_embedding"]
    x = norm(x, "visual.ln_pre")
    heads = x.shape[-1] // 64
    attentions, tokens = [], []
    for block in range(3):
        name = f"visual.transformer.resblocks.{block}"
        h = norm(x, f"{name}.ln_1") @ state[f"{name}.attn.in_proj_weight"].T + state[f"{name}.attn.in_proj_bias"]
        q, k, v = (t.reshape(1, -1, heads, 64).transpose(1, 2) for t in h.chunk(3, -1))
        probabilities = torch.softmax(q @ k.transpose(-1, -2) / 8.0, -1)
        attentions.append(probabilities)
        mixed = (probabilities @ v).transpose(1, 2).reshape(1, -1, heads * 64)
        x = x + mixed @ state[f"{name}.attn.out_proj.weight"].T + state[f"{name}.attn.out_proj.bias"]
        hidden = norm(x, f"{name}.ln_2") @ state[f"{name}.mlp.c_fc.weight"].T + state[f"{name}.mlp.c_fc.bias"]
        hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
        x = x + hidden @ state[f"{name}.mlp.c_proj.weight"].T + state[f"{name}.mlp.c_proj.bias"]
        tokens.append(x)

    def readout(block_tokens):
        return norm(block_tokens[:, 0], "visual.ln_post") @ state["visual.proj"]

    return readout(x), attentions, tokens, readout


@pytest.fixture(scope="module")
def hand(vit):
    """The square test picture, the COCOA direction, and the model written out by hand on it."""
    square = Image.fromarray(np.random.default_rng(9).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    framed = frame(square, vit.preprocessing, "squash")
    normalised = vit.normalize(framed.canvas[None]).requires_grad_(True)
    state = {name: tensor.float() for name, tensor in vit.net.state_dict().items()}
    direction = resolve(vit, QUESTION, None).direction

    def cosine(embedding):
        return (embedding / embedding.norm(dim=-1, keepdim=True) @ direction).sum()

    return square, framed, cosine, by_hand(state, normalised)


def test_the_hand_written_vit_is_the_model(vit, hand):
    square, framed, _, (embedding, *_) = hand
    torch.testing.assert_close(embedding, vit.encode_normalised(vit.normalize(framed.canvas[None])),
                               atol=1e-5, rtol=1e-5)


def test_attention_relevance_is_chefers_rule_by_hand(vit, hand):
    square, framed, cosine, (embedding, attentions, _, _) = hand
    gradients = torch.autograd.grad(cosine(embedding), attentions, retain_graph=True)
    relevance = torch.eye(17)
    for probabilities, gradient in zip(attentions, gradients, strict=True):
        relevance = relevance + (gradient * probabilities)[0].clamp(min=0).mean(0) @ relevance
    expected = relevance[0, 1:].reshape(4, 4).detach()  # the class token's row, its own column dropped
    traced, _ = trace(vit, framed)
    ours = grid_map(traced, resolve(vit, QUESTION, None), "attention-relevance")[0]
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-4)
    assert float(expected.std()) > 0.05 * float(expected.abs().max())  # a map with structure, not a constant
    # explain's map is that grid resampled bilinearly to the input, here the whole 32 px picture
    answer = cc.explain(vit, square, QUESTION, method="attention-relevance", framing="squash")
    upsampled = F.interpolate(expected[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(answer.content_map, upsampled.numpy(), atol=1e-6, rtol=1e-4)


def test_legrad_is_the_last_two_blocks_own_gradients_by_hand(vit, hand):
    square, framed, cosine, (_, attentions, tokens, readout) = hand
    total = torch.zeros(16)
    for block in (1, 2):  # the last two of three blocks, each scored through the final norm and projection
        gradient, = torch.autograd.grad(cosine(readout(tokens[block])), attentions[block], retain_graph=True)
        total = total + gradient[0].clamp(min=0).mean(0).mean(0)[1:]  # heads, then query rows; patch columns
    expected = total.reshape(4, 4)  # kept in its units: the display scales it (LeGrad's code min-max normalises)
    traced, _ = trace(vit, framed)
    ours = grid_map(traced, resolve(vit, QUESTION, None), "legrad")[0]
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-4)
    assert float(expected.std()) > 0.05 * float(expected.abs().max())
    # one block (the last) is the positive gradient of the final score with respect to that block's attention
    gradient, = torch.autograd.grad(cosine(readout(tokens[2])), attentions[2], retain_graph=True)
    last = gradient[0].clamp(min=0).mean(0).mean(0)[1:]
    torch.testing.assert_close(grid_map(traced, resolve(vit, QUESTION, None), "legrad", layers=1)[0],
                               last.reshape(4, 4), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("family", ["clip", "open_clip", "open_clip-siglip", "hf-clip", "hf-siglip", "hf-siglip2"])
def test_the_trace_reads_the_models_own_embedding_and_leaves_the_model_as_it_was(family, families):
    model = families[family]
    normalised = torch.randn(2, 3, model.n_px, model.n_px, generator=torch.Generator().manual_seed(0))
    before = model.encode_normalised(normalised)
    traced = model.attention_trace(normalised)
    torch.testing.assert_close(traced.readout(traced.tokens[-1])[0], before, atol=1e-5, rtol=1e-5)
    # open_clip-siglip is a CLIP ViT with a sigmoid head: it has a class token
    assert traced.grid == (4, 4) and traced.prefix == (0 if family.startswith("hf-siglip") else 1)
    assert traced.attentions[0].shape[-1] == traced.tokens[0].shape[1] == 16 + traced.prefix
    torch.testing.assert_close(traced.attentions[0].sum(-1), torch.ones(traced.attentions[0].shape[:-1]))
    assert torch.equal(model.encode_normalised(normalised), before)
    assert not model.encode_normalised(normalised).requires_grad  # the frozen weights stayed frozen


@pytest.mark.parametrize("method", ATTENTION_METHODS)
@pytest.mark.parametrize("family", ["clip", "open_clip", "hf-clip", "hf-siglip", "hf-siglip2"])
def test_each_family_and_target_gives_a_map_the_size_of_the_picture(family, method, families, picture):
    model = families[family]
    answers = cc.explain(model, picture, TARGET_QUESTIONS, method=method)
    for answer in answers:
        assert answer.heatmap.shape == (41, 67) and np.isfinite(answer.heatmap).all()
        assert answer.method == method and answer.scale == "minmax"
        assert answer.score == pytest.approx(cc.score(model, picture, answer.question), abs=1e-5)
        assert (answer.heatmap >= 0).all()  # both methods add up positive parts only
        # cos(f(x), f(x)) is at its maximum at x: its gradient is zero, and so is attention-relevance's map, and
        # LeGrad's on a one-block tower (its last block's readout is the embedding itself)
        one_block = len(model.attention_trace(model.normalize(torch.rand(1, 3, model.n_px, model.n_px))).tokens) == 1
        # (the tiny SigLIP 2's tokenizer reads both captions alike: a zero COCOA direction, so a zero map)
        same = SAME_NOTE in answer.notes
        if same or answer.question.target == "label-free" and (method == "attention-relevance" or one_block):
            assert np.abs(answer.heatmap).max() < 1e-6 and cc.engine.explain.FLAT_NOTE in answer.notes
            assert (SELF_NOTE in answer.notes) == (method == "attention-relevance" and not same)
        else:
            assert np.ptp(answer.heatmap) > 0
    crop = cc.explain(model, picture, QUESTION, method=method, framing="model")
    assert crop.heatmap.shape == (41, 67)
    assert np.isnan(crop.heatmap).any() == (model.preprocessing.resize == "shortest")  # CLIP crops, SigLIP squashes


def test_every_map_of_a_batch_is_its_own(vit):
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = resolve(vit, QUESTION, None)
    together = {m: grid_map(vit.attention_trace(vit.normalize(pixels)), target, m) for m in ATTENTION_METHODS}
    for index in range(3):
        traced = vit.attention_trace(vit.normalize(pixels[index:index + 1]))
        for method in ATTENTION_METHODS:
            torch.testing.assert_close(grid_map(traced, target, method)[0], together[method][index],
                                       atol=1e-6, rtol=1e-4)


def test_resnets_and_wrapped_encoders_refuse_in_a_sentence_naming_what_applies(tmp_path, picture):
    resnet = cc.load(weights=write_checkpoint(tmp_path / "resnet.pt", "tiny-resnet"), device="cpu", precision="fp32")
    wrapped = cc.wrap(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, 8), torch.nn.Flatten()), n_px=32)
    question = cc.Question(corpus_images=[picture], foil_images=[picture.transpose(Image.FLIP_LEFT_RIGHT)])
    assert set(OTHER_METHODS) == set(cc.METHODS) - set(ATTENTION_METHODS)
    for model, reason in ((resnet, "ResNet"), (wrapped, "not a vision transformer")):
        for method in ATTENTION_METHODS:
            with pytest.raises(cc.SettingsError) as refusal:
                cc.explain(model, picture, question, method=method)
            sentence = str(refusal.value)
            assert reason in sentence and "\n" not in sentence
            assert sentence.endswith("use rise, integrated-gradients or gradient-shap.")


def test_layers_out_of_range_are_refused(vit, hand):
    traced, _ = trace(vit, hand[1])
    with pytest.raises(cc.SettingsError, match="from 1 to 3"):
        grid_map(traced, resolve(vit, QUESTION, None), "legrad", layers=4)


@pytest.fixture(scope="module")
def demo_scene():
    """The bundled shapes-demo ViT (4 blocks, 8 x 8 patches) and one held-out two-object scene."""
    from cocoa_clip.models.shapes import two_object_scene

    model = cc.load("shapes-demo", device="cpu", precision="fp32")
    scene = two_object_scene(np.random.default_rng(3), model.n_px)
    return model, scene.image, cc.Question(corpus=[scene.objects[0].name], foil=[scene.objects[1].name])


def test_the_methods_table_scores_each_map_as_evaluate_does_and_ranks_by_the_chosen_measure(demo_scene):
    from cocoa_clip.engine.evaluate import curves_of

    model, image, question = demo_scene
    methods = ["legrad", "attention-relevance", "integrated-gradients"]
    settings = GradientSettings(n_steps=4)
    table = cc.compare_methods(model, image, question, methods, rank_by="probability", steps=4,
                               gradient=settings)
    assert sorted(row.method for row in table.rows) == sorted(methods) and table.measures == cc.MEASURES
    merits = [row.merit("probability") for row in table.rows]
    assert merits == sorted(merits, reverse=True)
    for row in table.rows:
        answer = cc.explain(model, image, question, method=row.method, gradient=settings)
        for measure in cc.MEASURES:
            expected = curves_of(model, answer, steps=4, measure=measure).aucs()
            assert row.aucs[measure] == pytest.approx(expected, abs=1e-6)
        assert row.seconds > 0
        # on this scene every method's map beats a random pixel order on both curves, in both measures
        assert min(min(row.gains(measure)) for measure in cc.MEASURES) > 0
    data = table.to_dict()
    assert [entry["method"] for entry in data["methods"]] == [row.method for row in table.rows]
    assert data["methods"][0]["probability"]["insertion_gain"] == pytest.approx(table.rows[0].gains("probability")[0])
    assert "insertion area minus deletion area" in table.text() and "lower is better" in table.text()


def test_the_methods_table_refuses_unknown_methods_and_a_missing_head(demo_scene):
    model, image, question = demo_scene
    with pytest.raises(cc.SettingsError, match="Unknown method 'grad-cam'"):
        cc.compare_methods(model, image, question, ["legrad", "grad-cam"])
    wrapped = cc.wrap(lambda x: x.mean((2, 3)), n_px=64)
    images = cc.Question(corpus_images=[image], foil_images=[image.rotate(90)])
    with pytest.raises(cc.SettingsError, match="no zero-shot head"):
        cc.compare_methods(wrapped, image, images, ["rise"], rank_by="probability")


def test_evaluate_methods_prints_the_table_or_json(demo_scene, tmp_path, capsys):
    from cocoa_clip.cli import main

    model, image, question = demo_scene
    path = str(tmp_path / "scene.png")
    image.save(path)
    common = ["evaluate", path, "--model", "shapes-demo", "--device", "cpu", "--corpus", *question.corpus,
              "--foil", *question.foil, "--curve-steps", "4", "--methods", "attention-relevance,legrad"]
    assert main([*common, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {entry["method"] for entry in data["methods"]} == {"legrad", "attention-relevance"}
    assert data["rank_by"] == "similarity" and set(data["methods"][0]) >= {"similarity", "probability", "seconds"}
    assert main(common) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["method", "seconds", "similarity"] and len(lines) >= 4
    with pytest.raises(SystemExit) as refusal:  # argparse's own refusal: usage, then one line
        main([*common[:-1], "legrad,grad-cam"])
    assert refusal.value.code == 2
    assert "'grad-cam' is not a method" in capsys.readouterr().err
