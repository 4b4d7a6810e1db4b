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
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from ..errors import SettingsError, writing
from . import fonts

SCALES = ("minmax", "signed")
DEFAULT_CMAPS = {"minmax": "jet", "signed": "bwr"}
# A map whose range is within this of nothing (in score units), or within float32's rounding of its
# own size, is numerical noise: a uniform picture gives about 1e-16 that min-max would stretch to full contrast.
FLAT_ABSOLUTE = 1e-8
FLAT_RELATIVE = 1e-6
# Caption colours (tab10, RGB in [0, 1]), each with the colour words it would clash with in a caption.
PALETTE: tuple[tuple[frozenset[str], tuple[float, float, float]], ...] = tuple(
    (frozenset(words.split()), tuple(float(v) for v in colour)) for words, colour in zip(
        ("blue navy", "orange amber", "green lime", "red crimson scarlet", "purple violet lilac lavender",
         "brown tan beige chocolate", "pink magenta rose", "grey gray silver", "olive yellow gold golden khaki",
         "cyan turquoise teal aqua"), colormaps["tab10"].colors, strict=True))


def limits(heatmap: np.ndarray, scale: str) -> tuple[float, float]:
    """The values mapped to the two ends of the colour map."""
    if scale not in SCALES:
        raise SettingsError(f"Unknown colour scale {scale!r}; choose minmax or signed.")
    finite = heatmap[np.isfinite(heatmap)]
    if finite.size == 0:
        return -1.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    if is_flat(heatmap):  # one colour: the middle of the scale (zero, on the signed scale)
        middle = 0.0 if scale == "signed" else (low + high) / 2
        return middle - 1.0, middle + 1.0
    if scale == "signed":
        top = max(abs(low), abs(high))
        return -top, top
    return low, high


def is_flat(heatmap: np.ndarray) -> bool:
    """Whether the map's range (over finite pixels) is below numerical noise: no region changes the score."""
    finite = heatmap[np.isfinite(heatmap)].astype(np.float64)
    if finite.size == 0:
        return True
    spread = finite.max() - finite.min()
    return bool(spread <= max(FLAT_ABSOLUTE, FLAT_RELATIVE * np.abs(finite).max()))


def colorize(heatmap: np.ndarray, scale: str = "minmax", cmap: str | None = None) -> np.ndarray:
    """(H, W) values -> (H, W, 4) float RGBA in [0, 1]; NaN pixels get alpha 0."""
    low, high = limits(heatmap, scale)
    colours = _cmap(cmap or DEFAULT_CMAPS[scale])(Normalize(low, high, clip=True)(np.nan_to_num(heatmap)))
    colours[..., 3] = np.isfinite(heatmap)
    return colours


def check_style(opacity: float, cmap: str | None = None) -> None:
    """Refuse an opacity outside 0..1 or an unknown colour map (before any work is done)."""
    if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0.0 <= opacity <= 1.0:
        raise SettingsError(f"Opacity must lie between 0 and 1; got {opacity!r}.")
    if cmap is not None:
        _cmap(cmap)


def overlay(image: Image.Image, heatmap: np.ndarray, *, scale: str = "minmax", cmap: str | None = None,
            opacity: float = 0.5) -> Image.Image:
    """Blend a heatmap over the photo it explains: an RGB image of the photo's size.

    heatmap: (H, W) with (H, W) the photo's (height, width). opacity: weight of the colours, 0..1.
    """
    if heatmap.shape != (image.height, image.width):
        raise SettingsError(f"The heatmap is {heatmap.shape[1]}x{heatmap.shape[0]} "
                            f"but the image is {image.width}x{image.height}.")
    check_style(opacity, cmap)
    colours = colorize(heatmap, scale, cmap)
    alpha = opacity * colours[..., 3:]
    photo = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    blended = (1.0 - alpha) * photo + alpha * colours[..., :3]
    return Image.fromarray(np.round(blended * 255.0).astype(np.uint8))


def label_colours(names: Sequence[str]) -> list[tuple[float, float, float]]:
    """One colour per caption, none of them a colour that any caption names ("orange cross" is never
    drawn orange, nor is "yellow square"), while the palette lasts; then the clashing ones."""
    words = {word.strip(".,;:!?'\"()") for name in names for word in name.lower().replace("-", " ").split()}
    free = [colour for clashes, colour in PALETTE if not clashes & words]
    return (free + [colour for clashes, colour in PALETTE if clashes & words])[:len(names)]


