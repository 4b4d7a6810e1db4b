"""Hosting the web app: workspace clean-up (at exit, on SIGTERM, stale folders), disk budget,
per-visitor answers, the queue's door, and glibc's allocator."""
from __future__ import annotations

import fcntl
import os
import platform
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest_app import REPO, free_port

from cocoa_clip.web import hosting as webhost


def write(path: Path, size: int, age: float) -> Path:
    """A file of `size` bytes last modified `age` seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_disk_budget_removes_the_oldest_files_until_the_total_fits(tmp_path):
    (tmp_path / webhost.LOCK).touch()
    example = write(tmp_path / "examples" / "chelsea.jpg", 500, age=1000)  # the app's own, there from the start
    budget = webhost.DiskBudget(tmp_path, max_bytes=4000)
    budget.keep_present()
    files = [write(tmp_path / f"request{i}" / "overlay.png", 1000, age=100 - i) for i in range(10)]  # 0 is oldest
    assert budget.used() == 10_500
    assert budget.enforce() == 3500 and budget.used() == 3500
    assert [f.exists() for f in files] == [False] * 7 + [True] * 3 and example.exists()
    assert not (tmp_path / "request0").exists()  # emptied folders go too
    assert (tmp_path / webhost.LOCK).exists()
    assert budget.enforce() == 3500  # within budget: nothing more goes


def test_stale_workspaces_go_live_and_foreign_ones_stay(tmp_path):
    stale = tmp_path / f"{webhost.PREFIX}stale"
    write(stale / "gradio" / "upload.png", 10, age=0)
    (stale / webhost.LOCK).touch()  # its server died: nobody holds the lock
    live = tmp_path / f"{webhost.PREFIX}live"
    live.mkdir()
    held = open(live / webhost.LOCK, "w")  # noqa: SIM115
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    foreign = tmp_path / f"{webhost.PREFIX}foreign"  # no lock file: not ours to judge
    foreign.mkdir()
    try:
        assert webhost.remove_stale(tmp_path) == 1
        assert not stale.exists() and live.is_dir() and foreign.is_dir()
    finally:
        held.close()
    assert webhost.remove_stale(tmp_path) == 1 and not live.exists()


def test_answers_are_per_visitor_and_bounded_in_total():
    store = webhost.AnswerStore(max_visitors=3, max_bytes=1000)
    store.put("A", "token-a", "answer A", nbytes=100)
    for name in "BC":
        store.put(name, f"token-{name.lower()}", f"answer {name}", nbytes=100)
    assert store.get("A", "token-a") == "answer A"  # A is now the most recent
    assert store.get("B", "token-a") is None and store.get("A", "token-b") is None  # no visitor reaches another's
    store.put("D", "token-d", "answer D", nbytes=100)  # a fourth visitor: B, idle longest, goes
    assert store.get("B", "token-b") is None and len(store) == 3
    store.put("A", "token-a2", "answer A2", nbytes=100)  # one answer per visitor: the latest
    assert store.get("A", "token-a") is None and store.get("A", "token-a2") == "answer A2"
    store.put("E", "token-e", "answer E", nbytes=950)  # over the bytes: the idle ones go first
    assert store.get("E", "token-e") == "answer E" and store.nbytes <= 1000 and len(store) == 1


def test_the_door_refuses_a_second_job_and_a_full_queue_in_words():
    queued = [("A", False, 1.0), ("B", True, 2.0), ("C", True, 3.0)]  # what Gradio's queue holds
    now = [100.0]
    door = webhost.Admission(lambda: queued, max_waiting=2, grace=5.0, clock=lambda: now[0])
    assert door.admit("A") is None and door.admit("B") is None
    door.started("A")  # A's runs, B's waits
    assert door.admit("A") == door.admit("B") == webhost.ONE_JOB
    assert door.admit("C") is None  # B and C wait: the queue is full
    assert door.admit("D") == "The app is busy (2 jobs are waiting); please try again in a few minutes."
    door.finished("A")
    door.started("B")  # A answered, B's turn: C waits
    assert door.admit("A") is None  # A may ask again, though Gradio may still list its job for a moment
    assert door.admit("D").startswith("The app is busy (2 jobs")  # C and A wait
    queued.remove(("C", True, 3.0))  # C cancelled while waiting: Gradio dropped it, its place comes back ...
    assert door.admit("D").startswith("The app is busy (2 jobs")
    now[0] += 6  # ... once `grace` has passed (a new event may not be in Gradio's queue yet)
    assert door.admit("D") is None and door.admit("B") == webhost.ONE_JOB
    queued.clear()  # B cancelled while running: Gradio dropped it, but its work may still be stopping
    now[0] += 60
    assert door.admit("B") == webhost.ONE_JOB  # ... so its place stays until finished()
    door.finished("B")
    assert door.admit("B") is None


def test_malloc_is_tamed_where_glibc_is():
    assert webhost.tame_malloc() is (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    webhost.trim_memory()


def test_the_app_removes_its_workspace_on_sigterm(tiny_checkpoint, tmp_path):
    """SIGTERM, which skips atexit by default (Ctrl-C's KeyboardInterrupt runs it; too slow to test both)."""
    stale = tmp_path / f"{webhost.PREFIX}dead-server"
    write(stale / "gradio" / "overlay.png", 10, age=0)
    (stale / webhost.LOCK).touch()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cocoa_clip.web.app", "--weights", tiny_checkpoint, "--device", "cpu",
         "--port", str(port)], cwd=REPO, env={**os.environ, "TMPDIR": str(tmp_path), "GRADIO_TEMP_DIR": ""},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the app did not start"
                time.sleep(0.5)
        # Where it runs, and no hint to share it (sharing is off on purpose): its first line, printed once serving.
        console = server.stdout.readline() if select.select([server.stdout], [], [], 60)[0] else ""
        assert console == f"* Running on http://127.0.0.1:{port}/ (Ctrl-C stops it)\n"
        workspaces = list(tmp_path.glob(f"{webhost.PREFIX}*"))
        assert len(workspaces) == 1 and (workspaces[0] / "gradio").is_dir()  # the stale one went at start
        assert list((workspaces[0] / "gradio").rglob("*.jpg"))  # the examples Gradio copied in
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 128 + signal.SIGTERM
        assert not list(tmp_path.glob(f"{webhost.PREFIX}*"))
    finally:
        server.kill()
        server.wait()
    assert "Traceback" not in server.stderr.read() and "share=True" not in server.stdout.read()
