"""The web app: its adapter called directly, then the launched app called over HTTP with gradio_client."""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
from conftest_app import MASKS, app, served, write_photo
from PIL import Image

import cocoa_clip as cc
from cocoa_clip.engine.explain import FLAT_NOTE
from cocoa_clip.engine.targets import SAME_NOTE
from cocoa_clip.web import hosting as webhost
from cocoa_clip.web import inputs as webinputs
from cocoa_clip.web import page

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError, ValidationError  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # Gradio's queue statistics, with pandas 3
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def no_progress(*args, **kwargs) -> None:
    pass


@pytest.fixture
def web(tiny) -> app.CocoaApp:
    """The adapter around the tiny model, with its own empty pass cache."""
    return app.CocoaApp(tiny)


@pytest.fixture
def photo_file(tmp_path) -> Path:
    return write_photo(tmp_path / "photo.png", width=70, height=45)


def ask(web: app.CocoaApp, image, corpus="dog", foil="cat", **options) -> dict:
    options.setdefault("masks", MASKS)
    names = ("overlay", "reverse", "colorbar", "score", "reading", "status", "files", "token")
    return dict(zip(names, web.explain(image, corpus, foil, progress=no_progress, **options), strict=True))


# ---------------------------------------------------------------- the adapter, called directly


def test_overlay_covers_the_uploaded_picture_at_its_size(web, tiny, photo_file):
    answer = ask(web, str(photo_file))
    assert answer["overlay"].size == (70, 45)
    expected = cc.explain(tiny, photo_file, cc.Question(corpus=["dog"], foil=["cat"]), masks=MASKS, cache=None)
    assert answer["score"] == f"{expected.score:+.4f}" and answer["score"] in answer["reading"]
    assert '"dog"' in answer["reading"] and '"cat"' in answer["reading"]
    # The answer first, the map second: the model's own zero-shot answer heads the reading, above the score.
    assert answer["reading"].startswith(f"**The model's own answer:** {expected.zero_shot.text}\n\nScore ")
    assert answer["status"].startswith(f"RISE: {MASKS} masks")
    overlay_png, heatmap_npy = map(Path, answer["files"])
    assert Image.open(overlay_png).format == "PNG" and Image.open(overlay_png).size == (70, 45)
    heatmap = np.load(heatmap_npy)
    assert heatmap.dtype == np.float32 and heatmap.shape == (45, 70)
    np.testing.assert_allclose(heatmap, expected.heatmap, atol=1e-6)
    assert answer["reverse"] is None and answer["colorbar"].size[0] > 0


def test_second_question_on_the_same_picture_reuses_the_pass(web, photo_file):
    first = ask(web, str(photo_file), "dog", "cat")
    second = ask(web, str(photo_file), "cat", "dog", reverse=True)
    assert "Reused the image pass" in second["status"] and "no new RISE run" in second["status"]
    assert float(second["score"]) == pytest.approx(-float(first["score"]), abs=1e-4)
    assert second["reverse"].size == second["overlay"].size == (70, 45)
    assert len(second["files"]) == 4
    assert f"Reverse question: {first['score']}" in second["reading"]


@pytest.mark.parametrize("size", [(3000, 1000), (1, 5000)])
def test_a_picture_over_the_bound_is_answered_at_the_bound_and_says_so(web, tmp_path, size):
    path = write_photo(tmp_path / "big.png", *size)
    answer = ask(web, str(path), masks=64)
    width, height = size
    scale = webinputs.MAX_SIDE / max(size)
    bounded = (max(1, round(width * scale)), max(1, round(height * scale)))
    assert answer["overlay"].size == bounded and np.load(answer["files"][1]).shape == bounded[::-1]
    assert (f"The picture is {width:,} x {height:,} px; this app explains pictures of at most 2,048 px a side"
            in answer["status"]) and f"maps come at {bounded[0]:,} x {bounded[1]:,} px" in answer["status"]
    small = ask(web, str(write_photo(tmp_path / "small.png", 2048, 20)), masks=64)
    assert small["overlay"].size == (2048, 20) and "scaled down" not in small["status"]