def label_overlay(image: Image.Image, labels: np.ndarray, strength: np.ndarray, names: Sequence[str] | None = None,
                  *, opacity: float = 0.6, undecided: str | None = None) -> Image.Image:
    """Colour each pixel by its label (index into `names`' colours, see label_colours; negative labels
    leave the photo alone), fading where `strength` is low (it is scaled to its maximum), outlined,
    with a legend strip of `names` below if given (and a last line `undecided` for the uncoloured pixels).

    labels, strength: (H, W) at the photo's size. Returns RGB: the photo's size, plus the legend below
    (and white on the right if a name is wider than the photo).
    """
    if labels.shape != (image.height, image.width) or strength.shape != labels.shape:
        raise SettingsError(f"The label map is {labels.shape[1]}x{labels.shape[0]} "
                            f"but the image is {image.width}x{image.height}.")
    check_style(opacity)
    count = int(labels.max(initial=-1)) + 1
    palette = np.array(label_colours(names) if names is not None else [c for _, c in PALETTE][:max(count, 1)],
                       dtype=np.float32)
    top = float(np.nanmax(strength)) if np.isfinite(strength).any() else 0.0
    weight = np.clip(np.nan_to_num(strength) / top, 0.0, 1.0) if top > 0 else np.zeros_like(strength)
    alpha = opacity * (0.25 + 0.75 * weight) * (labels >= 0)
    alpha[_borders(labels, max(1, min(labels.shape) // 150))] = 1.0  # outlines make the regions legible
    alpha = alpha[..., None]
    photo = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    blended = (1.0 - alpha) * photo + alpha * palette[np.maximum(labels, 0)]
    coloured = Image.fromarray(np.round(blended * 255.0).astype(np.uint8))
    return coloured if names is None else _with_legend(coloured, names, [tuple(c) for c in palette], undecided)


def _borders(labels: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: the `width` pixels before each change of label along rows and columns (labelled pixels only)."""
    border = np.zeros(labels.shape, dtype=bool)
    change = labels[1:, :] != labels[:-1, :]  # between row i and row i + 1
    for offset in range(width):
        border[: labels.shape[0] - 1 - offset, :] |= change[offset:, :]
    change = labels[:, 1:] != labels[:, :-1]
    for offset in range(width):
        border[:, : labels.shape[1] - 1 - offset] |= change[:, offset:]
    return border & (labels >= 0)


def _with_legend(image: Image.Image, names: Sequence[str], colours: Sequence[tuple[float, ...]],
                 undecided: str | None) -> Image.Image:
    """The image with one line per name below it: a swatch of the name's colour, then the name, and a last
    line for `undecided` with an empty swatch (widened with white on the right where a name is wider than
    the picture)."""
    size = max(12, min(28, image.width // 30))
    line = int(size * 1.5)
    lines = [fonts.drawable(name) for name in [*names, *([undecided] if undecided else [])]]
    faces = [fonts.legend_font(name, size) for name in lines]  # any script: the first font with all its glyphs
    width = max(image.width, 2 * size + int(max(f.getlength(name) for f, name in zip(faces, lines, strict=True)))
                + size)  # names in full
    legend = Image.new("RGB", (width, line * len(lines) + size // 2), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for index, name in enumerate(lines):
        y = size // 4 + index * line
        swatch = (size // 2, y + size // 8, size // 2 + size, y + size + size // 8)
        if index < len(names):
            draw.rectangle(swatch, fill=tuple(round(255 * v) for v in colours[index]))
        else:
            draw.rectangle(swatch, outline=(110, 110, 110), width=max(1, size // 10))
        draw.text((2 * size, y), name, fill=(0, 0, 0), font=faces[index])
    combined = Image.new("RGB", (width, image.height + legend.height), (255, 255, 255))
    combined.paste(image, (0, 0))
    combined.paste(legend, (0, image.height))
    return combined


def colorbar_figure(heatmap: np.ndarray, *, scale: str = "minmax", cmap: str | None = None,
                    title: str = "", width_px: int = 640) -> Image.Image:
    """The raw heatmap in false colour with a labelled colour bar, as an RGB image `width_px` wide.

    Its height follows the map's aspect ratio, within 1:4 and 4:1 (imshow letterboxes thinner maps).
    """
    height, width = heatmap.shape
    dpi = 100
    aspect = min(max(height / width, 0.25), 4.0)
    figure = Figure(figsize=(width_px / dpi, width_px / dpi * aspect * 0.85 + 0.6), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    low, high = limits(heatmap, scale)
    shown = axes.imshow(heatmap, cmap=_cmap(cmap or DEFAULT_CMAPS[scale]), vmin=low, vmax=high)
    axes.set_axis_off()
    if title:
        axes.set_title(fonts.drawable(title), fontsize=10, fontfamily=fonts.families())
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.02,
                    label="attribution" if scale == "signed" else "attribution (min to max)")
    figure.tight_layout()
    figure.canvas.draw()
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())


def save_heatmap(path: str | os.PathLike, heatmap: np.ndarray) -> None:
    """Write the raw heatmap as a float32 (H, W) .npy file."""
    save_npy(path, np.asarray(heatmap, dtype=np.float32))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as .npy at exactly `path` (numpy.save given a name adds .npy to it)."""
    with writing(path), open(path, "wb") as stream:
        np.save(stream, array)


def _cmap(name: str):
    try:
        return colormaps[name]
    except KeyError as error:
        raise SettingsError(f"Unknown colour map {name!r}; try jet, viridis, inferno, bwr or RdBu_r.") from error
