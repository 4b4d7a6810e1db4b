"""Batch jobs: rows from folders and tables, results equal to cc.explain, resume, both engines, the report."""
from __future__ import annotations

import errno
import hashlib
import json
import math
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cocoa_clip as cc
from cocoa_clip import batch
from cocoa_clip.batch import Job, ModelSpec, collect
from cocoa_clip.batch.report import write_report
from cocoa_clip.batch.work import summarize
from cocoa_clip.cli import main
from cocoa_clip.engine.evaluate import curves_of

pq = pytest.importorskip("pyarrow.parquet", reason="batch results need pyarrow (requirements-dev.txt)")
MASKS = 24
ROOT = Path(__file__).resolve().parents[1]


def job_for(out_dir: Path, checkpoint: str, **changes) -> Job:
    question = {"corpus": ("dog",), "foil": ("cat",), "target": "cocoa"}
    settings = {"out_dir": str(out_dir), "model": ModelSpec("tiny", weights=checkpoint, device="cpu", precision="fp32"),
                "question": question, "options": {"masks": MASKS}, "seed": 0}
    return Job(**{**settings, **changes})


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """Four pictures of different shapes (one in a subfolder), a broken .png and a text file."""
    folder = tmp_path_factory.mktemp("collection")
    rng = np.random.default_rng(3)
    (folder / "more").mkdir()
    for name, (height, width) in {"a.png": (30, 40), "b.jpg": (50, 20), "more/c.png": (32, 32),
                                  "d.webp": (21, 60)}.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"not a picture")
    (folder / "notes.txt").write_text("not an image file")
    return folder


def read(out_dir: Path) -> list[dict]:
    return pq.read_table(out_dir / "results.parquet").to_pylist()


def without_seconds(table: list[dict]) -> list[dict]:
    """The table as comparable values: timings left out, NaN (no score) as None."""
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items() if k != "seconds"}
            for row in table]


@pytest.fixture(scope="module")
def local_run(collection, tiny_checkpoint, tmp_path_factory):
    """The collection explained by the local engine: (job, rows, summary)."""
    job = job_for(tmp_path_factory.mktemp("local"), tiny_checkpoint)
    rows = collect(str(collection), job)
    return job, rows, batch.run(rows, job)


def test_a_folder_gives_its_images_recursively_in_order(local_run, collection):
    _, rows, summary = local_run
    assert [Path(r["image"]).relative_to(collection).as_posix() for r in rows] == [
        "a.png", "b.jpg", "broken.png", "d.webp", "more/c.png"]
    assert (summary.rows, summary.explained, summary.skipped, summary.failed) == (5, 5, 0, 1)


def test_each_row_is_what_explain_gives(local_run, tiny):
    job, rows, _ = local_run
    table = read(Path(job.out_dir))
    assert [r["image"] for r in table] == [r["image"] for r in rows]
    broken = table[2]
    assert "not an image" in broken["error"] and math.isnan(broken["score"]) and broken["heatmap"] == ""
    question = cc.Question(corpus=["dog"], foil=["cat"])
    for result in table[:2] + table[3:]:
        assert result["error"] == ""
        answer = cc.explain(tiny, result["image"], question, masks=MASKS, seed=0, cache=None)
        heatmap = np.load(Path(job.out_dir) / result["heatmap"])
        assert heatmap.dtype == np.float32 and heatmap.shape == answer.heatmap.shape
        np.testing.assert_array_equal(heatmap, answer.heatmap)
        assert result["score"] == pytest.approx(answer.score, abs=1e-7)
        assert (result["peak_x"], result["peak_y"], result["top10_share"]) == pytest.approx(summarize(heatmap))
        assert result["masks"] == MASKS and result["seconds"] > 0
        assert result["zero_shot"] == answer.zero_shot.text and "dog" in result["zero_shot"]  # the answer in words
        assert (Path(job.out_dir) / "thumbnails" / (Path(result["heatmap"]).stem + ".jpg")).is_file()


