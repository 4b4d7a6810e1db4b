"""Drawing heatmaps: overlays on the photo, colour bars, and exports.

Two colour scales:
- "minmax": (h - min) / (max - min), how the paper shows RISE maps (only the ranking of pixels
  is meaningful for RISE, whose maps carry an arbitrary offset).
- "signed": centred on zero, [-max|h|, +max|h|], for gradient maps whose sign means
  "towards the corpus" (red) or "towards the foil" (blue).
NaN pixels (outside the crop, with crop framing) are left uncoloured.
"""
from __future__ import annotations

import os

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from .errors import SettingsError

SCALES = ("minmax", "signed")
DEFAULT_CMAPS = {"minmax": "jet", "signed": "bwr"}


def limits(heatmap: np.ndarray, scale: str) -> tuple[float, float]:
    """The values mapped to the two ends of the colour map."""
    if scale not in SCALES:
        raise SettingsError(f"Unknown colour scale {scale!r}; choose minmax or signed.")
    finite = heatmap[np.isfinite(heatmap)]
    if finite.size == 0:
        return -1.0, 1.0
    if scale == "signed":
        top = float(np.abs(finite).max()) or 1.0
        return -top, top
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else (low - 1.0, high + 1.0)


def colorize(heatmap: np.ndarray, scale: str = "minmax", cmap: str | None = None) -> np.ndarray:
    """(H, W) values -> (H, W, 4) float RGBA in [0, 1]; NaN pixels get alpha 0."""
    low, high = limits(heatmap, scale)
    colours = _cmap(cmap or DEFAULT_CMAPS[scale])(Normalize(low, high, clip=True)(np.nan_to_num(heatmap)))
    colours[..., 3] = np.isfinite(heatmap)
    return colours


def overlay(image: Image.Image, heatmap: np.ndarray, *, scale: str = "minmax", cmap: str | None = None,
            opacity: float = 0.5) -> Image.Image:
    """Blend a heatmap over the photo it explains: an RGB image of the photo's size.

    heatmap: (H, W) with (H, W) the photo's (height, width). opacity: weight of the colours, 0..1.
    """
    if heatmap.shape != (image.height, image.width):
        raise SettingsError(f"The heatmap is {heatmap.shape[1]}x{heatmap.shape[0]} "
                            f"but the image is {image.width}x{image.height}.")
    if not 0.0 <= opacity <= 1.0:
        raise SettingsError(f"Opacity must lie between 0 and 1; got {opacity!r}.")
    colours = colorize(heatmap, scale, cmap)
    alpha = opacity * colours[..., 3:]
    photo = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    blended = (1.0 - alpha) * photo + alpha * colours[..., :3]
    return Image.fromarray(np.round(blended * 255.0).astype(np.uint8))


def colorbar_figure(heatmap: np.ndarray, *, scale: str = "minmax", cmap: str | None = None,
                    title: str = "", width_px: int = 640) -> Image.Image:
    """The raw heatmap in false colour with a labelled colour bar, as an RGB image."""
    height, width = heatmap.shape
    dpi = 100
    figure = Figure(figsize=(width_px / dpi, width_px / dpi * height / width * 0.85 + 0.6), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    low, high = limits(heatmap, scale)
    shown = axes.imshow(heatmap, cmap=_cmap(cmap or DEFAULT_CMAPS[scale]), vmin=low, vmax=high)
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=10)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.02,
                    label="attribution" if scale == "signed" else "attribution (min to max)")
    figure.tight_layout()
    figure.canvas.draw()
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())


def save_heatmap(path: str | os.PathLike, heatmap: np.ndarray) -> None:
    """Write the raw heatmap as a float32 (H, W) .npy file."""
    np.save(path, np.asarray(heatmap, dtype=np.float32))


def _cmap(name: str):
    try:
        return colormaps[name]
    except KeyError as error:
        raise SettingsError(f"Unknown colour map {name!r}; try jet, viridis, inferno, bwr or RdBu_r.") from error
