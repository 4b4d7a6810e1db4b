"""Soak test of the web app: many requests on distinct pictures through its HTTP API.

Starts the app in its own process (as `python -m cocoa_clip.web.app`), sends `--requests` explain
requests, half one after another from one client and half from `--clients` clients at once, each on
a picture never seen before, and prints the server's resident memory and the disk its workspace
uses as it goes, then latency percentiles, failures, the memory growth after warm-up (the goal:
under 10%) and whether SIGTERM removed the workspace.

    python benchmarks/soak.py --requests 1000 --masks 128               # a tiny random CLIP
    python benchmarks/soak.py --model shapes-demo --requests 200 --masks 500
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
from pathlib import Path

import numpy as np
from PIL import Image

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gradio_client import Client, handle_file  # noqa: E402

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
    options = [*which, "--device", "cpu", "--port", str(port), "--disk-budget", str(args.disk_budget)]
    command = [sys.executable, "-m", "cocoa_clip.web.app", *options]
    if args.glibc_defaults:  # the comparison: the same app with the allocator left alone
        command = [sys.executable, "-c", "from cocoa_clip import webapp, webhost; webhost.tame_malloc = lambda: False; "
                   f"webhost.trim_memory = lambda: None; webapp.main({options!r})"]
    workspace = tmp / "server-tmp"
    workspace.mkdir()
    log = open(tmp / "server.log", "w")  # noqa: SIM115 -- the server's, closed when the folder goes
    server = subprocess.Popen(command, cwd=REPO, env={**os.environ, "TMPDIR": str(workspace)},
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="e.g. shapes-demo (default: a tiny random CLIP)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4, help="clients at once in the concurrent half")
    parser.add_argument("--masks", type=int, default=128)
    parser.add_argument("--sizes", type=int, nargs=2, default=(64, 512), metavar=("LOW", "HIGH"),
                        help="picture sides in px")
    parser.add_argument("--disk-budget", type=float, default=64, metavar="MB")
    parser.add_argument("--warm-up", type=int, default=100, help="requests before the memory baseline")
    parser.add_argument("--every", type=int, default=100, help="print memory and disk every so many requests")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="for comparison: leave glibc's allocator as it is (no mallopt, no malloc_trim)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cocoa-soak-") as name:
        tmp = Path(name)
        server, url = start_server(args, tmp)
        pictures = tmp / "pictures"
        pictures.mkdir()
        latencies: list[float] = []
        failures: list[str] = []
        memory: list[tuple[int, float]] = []
        disk: list[float] = []
        lock = threading.Lock()
        done = 0
        started = time.monotonic()
        print(f"{'requests':>8} {'seconds':>8} {'RSS MB':>8} {'disk MB':>8} {'files':>6}")

        def ask(client: Client, index: int) -> None:
            nonlocal done
            path = picture(pictures / f"p{index}.png", index, *args.sizes)
            corpus, foil = QUESTIONS[index % len(QUESTIONS)]
            begin = time.perf_counter()
            try:
                client.predict(image=handle_file(str(path)), corpus=corpus, foil=foil, masks=args.masks, seed=index,
                               api_name="/explain")
                failure = None
            except Exception as error:  # counted and shown, the soak goes on
                failure = f"{type(error).__name__}: {error}"
            path.unlink()
            with lock:
                latencies.append(time.perf_counter() - begin)
                if failure:
                    failures.append(failure)
                done += 1
                if done % args.every == 0 or done == args.warm_up:
                    rss = resident_mb(server.pid)
                    memory.append((done, rss))
                    used, files = disk_mb(tmp / "server-tmp")
                    disk.append(used)
                    print(f"{done:>8} {time.monotonic() - started:>8.0f} {rss:>8.0f} {used:>8.1f} {files:>6}",
                          flush=True)

        half = args.requests // 2
        one = Client(url, verbose=False, analytics_enabled=False)
        for index in range(half):
            ask(one, index)
        def visitor(number: int) -> None:  # one client each, one request at a time (the app's rule)
            client = Client(url, verbose=False, analytics_enabled=False)
            for index in range(half + number, args.requests, args.clients):
                ask(client, index)

        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(visitor, range(args.clients)))
        end_disk, _ = disk_mb(tmp / "server-tmp")

        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
        left = list((tmp / "server-tmp").glob("cocoa-clip-app-*"))
        errors = [line for line in (tmp / "server.log").read_text().splitlines() if "Error" in line]

    seconds = np.array(latencies)
    base = next(rss for count, rss in memory if count >= args.warm_up)
    final = memory[-1][1]
    print(f"\n{len(latencies)} requests ({half} one at a time, {args.requests - half} from {args.clients} clients), "
          f"{args.masks} masks each, pictures {args.sizes[0]}-{args.sizes[1]} px, "
          f"model {args.model or 'tiny random CLIP'}{', glibc allocator defaults' if args.glibc_defaults else ''}")
    print(f"latency p50 {np.percentile(seconds, 50):.2f} s, p95 {np.percentile(seconds, 95):.2f} s; "
          f"failures {len(failures)}")
    for failure in sorted(set(failures))[:5]:
        print(f"  {failure}")
    for line in errors[-5:]:
        print(f"  server: {line}")
    print(f"resident memory after {args.warm_up} requests {base:.0f} MB, at the end {final:.0f} MB "
          f"({(final - base) / base:+.1%}); peak {max(rss for _, rss in memory):.0f} MB")
    print(f"disk at the end {end_disk:.1f} MB, at most {max(disk):.1f} MB when sampled "
          f"(budget {args.disk_budget:g} MB)")
    print(f"SIGTERM: exit code {code}, workspace folders left: {len(left)}")


if __name__ == "__main__":
    main()