def test_manifest_and_report(local_run):
    job, _, summary = local_run
    out = Path(job.out_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    [run] = manifest["runs"]
    assert run["counts"] == {"rows": 5, "explained": 5, "skipped": 0, "failed": 1, "dropped": 0}
    settings = manifest["settings"]
    assert settings["explain"] == {"masks": MASKS, "method": "rise", "estimator": "regression"}
    assert (settings["model"]["device"], settings["model"]["precision"]) == ("cpu", "fp32")
    assert settings["model"]["weights_sha256"] == hashlib.sha256(Path(job.model.weights).read_bytes()).hexdigest()
    assert settings["versions"]["torch"] == metadata.version("torch") and run["versions"]["pyarrow"]
    assert run["engine"] == "local" and "ray" not in run["versions"]
    page = (out / "report.html").read_text()
    assert page.count("<tr>") == 1 + 5  # the header and one row per result
    scores = re.findall(r'class="number score" data-value="([^"]*)"', page)
    assert scores[-1] == "" and len(scores) == 5  # the failed row has no score, and comes last
    assert [float(s) for s in scores[:-1]] == sorted((float(s) for s in scores[:-1]), reverse=True)
    assert not (out / "parts").exists()
    assert ">zero-shot answer</th>" in page and page.count('class="zero_shot"') == 5


@pytest.mark.parametrize(("masks", "shown"), [(200, False), ("auto", True)])
def test_the_report_names_the_stopping_rule_only_for_auto_masks(tmp_path, masks, shown):
    """A fixed-count run did not stop at a stability: its settings line must not say "stability 0.97"."""
    explain = {"masks": masks, "stability": 0.97, "max_masks": None}
    model = {"name": "shapes-demo", "weights": "", "precision": "fp32", "device": "cpu"}
    write_report(tmp_path / "report.html", [], {"settings": {"model": model, "explain": explain, "evaluate": False},
                                                "runs": [{"engine": "local", "counts": {"rows": 0, "failed": 0}}]})
    page = (tmp_path / "report.html").read_text()
    assert f"masks {masks}" in page and ("stability 0.97" in page) == shown and "max_masks" not in page


def test_summarize_peak_and_top_share():
    heatmap = np.zeros((4, 5), np.float32)  # 20 pixels: the top 10% are the 2 largest
    heatmap[1, 3], heatmap[2, 0], heatmap[0, 0], heatmap[3, 4] = 6.0, 2.0, 1.0, -5.0
    assert summarize(heatmap) == (3, 1, pytest.approx(8 / 9))
    heatmap[0, :] = np.nan  # NaN pixels do not count: 15 left, the top 10% are 2 pixels
    assert summarize(heatmap) == (3, 1, pytest.approx(1.0))
    assert summarize(-np.ones((3, 3)))[2] != summarize(-np.ones((3, 3)))[2]  # nothing positive: NaN
    assert summarize(np.full((2, 2), np.nan)) == (-1, -1, pytest.approx(math.nan, nan_ok=True))


def test_table_rows_fill_in_from_the_options(tmp_path, tiny_checkpoint, collection):
    table = tmp_path / "rows.csv"
    table.write_text("image,corpus,foil,seed,target,label\n"
                     f"{collection / 'a.png'},,,,,x\n"
                     f"{collection / 'a.png'},red car|blue car,,3,,y\n"
                     f"{collection / 'b.jpg'},,a tree,,corpus,z\n")
    job = job_for(tmp_path / "out", tiny_checkpoint, question={"foil_preset": "cifar100", "corpus": ("dog",)})
    rows = collect(str(table), job)
    questions = [job.question_of(row) for row in rows]
    assert [(q.corpus, q.foil, q.foil_preset, q.target) for q in questions] == [
        (("dog",), (), "cifar100", "cocoa"), (("red car", "blue car"), (), "cifar100", "cocoa"),
        (("dog",), ("a tree",), None, "corpus")]
    assert [row["seed"] for row in rows] == [0, 3, 0]
    batch.run(rows[1:2], job)
    result = read(tmp_path / "out")[0]
    assert (result["corpus"], result["foil_preset"], result["seed"]) == ("red car|blue car", "cifar100", 3)
    fresh = cc.load(weights=tiny_checkpoint, device="cpu", precision="fp32")  # no captions cached yet
    answer = cc.explain(fresh, collection / "a.png", questions[1], masks=MASKS, seed=3, cache=None)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / result["heatmap"]), answer.heatmap)


