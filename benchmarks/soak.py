"""Soak test of the web app: many distinct visitors, some who leave mid-run, and a SIGTERM mid-job.

Starts the app in its own process (as `python -m cocoa_clip.web.app`). `--visitors` visitors, each
a new session (a new client) asking one question on a picture never seen before, come `--clients`
at a time. Every `--cancel-every`th visitor asks for a long run instead and cancels it after its
first frame, then asks again (refused until the cancelled run has stopped); every
`--disconnect-every`th is a client process killed after its first frame. It prints the server's
resident memory and the disk its workspace uses as it goes, then latency percentiles, failures,
the memory growth after warm-up (the goal: level, under 10%), how soon a cancelled visitor could ask
again, the server's CPU once the visitors are gone (orphaned runs would keep it busy), and what a
SIGTERM during a running job did: exit status, the client's sentence, an abort, the workspace.
All traffic stays on 127.0.0.1.

    python benchmarks/soak.py --visitors 1000 --masks 64 --answer-memory 16     # a tiny random CLIP
    python benchmarks/soak.py --model shapes-demo --visitors 200 --masks 500
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import ValidationError  # noqa: E402

from cocoa_clip.models.random_models import write_checkpoint  # noqa: E402

QUESTIONS = [("dog", "cat"), ("red circle", "blue star"), ("car", "tree"), ("sky", "sea"), ("cup", "spoon")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def resident_mb(pid: int) -> float:
    """The process's resident memory (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of the process so far (utime + stime in /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def disk_mb(folder: Path) -> tuple[float, int]:
    """Bytes (MB) and files under the app's workspace folders in `folder`."""
    total, count = 0, 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(root, name))
                count += 1
            except OSError:
                pass
    return total / 2 ** 20, count