def visitor(name: str) -> SimpleNamespace:
    """What the adapter reads of a gr.Request: its session."""
    return SimpleNamespace(session_hash=name)


def test_a_visitors_answer_survives_twenty_other_visitors_and_is_theirs_alone(web, photo_file):
    mine = ask(web, str(photo_file), request=visitor("A"))
    for index in range(20):  # the same picture: one RISE pass, then questions from the cache
        ask(web, str(photo_file), corpus=f"thing {index}", request=visitor(f"visitor {index}"))
    _, text = web.check(mine["token"], progress=no_progress, request=visitor("A"))
    assert "Insertion area" in text
    with pytest.raises(gr.Error, match="Explain a picture first"):
        web.check(mine["token"], progress=no_progress, request=visitor("visitor 3"))  # a token opens only its owner's
    again = ask(web, str(photo_file), "cat", "dog", request=visitor("A"))
    with pytest.raises(gr.Error, match="Explain a picture first"):
        web.check(mine["token"], progress=no_progress, request=visitor("A"))  # one answer each: the latest
    assert web.answers.get("A", again["token"])[0].score == pytest.approx(-float(mine["score"]), abs=1e-4)


def test_downloads_lie_in_the_disk_budgets_folder_where_gradio_serves_them_uncopied(web, photo_file):
    answer = ask(web, str(photo_file))
    workspace = webhost.workspace()
    assert web.disk.root == workspace.root and web.disk.max_bytes == app.DISK_BUDGET_MB << 20
    assert all(Path(path).is_relative_to(workspace.gradio) for path in answer["files"])
    assert app.CocoaApp(web.model, disk_budget_mb=0.5).disk.max_bytes == 1 << 19


def test_deployment_caps_masks_and_time(tiny, photo_file):
    capped = app.CocoaApp(tiny, max_masks=500, job_seconds=1e-9)
    assert capped.default_masks == 0  # auto, the library's default on a CPU
    with pytest.raises(gr.Error, match="masks must be a whole number from 1 to 500"):
        ask(capped, str(photo_file), masks=501)
    with pytest.raises(gr.Error, match="time budget ran out before the first batch"):
        ask(capped, str(photo_file), masks=500)
    args = app.parse_args(["--max-masks", "500", "--job-seconds", "30", "--disk-budget", "200"])
    assert (args.max_masks, args.job_seconds, args.disk_budget) == (500, 30.0, 200.0)
    assert app.parse_args([]).disk_budget == 1024
    with pytest.raises(SystemExit):
        app.parse_args(["--max-masks", "0"])


def test_a_uniform_picture_gets_a_flat_map_and_says_so(web, tmp_path):
    for size in [(60, 40), (1, 1)]:
        path = tmp_path / f"solid{size[0]}.png"
        Image.new("RGB", size, (30, 160, 90)).save(path)
        answer = ask(web, str(path))
        assert FLAT_NOTE in answer["status"] and "the map is flat" in answer["reading"]
        assert "The map shows where" not in answer["reading"]
        assert len(np.unique(np.asarray(answer["overlay"]).reshape(-1, 3), axis=0)) == 1


def test_corpus_equal_to_foil_is_said_to_compare_a_caption_with_itself(web, photo_file):
    answer = ask(web, str(photo_file), "dog", "Dog")  # CLIP's tokenizer reads both alike
    assert web.answers.get(webhost.LOCAL, answer["token"])[0].score == 0.0 and SAME_NOTE in answer["status"]
    assert "compares a caption with itself" in answer["reading"] and "closer to the foil" not in answer["reading"]
    different = ask(web, str(photo_file), "dog", "cat")
    assert SAME_NOTE not in different["status"] and FLAT_NOTE not in different["status"]


def test_gradient_method_and_check(web, photo_file):
    answer = ask(web, str(photo_file), method="integrated-gradients", scale="signed")
    assert answer["overlay"].size == (70, 45) and answer["status"].startswith("Integrated Gradients")
    plot, text = web.check(answer["token"], progress=no_progress)
    assert plot.size[0] > 0 and "Insertion area" in text and "deletion area" in text
    _, probability = web.check(answer["token"], "probability", progress=no_progress)
    assert "contrastive corpus similarity" in text and "probability of the corpus" in probability
    with pytest.raises(gr.Error, match="Unknown measure 'accuracy'"):
        web.check(answer["token"], "accuracy", progress=no_progress)
    with pytest.raises(gr.Error, match="Explain a picture first"):
        web.check("not-a-token", progress=no_progress)


