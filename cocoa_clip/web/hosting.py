"""Hosting the web app for the public: what keeps one server healthy under anyone's traffic.

- `Workspace`: one folder per server process holding everything written for visitors (Gradio's
  uploads and cache, our downloads), removed on exit (SIGTERM and SIGINT too); folders of dead
  servers are removed when the next one starts.
- `DiskBudget`: that folder stays under a size, the oldest files going first (never the last
  minute's, which may be an answer Gradio has yet to serve).
- `AnswerStore`: each visitor's latest answers, kept with the visitor, bounded in total and
  dropped after an idle time.
- `Admission`: at most one queued or running job per visitor (per session, and per address behind
  a trusted proxy), and a busy queue said in words; deciding and reserving are one step.
- `no_core_files`: a crash leaves no core file (model weights, visitors' pictures) on the disk.
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
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
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


def remove_on_signals(before_exit: Callable[[], bool] = lambda: True) -> None:
    """SIGTERM ends the process through SystemExit, so that atexit removes the workspace (the default
    SIGTERM skips atexit; SIGINT already raises KeyboardInterrupt). Call from the main thread.

    `before_exit` runs first (stop the jobs, answer their clients) and says whether every worker thread
    has ended. If one has not, the process leaves through os._exit once the workspace is removed:
    finalising the interpreter while a daemon thread is inside torch ends that thread with
    pthread_exit, whose unwinding through torch's C++ frames calls std::terminate ("terminate called
    without an active exception", SIGABRT). A second SIGTERM while the first is handled is ignored.
    """
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        if stopping.is_set():
            return
        stopping.set()
        if not before_exit():
            workspace().remove()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def no_core_files() -> None:
    """No core dump from this process: one holds the models and visitors' pictures (a 1.16 GB core
    was seen), lands in the working directory, outside the disk budget and the workspace's clean-up."""
    try:
        import resource
    except ImportError:  # Windows: no core files to speak of
        return
    # The soft limit is what the kernel reads; the hard one stays, so a process that serves in-process (a test)
    # can still raise it again afterwards.
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))


