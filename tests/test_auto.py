"""One meaning of the mask count everywhere: auto by default on a CPU, 0 = auto, one range per device;
auto's stopping rule; int8 and emulated bf16 on CPUs; the first live frame."""
import json

import numpy as np
import pytest
import torch

import cocoa_clip as cc
from cocoa_clip.cli import main
from cocoa_clip.engine import auto, rise
from cocoa_clip.engine.explain import FLAT_NOTE
from cocoa_clip.models import loading

DOG_CAT = cc.Question(corpus=["dog"], foil=["cat"])
CPU = torch.device("cpu")


def test_the_default_is_auto_on_a_cpu_and_20000_on_a_gpu(tiny, photo):
    assert rise.RiseSettings().for_device(torch.device("cuda")).n_masks == 20_000
    settings = rise.RiseSettings().for_device(CPU)
    assert settings.auto and settings.max_masks == auto.AUTO_CAP["cpu"]
    answer = cc.explain(tiny, photo, DOG_CAT, cache=None)
    assert answer.details["auto"] and answer.details["stability_target"] == 0.97
    assert answer.details["masks"] in auto.checkpoints(auto.AUTO_CAP["cpu"])
    assert answer.details["stability"] >= 0.97 or answer.details["masks"] == auto.AUTO_CAP["cpu"]


@pytest.mark.parametrize("value", [0, "auto", " Auto ", 0.0, "0"])
def test_zero_and_auto_mean_auto_on_every_device(value):
    for device in ("cpu", "cuda", None):
        assert auto.mask_count(value, device) == "auto"
    assert rise.RiseSettings(value).auto


@pytest.mark.parametrize("device, high", [("cpu", 20_000), ("cuda", 200_000)])
def test_one_range_per_device(device, high):
    assert auto.mask_count(high, device) == high and auto.mask_count(1, device) == 1
    assert auto.mask_count(300.0, device) == 300 and auto.mask_count("300", device) == 300
    for bad in (high + 1, -1, 2.5, "lots", True):
        with pytest.raises(cc.SettingsError, match=f"from 1 to {high:,} on a"):
            auto.mask_count(bad, device)


def test_the_library_refuses_more_masks_than_a_cpu_takes(tiny, photo):
    with pytest.raises(cc.SettingsError) as refused:
        cc.explain(tiny, photo, DOG_CAT, masks=20_001, cache=None)
    assert str(refused.value) == auto.range_sentence("cpu", 20_001)
    with pytest.raises(cc.SettingsError, match="most masks"):
        cc.explain(tiny, photo, DOG_CAT, masks="auto", max_masks=20_001, cache=None)


def test_cli_takes_0_as_auto_and_refuses_the_range_in_the_librarys_words(tiny_checkpoint, photo, tmp_path, capsys):
    picture = tmp_path / "p.png"
    photo.save(picture)
    base = ["explain", str(picture), "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint,
            "--device", "cpu", "--precision", "fp32", "--quiet", "--json", "--out", str(tmp_path / "o.png")]
    details = []
    for extra in ([], ["--masks", "0"], ["--masks", "auto"]):
        assert main(base + extra) == 0
        details.append(json.loads(capsys.readouterr().out)["details"])
    assert all(d["auto"] for d in details) and len({d["masks"] for d in details}) == 1
    assert main(base + ["--masks", "20001"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {auto.range_sentence('cpu', 20_001)}"


def test_the_stop_needs_the_target_at_two_checkpoints_in_a_row():
    high, low, flat = torch.tensor([0.98, 0.99]), torch.tensor([0.98, 0.95]), torch.tensor([math_nan(), 0.99])
    assert not auto.settled([high], 0.97)  # one reading that crosses the line is not enough
    assert not auto.settled([high, low], 0.97) and not auto.settled([low, high], 0.97)
    assert auto.settled([low, high, high], 0.97)
    assert auto.settled([flat, flat], 0.97)  # a flat map (NaN) cannot improve: it does not hold the run


def math_nan() -> float:
    return float("nan")


def test_one_noisy_reading_over_the_line_does_not_stop_auto(tiny, photo, monkeypatch):
    """A synthetic run whose readings cross the line once, fall back, then hold: it stops at the second of the pair."""
    readings = iter([0.5, 0.99, 0.6, 0.98, 0.99, 0.99, 0.99])
    monkeypatch.setattr(rise, "stability", lambda masks, values, estimator="regression": torch.tensor(
        [next(readings) if len(masks) in auto.checkpoints(500) else 0.0]))
    answer = cc.explain(tiny, photo, DOG_CAT, masks="auto", max_masks=500, cache=None)
    assert answer.details["masks"] == auto.checkpoints(500)[4]


def test_a_question_whose_corpus_equals_its_foil_stops_at_once(tiny, photo):
    same = cc.explain(tiny, photo, cc.Question(corpus=["dog"], foil=["dog"]), cache=None)
    assert same.details["masks"] == auto.NULL_MASKS and same.details["stability"] is None
    assert FLAT_NOTE in same.notes


def test_the_first_frame_comes_after_a_small_first_batch(tiny, photo):
    frames, done = [], []
    cc.explain(tiny, photo, DOG_CAT, masks=300, batch_size=64, cache=None, on_update=frames.append,
               progress=lambda n, total: done.append(n))
    assert frames[0].details["masks"] == rise.FIRST_BATCH and frames[-1].details["masks"] == 300
    assert done == [8, 72, 136, 200, 264, 300]  # then full batches
    done.clear()
    cc.explain(tiny, photo, DOG_CAT, masks=300, batch_size=64, cache=None, progress=lambda n, total: done.append(n))
    assert done == [64, 128, 192, 256, 300]  # no frames wanted: full batches from the start


def test_bf16_is_refused_and_never_chosen_where_the_cpu_would_emulate_it(monkeypatch, tiny_checkpoint):
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "fma"}))
    assert not loading.native_bf16() and loading.resolve_precision("auto", CPU) != "bf16"
    with pytest.raises(cc.SettingsError, match="emulated"):
        cc.load(weights=tiny_checkpoint, device="cpu", precision="bf16")
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert loading.native_bf16()