def test_a_row_does_not_depend_on_the_rows_before_it(tmp_path, tiny_checkpoint, collection):
    """A worker that did other questions first gives what a fresh model gives (the text encoder's
    rounding depends on which captions share its batch, so cached captions would leak between rows)."""
    table = tmp_path / "rows.csv"
    table.write_text(f"image,foil\n{collection / 'a.png'},cat\n{collection / 'a.png'},cat|cow|hen\n")
    job = job_for(tmp_path / "out", tiny_checkpoint)
    rows = collect(str(table), job)
    batch.run(rows, job)
    second = read(tmp_path / "out")[1]
    fresh = cc.load(weights=tiny_checkpoint, device="cpu", precision="fp32")
    answer = cc.explain(fresh, collection / "a.png", job.question_of(rows[1]), masks=MASKS, seed=0, cache=None)
    assert second["score"] == answer.score
    np.testing.assert_array_equal(np.load(tmp_path / "out" / second["heatmap"]), answer.heatmap)


@pytest.mark.parametrize("text, message", [
    ("picture,corpus\nx.png,dog\n", "needs an image column"),
    ("image,seed\nx.png,-1\n", "rows.csv row 1: The seed must be"),
    ("image,target\nx.png,cocoa\nx.png,nonsense\n", "rows.csv row 2: Unknown target"),
    ("image,corpus\nx.png,dog\nx.png,dog\n", "rows.csv row 1 and rows.csv row 2 ask the same question"),
    ("image,corpus\n", "has no rows"),
])
def test_table_mistakes_are_one_sentence(tmp_path, tiny_checkpoint, text, message):
    (tmp_path / "rows.csv").write_text(text)
    with pytest.raises(cc.CocoaError, match=message):
        collect(str(tmp_path / "rows.csv"), job_for(tmp_path, tiny_checkpoint))