def every(seconds: float, chore: Callable[[], object], name: str) -> threading.Thread:
    """Run the bound method `chore` every `seconds` in a daemon thread while its object lives (the thread
    holds it weakly, so that an app dropped by its owner, e.g. a test's, is freed); errors are logged."""
    method = weakref.WeakMethod(chore)

    def loop() -> None:
        while True:
            time.sleep(seconds)
            bound = method()
            if bound is None:
                return
            try:
                bound()
            except Exception as error:  # a bad round (a file gone meanwhile, a full disk) must not end the chores
                log.warning("%s: %s", name, error)
            del bound

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


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

    `enforce()` runs after every job and every few seconds (`every`; uploads arrive between jobs).
    Files present at `keep_present()` (the app's own, e.g. the example pictures Gradio copies in at start)
    count towards the budget but stay, and so do files younger than `min_age` seconds: an answer's files
    are written before Gradio serves them, so the budget may run over by the last minute's files rather
    than break an answer in flight.
    """

    def __init__(self, root: Path, max_bytes: int, min_age: float = 60.0):
        self.root = root
        self.max_bytes = max_bytes
        self.min_age = min_age
        self.kept: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def keep_present(self) -> None:
        self.kept = frozenset(path for _, _, path in _files(self.root))

    def used(self) -> int:
        return sum(size for _, size, _ in _files(self.root))

    def enforce(self) -> int:
        """Remove the oldest files until the total fits; returns the bytes in use afterwards."""
        with self._lock:
            files = sorted(_files(self.root))
            total = sum(size for _, size, _ in files)
            recent = time.time() - self.min_age
            for modified, size, path in files:
                if total <= self.max_bytes or modified > recent:
                    break  # sorted by age: the rest are recent too
                if path in self.kept:
                    continue
                with contextlib.suppress(OSError):
                    os.remove(path)
                    total -= size
                    folder = os.path.dirname(path)
                    if folder != str(self.root) and not os.listdir(folder):
                        os.rmdir(folder)  # a request's folder, emptied (new empty folders are left alone)
            return total


# -------------------------------------------------------------------- visitors


class AnswerStore:
    """Each visitor's latest answer, under a random token, kept until that visitor asks again.

    Bounded per visitor (one answer, the one "Check this explanation" reads) and in total: when
    `max_bytes` or `max_visitors` is exceeded, the visitors idle longest lose theirs first, and an
    answer unread for `idle_seconds` goes (its visitor has most likely left). A token only opens its
    own visitor's answer. `clock`: time.monotonic, or a test's.
    """

    def __init__(self, max_visitors: int = 1000, max_bytes: int = 512 << 20, idle_seconds: float = 1800.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_visitors = max_visitors
        self.max_bytes = max_bytes
        self.idle_seconds = idle_seconds
        self.clock = clock
        # visitor -> (token, answer, bytes, last used), least recently used first
        self._entries: OrderedDict[str, tuple[str, Any, int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, visitor: str, token: str, answer: Any, nbytes: int) -> None:
        with self._lock:
            self._entries[visitor] = (token, answer, nbytes, self.clock())
            self._entries.move_to_end(visitor)
            self._expire()
            while len(self._entries) > 1 and (len(self._entries) > self.max_visitors or self.nbytes > self.max_bytes):
                self._entries.popitem(last=False)

    def get(self, visitor: str, token: Any) -> Any | None:
        with self._lock:
            self._expire()
            entry = self._entries.get(visitor)
            if entry is None or entry[0] != token:
                return None
            self._entries[visitor] = (*entry[:3], self.clock())
            self._entries.move_to_end(visitor)
            return entry[1]

    def sweep(self) -> None:
        """Drop the answers idle longer than `idle_seconds` (also done on every put and get)."""
        with self._lock:
            self._expire()

    def _expire(self) -> None:
        oldest = self.clock() - self.idle_seconds
        while self._entries and next(iter(self._entries.values()))[3] < oldest:
            self._entries.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(entry[2] for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


def visitor(request: Any) -> str:
    """Who is asking: Gradio's session of the request (a browser tab or an API client), else LOCAL."""
    session = getattr(request, "session_hash", None)
    return session if isinstance(session, str) and session else LOCAL


def address(request: Any, trust_proxy: bool) -> str | None:
    """The client's address behind a trusted proxy, or None (the per-visitor limit then counts sessions only).

    Only with `trust_proxy`: the right-most X-Forwarded-For entry, the one the proxy in front of this
    server appended (the peer it saw); entries to its left come from the client and can be forged.
    Without a proxy header, the connection's own peer. Without `trust_proxy` no header is read: anyone
    could send one.
    """
    if not trust_proxy:
        return None
    headers = getattr(request, "headers", None)
    values = headers.getlist("x-forwarded-for") if hasattr(headers, "getlist") else []
    hops = [hop.strip() for value in values for hop in value.split(",") if hop.strip()]
    if hops:
        return hops[-1]
    return getattr(getattr(request, "client", None), "host", None)


ONE_JOB = "You already have a job waiting or running: wait for its answer (or stop it) before asking again."


class Admission:
    """Decides at the queue's door (Gradio's event `validator`) whether a job may join, and keeps its place.

    A visitor (a session; behind a trusted proxy, also an address) with a job waiting or running is
    refused, and so is everyone while `max_waiting` jobs wait, each with a sentence. `admit` decides
    and reserves under one lock, so that concurrent callers cannot overshoot the bound. A job counts
    from `admit` until `finished(session)`, which the job calls when its work has really stopped
    (a cancelled job's thread may run a batch longer than Gradio's event). `started(session)` marks it
    running; a place whose event never ran and that Gradio's queue no longer holds (`queued`: (session,
    waiting, enqueued at) of its events) is given back after `grace` seconds (cancelled while waiting).
    """

    def __init__(self, queued: Callable[[], list[tuple[str, bool, float]]], max_waiting: int,
                 grace: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.queued = queued
        self.max_waiting = max_waiting
        self.grace = grace
        self.clock = clock
        self._jobs: dict[str, list] = {}  # session -> [address, admitted at, started]
        self._lock = threading.Lock()

    def admit(self, session: str, address: str | None = None) -> str | None:
        """The sentence refusing a new job from `session` (at `address`), or None once its place is reserved."""
        with self._lock:
            self._give_back_abandoned()
            if session in self._jobs or (address is not None and
                                         any(job[0] == address for job in self._jobs.values())):
                return ONE_JOB
            waiting = sum(not started for _, _, started in self._jobs.values())
            if waiting >= self.max_waiting:
                return f"The app is busy ({waiting} jobs are waiting); please try again in a few minutes."
            self._jobs[session] = [address, self.clock(), False]
            return None

    def started(self, session: str, address: str | None = None) -> None:
        with self._lock:
            self._jobs.setdefault(session, [address, self.clock(), True])[2] = True

    def finished(self, session: str) -> None:
        with self._lock:
            self._jobs.pop(session, None)

    def _give_back_abandoned(self) -> None:
        queued = {session for session, _, _ in self.queued()}
        late = self.clock() - self.grace
        for session, (_, admitted, started) in list(self._jobs.items()):
            if not started and admitted < late and session not in queued:
                del self._jobs[session]


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
