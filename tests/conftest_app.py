"""Helpers for the web app tests (test_app.py, test_browser.py): the app module, a launched demo on a
free localhost port, and test pictures. Imported by those modules; pytest fixtures come from conftest.py."""
from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cocoa_clip.web import app  # noqa: E402

MASKS = 256  # RISE masks in app tests: a tiny model answers in a fraction of a second


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def served(model, **build) -> Iterator[tuple]:
    """The app around `model`, launched on localhost: yields (demo, url)."""
    demo = app.build_demo(model, **build)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **app.launch_options())
    try:
        yield demo, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def write_photo(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A non-square picture with some structure (blocks of colour over noise), saved as PNG."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 3] = rng.integers(0, 256, 3, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path
