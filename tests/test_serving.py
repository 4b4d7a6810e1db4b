"""The server under a public's traffic: work nobody waits for stops, SIGTERM mid-job, models in memory,
the queue's bound, the disk budget, model names, visitors behind a proxy, and answers of visitors who left."""
from __future__ import annotations

import gc
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest_app import MASKS, REPO, app, free_port, served, write_photo
from PIL import Image

import cocoa_clip as cc
from cocoa_clip.models.random_models import randomised
from cocoa_clip.web import handlers, page
from cocoa_clip.web import hosting as webhost
from cocoa_clip.web.jobs import STOPPING

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError, ValidationError  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # Gradio's queue statistics, with pandas 3
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
QUESTION = cc.Question(corpus=["dog"], foil=["cat"])
LONG = 20_000  # masks: a run that takes the tiny model many seconds on a CPU


@pytest.fixture
def photo_file(tmp_path) -> Path:
    return write_photo(tmp_path / "photo.png", width=70, height=45)


def client(url: str, **options) -> Client:
    return Client(url, verbose=False, analytics_enabled=False, **options)


def wait_for(condition, seconds: float = 30.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds:g} s for {what}"
        time.sleep(0.02)


# ---------------------------------------------------------------- the engine's stop hook


def test_a_run_stops_within_a_batch_of_being_asked_to(tiny, photo):
    batches = []
    with pytest.raises(cc.Cancelled):
        cc.explain(tiny, photo, QUESTION, masks=LONG, batch_size=32, cache=None,
                   progress=lambda done, total: batches.append(done), should_stop=lambda: len(batches) >= 3)
    assert batches == [32, 64, 96]  # asked after every batch; the third's answer was stop
    for method in ("integrated-gradients", "gradient-shap"):
        with pytest.raises(cc.Cancelled):
            cc.explain(tiny, photo, QUESTION, method=method, should_stop=lambda: True)
    answer = cc.explain(tiny, photo, QUESTION, masks=64, cache=None, should_stop=lambda: False)
    assert answer.details["masks"] == 64


# ---------------------------------------------------------------- a client that leaves


@pytest.fixture
def watched(monkeypatch):
    """Every cc.explain the app runs: its masks done so far and how it ended ("answered" or "cancelled")."""
    runs = []
    explain = cc.explain

    def watching(*args, **options):
        run = SimpleNamespace(masks=0, ended=None, started=time.monotonic(), stopped=None)
        runs.append(run)
        progress = options["progress"]

        def counted(done: int, total: int) -> None:
            run.masks = done
            progress(done, total)

        options["progress"] = counted
        try:
            answer = explain(*args, **options)
            run.ended = "answered"
            return answer
        except cc.Cancelled:
            run.ended = "cancelled"
            raise
        finally:
            run.stopped = time.monotonic()

    monkeypatch.setattr(handlers.cc, "explain", watching)
    return runs


def started_streaming(job) -> bool:
    return len(job.outputs()) > 0  # a first frame has come


def test_a_cancelled_stream_stops_its_work_and_the_visitor_waits_for_that(tiny, photo_file, watched):
    with served(tiny, calibrate=False) as (demo, url):
        web = demo.cocoa_app
        visitor = client(url)
        job = visitor.submit(image=handle_file(str(photo_file)), corpus="dog", foil="cat", masks=LONG,
                             api_name="/explain")
        wait_for(lambda: started_streaming(job), what="a first frame")
        job.cancel()
        cancelled = time.monotonic()
        wait_for(lambda: watched[0].ended is not None, seconds=10, what="the cancelled run to stop")
        assert watched[0].ended == "cancelled" and watched[0].masks < LONG
        assert watched[0].stopped - cancelled < 5
        assert len(web.answers) == 0  # the orphan kept no answer
        # The same visitor again: refused while the first run is stopping, let in only once it has stopped.
        while True:
            try:
                overlay, *_ = visitor.predict(image=handle_file(str(photo_file)), corpus="dog", foil="cat",
                                              masks=MASKS, api_name="/explain")
                break
            except ValidationError as error:
                assert "You already have a job waiting or running" in str(error)
                assert time.monotonic() - cancelled < 10
                time.sleep(0.05)
        assert Image.open(overlay).size == (70, 45)
        assert watched[1].started >= watched[0].stopped and watched[1].ended == "answered"