def test_cpu_flags_are_read_from_proc_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 amx_bf16\n")
    real = loading.Path
    monkeypatch.setattr(loading, "Path", lambda path: real(cpuinfo) if path == "/proc/cpuinfo" else real(path))
    assert loading.cpu_flags() == frozenset({"fpu", "avx2", "amx_bf16"}) and loading.native_bf16()


def test_int8_keeps_the_map_on_the_same_masks(tiny, tiny_checkpoint, photo):
    int8 = cc.load(weights=tiny_checkpoint, device="cpu", precision="int8")
    maps = [cc.explain(m, photo, DOG_CAT, masks=300, cache=None) for m in (tiny, int8)]
    assert maps[1].details["precision"] == "int8" and maps[1].details["masks"] == 300
    assert np.corrcoef(maps[0].heatmap.ravel(), maps[1].heatmap.ravel())[0, 1] >= 0.99
    with pytest.raises(cc.SettingsError, match="CPUs only"):
        loading._precision("int8", torch.device("cuda"))


def test_int8_runs_only_in_forward_only_passes(tiny, tiny_checkpoint):
    """Gradient methods keep the float tower; batched passes use the int8 copy."""
    int8 = cc.load(weights=tiny_checkpoint, device="cpu", precision="int8")
    pixels = torch.rand(2, 3, tiny.n_px, tiny.n_px)
    with torch.no_grad():
        exact = tiny.encode_images(pixels)
        assert torch.equal(int8.encode_images(pixels), exact)  # outside forward_only: the float tower
        with int8.autocast():
            quantised = int8.encode_images(pixels)
    assert not torch.equal(quantised, exact)
    assert torch.nn.functional.cosine_similarity(quantised, exact).min() > 0.99


def test_batch_and_the_app_default_to_auto_on_a_cpu(tiny, tiny_checkpoint, photo, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="batch results need pyarrow (requirements-dev.txt)")
    from cocoa_clip import batch
    from cocoa_clip.batch import Job, ModelSpec, collect

    photo.save(tmp_path / "p.png")
    expected = cc.explain(tiny, tmp_path / "p.png", DOG_CAT, cache=None)
    job = Job(out_dir=str(tmp_path / "out"), model=ModelSpec("tiny", weights=tiny_checkpoint, device="cpu",
              precision="fp32"), question={"corpus": ("dog",), "foil": ("cat",), "target": "cocoa"}, options={},
              seed=0)
    batch.run(collect(str(tmp_path / "p.png"), job), job)
    assert pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()[0]["masks"] == expected.details["masks"]
    handlers = pytest.importorskip("cocoa_clip.web.handlers")
    web = handlers.CocoaApp(tiny)
    assert web.default_masks == 0 and web.max_masks == auto.MAX_MASKS["cpu"]
    status = web.explain(str(tmp_path / "p.png"), corpus="dog", foil="cat", progress=lambda *a, **k: None)[5]
    assert status.startswith(f"RISE: {expected.details['masks']:,} masks")
    assert f"Stability {expected.details['stability']:.3f}" in status
    with pytest.raises(Exception) as refused:  # gr.Error, with the sentence the CLI prints after "error: "
        web.explain(str(tmp_path / "p.png"), corpus="dog", foil="cat", masks=20_001, progress=lambda *a, **k: None)
    assert refused.value.message == auto.range_sentence("cpu", 20_001)
