import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cocoa_clip.cli import build_parser, main
from cocoa_clip.engine.evaluate import insertion_deletion
from cocoa_clip.engine.images import frame, load_image
from cocoa_clip.engine.targets import Question
from cocoa_clip.models import clip_package, normalize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def picture(tmp_path, photo) -> str:
    path = tmp_path / "photo.jpg"
    photo.save(path, quality=95)
    return str(path)


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The command line as a user runs it: a fresh interpreter, `python -m cocoa_clip`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cocoa_clip", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


def test_explain_end_to_end_with_a_tiny_checkpoint(tiny_checkpoint, picture, tmp_path):
    result = run_cli("explain", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint,
                     "--masks", "200", "--out", str(tmp_path / "o.png"), "--heatmap", str(tmp_path / "h.npy"),
                     "--colorbar", str(tmp_path / "c.png"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("score ") and '"dog" rather than "cat"' in result.stdout
    with Image.open(tmp_path / "o.png") as overlay:
        assert overlay.size == (70, 45) and overlay.format == "PNG"
    heatmap = np.load(tmp_path / "h.npy")
    assert heatmap.shape == (45, 70) and heatmap.dtype == np.float32 and np.isfinite(heatmap).all()
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_default_output_is_named_after_the_image(tiny_checkpoint, picture, tmp_path):
    result = run_cli("explain", picture, "--target", "label-free", "--weights", tiny_checkpoint, "--masks", "20",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "photo_cocoa.png").is_file()


def test_several_images_in_one_run_skip_an_unreadable_one(tiny_checkpoint, photo, tmp_path, capsys):
    for name in ("one", "two"):
        photo.save(tmp_path / f"{name}.png")
    (tmp_path / "broken.png").write_text("not a picture")
    images = [str(tmp_path / name) for name in ("one.png", "broken.png", "two.png")]
    code = main(["explain", *images, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint, "--masks", "30",
                 "--quiet", "--json", "--out", str(tmp_path / "maps" / "{stem}.png"),
                 "--heatmap", str(tmp_path / "maps" / "{stem}.npy")])
    assert code == 2  # one image failed; the others were still explained
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [Path(line["image"]).name for line in lines] == ["one.png", "two.png"]
    assert lines[1]["overlay"] == str(tmp_path / "maps" / "two.png")
    assert "broken.png is not an image" in err and "Traceback" not in err
    assert np.load(tmp_path / "maps" / "one.npy").shape == (45, 70)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["one.npy", "one.png", "two.npy", "two.png"]


@pytest.mark.parametrize("extra, message", [
    (["--out", "same.png"], "put {stem} in --out"),
    (["--heatmap", "h.npy"], "put {stem} in --heatmap"),
    (["--out", "{stem}.png", "--colorbar", "{stem}.png"], "would both be written to"),
])
def test_several_images_need_an_output_pattern_checked_before_loading(picture, extra, message, capsys):
    assert main(["explain", picture, picture.replace("photo", "other"), "--corpus", "dog", "--foil", "cat",
                 "--weights", "/no/such/weights.pt", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "No checkpoint" not in err


def test_a_time_budget_answers_from_the_masks_done(tiny_checkpoint, picture, tmp_path, capsys):
    code = main(["explain", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint, "--quiet",
                 "--masks", "20000", "--batch-size", "8", "--time-budget", "2", "--out", str(tmp_path / "o.png")])
    assert code == 0
    out = capsys.readouterr().out
    assert "(the time budget ran out first)" in out
    done = int(out.split(" masks")[0].rsplit(", ", 1)[1])
    assert 8 <= done < 20_000 and done % 8 == 0


def test_compare_writes_the_coloured_picture_and_labels(tiny_checkpoint, picture, tmp_path, capsys):
    code = main(["compare", picture, "--caption", "dog", "--caption", "cat", "--caption", "grass", "--weights",
                 tiny_checkpoint, "--masks", "60", "--quiet", "--out", str(tmp_path / "c" / "{stem}.png"),
                 "--labels", str(tmp_path / "c" / "{stem}.npy"), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [part["caption"] for part in result["captions"]] == ["dog", "cat", "grass"]
    assert sum(part["share"] for part in result["captions"]) + result["undecided_share"] == pytest.approx(1.0)
    assert sum(part["score"] for part in result["captions"]) == pytest.approx(0.0, abs=1e-5)  # they sum to zero
    labels = np.load(tmp_path / "c" / "photo.npy")
    assert labels.shape == (45, 70) and labels.dtype == np.int16 and set(np.unique(labels)) <= {-1, 0, 1, 2}
    with Image.open(tmp_path / "c" / "photo.png") as overlay:
        assert overlay.width >= 70 and overlay.height > 45  # the legend strip below the picture
    assert main(["compare", picture, "--caption", "dog", "--weights", tiny_checkpoint]) == 2
    assert "Compare 2 to 10 captions" in capsys.readouterr().err


def test_outputs_never_overwrite_the_input_images(tiny_checkpoint, photo, tmp_path, capsys):
    for name in ("a", "b"):
        photo.save(tmp_path / f"{name}.png")
    before = (tmp_path / "a.png").read_bytes()
    images = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert main(["explain", *images, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint,
                 "--out", str(tmp_path / "{stem}.png")]) == 2
    assert main(["compare", images[0], "--caption", "dog", "--caption", "cat", "--weights", tiny_checkpoint,
                 "--out", images[0]]) == 2
    assert main(["evaluate", images[0], "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint,
                 "--plot", images[0]]) == 2
    assert capsys.readouterr().err.count(f"would overwrite the input {images[0]}") == 3
    assert (tmp_path / "a.png").read_bytes() == before


def test_output_paths_are_exactly_the_ones_given(tiny_checkpoint, picture, tmp_path, capsys):
    assert main(["explain", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint, "--masks", "20",
                 "--quiet", "--out", str(tmp_path / "o.png"), "--heatmap", str(tmp_path / "heat"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["heatmap"] == str(tmp_path / "heat")
    assert np.load(tmp_path / "heat").shape == (45, 70) and not (tmp_path / "heat.npy").exists()


@pytest.mark.parametrize("command, message", [
    (["explain", "--corpus", "dog", "--foil", "cat", "--opacity", "2"], "Opacity"),
    (["explain", "--corpus", "dog", "--foil", "cat", "--cmap", "no-such-map"], "colour map"),
    (["evaluate", "--corpus", "dog", "--foil", "cat", "--curve-steps", "1"], "steps"),
    (["evaluate", "--target", "label-free"], "give a corpus and a foil"),
    (["evaluate", "--corpus", "dog", "--foil", "cat", "--seed", "18446744073709551616"], "seed must be"),
    (["evaluate", "--corpus", "dog", "--foil", "cat", "--seed", "-1"], "seed must be"),
    (["compare", "--caption", "dog", "--caption", "cat", "--opacity", "-1"], "Opacity"),
    (["explain", "--corpus", "dog", "--foil", "cat", "--masks", "auto", "--stability", "1.2"], "stability"),
    (["explain", "--corpus", "dog", "--foil", "cat", "--masks", "auto", "--max-masks", "0"], "most masks"),
    (["explain", "--corpus", "dog", "--foil", "cat", "--blur-sigma", "0"], "blur sigma"),
    (["explain", "--corpus", "dog", "--method", "integrated-gradients", "--steps", "0"], "n_steps"),
    (["explain", "--corpus", "dog", "--method", "gradient-shap", "--stdev", "-1"], "stdev"),
    # A refused number is written as the limits beside it are, with thousands separators.
    (["explain", "--corpus", "dog", "--foil", "cat", "--masks", "1000000000"],
     "masks until the map is stable); got 1,000,000,000."),
    (["explain", "--corpus", "dog", "--method", "gradient-shap", "--samples", "123456"], "10,000; got 123,456."),
])
def test_settings_are_checked_before_the_model_loads(picture, command, message, capsys):
    assert main([command[0], picture, *command[1:], "--weights", "/no/such/weights.pt"]) == 2
    err = capsys.readouterr().err
    assert message in err and "No checkpoint" not in err


def test_saved_heatmaps_that_are_not_one_real_array_are_refused(tiny_checkpoint, picture, tmp_path, capsys):
    np.savez(tmp_path / "two.npz", a=np.zeros((45, 70)), b=np.ones((45, 70)))
    np.save(tmp_path / "words.npy", np.full((45, 70), "x"))
    np.save(tmp_path / "complex.npy", np.zeros((45, 70), dtype=np.complex64))
    (tmp_path / "empty.npy").write_bytes(b"")
    for name, message in (("two.npz", "archive of several arrays"), ("words.npy", "real numbers"),
                          ("complex.npy", "real numbers"), ("empty.npy", "Could not read")):
        assert main(["evaluate", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint,
                     "--from-heatmap", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_json_output_and_gradient_method(tiny_checkpoint, picture, tmp_path, capsys):
    code = main(["explain", picture, "--corpus", "dog", "--foil-preset", "cifar100", "--weights", tiny_checkpoint,
                 "--method", "integrated-gradients", "--out", str(tmp_path / "o.png"), "--json", "--device", "cpu"])
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["method"] == "integrated-gradients" and isinstance(answer["score"], float)
    assert answer["question"] == '"dog" rather than the CIFAR-100 classes'
    words = answer["zero_shot"]  # "dog" against the top 3 of the 100 CIFAR-100 classes (none is a dog), the rest summed
    assert "dog" in words["labels"] and words["others"] == 100 - 3 and words["text"].startswith(words["pick"])
    assert sum(words["probabilities"]) + words["others_probability"] == pytest.approx(1, abs=1e-3)


def test_the_text_answer_gives_the_zero_shot_answer_in_words_below_the_score(tiny_checkpoint, picture, tmp_path,
                                                                                capsys):
    assert main(["explain", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint, "--masks", "16",
                 "--out", str(tmp_path / "o.png"), "--quiet"]) == 0
    score, words = capsys.readouterr().out.splitlines()[:2]
    assert score.startswith("score ") and words.startswith("zero-shot answer: ")
    assert sorted(part.rsplit(" ", 1)[0] for part in words.removeprefix("zero-shot answer: ").split(", ")) == [
        "cat", "dog"]


def test_auto_masks_report_masks_and_stability(tiny_checkpoint, picture, tmp_path, capsys):
    code = main(["explain", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint,
                 "--masks", "auto", "--max-masks", "300", "--stability", "0.9", "--out", str(tmp_path / "o.png"),
                 "--json", "--quiet"])
    assert code == 0
    details = json.loads(capsys.readouterr().out)["details"]
    assert details["auto"] and 64 <= details["masks"] <= 300 and details["stability_target"] == 0.9
    assert details["estimator"] == "regression" and (details["stability"] >= 0.9 or details["masks"] == 300)
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["explain", picture, "--corpus", "dog", "--foil", "cat", "--masks", "some"])
    assert exit_info.value.code == 2
    assert build_parser().parse_args(["explain", picture, "--masks", "Auto"]).masks == "auto"


def test_evaluate_prints_the_four_areas_as_json(tiny_checkpoint, picture, tmp_path, capsys):
    code = main(["evaluate", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint,
                 "--masks", "50", "--curve-steps", "10", "--json", "--plot", str(tmp_path / "curves.png")])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads(printed)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only the old name
    assert result["fractions"] == [step / 10 for step in range(11)]  # 0.7, not 0.7000000000000001
    numbers = [float(number) for number in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", printed)]
    assert numbers and all(number == float(f"{number:.7g}") for number in numbers)  # 7 significant digits at most
    for name in ("insertion", "deletion", "random_insertion", "random_deletion"):
        assert len(result[name]) == 11
        assert result[f"{name}_auc"] == pytest.approx(trapezoid(result[name], result["fractions"]), abs=1e-6)
    picture_score, blurred_score = result["deletion"][0], result["insertion"][0]
    assert picture_score != pytest.approx(blurred_score, abs=1e-4)
    assert result["random_deletion"][0] == pytest.approx(picture_score, abs=1e-6)
    assert result["random_insertion"][-1] == pytest.approx(picture_score, abs=1e-6)
    assert result["random_insertion"][0] == pytest.approx(blurred_score, abs=1e-6)
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_evaluate_with_the_zero_shot_probability_measure(tiny, tiny_checkpoint, picture, capsys):
    code = main(["evaluate", picture, "--corpus", "dog", "--foil-preset", "cifar100", "--weights", tiny_checkpoint,
                 "--method", "integrated-gradients", "--curve-steps", "5", "--measure", "probability", "--json",
                 "--precision", "fp32"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["measure"] == "probability"
    # On the whole picture: the zero-shot probability of "dog" among it and CIFAR-100's 99 other classes.
    question = Question(corpus=["dog"], foil_preset="cifar100")
    captions = [question.template.format(c) for c in ("dog", *question.foil_captions)]
    with torch.no_grad():
        logits, _ = tiny.net(normalize(frame(load_image(picture), 32).canvas[None]), clip_package().tokenize(captions))
    probability = logits.softmax(-1)[0, 0].item()
    assert result["deletion"][0] == pytest.approx(probability, abs=1e-6)
    assert result["random_insertion"][-1] == pytest.approx(probability, abs=1e-6)
    assert main(["evaluate", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint,
                 "--masks", "20", "--curve-steps", "3", "--measure", "probability"]) == 0
    assert "probability of the corpus" in capsys.readouterr().out


def test_evaluate_a_saved_heatmap(tiny, tiny_checkpoint, picture, tmp_path, capsys):
    """The curves are those of the saved map, not of a map computed afresh."""
    saved = np.random.default_rng(5).random((45, 70)).astype(np.float32)
    np.save(tmp_path / "h.npy", saved)
    assert main(["evaluate", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint,
                 "--precision", "fp32", "--masks", "20", "--from-heatmap", str(tmp_path / "h.npy"),
                 "--curve-steps", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = insertion_deletion(tiny, picture, saved, Question(corpus=["dog"], foil=["cat"]), steps=5)
    np.testing.assert_allclose(result["insertion"], expected.insertion, atol=1e-6)
    np.testing.assert_allclose(result["deletion"], expected.deletion, atol=1e-6)
    np.save(tmp_path / "bad.npy", np.zeros(3))
    assert main(["evaluate", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint,
                 "--from-heatmap", str(tmp_path / "bad.npy")]) == 2


@pytest.mark.parametrize("args, message", [
    (["--corpus", "dog", "--foil", "cat", "--masks", "-1"], "number of masks"),
    (["--corpus", "dog", "--foil", "cat", "--masks", "100000000"], "number of masks"),
    (["--corpus", "dog", "--foil", "cat", "--time-budget", "-1"], "time budget must be a positive number"),
    (["--corpus", "dog", "--foil", "cat", "--time-budget", "nan"], "time budget must be a positive number"),
    (["--foil", "cat"], "needs a corpus"),
    (["--corpus", "   ", "--foil", "cat"], "caption 1 is empty"),
    (["--corpus", "dog"], "needs a foil"),
    (["--corpus", "dog", "--foil", "cat", "--template", "no slot"], "template must contain"),
    (["--corpus", "dog", "--foil", "cat", "--weights", "/no/such/file.pt"], "No checkpoint file"),
    (["--corpus", "dog", "--foil", "cat", "--model", "ViT-Q/1"], "Unknown model"),
    (["--corpus", "dog", "--foil", "cat", "--corpus-image", "/no/such.png"], "No image file"),
])
def test_bad_input_exits_non_zero_with_one_sentence(tiny_checkpoint, picture, args, message, capsys):
    if "--weights" not in args and "--model" not in args:
        args = args + ["--weights", tiny_checkpoint]
    assert main(["explain", picture, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_unreadable_image_in_a_fresh_process(tiny_checkpoint, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    result = run_cli("explain", str(bad), "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint)
    assert result.returncode == 2
    assert "not an image" in result.stderr and "Traceback" not in result.stderr


def test_help_explains_every_contract_option_with_defaults():
    text = build_parser()._subparsers._group_actions[0].choices["explain"].format_help()
    for option in ("--corpus", "--foil", "--foil-preset", "--corpus-image", "--foil-image", "--template", "--target",
                   "--method", "--masks", "--seed", "--model", "--weights", "--device", "--out", "--heatmap"):
        assert option in text
    assert "This is a photo of a {}" in text and "default: ViT-B/32" in text


def test_foil_and_preset_are_exclusive(picture):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["explain", picture, "--corpus", "a", "--foil", "b", "--foil-preset", "cifar100"])
    assert exit_info.value.code == 2


def test_models_lists_clip_names(capsys):
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "ViT-B/32" in listing.split()
    assert "note: SigLIP 2 (Siglip2Model, NaFlex) sees a square grid of patches: --framing model squashes" in listing


def test_every_option_shows_its_default():
    """The help of every subcommand states each option's default (--seed's 0 included)."""
    subcommands = build_parser()._subparsers._group_actions[0].choices
    for name in ("explain", "evaluate", "compare"):
        parser = subcommands[name]
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.default not in (None, False, [], "==SUPPRESS==") and action.option_strings:
                shown = str(action.default)
                assert f"default: {shown}" in text or "(default" in action.help, (name, action.option_strings)
        assert "--seed SEED random seed of the masks / noise (default: 0)" in text


def test_evaluate_prints_a_verdict_in_words(tiny_checkpoint, picture, capsys):
    assert main(["evaluate", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint,
                 "--masks", "30", "--curve-steps", "4", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    areas = {line.split()[0]: float(line.split()[1]) for line in lines[:4]}
    gain = areas["insertion_auc"] - areas["random_insertion_auc"]
    drop = areas["random_deletion_auc"] - areas["deletion_auc"]
    beats = "beats" if gain > 0 and drop > 0 else "does not clearly beat"
    assert lines[-1].startswith(f"This heatmap {beats} a random ranking of the pixels: insertion area ")
    said = float(lines[-1].split("insertion area ")[1].split()[0])  # 4 significant digits
    assert said == pytest.approx(gain, rel=1e-3, abs=1e-4)


def test_method_options_reach_the_answer(tiny_checkpoint, picture, capsys):
    assert main(["explain", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint, "--json",
                 "--method", "integrated-gradients", "--steps", "7", "--baseline", "black",
                 "--out", str(Path(picture).with_name("ig.png"))]) == 0
    details = json.loads(capsys.readouterr().out)["details"]
    assert details["steps"] == 7 and details["baseline"] == "black"
    assert main(["explain", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint, "--json",
                 "--method", "gradient-shap", "--samples", "3", "--stdev", "0.1", "--blur-sigma", "5",
                 "--out", str(Path(picture).with_name("shap.png"))]) == 0
    details = json.loads(capsys.readouterr().out)["details"]
    assert (details["samples"], details["stdev"], details["blur_sigma"]) == (3, 0.1, 5.0)


def test_compare_reports_shares_over_decided_pixels_and_the_undecided(tiny_checkpoint, picture, tmp_path, capsys):
    assert main(["compare", picture, "--caption", "dog", "--caption", "cat", "--weights", tiny_checkpoint,
                 "--masks", "50", "--tie-margin", "0.5", "--json", "--out", str(tmp_path / "c.png"),
                 "--labels", str(tmp_path / "l.npy")]) == 0
    report = json.loads(capsys.readouterr().out)
    labels = np.load(tmp_path / "l.npy")
    undecided = float(np.mean(labels == -1))
    assert report["undecided_share"] == pytest.approx(undecided) and 0 < undecided < 1
    for index, part in enumerate(report["captions"]):
        assert part["share"] == pytest.approx(np.mean(labels == index))
        assert part["decided_share"] == pytest.approx(np.sum(labels == index) / np.sum(labels >= 0))


def test_serve_runs_the_web_app_with_its_own_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: cocoa-clip serve") and "--port" in text and "--weights" in text
    assert main(["serve", "--weights", "/no/such/weights.pt"]) == 2
    assert "No checkpoint file at /no/such/weights.pt" in capsys.readouterr().err


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises: no file name in it


@pytest.mark.parametrize("broken, output", [("numpy.save", "--heatmap"), ("PIL.Image.Image.save", "--out")])
def test_a_full_disk_is_one_sentence_naming_the_file(broken, output, tiny_checkpoint, picture, tmp_path, monkeypatch,
                                                    capsys):
    monkeypatch.setattr(broken, no_space)
    target = str(tmp_path / ("map.npy" if output == "--heatmap" else "overlay.png"))
    assert main(["explain", picture, "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint, "--masks", "8",
                 "--quiet", output, target]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: The disk is full: {target} could not be written; free some space, or write somewhere else."