def test_a_killed_client_stops_its_work(tiny, photo_file, watched):
    with served(tiny, calibrate=False) as (demo, url):
        script = ("import time\nfrom gradio_client import Client, handle_file\n"
                  f"job = Client({url!r}, verbose=False).submit(image=handle_file({str(photo_file)!r}), "
                  f"corpus='dog', foil='cat', masks={LONG}, api_name='/explain')\n"
                  "while not job.outputs():\n    time.sleep(0.02)\n"
                  "print('streaming', flush=True)\n"
                  "job.result()\n")
        caller = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}, text=True)
        try:
            assert caller.stdout.readline() == "streaming\n"  # a first frame came: the client listens
        finally:
            caller.kill()
            caller.wait()
        killed = time.monotonic()
        wait_for(lambda: watched[0].ended is not None, seconds=15, what="the orphaned run to stop")
        assert watched[0].ended == "cancelled" and watched[0].masks < LONG
        assert watched[0].stopped - killed < 10
        assert len(demo.cocoa_app.answers) == 0


# ---------------------------------------------------------------- SIGTERM mid-job


def test_sigterm_mid_job_answers_the_client_and_exits_cleanly(tiny_checkpoint, photo_file, tmp_path):
    port = free_port()
    workspace = tmp_path / "tmp"
    workspace.mkdir()

    def allow_core_files() -> None:  # as a shell with `ulimit -c unlimited` would start the server
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    server = subprocess.Popen(
        [sys.executable, "-m", "cocoa_clip.web.app", "--weights", tiny_checkpoint, "--device", "cpu",
         "--port", str(port)], cwd=tmp_path, preexec_fn=allow_core_files,
        env={**os.environ, "TMPDIR": str(workspace), "GRADIO_TEMP_DIR": "", "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                visitor = client(f"http://127.0.0.1:{port}/")
                break
            except Exception:  # not up yet
                assert server.poll() is None and time.monotonic() < deadline, "the app did not start"
                time.sleep(0.5)
        limits = Path(f"/proc/{server.pid}/limits").read_text()
        assert [line.split()[4] for line in limits.splitlines() if line.startswith("Max core file size")] == ["0"]
        job = visitor.submit(image=handle_file(str(photo_file)), corpus="dog", foil="cat", masks=LONG,
                             api_name="/explain")
        wait_for(lambda: started_streaming(job), what="a first frame")
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) in (0, 128 + signal.SIGTERM)
        with pytest.raises(AppError, match="The server is stopping"):
            job.result(timeout=10)
    finally:
        server.kill()
        server.wait()
    errors = server.stderr.read()
    assert "terminate called" not in errors and "Traceback" not in errors
    assert not list(workspace.glob(f"{webhost.PREFIX}*")) and not list(tmp_path.glob("core*"))


def test_a_run_whose_client_left_as_it_finished_keeps_no_answer(tiny, photo_file):
    web = app.CocoaApp(tiny)
    reported = []

    def progress(value, desc=None, unit=None) -> None:
        if isinstance(value, tuple):
            reported.append(value)

    with pytest.raises(handlers.gr.Error, match="stopped before it finished"):
        web.explain(str(photo_file), "dog", "cat", masks=MASKS, progress=progress,
                    should_stop=lambda: bool(reported) and reported[-1][0] == MASKS)  # gone after the last batch
    assert reported[-1] == (MASKS, MASKS) and len(web.answers) == 0


def test_one_job_holds_the_device_at_a_time():
    work = handlers.Work()
    order = []

    def job(name: str, seconds: float) -> None:
        with work.turn():
            order.append(f"{name} starts")
            time.sleep(seconds)
            order.append(f"{name} ends")

    first = threading.Thread(target=job, args=("first", 0.3))
    first.start()
    time.sleep(0.05)
    job("second", 0.0)
    first.join()
    assert order == ["first starts", "first ends", "second starts", "second ends"]


def test_jobs_waiting_for_the_device_end_with_the_sentence_when_the_server_stops():
    work = handlers.Work()
    with work.turn():
        assert work.should_stop()() is False
    assert work.stop(timeout=1.0) and work.should_stop(lambda: False)()
    with pytest.raises(handlers.gr.Error, match="The server is stopping") as refused, work.turn():
        pass
    assert refused.value.message == STOPPING


# ---------------------------------------------------------------- models in memory


def test_three_models_with_room_for_two_never_have_three_alive(tiny, photo_file):
    alive: list[weakref.ref] = []

    def load(name: str) -> cc.Model:
        model = randomised(tiny, seed=int(name[-1]))
        model.name = name
        alive.append(weakref.ref(model))
        return model

    def count() -> int:
        gc.collect()
        return sum(ref() is not None for ref in alive)

    names = ["model-1", "model-2", "model-3"]
    shelf = app.ModelShelf(names, load, keep=2)
    web = app.CocoaApp(shelf.get("model-1"), shelf=shelf)
    for name in ["model-2", "model-3", "model-1", None, "model-2", "model-3", None]:
        web.explain(str(photo_file), "dog", "cat", masks=MASKS, model_name=name, progress=lambda *a, **k: None)
        assert count() <= 2
    assert web.model.name == "model-1" and count() <= 2
    assert len(alive) == 7  # 1, 2, 3, 1, 2, 3, 1: each loaded again only after the shelf had dropped it


def test_model_names_are_checked_at_start_in_one_sentence(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(app, "build_demo", lambda *a, **k: pytest.fail("served with a name it cannot load"))
    missing = tmp_path / "tiny.pt"
    assert app.main(["--models", f"shapes-demo,{missing},ViT-H/99", "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --models: 2 of 3 cannot be served: ") and error.count("\n") == 0
    assert str(missing) in error and "ViT-H/99" in error and "shapes-demo (" not in error


def test_the_page_and_the_api_show_public_model_names_only(tiny, photo_file, tmp_path):
    folder = tmp_path / "secret-server-folder" / "my-model"
    folder.mkdir(parents=True)
    names = ["tiny", f"hf:{folder}"]
    shelf = app.ModelShelf(names, lambda name: tiny, keep=2)
    with served(tiny, calibrate=False, shelf=shelf) as (demo, url):
        api = client(url)
        described = str(api.view_api(return_format="dict", print_info=False))
        assert "hf:my-model" in described and "secret-server-folder" not in described
        dropdown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model")
        assert [value for _, value in dropdown.choices] == ["tiny", "hf:my-model"]
        result = api.predict(image=handle_file(str(photo_file)), corpus="dog", foil="cat", masks=MASKS,
                             model_name="hf:my-model", api_name="/explain")
        assert result[5].startswith("RISE:")
        with pytest.raises(AppError, match="choose one of"):
            api.predict(image=handle_file(str(photo_file)), corpus="dog", foil="cat", masks=MASKS,
                        model_name=f"hf:{folder}", api_name="/explain")
    namesake = tmp_path / "my-model"
    namesake.mkdir()
    with pytest.raises(cc.SettingsError, match="would both show as 'hf:my-model'"):
        app.ModelShelf(["tiny", f"hf:{folder}", f"hf:{namesake}"], lambda name: tiny)


# ---------------------------------------------------------------- the queue's bound


def test_the_door_decides_and_reserves_in_one_step():
    def slow_queue() -> list:  # Gradio's bookkeeping, read while other callers arrive
        time.sleep(0.01)
        return []

    door = webhost.Admission(slow_queue, max_waiting=4)
    with ThreadPoolExecutor(16) as pool:
        verdicts = list(pool.map(lambda n: door.admit(f"visitor-{n}"), range(16)))
    assert verdicts.count(None) == 4
    assert all(v == "The app is busy (4 jobs are waiting); please try again in a few minutes."
               for v in verdicts if v is not None)


def test_concurrent_submits_never_overshoot_the_queues_bound(tiny, photo_file, monkeypatch):
    monkeypatch.setattr(page, "QUEUE_SIZE", 3)
    with served(tiny, calibrate=False) as (demo, url):
        first = client(url)
        long_job = first.submit(image=handle_file(str(photo_file)), corpus="dog", foil="cat", masks=LONG,
                                api_name="/explain")
        wait_for(lambda: started_streaming(long_job), what="a first frame")

        visitors = [client(url) for _ in range(10)]

        def submit(index: int) -> str:
            try:
                visitors[index].submit(image=handle_file(str(photo_file)), corpus="dog", foil="cat", masks=MASKS,
                                   api_name="/explain").result(timeout=120)
                return "answered"
            except ValidationError as error:
                return str(error)

        peak = [0]
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                peak[0] = max(peak[0], sum(waiting for _, waiting, _ in webhost.queued_jobs(demo, "model")))
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(10) as pool:
            pending = [pool.submit(submit, index) for index in range(10)]
            time.sleep(3)  # all ten at the door while the long job runs
            long_job.cancel()
            outcomes = [future.result() for future in pending]
        watching.set()
        watcher.join()
    assert outcomes.count("answered") == 3 and peak[0] <= 3
    assert all("The app is busy (3 jobs are waiting)" in outcome for outcome in outcomes if outcome != "answered")


# ---------------------------------------------------------------- the disk budget


def test_a_disk_budget_below_one_answer_is_refused_at_start(capsys):
    with pytest.raises(SystemExit):
        app.parse_args(["--disk-budget", "2"])
    assert "expected at least 100 MB" in capsys.readouterr().err
    assert app.parse_args(["--disk-budget", "100"]).disk_budget == 100


def test_the_last_minutes_files_outlive_the_budget(tmp_path):
    budget = webhost.DiskBudget(tmp_path, max_bytes=1000, min_age=60)
    old = tmp_path / "old.png"
    old.write_bytes(b"x" * 800)
    os.utime(old, (time.time() - 120,) * 2)
    fresh = tmp_path / "answer" / "overlay.png"  # an answer Gradio has yet to serve
    fresh.parent.mkdir()
    fresh.write_bytes(b"x" * 2000)
    assert budget.enforce() == 2000 and fresh.exists() and not old.exists()


def test_a_tiny_disk_budget_still_serves_every_answer(tiny, tmp_path):
    with served(tiny, calibrate=False, disk_budget_mb=0.001) as (_, url):
        visitor = client(url)
        for index in range(3):
            picture = write_photo(tmp_path / f"p{index}.png", width=60, height=40, seed=index)
            overlay, *_, status, files = visitor.predict(image=handle_file(str(picture)), corpus="dog", foil="cat",
                                                         masks=MASKS, api_name="/explain")
            assert Image.open(overlay).size == (60, 40) and len(files) == 2 and status.startswith("RISE:")


# ---------------------------------------------------------------- visitors behind a proxy


def request(session: str, forwarded: str | None = None, peer: str = "10.0.0.5") -> SimpleNamespace:
    from starlette.datastructures import Headers

    headers = Headers(raw=[(b"x-forwarded-for", forwarded.encode())] if forwarded else [])
    return SimpleNamespace(session_hash=session, headers=headers, client=SimpleNamespace(host=peer))


def test_the_forwarded_address_counts_only_behind_a_trusted_proxy():
    assert webhost.address(request("s", "203.0.113.7"), trust_proxy=False) is None
    assert webhost.address(request("s", "6.6.6.6, 203.0.113.7"), trust_proxy=True) == "203.0.113.7"  # left: forged
    assert webhost.address(request("s"), trust_proxy=True) == "10.0.0.5"  # no header: the peer itself


@pytest.mark.parametrize("trusted", [True, False])
def test_one_address_behind_a_proxy_gets_one_job_however_many_sessions(tiny, photo_file, trusted):
    with served(tiny, calibrate=False, trust_proxy=trusted) as (_, url):
        def visitor(forwarded: str) -> Client:
            return client(url, headers={"X-Forwarded-For": forwarded})

        long_job = visitor("203.0.113.7").submit(image=handle_file(str(photo_file)), corpus="dog", foil="cat",
                                                 masks=LONG, api_name="/explain")
        wait_for(lambda: started_streaming(long_job), what="a first frame")
        same_address = visitor("203.0.113.7").submit(image=handle_file(str(photo_file)), corpus="dog", foil="cat",
                                                     masks=MASKS, api_name="/explain")
        other = visitor("203.0.113.7, 198.51.100.1").submit(image=handle_file(str(photo_file)), corpus="dog",
                                                              foil="cat", masks=MASKS, api_name="/explain")
        time.sleep(1.0)  # both at the door
        long_job.cancel()
        assert "masks" in other.result(timeout=60)[5]  # another address (a forged entry on its left)
        if trusted:
            with pytest.raises(ValidationError, match="You already have a job waiting or running"):
                same_address.result(timeout=60)
        else:
            assert "masks" in same_address.result(timeout=60)[5]  # the header is not read


# ---------------------------------------------------------------- answers of visitors who left


def test_answers_of_idle_visitors_expire():
    now = [0.0]
    store = webhost.AnswerStore(idle_seconds=30 * 60, clock=lambda: now[0])
    store.put("A", "token-a", "answer A", nbytes=10)
    store.put("B", "token-b", "answer B", nbytes=10)
    now[0] = 20 * 60
    assert store.get("A", "token-a") == "answer A"  # read: A's time starts again
    now[0] = 31 * 60
    store.sweep()
    assert len(store) == 1 and store.get("B", "token-b") is None and store.get("A", "token-a") == "answer A"
    now[0] = 62 * 60
    store.sweep()
    assert len(store) == 0


def test_answer_memory_idle_time_and_sessions_are_the_deployers_to_set(tiny):
    args = app.parse_args(["--answer-memory", "64", "--answer-idle-minutes", "5", "--max-sessions", "200"])
    web = app.CocoaApp(tiny, answer_memory_mb=args.answer_memory, answer_idle_minutes=args.answer_idle_minutes,
                       max_sessions=args.max_sessions)
    assert web.answers.max_bytes == 64 << 20 and web.answers.idle_seconds == 300 and web.answers.max_visitors == 200
    assert app.launch_options(args.max_sessions)["state_session_capacity"] == 200  # Gradio's sessions too
    defaults = app.parse_args([])
    assert (defaults.answer_memory, defaults.answer_idle_minutes, defaults.max_sessions, defaults.trust_proxy) == (
        512, 30, 1000, False)
    assert app.launch_options()["state_session_capacity"] == 1000  # not Gradio's 10,000
