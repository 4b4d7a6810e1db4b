"""The cocoa-clip web app: "what in this image looks like X rather than Y?", in a browser and over HTTP.

    python app.py                          # CLIP ViT-B/32 (app.py, the Space's entry point, runs main())
    python app.py --weights tiny.pt --port 7861
    python app.py --model shapes-demo      # the small bundled model, offline

This module lays out widgets and calls `cocoa_clip`; it holds no maths, and what callers send is
checked in `webinputs`. The main event is also an
HTTP API (`api_name="explain"`), with parameters named after the inputs:

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    overlay, reverse, colorbar, score, *rest = client.predict(
        image=handle_file("dog.jpg"), corpus="dog", foil="cat", api_name="/explain")

The score comes as text, as the page shows it (e.g. "+0.0239").
"""
from __future__ import annotations

# ZeroGPU (Hugging Face Spaces) patches torch when `spaces` is imported, so it comes first.
try:
    import spaces  # noqa: F401
except ImportError:
    pass

import argparse
import inspect
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import gradio as gr
from starlette.exceptions import HTTPException

import cocoa_clip as cc
from cocoa_clip.errors import AUDIENCE
from cocoa_clip.models import BUNDLED, DEFAULT_MODEL
from cocoa_clip.models.trust import TRUST_HELP
from cocoa_clip.models.weights import report_sources
from cocoa_clip.web import hosting
from cocoa_clip.web import inputs as valid
from cocoa_clip.web.handlers import (
    ANSWER_IDLE_MINUTES,
    ANSWER_MEMORY_MB,
    DISK_BUDGET_MB,
    MAX_MASKS,
    MAX_SESSIONS,
    MIN_DISK_BUDGET_MB,
    TIME_BUDGET_S,
    CocoaApp,
)
from cocoa_clip.web.inputs import MAX_UPLOAD
from cocoa_clip.web.page import CSS, FALLBACK_MODEL, build_demo
from cocoa_clip.web.shelf import ModelShelf

__all__ = ["CocoaApp", "build_demo", "launch_options", "load_model", "main", "parse_args", "stop_serving"]


def launch_options(sessions: int = MAX_SESSIONS) -> dict:
    """Safe launch settings (docs/security.md says what each guards against); `run_history` only where this
    Gradio accepts it.

    sessions: how many visitors' sessions Gradio keeps in memory (its default, 10,000, holds a copy of the
    page's settings for each, well over 100 KB apiece: about a gigabyte and more for visitors long gone)."""
    options = dict(ssr_mode=False, enable_monitoring=False, share=False, show_error=False,
                   max_file_size=MAX_UPLOAD, run_history=False, theme=gr.themes.Soft(), css=CSS,
                   state_session_capacity=sessions,
                   app_kwargs={"exception_handlers": {HTTPException: valid.gradio_refusal}})
    accepted = inspect.signature(gr.Blocks.launch).parameters
    return {key: value for key, value in options.items() if key in accepted}


# -------------------------------------------------------------------- start-up