def test_compare_splits_the_picture_and_reuses_the_explained_pass(web, tiny, photo_file):
    ask(web, str(photo_file))  # the same picture and masks: compare needs no new RISE run
    picture, parts = web.compare(str(photo_file), "dog\ncat\n\ngrass", masks=MASKS, progress=no_progress)
    assert picture.width >= 70 and picture.height > 45  # the legend strip below (as wide as its longest line)
    expected = cc.compare(tiny, photo_file, ["dog", "cat", "grass"], masks=MASKS, cache=None)
    for caption, share in expected.shares.items():
        assert f"**{caption}**: {share:.0%} of the picture, {expected.decided_shares[caption]:.0%} of the decided" \
            in parts
    assert f"no clear winner (uncoloured): {expected.undecided_share:.0%} of the picture" in parts
    assert "Reused the image pass" in parts
    with pytest.raises(gr.Error, match="Compare 2 to 10 captions"):
        web.compare(str(photo_file), "dog", masks=MASKS, progress=no_progress)
    with pytest.raises(gr.Error, match="Upload an image first"):
        web.compare(None, "dog\ncat", progress=no_progress)


def test_estimate_uses_measured_throughput(web):
    assert "first run measures" in web.estimate("rise", 2000)
    web.calibrate()
    assert "masks/s measured here" in web.estimate("rise", 2000)
    assert "Gradient methods" in web.estimate("integrated-gradients", 2000)


@pytest.fixture
def not_an_image(tmp_path) -> Path:
    path = tmp_path / "holiday.png"  # named like an image, so that the browser's file picker lets it through
    path.write_text("these are notes, not pixels\n")
    return path


