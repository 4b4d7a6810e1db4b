"""Hosting the web app for the public: what keeps one server healthy under anyone's traffic.

- `Workspace`: one folder per server process holding everything written for visitors (Gradio's
  uploads and cache, our downloads), removed on exit (SIGTERM and SIGINT too); folders of dead
  servers are removed when the next one starts.
- `DiskBudget`: that folder stays under a size, the oldest files going first.
- `AnswerStore`: each visitor's latest answers, kept with the visitor and bounded in total.
- `Admission`: at most one queued or running job per visitor, and a busy queue said in words.
- `tame_malloc` / `trim_memory`: glibc's allocator told to give freed memory back, so resident
  memory stays flat over thousands of different pictures (without it, arenas fragment).
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so folders of dead servers are left alone there
    fcntl = None

log = logging.getLogger("cocoa_clip.app")

PREFIX = "cocoa-clip-app-"
LOCK = ".owner.lock"      # held (flock) by the live server that owns the folder
LOCAL = "local"           # the visitor of direct Python calls (no HTTP session)

# -------------------------------------------------------------------- memory

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters (malloc.h)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- musl and others lack it, and mallopt differs there
    except (OSError, AttributeError):
        return None
    return libc


def tame_malloc() -> bool:
    """Tell glibc to use few arenas and to return freed memory to the system promptly.

    Large tensors (128 KiB and up) get their own mappings, unmapped when freed, and the heap is trimmed
    above 128 KiB of free space; two arenas instead of 8 per core stop worker threads from each keeping
    their own fragmented heap. Returns False where the C library is not glibc (nothing is changed).
    """
    libc = _glibc()
    if libc is None:
        return False
    for parameter, value in ((_M_ARENA_MAX, 2), (_M_MMAP_THRESHOLD, 128 << 10), (_M_TRIM_THRESHOLD, 128 << 10)):
        libc.mallopt(parameter, value)
    return True


def trim_memory() -> None:
    """Hand free heap pages back to the system (glibc's malloc_trim); a no-op elsewhere."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# -------------------------------------------------------------------- disk


class Workspace:
    """This process's folder for visitors' files: `root/gradio`, Gradio's uploads and cache (and our downloads).

    Gradio is pointed at `root/gradio` through GRADIO_TEMP_DIR, so set up the workspace before building
    the Blocks. The folder is removed at exit (Ctrl-C included); `remove_on_signals()` adds SIGTERM.
    """

    def __init__(self, base: str | os.PathLike | None = None):
        base = Path(base or os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        self.removed_stale = remove_stale(base)
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
        # Locked before it takes its name, so that no other server ever finds the folder's lock free.
        self._lock = open(self.root / (LOCK + ".new"), "w")  # noqa: SIM115 -- held for the life of the process
        if fcntl is not None:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(self.root / (LOCK + ".new"), self.root / LOCK)
        self.gradio = self.root / "gradio"
        self.gradio.mkdir()
        os.environ["GRADIO_TEMP_DIR"] = str(self.gradio)
        atexit.register(self.remove)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._lock.close()


_workspace: Workspace | None = None
_workspace_lock = threading.Lock()


def workspace() -> Workspace:
    """The process's one workspace, made on first use (every app in a process shares Gradio's folder)."""
    global _workspace
    with _workspace_lock:
        if _workspace is None:
            _workspace = Workspace()
        return _workspace


def remove_stale(base: Path) -> int:
    """Remove `cocoa-clip-app-*` folders in `base` whose owner lock no live process holds; returns how many."""
    if fcntl is None:
        return 0
    removed = 0
    for folder in base.glob(PREFIX + "*"):
        try:
            with open(folder / LOCK) as lock:  # no lock file: not a server's folder, or one still starting
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError while a live server holds it
                shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        except OSError:
            continue  # owned by a live server, or no lock file
    return removed


def remove_on_signals() -> None:
    """SIGTERM ends the process through SystemExit, so that atexit removes the workspace (the default
    SIGTERM skips atexit; SIGINT already raises KeyboardInterrupt). Call from the main thread."""
    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _files(root: Path) -> list[tuple[float, int, str]]:
    """(modification time, bytes, path) of every file under root, bar the owner lock."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):  # removed meanwhile
                stat = os.stat(path)
                if name != LOCK:
                    found.append((stat.st_mtime, stat.st_size, path))
    return found


class DiskBudget:
    """Keeps the files under `root` within `max_bytes`, removing the oldest first.

    `enforce()` runs after every job and every `interval` seconds in a thread (uploads arrive between jobs).
    Files present at `keep_present()` (the app's own, e.g. the example pictures Gradio copies in at start)
    count towards the budget but stay.
    """

    def __init__(self, root: Path, max_bytes: int, interval: float = 5.0):
        self.root = root
        self.max_bytes = max_bytes
        self.interval = interval
        self.kept: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def keep_present(self) -> None:
        self.kept = frozenset(path for _, _, path in _files(self.root))

    def used(self) -> int:
        return sum(size for _, size, _ in _files(self.root))

    def enforce(self) -> int:
        """Remove the oldest files until the total fits; returns the bytes in use afterwards."""
        with self._lock:
            files = sorted(_files(self.root))
            total = sum(size for _, size, _ in files)
            for _, size, path in files:
                if total <= self.max_bytes:
                    break
                if path in self.kept:
                    continue
                with contextlib.suppress(OSError):
                    os.remove(path)
                    total -= size
                    folder = os.path.dirname(path)
                    if folder != str(self.root) and not os.listdir(folder):
                        os.rmdir(folder)  # a request's folder, emptied (new empty folders are left alone)
            return total

    def watch(self) -> None:
        """Enforce the budget every `interval` seconds in a daemon thread (once per budget)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="cocoa-disk-budget", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while self.root.is_dir():
            try:
                self.enforce()
            except OSError as error:
                log.warning("disk budget: %s", error)
            time.sleep(self.interval)


# -------------------------------------------------------------------- visitors


class AnswerStore:
    """Each visitor's latest answer, under a random token, kept until that visitor asks again.

    Bounded per visitor (one answer, the one "Check this explanation" reads) and in total: when
    `max_bytes` or `max_visitors` is exceeded, the visitors idle longest lose theirs first. A token
    only opens its own visitor's answer.
    """

    def __init__(self, max_visitors: int = 1000, max_bytes: int = 512 << 20):
        self.max_visitors = max_visitors
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[str, Any, int]] = OrderedDict()  # visitor -> (token, answer, bytes)
        self._lock = threading.Lock()

    def put(self, visitor: str, token: str, answer: Any, nbytes: int) -> None:
        with self._lock:
            self._entries[visitor] = (token, answer, nbytes)
            self._entries.move_to_end(visitor)
            while len(self._entries) > 1 and (len(self._entries) > self.max_visitors or self.nbytes > self.max_bytes):
                self._entries.popitem(last=False)

    def get(self, visitor: str, token: Any) -> Any | None:
        with self._lock:
            entry = self._entries.get(visitor)
            if entry is None or entry[0] != token:
                return None
            self._entries.move_to_end(visitor)
            return entry[1]

    @property
    def nbytes(self) -> int:
        return sum(size for _, _, size in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


def visitor(request: Any) -> str:
    """Who is asking: Gradio's session of the request (a browser tab or an API client), else LOCAL."""
    session = getattr(request, "session_hash", None)
    return session if isinstance(session, str) and session else LOCAL


class Admission:
    """Decides at the queue's door (Gradio's event `validator`) whether a job may join.

    A visitor with a job waiting or running is refused, and so is everyone while `max_waiting` jobs
    wait, each with a sentence. `jobs()` lists (visitor, waiting, enqueued at) for the jobs the queue
    holds; a running job counts until `finished(visitor)` is called for it (Gradio keeps its
    bookkeeping a moment longer, after the answer has reached the visitor).
    """

    def __init__(self, jobs: Callable[[], list[tuple[str, bool, float]]], max_waiting: int,
                 remembered: int = 10_000):
        self.jobs = jobs
        self.max_waiting = max_waiting
        self.remembered = remembered
        self._finished: OrderedDict[str, float] = OrderedDict()  # visitor -> time.monotonic() of their last answer
        self._lock = threading.Lock()

    def finished(self, who: str) -> None:
        with self._lock:
            self._finished[who] = time.monotonic()
            self._finished.move_to_end(who)
            while len(self._finished) > self.remembered:
                self._finished.popitem(last=False)

    def refusal(self, who: str) -> str | None:
        """The sentence refusing a new job from `who`, or None to let it in."""
        jobs = self.jobs()
        with self._lock:
            answered = self._finished.get(who, -math.inf)
        if any(owner == who and (waiting or enqueued > answered) for owner, waiting, enqueued in jobs):
            return ("You already have a job waiting or running: wait for its answer (or stop it) "
                    "before asking again.")
        waiting = sum(waiting for _, waiting, _ in jobs)
        if waiting >= self.max_waiting:
            return f"The app is busy ({waiting} jobs are waiting); please try again in a few minutes."
        return None


def queued_jobs(blocks: Any, concurrency_id: str) -> list[tuple[str, bool, float]]:
    """(session, waiting, enqueued at) of the events Gradio's queue holds for `concurrency_id`.

    Reads the queue's bookkeeping (Gradio 5 and 6: `_queue.event_ids_to_events` holds waiting and running
    events, `_queue.event_queue_per_concurrency_id` the waiting ones; `enqueue_time` is time.monotonic());
    tests/test_app.py checks it against real traffic, so that a Gradio upgrade that changes it is noticed.
    """
    queue = getattr(blocks, "_queue", None)
    if queue is None:
        return []
    line = queue.event_queue_per_concurrency_id.get(concurrency_id)
    waiting = {id(event) for event in (list(line.queue) if line is not None else [])}
    return [(event.session_hash, id(event) in waiting, event.enqueue_time)
            for event in list(queue.event_ids_to_events.values()) if event.concurrency_id == concurrency_id]