def test_jsonl_and_parquet_tables_give_the_same_rows(tmp_path, tiny_checkpoint):
    entries = [{"image": "p.png", "corpus": ["dog", "puppy"], "seed": 2}, {"image": "q.png", "foil": "cat|cow"}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    pq.write_table(__import__("pyarrow").Table.from_pylist(
        [{"image": "p.png", "corpus": "dog|puppy", "foil": None, "seed": 2},
         {"image": "q.png", "corpus": None, "foil": "cat|cow", "seed": None}]), tmp_path / "rows.parquet")
    job = job_for(tmp_path / "out", tiny_checkpoint)
    jsonl, parquet = (collect(str(tmp_path / name), job) for name in ("rows.jsonl", "rows.parquet"))
    assert jsonl == parquet
    assert [(r["corpus"], r["foil"], r["seed"], r["path"]) for r in jsonl] == [
        ("dog|puppy", "cat", 2, str(tmp_path / "p.png")), ("dog", "cat|cow", 0, str(tmp_path / "q.png"))]


def test_an_interrupted_job_resumes_to_the_same_table(collection, tiny_checkpoint, tmp_path, local_run):
    job = job_for(tmp_path / "out", tiny_checkpoint)
    rows = collect(str(collection), job)
    seen = []

    def stop_after_two(result: dict) -> None:
        seen.append(result["image"])
        if len(seen) == 2:
            raise KeyboardInterrupt  # as Ctrl-C between two rows

    with pytest.raises(KeyboardInterrupt):
        batch.run(rows, job, on_result=stop_after_two)
    assert not (tmp_path / "out" / "results.parquet").exists() and len(list((tmp_path / "out" / "parts").iterdir()))
    with pytest.raises(cc.CocoaError, match="already holds results; pass --resume"):
        batch.run(rows, job)
    with pytest.raises(cc.CocoaError, match=r"other settings \(explain.masks 24 then, 25 now\)"):
        batch.run(rows, job_for(tmp_path / "out", tiny_checkpoint, options={"masks": MASKS + 1}), resume=True)

    again = []
    summary = batch.run(rows, job, resume=True, on_result=lambda result: again.append(result["image"]))
    assert (summary.explained, summary.skipped) == (3, 2)
    assert sorted(seen + again) == sorted(r["image"] for r in rows)
    assert without_seconds(read(tmp_path / "out")) == without_seconds(read(Path(local_run[0].out_dir)))
    retry = batch.run(rows, job, resume=True)  # the failed row, and only it, is tried again
    assert (retry.explained, retry.skipped, retry.failed) == (1, 4, 1)


def test_cli_batch_exit_status_counts_failures_and_needs_no_ray(collection, tiny_checkpoint, tiny, tmp_path):
    script = ("import sys\nfrom cocoa_clip.cli import main\n"
              "status = main(sys.argv[1:])\nassert 'ray' not in sys.modules, 'the local engine imported ray'\n"
              "sys.exit(status)\n")
    result = subprocess.run([sys.executable, "-c", script, "batch", str(collection), "--out-dir", str(tmp_path / "o"),
                             "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint, "--device", "cpu",
                             "--precision", "fp32", "--masks", "8", "--evaluate", "--overlays", "--json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 1, result.stderr  # one unreadable picture
    assert "error: 1 of 5 rows failed" in result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["failed"]) == (5, 1)
    table = read(tmp_path / "o")
    good = [row for row in table if not row["error"]]
    assert len(good) == 4 and all((tmp_path / "o" / row["overlay"]).is_file() for row in good)
    row = good[0]
    question = cc.Question(corpus=["dog"], foil=["cat"])
    aucs = curves_of(tiny, cc.explain(tiny, row["image"], question, masks=8, seed=0, cache=None)).aucs()
    assert (row["insertion_auc"], row["deletion_auc"]) == pytest.approx((aucs["insertion_auc"], aucs["deletion_auc"]))


@pytest.mark.parametrize("arguments, message", [
    (["--workers", "2"], "--workers, --gpus-per-worker and --ray-address are for --engine ray"),
    (["--engine", "ray", "--workers", "0"], "The number of workers must be a positive whole number"),
    (["--engine", "ray", "--gpus-per-worker", "-1"], "GPUs per worker must be 0 or more"),
])
def test_cli_batch_refuses_bad_engine_settings(collection, tmp_path, capsys, arguments, message):
    status = main(["batch", str(collection), "--out-dir", str(tmp_path), "--corpus", "dog", "--foil", "cat"]
                  + arguments)
    assert status == 2 and message in capsys.readouterr().err


def test_a_folder_inside_the_input_is_left_out(tmp_path, tiny_checkpoint):
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    (tmp_path / "out" / "thumbnails").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "out" / "thumbnails" / "photo-0123.jpg")  # an earlier run's output
    for source in (str(tmp_path), str(tmp_path / "**" / "*.*")):
        rows = collect(source, job_for(tmp_path / "out", tiny_checkpoint))
        assert [Path(row["image"]).name for row in rows] == ["photo.png"]


@pytest.mark.parametrize("model, message", [
    (ModelSpec("no-such-model"), "Unknown model 'no-such-model'"),
    (ModelSpec("tiny", weights="/nowhere/tiny.pt"), "No checkpoint file at /nowhere/tiny.pt"),
    (ModelSpec("shapes-demo", device="cuda"), "needs --gpus-per-worker"),
])
def test_ray_jobs_that_every_actor_would_fail_are_refused_before_ray_starts(tmp_path, collection, model, message):
    pytest.importorskip("ray", reason="the ray engine needs ray[data] (requirements-dev.txt)")
    job = Job(out_dir=str(tmp_path), model=model, question={"corpus": ("dog",), "foil": ("cat",)})
    with pytest.raises(cc.CocoaError, match=message):
        batch.run(collect(str(collection), job), job, engine="ray")


def test_missing_pyarrow_and_ray_are_one_sentence(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
        with pytest.raises(cc.CocoaError, match=r"need pyarrow: pip install 'cocoa-clip\[batch\]'"):
            batch.check_engine("local", 1, 0.0, None)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "ray", None)
        with pytest.raises(cc.CocoaError, match=r"The ray engine needs Ray Data"):
            batch.check_engine("ray", 1, 0.0, None)


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="the ray engine needs ray[data] (requirements-dev.txt)")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray Data's own deprecated settings
def test_the_ray_engine_gives_the_local_table(ray_instance, local_run, tmp_path):
    job, rows, _ = local_run
    ray_job = job_for(tmp_path / "ray", job.model.weights)
    summary = batch.run(rows, ray_job, engine="ray", workers=2)
    assert (summary.rows, summary.failed) == (5, 1)
    assert ray_instance.is_initialized()  # a Ray the caller started is left running
    ray_table, local_table = read(tmp_path / "ray"), read(Path(job.out_dir))
    assert without_seconds(ray_table) == without_seconds(local_table)
    for ours, theirs in zip(ray_table, local_table, strict=True):
        if ours["heatmap"]:
            np.testing.assert_array_equal(np.load(tmp_path / "ray" / ours["heatmap"]),
                                          np.load(Path(job.out_dir) / theirs["heatmap"]))
    [run] = json.loads((tmp_path / "ray" / "manifest.json").read_text())["runs"]
    assert run["versions"]["ray"] == ray_instance.__version__