BAD_INPUTS = {
    "non-image upload": (dict(image="NOT_AN_IMAGE"), "is not an image PIL can read"),
    "no image": (dict(image=None), "Upload an image first"),
    "empty corpus": (dict(corpus=""), "Type at least one caption to look for"),
    "blank corpus": (dict(corpus="  \n \n"), "Type at least one caption to look for"),
    "no foil": (dict(foil=""), "Type at least one caption to contrast with, or choose a foil preset"),
    "unknown baseline": (dict(baseline="white"), "Unknown baseline 'white'"),
    "blur sigma too small": (dict(blur_sigma=0.01), "blur sigma must be a number from 0.1 to 100.0"),
    "steps too many": (dict(method="integrated-gradients", steps=10_000), "Integrated Gradients steps must be"),
    "noise negative": (dict(method="gradient-shap", stdev=-1), "GradientSHAP noise must be a number"),
    "bad template": (dict(template="a photo of"), "must contain {} exactly once"),
    "stray braces": (dict(template="a {} of {0"), "stray braces"),
    "doubled braces": (dict(template="{{}}"), "'{{}}' is a literal '{}', not a place for the caption"),
    "named field": (dict(template="a {name} of {}"), "stray braces"),
    "masks negative": (dict(masks=-100), "masks must be a whole number from 1 to 20,000 on a CPU, or 0 or auto"),
    "masks too many": (dict(masks=20_001), "masks must be a whole number from 1 to 20,000"),
    "masks fractional": (dict(masks=10.5), "masks must be a whole number"),
    "masks as text": (dict(masks="many"), "masks must be a whole number"),
    "negative seed": (dict(seed=-1), "seed must be a whole number from 0"),
    "corpus not text": (dict(corpus=5), "corpus must be text"),
    "too many captions": (dict(corpus="\n".join(f"thing {i}" for i in range(40))), "at most 32 corpus captions"),
    "caption too long": (dict(corpus="x" * 301), "longer than 300 characters"),
    "unknown method": (dict(method="lime"), "Unknown method 'lime'"),
    "unknown preset": (dict(foil_preset="coco"), "Unknown foil preset 'coco'"),
    "reverse not a flag": (dict(reverse="yes"), "reverse option must be true or false"),
    "opacity out of range": (dict(opacity=3), "opacity must be a number from 0.0 to 1.0"),
    "server path": (dict(image={"path": "/etc/hostname"}), "must be a file uploaded to this app"),
    "preset cannot swap": (dict(foil="", foil_preset="cifar100", reverse=True), "cannot be swapped"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_ends_in_gr_error_with_a_sentence(web, photo_file, not_an_image, case):
    options, message = BAD_INPUTS[case]
    options = {"image": str(photo_file), "corpus": "dog", "foil": "cat", **options}
    if options["image"] == "NOT_AN_IMAGE":
        options["image"] = str(not_an_image)
    with pytest.raises(gr.Error) as error:
        ask(web, **options)
    assert message in error.value.message
    assert str(not_an_image.parent) not in error.value.message  # no server paths in messages


def test_model_fallback_and_explicit_failure(monkeypatch, tiny_checkpoint, tmp_path, capsys):
    real_load = cc.load

    def offline_load(name="ViT-B/32", **kwargs):
        if name == "ViT-B/32" and kwargs.get("weights") is None:
            raise cc.ModelLoadError("Could not get the ViT-B/32 weights (URLError: offline).",
                                    tried=("clip cache", "hub cache", "clip URL", "hub"))
        return real_load(name, **kwargs)

    monkeypatch.setattr(app.cc, "load", offline_load)
    monkeypatch.setitem(app.BUNDLED, "shapes-demo", Path(tiny_checkpoint))
    model, notice = app.load_model(device="cpu", say=lambda line: None)
    assert model.name == "shapes-demo" and "shapes-demo" in notice and "could not be had" in notice
    assert "tried: clip cache, hub cache, clip URL, hub" in notice  # the sources, by name only
    assert "URLError" not in notice and "offline" not in notice  # the reason (with server paths) stays off the page

    monkeypatch.setitem(app.BUNDLED, "shapes-demo", tmp_path / "missing.pt")
    with pytest.raises(cc.ModelLoadError, match="offline"):
        app.load_model(device="cpu", say=lambda line: None)
    assert app.main(["--weights", str(tmp_path / "missing.pt"), "--device", "cpu"]) == 2
    assert "No checkpoint file" in capsys.readouterr().err


def test_launch_options_are_the_safe_ones():
    options = app.launch_options()
    assert options["ssr_mode"] is False and options["share"] is False and options["show_error"] is False
    assert options["enable_monitoring"] is False and options["max_file_size"] == app.MAX_UPLOAD
    assert options["run_history"] is False  # Gradio 6.31.0 accepts it
    assert app.parse_args([]).host == "127.0.0.1"


# ---------------------------------------------------------------- the launched app, over HTTP


@pytest.fixture(scope="module")
def server(tiny):
    with served(tiny) as (demo, url):
        yield demo, url


def client(url: str) -> Client:
    return Client(url, analytics_enabled=False, verbose=False)


def test_api_names_its_parameters(server):
    _, url = server
    info = client(url).view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = [p["parameter_name"] for p in info["/explain"]["parameters"]]
    assert names[:4] == ["image", "corpus", "foil", "foil_preset"] and "masks" in names and "seed" in names
    assert "/check" in info
    names = [p["parameter_name"] for p in info["/compare"]["parameters"]]
    assert names[:2] == ["image", "captions"] and "masks" in names


def test_client_compares_captions_over_http(server, photo_file):
    _, url = server
    picture, parts = client(url).predict(image=handle_file(str(photo_file)), captions="dog\ncat", masks=MASKS,
                                         api_name="/compare")
    assert Image.open(picture).width >= 70 and "**dog**" in parts and "**cat**" in parts


def test_client_sees_progress_then_the_answer(server, photo_file, tiny):
    _, url = server
    job = client(url).submit(image=handle_file(str(photo_file)), corpus="dog", foil="cat", masks=8192,
                             api_name="/explain")
    updates = []
    while not job.done():
        status = job.status()
        updates += [(unit.index, unit.length) for unit in status.progress_data or () if unit.unit == "masks"]
        time.sleep(0.01)
    overlay, reverse, colorbar, score, reading, status, files = job.result()
    assert updates and all(total == 8192 and 0 < done <= total for done, total in updates)
    assert Image.open(overlay).size == (70, 45) and Image.open(overlay).format == "PNG"
    expected = cc.explain(tiny, photo_file, cc.Question(corpus=["dog"], foil=["cat"]), masks=8192, cache=None)
    assert score == f"{expected.score:+.4f}"
    assert status.startswith("RISE: 8,192 masks")


def test_explain_streams_frames_then_the_answer_and_predict_gets_only_the_answer(server, photo_file, tiny):
    """The UI's Explain is a generator: map frames while RISE runs, the full answer last; an API caller's
    predict() returns that answer alone, the same as before frames existed."""
    _, url = server
    picture = write_photo(photo_file.parent / "unseen.png", width=70, height=45, seed=5)  # no cached pass
    job = client(url).submit(image=handle_file(str(picture)), corpus="dog", foil="cat", masks=6000,
                             api_name="/explain")
    final = job.result()
    outputs = job.outputs()
    frames = outputs[:-1]
    assert outputs[-1] == final and len(final) == 7 and final[5].startswith("RISE: 6,000 masks")
    assert frames and all(frame[5].startswith("RISE running, the map is still forming: ") for frame in frames)
    counts = [int(re.search(r"([\d,]+) masks so far", frame[5])[1].replace(",", "")) for frame in frames]
    assert counts == sorted(counts) and counts[0] < 6000
    assert Image.open(frames[0][0]).size == (70, 45)
    again = client(url).predict(image=handle_file(str(picture)), corpus="cat", foil="dog", masks=6000,
                                api_name="/explain")
    assert len(again) == 7 and float(again[3]) == pytest.approx(-float(final[3]), abs=2e-4)  # scores as text


def test_masks_zero_or_auto_runs_until_the_map_is_stable(web, photo_file):
    for masks in (0, "auto"):
        status = ask(web, str(photo_file), masks=masks)["status"]
        assert "Stability 0.9" in status or "4,000 masks" in status  # auto's cap on a CPU


def test_client_gets_the_error_sentence_and_the_server_keeps_serving(server, photo_file, not_an_image):
    _, url = server
    api = client(url)
    cases = [
        (dict(image=handle_file(str(not_an_image)), corpus="dog", foil="cat"), "is not an image PIL can read"),
        (dict(image=handle_file(str(photo_file)), corpus="", foil="cat"), "Type at least one caption to look for"),
        (dict(image=handle_file(str(photo_file)), corpus="dog", foil="cat", masks="many"),
         "masks must be a whole number"),
        (dict(image=handle_file(str(photo_file)), corpus=["dog"], foil="cat"), "corpus must be text"),
        (dict(image={"path": "/etc/hostname"}, corpus="dog", foil="cat"), "must be a file uploaded to this app"),
    ]
    for inputs, message in cases:
        inputs.setdefault("masks", MASKS)
        with pytest.raises(AppError, match=message):
            api.predict(**inputs, api_name="/explain")
    overlay, *_ = api.predict(image=handle_file(str(photo_file)), corpus="dog", foil="cat", masks=MASKS,
                              api_name="/explain")
    assert Image.open(overlay).size == (70, 45)


def test_inputs_gradio_refuses_before_our_code_get_our_sentences(server, photo_file):
    """Raw HTTP calls whose inputs Gradio's own data models refuse: the caller reads a sentence of ours."""
    _, url = server
    with open(photo_file, "rb") as stream:
        uploaded = httpx.post(url + "gradio_api/upload", files={"files": stream}).json()[0]

    def upload(path: str) -> dict:
        return {"path": path, "meta": {"_type": "gradio.FileData"}}

    rest = ["none", "{}", "cocoa", "rise", MASKS, 0, 0.5, "auto", "pad", False]
    settings = ["blur", None, None, None, None]  # baseline, blur sigma, steps, samples, noise
    cases = [
        ([upload("/etc/hostname"), "dog", "cat", *rest, None, None, *settings], "paths on the server are refused"),
        ([upload(str(photo_file)), "dog", "cat", *rest, None, None, *settings], "paths on the server are refused"),
        (["/etc/hostname", "dog", "cat", *rest, None, None, *settings], "The image must be a file uploaded"),
        ([upload(uploaded), "dog", "cat", *rest, "abc", None, *settings], "images must be a list of files"),
        ([upload(uploaded), "dog", "cat", *rest, [1, 2], None, *settings], "images must be a list of files"),
        ([upload(uploaded), "dog"], "Some inputs are missing"),
    ]
    for data, sentence in cases:
        reply = httpx.post(url + "gradio_api/call/explain", json={"data": data})
        assert reply.status_code == 422 and sentence in reply.json()["detail"][0]["message"]
        assert "/tmp" not in reply.text and "pydantic" not in reply.text
    reply = httpx.post(url + "gradio_api/call/check", json={"data": ["accuracy"]})
    assert reply.status_code == 422 and "A choice is not one the app offers" in reply.text
    good = [upload(uploaded), "dog", "cat", *rest, None, None, *settings]
    assert httpx.post(url + "gradio_api/call/explain", json={"data": good}).status_code == 200  # joins the queue


def test_eight_concurrent_clients_get_their_own_answers(server, tiny, tmp_path):
    _, url = server
    photos = [write_photo(tmp_path / f"p{i}.png", width=40 + 9 * i, height=60 - 3 * i, seed=i) for i in range(8)]
    questions = [("dog", "cat"), ("cat", "dog"), ("car", "tree"), ("sky", "sea")] * 2
    reference = app.CocoaApp(tiny)  # in-process, its own cache
    expected = [ask(reference, str(p), *q) for p, q in zip(photos, questions, strict=True)]

    def call(index: int):
        corpus, foil = questions[index]
        return client(url).predict(image=handle_file(str(photos[index])), corpus=corpus, foil=foil, masks=MASKS,
                                   api_name="/explain")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    for result, want, photo in zip(results, expected, photos, strict=True):
        overlay = np.asarray(Image.open(result[0]).convert("RGB"), dtype=np.int16)
        assert overlay.shape[:2] == Image.open(photo).size[::-1]
        assert np.abs(overlay - np.asarray(want["overlay"], dtype=np.int16)).max() <= 1
        assert result[3] == want["score"]
    assert len({r[0] for r in results}) == 8


def test_one_job_per_visitor_at_the_queues_door(server, photo_file):
    demo, url = server
    first, second = client(url), client(url)
    long_job = first.submit(image=handle_file(str(photo_file)), corpus="dog", foil="cat", masks=20_000, seed=1,
                            api_name="/explain")
    while not any(unit.unit == "masks" for unit in long_job.status().progress_data or ()):
        time.sleep(0.02)
    assert [(session, waiting) for session, waiting, _ in webhost.queued_jobs(demo, "model")] == [
        (first.session_hash, False)]
    with pytest.raises(ValidationError, match="You already have a job waiting or running"):
        first.predict(image=handle_file(str(photo_file)), corpus="dog", foil="cat", masks=MASKS, api_name="/explain")
    with pytest.raises(ValidationError, match="You already have a job waiting or running"):
        first.predict(measure="similarity", api_name="/check")
    other = second.submit(image=handle_file(str(photo_file)), corpus="cat", foil="dog", masks=MASKS,
                          api_name="/explain")  # another visitor waits its turn
    while (second.session_hash, True) not in [job[:2] for job in webhost.queued_jobs(demo, "model")]:
        assert not other.done()
        time.sleep(0.02)
    assert long_job.result()[5].startswith("RISE: 20,000 masks") and other.result()[3] is not None
    overlay, *_ = first.predict(image=handle_file(str(photo_file)), corpus="dog", foil="cat", masks=MASKS,
                                api_name="/explain")  # answered: the visitor may ask again at once
    assert Image.open(overlay).size == (70, 45)
    _, areas = first.predict(measure="similarity", api_name="/check")  # the answer is kept as this visitor's
    assert areas.startswith("Curves of the contrastive corpus similarity")


def test_module_level_demo_is_built_on_first_use(monkeypatch, tiny):
    monkeypatch.setattr(app, "load_model", lambda: (tiny, ""))
    assert "demo" not in vars(app)  # importing app loads no model
    try:
        assert isinstance(app.demo, gr.Blocks) and app.demo.cocoa_app.model is tiny
    finally:
        vars(app).pop("demo", None)


def test_app_py_is_the_space_entry_point(monkeypatch, tiny):
    """The Space runs app.py: its `demo` is the package's web app, built on first use."""
    import app as entry

    monkeypatch.setattr(app, "load_model", lambda: (tiny, ""))
    try:
        assert entry.demo is app.demo and entry.demo.cocoa_app.model is tiny
    finally:
        vars(app).pop("demo", None)


def test_examples_fit_the_model_and_survive_without_the_repositorys_photos(monkeypatch, tiny):
    """shapes-demo gets its own scenes first; CLIP gets photos first; an installed package (no assets/) still has
    the scenes, drawn at start-up."""
    demo_model = cc.load("shapes-demo", device="cpu")
    rows, label = page._examples(app.CocoaApp(demo_model), knows_shapes=True)
    assert [row[1] for row in rows[:4]] == [corpus for *_, corpus, _ in page.SHAPE_EXAMPLES]
    assert all(Image.open(row[0]).size == (256, 256) for row in rows[:4]) and "shapes-demo knows" in label
    assert Path(rows[4][0]).parent == page.ASSETS
    rows, _ = page._examples(app.CocoaApp(tiny), knows_shapes=False)
    assert Path(rows[0][0]).parent == page.ASSETS and rows[0][1] == "woman"
    monkeypatch.setattr(page, "ASSETS", Path("/no/such/assets"))
    rows, _ = page._examples(app.CocoaApp(tiny), knows_shapes=False)
    assert len(rows) == len(page.SHAPE_EXAMPLES) and all(Path(row[0]).is_file() for row in rows)


def test_gradient_and_baseline_settings_reach_the_answer(web, photo_file):
    answer = ask(web, str(photo_file), method="integrated-gradients", steps=7, baseline="black")
    assert answer["status"].startswith("Integrated Gradients (7 steps)")
    shap = ask(web, str(photo_file), method="gradient-shap", samples=3, stdev=0.05, blur_sigma=2.5)
    assert shap["status"].startswith("GradientSHAP (3 samples, noise 0.05)")
    token_answers = web.answers.get(webhost.LOCAL, shap["token"])
    assert token_answers[0].details["blur_sigma"] == 2.5 and token_answers[0].details["baseline"] == "blur"
    default = ask(web, str(photo_file), blur_sigma=0)  # what an emptied box sends
    assert web.answers.get(webhost.LOCAL, default["token"])[0].details["blur_sigma"] is None


def test_the_attention_methods_answer_in_one_pass(web, photo_file):
    answer = ask(web, str(photo_file), method="legrad")
    assert answer["status"].startswith("LeGrad (vision transformers): ") and "4 x 4 patches" in answer["status"]
    assert web.answers.get(webhost.LOCAL, answer["token"])[0].method == "legrad"
    assert web.estimate("attention-relevance").startswith("One forward and one backward pass")
    table = web.check_methods(answer["token"], "similarity")  # every method that applies, best first
    rows = [line.split()[0] for line in table.splitlines()[2:7]]
    assert sorted(rows) == sorted(cc.METHODS) and "insertion area minus deletion area" in table


def test_zero_masks_is_auto_in_the_estimate_too(web):
    """The masks box says 0 means auto: the estimate line says what auto does rather than refusing 0."""
    assert web.estimate("rise", 0) == "Auto: masks are drawn until the map is stable (at most 4,000)."
    assert "or 0 or auto for auto" in web.estimate("rise", -3)


def test_the_servers_help_gives_each_option_a_sentence_and_no_none_default(capsys):
    with pytest.raises(SystemExit):
        app.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert "(default: None)" not in text and "(default 1,024;" in text
    assert "--port PORT port to listen on (default: GRADIO_SERVER_PORT if set, else 7860)" in text