def load_model(name: str | None = None, weights: str | None = None, device: str | None = None,
               say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
               trust_checkpoint: bool = False) -> tuple[cc.ClipModel, str]:
    """The model to serve, and a notice for the banner when it is not the one asked for.

    A model the user named (--model, --weights) must load. With nothing named, ViT-B/32 is tried and,
    when its weights cannot be had (offline), the bundled shapes-demo model runs instead, if present.
    trust_checkpoint: --trust-checkpoint, which lets a weights file run code (cc.load's, unsafe).
    """
    if name is not None or weights is not None:
        return cc.load(name or DEFAULT_MODEL, weights=weights, device=device, trust_checkpoint=trust_checkpoint), ""
    try:
        return cc.load(DEFAULT_MODEL, device=device), ""
    except cc.ModelLoadError as error:
        if not BUNDLED[FALLBACK_MODEL].is_file():
            raise
        say(f"error: {error}")
        say(f"Serving the bundled {FALLBACK_MODEL} model instead.")
        # The reason names server paths: it goes to the operator's console (above), not to the page.
        tried = f" (tried: {', '.join(error.tried)})" if error.tried else ""
        notice = (f"⚠ The {DEFAULT_MODEL} weights could not be had on this server{tried}; its console says how to "
                  f"add them. Meanwhile it runs the small bundled {FALLBACK_MODEL} model, which knows coloured "
                  "shapes only.")
        return cc.load(FALLBACK_MODEL, device=device), notice


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    # Each help states its default itself: argparse's "(default: None)" would contradict the sentence before it.
    parser = argparse.ArgumentParser(prog=prog, description="Serve the cocoa-clip web app (and its HTTP API).")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="NAME",
                       help=f"an OpenAI CLIP name, open_clip:ARCH[:TAG] or hf:REPO_OR_DIR (default {DEFAULT_MODEL}, "
                            f"else {FALLBACK_MODEL} if it is offline)")
    which.add_argument("--models", metavar="A,B,C", help="offer these models in a dropdown (the first loads at start, "
                       "the others on first use, at most two in memory)")
    parser.add_argument("--weights", metavar="PATH", help="local checkpoint: OpenAI CLIP .pt, or one for --model "
                        "open_clip:ARCH")
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    host, port = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), int(os.environ.get("GRADIO_SERVER_PORT", 7860))
    parser.add_argument("--host", default=host,
                        help="address to listen on; 0.0.0.0 serves other machines (default: GRADIO_SERVER_NAME if "
                             "set, else 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=port,
                        help="port to listen on (default: GRADIO_SERVER_PORT if set, else 7860)")
    limits = parser.add_argument_group("limits for a public deployment")
    limits.add_argument("--max-masks", type=_positive(int), metavar="N",
                        help=f"most RISE masks a visitor may ask for (default {MAX_MASKS['cpu']:,} on a CPU, "
                             f"{MAX_MASKS['cuda']:,} on a GPU)")
    limits.add_argument("--job-seconds", type=_positive(float), metavar="S",
                        help="time budget of a RISE run; it then answers from the masks done "
                             f"(default {TIME_BUDGET_S['cpu']:.0f} on a CPU, {TIME_BUDGET_S['cuda']:.0f} on a GPU)")
    limits.add_argument("--disk-budget", type=_at_least(MIN_DISK_BUDGET_MB, "MB: one answer at the largest picture, "
                                                      "with its upload, writes about that much"),
                        metavar="MB", default=DISK_BUDGET_MB,
                        help="most disk used for visitors (uploads, Gradio's cache, downloads); oldest files go first, "
                             f"never those of the last minute (default {DISK_BUDGET_MB:,}; at least "
                             f"{MIN_DISK_BUDGET_MB})")
    limits.add_argument("--answer-memory", type=_positive(float), metavar="MB", default=ANSWER_MEMORY_MB,
                        help="most memory for visitors' latest answers (what 'Check this explanation' reads); "
                             f"the answers idle longest go first (default {ANSWER_MEMORY_MB})")
    limits.add_argument("--answer-idle-minutes", type=_positive(float), metavar="M", default=ANSWER_IDLE_MINUTES,
                        help="a visitor's answer goes after this long unread (the visitor has most likely left; "
                             f"default {ANSWER_IDLE_MINUTES:g})")
    limits.add_argument("--max-sessions", type=_positive(int), metavar="N", default=MAX_SESSIONS,
                        help="visitors' sessions kept in memory (Gradio's state of each page, and each visitor's "
                             f"latest answer); the visitors idle longest go first (default {MAX_SESSIONS:,})")
    limits.add_argument("--trust-proxy", action="store_true",
                        help="behind one reverse proxy that appends the client's address to X-Forwarded-For (a "
                             "Hugging Face Space, nginx): count a visitor by that address as well as by session, "
                             "so that one address cannot fill the queue from many sessions. The right-most entry "
                             "is used, the one the proxy in front of this server added; entries to its left come "
                             "from the client and can be forged (behind two proxies the right-most is the outer "
                             "one's, and all visitors would count as one). Without this flag the header is never "
                             "read: anyone can send it")
    args = parser.parse_args(argv)
    if args.models and args.weights:
        parser.error("--weights goes with --model; --models takes names only")
    return args


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def _at_least(least: float, why: str) -> Callable[[str], float]:
    positive = _positive(float)

    def parse(text: str) -> float:
        value = positive(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"expected at least {least:g} {why}; got {text!r}")
        return value
    return parse


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Serve the app: `python app.py [options]` or `cocoa-clip serve [options]` (prog names the command in --help)."""
    args = parse_args(argv, prog)
    hosting.no_core_files()
    report_sources()  # one console line per weights source tried
    audience = AUDIENCE.set("cli")  # the console's advice names this command's flags, not Python calls
    try:
        demo = _demo(args)
    except cc.CocoaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        AUDIENCE.reset(audience)
    # SIGTERM: running jobs stop and answer in a sentence, then atexit removes visitors' files
    hosting.remove_on_signals(lambda: stop_serving(demo))
    globals()["demo"] = demo
    # Quiet: Gradio's own lines end with a hint to set share=True, which this app turns off on purpose.
    demo.launch(server_name=args.host, server_port=args.port, quiet=True, prevent_thread_lock=True,
                **launch_options(args.max_sessions))
    print(f"* Running on {demo.local_url} (Ctrl-C stops it)", flush=True)
    demo.block_thread()
    return 0


def _demo(args: argparse.Namespace) -> gr.Blocks:
    """The app for the command line's settings. Models are loaded here, and held by the app (or its shelf)
    alone once this returns: a reference kept here would keep a dropped model in memory."""
    names = [name.strip() for name in (args.models or "").split(",") if name.strip()]
    shelf = None
    if names:
        shelf = ModelShelf(names, lambda name: cc.load(name, device=args.device,
                                                       trust_checkpoint=args.trust_checkpoint))
        shelf.check()  # every name, at start, in one sentence
        model, notice = shelf.get(shelf.names[0]), ""
    else:
        model, notice = load_model(args.model, args.weights, args.device, trust_checkpoint=args.trust_checkpoint)
    return build_demo(model, notice=notice, max_masks=args.max_masks, job_seconds=args.job_seconds,
                      disk_budget_mb=args.disk_budget, answer_memory_mb=args.answer_memory,
                      answer_idle_minutes=args.answer_idle_minutes, max_sessions=args.max_sessions,
                      trust_proxy=args.trust_proxy, shelf=shelf)


def stop_serving(demo: gr.Blocks, job_seconds: float = 10.0, answer_seconds: float = 5.0) -> bool:
    """Stop the app's jobs (each within a batch) and give Gradio a moment to send their clients the
    sentence; True when no job is left running (see hosting.remove_on_signals)."""
    stopped = demo.cocoa_app.work.stop(timeout=job_seconds)
    deadline = time.monotonic() + answer_seconds
    while hosting.queued_jobs(demo, "model") and time.monotonic() < deadline:
        time.sleep(0.05)
    return stopped


def __getattr__(name: str) -> Any:
    """`webapp.demo`, built on first use with the default model (for `gradio app.py` and Spaces tooling)."""
    if name == "demo":
        model, notice = load_model()
        globals()["demo"] = build_demo(model, notice=notice)
        return globals()["demo"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