def test_the_progress_bar_counts_images_per_minute_and_time_left(monkeypatch, capsys):
    import tqdm

    from cocoa_clip.cli.commands import _batch_progress

    shown = tqdm.tqdm
    monkeypatch.setattr(tqdm, "tqdm", lambda *args, **kwargs: shown(*args, **{**kwargs, "disable": False}))
    with _batch_progress(4, quiet=False) as update:
        for _ in range(3):
            update({})
    line = capsys.readouterr().err.split("\r")[-1]
    assert re.search(r"3/4 images \|.*\| \d\d:\d\d<\d\d:\d\d left, [\d.]+ images/min", line), line
    with _batch_progress(4, quiet=True) as update:
        assert update is None


@pytest.mark.parametrize("baseline", ["blur", "mean", "black"])
def test_batch_evaluate_gives_the_areas_of_cocoa_clip_evaluate(baseline, tiny_checkpoint, tmp_path, capsys):
    """One function serves both: the answer's own baseline and its map as computed (content map)."""
    picture = tmp_path / "wide.png"  # not square: the pad framing's content box differs from the picture
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (30, 52, 3), dtype=np.uint8)).save(picture)
    job = job_for(tmp_path / "out", tiny_checkpoint, options={"masks": MASKS, "baseline": baseline}, evaluate=True)
    batch.run(collect(str(picture), job), job)
    [row] = read(tmp_path / "out")
    assert main(["evaluate", str(picture), "--corpus", "dog", "--foil", "cat", "--weights", tiny_checkpoint,
                 "--device", "cpu", "--precision", "fp32", "--masks", str(MASKS), "--baseline", baseline,
                 "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert (row["insertion_auc"], row["deletion_auc"]) == pytest.approx(
        (cli["insertion_auc"], cli["deletion_auc"]), abs=1e-6)


def two_pictures(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(11)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_settings_are_what_runs_not_what_was_left_open(tiny_checkpoint, tmp_path):
    open_job = job_for(tmp_path, tiny_checkpoint, model=ModelSpec("tiny", weights=tiny_checkpoint), options={})
    on_gpu = open_job.resolved("cuda").settings()
    assert (on_gpu["model"]["device"], on_gpu["model"]["precision"], on_gpu["explain"]["masks"]) == ("cuda", "fp16",
                                                                                                      20_000)
    on_cpu = open_job.resolved("cpu").settings()
    assert on_cpu["model"]["device"] == "cpu" and (on_cpu["explain"]["masks"], on_cpu["explain"]["max_masks"]) == (
        "auto", 4_000)  # auto by default on a CPU
    auto = job_for(tmp_path, tiny_checkpoint, options={"masks": "auto"}).resolved().settings()["explain"]
    assert (auto["masks"], auto["max_masks"], auto["estimator"]) == ("auto", 4_000, "regression")


def test_a_resume_with_another_precision_is_refused_in_one_sentence(tiny_checkpoint, tmp_path):
    rows = collect(str(two_pictures(tmp_path / "in")), job_for(tmp_path / "out", tiny_checkpoint))
    batch.run(rows, job_for(tmp_path / "out", tiny_checkpoint))
    bf16 = job_for(tmp_path / "out", tiny_checkpoint, model=ModelSpec("tiny", weights=tiny_checkpoint, device="cpu",
                                                                      precision="bf16"))
    with pytest.raises(cc.SettingsError, match=r'other settings \(model.precision "fp32" then, "bf16" now\); '
                                               r"resume with the same options"):
        batch.run(rows, bf16, resume=True)


def test_a_changed_picture_is_explained_again_and_the_manifest_keeps_every_run(tiny_checkpoint, tmp_path):
    folder = two_pictures(tmp_path / "in")
    job = job_for(tmp_path / "out", tiny_checkpoint)
    batch.run(collect(str(folder), job), job)
    first = read(tmp_path / "out")
    flipped = np.asarray(Image.open(folder / "b.png"))[::-1]
    Image.fromarray(flipped).save(folder / "b.png")  # the same path and size: only the content and mtime change
    summary = batch.run(collect(str(folder), job), job, resume=True)
    assert (summary.explained, summary.skipped, summary.dropped) == (1, 1, 1)  # b's old result is dropped
    table = read(tmp_path / "out")
    assert table[0] == first[0] and table[1]["score"] != first[1]["score"]
    assert table[1]["score"] == pytest.approx(cc.explain(cc.load(weights=tiny_checkpoint, device="cpu",
                                                                 precision="fp32"), flipped, cc.Question(
        corpus=["dog"], foil=["cat"]), masks=MASKS, cache=None).score, abs=1e-6)
    runs = json.loads((tmp_path / "out" / "manifest.json").read_text())["runs"]
    assert [run["counts"]["explained"] for run in runs] == [2, 1] and runs[0]["started"] <= runs[1]["started"]


def test_a_deleted_pictures_result_is_dropped_and_said(tiny_checkpoint, tmp_path, capsys):
    folder = two_pictures(tmp_path / "in")
    arguments = ["batch", str(folder), "--out-dir", str(tmp_path / "out"), "--corpus", "dog", "--foil", "cat",
                 "--weights", tiny_checkpoint, "--device", "cpu", "--precision", "fp32", "--masks", "8", "--quiet"]
    assert main(arguments) == 0
    (folder / "a.png").unlink()
    assert main(arguments + ["--resume"]) == 0
    assert "1 rows: 0 explained now, 1 done before, 0 failed; 1 earlier results dropped" in capsys.readouterr().out
    assert [Path(row["image"]).name for row in read(tmp_path / "out")] == ["b.png"]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "1 earlier results, whose picture is no longer in the input" in report


def test_a_damaged_part_file_is_set_aside_and_its_rows_redone(tiny_checkpoint, tmp_path, caplog):
    folder = two_pictures(tmp_path / "in")
    job = job_for(tmp_path / "out", tiny_checkpoint)
    rows = collect(str(folder), job)

    def stop(result: dict) -> None:
        raise KeyboardInterrupt  # after the first row, which is flushed to a part file

    with pytest.raises(KeyboardInterrupt):
        batch.run(rows, job, on_result=stop)
    [part] = (tmp_path / "out" / "parts").glob("*.parquet")
    part.write_bytes(part.read_bytes()[:100])  # truncated, as by a full disk or a crash of the machine
    with caplog.at_level("WARNING", logger="cocoa_clip.batch.store"):
        summary = batch.run(rows, job, resume=True)
    assert (summary.explained, summary.skipped) == (2, 0)
    [message] = caplog.messages
    assert f"{part.name} could not be read" in message and "set aside as" in message and "\n" not in message
    assert (tmp_path / "out" / (part.name + ".damaged")).is_file() and len(read(tmp_path / "out")) == 2


@pytest.mark.parametrize("broken, written", [("pyarrow.parquet.write_table", "parts/part-"),
                                             ("numpy.save", "heatmaps/a-")])
def test_a_full_disk_stops_the_batch_in_one_sentence_naming_the_file(broken, written, tiny_checkpoint, tmp_path,
                                                                     monkeypatch, capsys):
    folder = two_pictures(tmp_path / "in")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(broken, no_space)
    assert main(["batch", str(folder), "--out-dir", str(tmp_path / "out"), "--corpus", "dog", "--foil", "cat",
                 "--weights", tiny_checkpoint, "--masks", "8", "--quiet"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: The disk is full: {tmp_path / 'out' / written}") and "could not be written" in line
