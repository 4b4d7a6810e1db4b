"""The Hugging Face Space's entry point: the cocoa-clip web app (`cocoa_clip/web/`).

    python app.py                          # CLIP ViT-B/32
    python app.py --model shapes-demo      # the small bundled model, offline

The same app is `cocoa-clip serve` once the package is installed (`pip install .[app]`).
"""
# ZeroGPU (Hugging Face Spaces) patches torch when `spaces` is imported, so it comes before torch.
try:
    import spaces  # noqa: F401
except ImportError:
    pass

import sys
from typing import Any

from cocoa_clip.web import app as webapp


def __getattr__(name: str) -> Any:
    """`app.demo` (for `gradio app.py` and Spaces tooling): the web app, built on first use."""
    if name == "demo":
        return webapp.demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(webapp.main())