def picture(path: Path, index: int, low: int, high: int) -> Path:
    """A picture seen once: random size in [low, high] px a side, noise with a block of colour."""
    rng = np.random.default_rng(index)
    width, height = (int(v) for v in rng.integers(low, high + 1, 2))
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 3] = rng.integers(0, 256, 3, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def start_server(args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    which = ["--model", args.model] if args.model else ["--weights", write_checkpoint(tmp / "tiny.pt", "tiny")]
    options = [*which, "--device", "cpu", "--port", str(port), "--disk-budget", str(args.disk_budget),
               "--answer-memory", str(args.answer_memory), "--max-sessions", str(args.max_sessions)]
    command = [sys.executable, "-m", "cocoa_clip.web.app", *options]
    if args.glibc_defaults:  # the comparison: the same app with the allocator left alone
        command = [sys.executable, "-c", "from cocoa_clip.web import app, hosting; "
                   "hosting.tame_malloc = lambda: False; hosting.trim_memory = lambda: None; "
                   f"app.main({options!r})"]
    workspace = tmp / "server-tmp"
    workspace.mkdir()
    log = open(tmp / "server.log", "w")  # noqa: SIM115 -- the server's, closed when the folder goes
    # The server's working directory is the soak's folder: a core file would show there.
    server = subprocess.Popen(command, cwd=tmp, env={**os.environ, "TMPDIR": str(workspace),
                                                     "PYTHONPATH": str(REPO)},
                              stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            Client(url, verbose=False, analytics_enabled=False)
            return server, url
        except Exception:  # not up yet
            if server.poll() is not None:
                raise SystemExit(f"the app exited: {(tmp / 'server.log').read_text()[-2000:]}") from None
            time.sleep(1.0)
    server.kill()
    raise SystemExit("the app did not start within 3 minutes")


def client(url: str) -> Client:
    return Client(url, verbose=False, analytics_enabled=False)


def first_frame(job) -> None:
    deadline = time.monotonic() + 60
    while not job.outputs() and not job.done() and time.monotonic() < deadline:
        time.sleep(0.02)


KILLED_CLIENT = """import sys, time
from gradio_client import Client, handle_file
url, path, masks = sys.argv[1], sys.argv[2], int(sys.argv[3])
job = Client(url, verbose=False, analytics_enabled=False).submit(
    image=handle_file(path), corpus="dog", foil="cat", masks=masks, api_name="/explain")
while not job.outputs():
    time.sleep(0.02)
print("streaming", flush=True)
job.result()
"""


@dataclass
class Tally:
    """What the visitors saw, gathered across threads."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    refused_for: list[float] = field(default_factory=list)  # seconds after a cancel its visitor was still refused
    memory: list[tuple[int, float]] = field(default_factory=list)
    disk: list[float] = field(default_factory=list)
    cancels: int = 0
    disconnects: int = 0
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def visit(args: argparse.Namespace, url: str, pictures: Path, index: int, tally: Tally) -> int:
    """One visitor: a new session asking one question (or cancelling a long run, or vanishing mid-run).
    Returns how many visitors are done."""
    path = picture(pictures / f"p{index}.png", index, *args.sizes)
    corpus, foil = QUESTIONS[index % len(QUESTIONS)]
    begin = time.perf_counter()
    failure = None
    try:
        if args.disconnect_every and index % args.disconnect_every == args.disconnect_every - 1:
            caller = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, url, str(path), str(args.long_masks)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            caller.stdout.readline()  # its first frame: then it vanishes
            caller.kill()
            caller.wait()
            with tally.lock:
                tally.disconnects += 1
        elif args.cancel_every and index % args.cancel_every == args.cancel_every - 1:
            visitor = client(url)
            job = visitor.submit(image=handle_file(str(path)), corpus=corpus, foil=foil, masks=args.long_masks,
                                 api_name="/explain")
            first_frame(job)
            job.cancel()
            cancelled, refused = time.monotonic(), 0.0
            while True:  # the same visitor at once: refused until the cancelled run has stopped
                try:
                    visitor.predict(image=handle_file(str(path)), corpus=corpus, foil=foil, masks=args.masks,
                                    api_name="/explain")
                    break
                except ValidationError as error:
                    if "already have a job" not in str(error):
                        raise
                    refused = time.monotonic() - cancelled
                    time.sleep(0.05)
            with tally.lock:
                tally.cancels += 1
                tally.refused_for.append(refused)
        else:
            client(url).predict(image=handle_file(str(path)), corpus=corpus, foil=foil, masks=args.masks,
                                seed=index, api_name="/explain")
    except Exception as error:  # counted and shown, the soak goes on
        failure = f"{type(error).__name__}: {error}"
    path.unlink()
    with tally.lock:
        tally.latencies.append(time.perf_counter() - begin)
        if failure:
            tally.failures.append(failure)
        tally.done += 1
        return tally.done


def sigterm_mid_job(server: subprocess.Popen, url: str, path: Path, masks: int) -> dict:
    """A visitor's long run, then SIGTERM after its first frame: what the server and the visitor saw."""
    job = client(url).submit(image=handle_file(str(path)), corpus="dog", foil="cat", masks=masks,
                             api_name="/explain")
    first_frame(job)
    server.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code = server.wait(timeout=120)
    seconds = time.monotonic() - sent
    try:
        job.result(timeout=10)
        told = "an answer"
    except Exception as error:
        told = f"{type(error).__name__}: {error}"
    return {"code": code, "seconds": seconds, "told": told}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="e.g. shapes-demo (default: a tiny random CLIP)")
    parser.add_argument("--visitors", type=int, default=1000, help="distinct sessions, one question each")
    parser.add_argument("--clients", type=int, default=4, help="visitors at once")
    parser.add_argument("--masks", type=int, default=64)
    parser.add_argument("--long-masks", type=int, default=20_000, help="the runs that get cancelled or orphaned")
    parser.add_argument("--cancel-every", type=int, default=50, help="0: no cancels")
    parser.add_argument("--disconnect-every", type=int, default=100, help="0: no killed clients")
    parser.add_argument("--sizes", type=int, nargs=2, default=(64, 384), metavar=("LOW", "HIGH"),
                        help="picture sides in px")
    parser.add_argument("--disk-budget", type=float, default=128, metavar="MB")
    parser.add_argument("--answer-memory", type=float, default=16, metavar="MB",
                        help="the server's --answer-memory (small, so that levelling off shows early)")
    parser.add_argument("--max-sessions", type=int, default=1000, metavar="N", help="the server's --max-sessions")
    parser.add_argument("--warm-up", type=int, default=200, help="visitors before the memory baseline")
    parser.add_argument("--every", type=int, default=100, help="print memory and disk every so many visitors")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="for comparison: leave glibc's allocator as it is (no mallopt, no malloc_trim)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cocoa-soak-") as name:
        tmp = Path(name)
        server, url = start_server(args, tmp)
        pictures = tmp / "pictures"
        pictures.mkdir()
        tally = Tally()
        started = time.monotonic()
        print(f"{'visitors':>8} {'seconds':>8} {'RSS MB':>8} {'disk MB':>8} {'files':>6}")

        def sample(count: int) -> None:
            rss = resident_mb(server.pid)
            used, files = disk_mb(tmp / "server-tmp")
            with tally.lock:
                tally.memory.append((count, rss))
                tally.disk.append(used)
            print(f"{count:>8} {time.monotonic() - started:>8.0f} {rss:>8.0f} {used:>8.1f} {files:>6}", flush=True)

        def visitors(number: int) -> None:
            for index in range(number, args.visitors, args.clients):
                count = visit(args, url, pictures, index, tally)
                if count % args.every == 0 or count == args.warm_up:
                    sample(count)

        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(visitors, range(args.clients)))
        before = cpu_seconds(server.pid)
        time.sleep(3.0)  # nobody left: an orphaned run would still burn CPU here
        idle_cpu = (cpu_seconds(server.pid) - before) / 3.0
        end_disk, _ = disk_mb(tmp / "server-tmp")
        stop = sigterm_mid_job(server, url, picture(pictures / "last.png", 10 ** 6, *args.sizes), args.long_masks)
        left = list((tmp / "server-tmp").glob("cocoa-clip-app-*"))
        log = (tmp / "server.log").read_text()
        errors = [line for line in log.splitlines() if "Error" in line or "terminate called" in line]
        cores = list(tmp.glob("core*"))

    seconds = np.array(tally.latencies)
    memory = sorted(tally.memory)
    base = next(rss for count, rss in memory if count >= args.warm_up)
    final = memory[-1][1]
    print(f"\n{len(tally.latencies)} distinct visitors, {args.clients} at a time, {args.masks} masks each, pictures "
          f"{args.sizes[0]}-{args.sizes[1]} px, model {args.model or 'tiny random CLIP'}, answer memory "
          f"{args.answer_memory:g} MB, {args.max_sessions:,} sessions kept"
          f"{', glibc allocator defaults' if args.glibc_defaults else ''}")
    print(f"latency p50 {np.percentile(seconds, 50):.2f} s, p95 {np.percentile(seconds, 95):.2f} s; "
          f"failures {len(tally.failures)}")
    for failure in sorted(set(tally.failures))[:5]:
        print(f"  {failure}")
    for line in errors[-5:]:
        print(f"  server: {line}")
    print(f"resident memory after {args.warm_up} visitors {base:.0f} MB, at the end {final:.0f} MB "
          f"({(final - base) / base:+.1%}); peak {max(rss for _, rss in memory):.0f} MB")
    print(f"disk at the end {end_disk:.1f} MB, at most {max(tally.disk):.1f} MB when sampled "
          f"(budget {args.disk_budget:g} MB)")
    if tally.refused_for:
        print(f"{tally.cancels} cancels of {args.long_masks:,}-mask runs after their first frame: the visitor's "
              f"next question was refused (the run still stopping) for {np.median(tally.refused_for):.2f} s "
              f"(median), {max(tally.refused_for):.2f} s at most, then answered")
    print(f"{tally.disconnects} clients killed mid-run; server CPU in the 3 s after the last visitor: {idle_cpu:.0%} "
          "of a core")
    print(f"SIGTERM during a running job: exit status {stop['code']} after {stop['seconds']:.1f} s; the client got "
          f"{stop['told']!r}; abort: {'yes' if 'terminate called' in log else 'no'}; "
          f"workspace folders left: {len(left)}; core files: {len(cores)}")


if __name__ == "__main__":
    main()
