"""Fonts for captions in any script: the colour bar's title, the curves' title and the compare legend.

Captions may be in any script ("赤い十字"), but matplotlib's own DejaVu Sans covers few of them: the rest came out
as empty boxes, with a `Glyph ... missing` warning each. Debian's Noto fonts (`fonts-noto-core`,
`fonts-noto-cjk`; a Space installs them from packages.txt) cover nearly every script. Here are the installed ones
in order of preference: matplotlib falls back from one to the next glyph by glyph, and the legend (drawn with
Pillow, which has no fallback) takes the first font that has every glyph of a line. A character that no installed
font has is drawn as a plain box on purpose, so that no warning is raised.
"""
from __future__ import annotations

import contextlib
import functools

from matplotlib import font_manager
from matplotlib.ft2font import FT2Font
from PIL import ImageFont

# DejaVu Sans first: it ships with matplotlib (always present) and keeps Latin captions looking as they did.
FAMILIES = ("DejaVu Sans", "Noto Sans", "Noto Sans CJK JP", "Noto Sans Arabic", "Noto Sans Hebrew",
            "Noto Sans Devanagari", "Noto Sans Bengali", "Noto Sans Thai", "Noto Sans Tamil", "Noto Sans Armenian",
            "Noto Sans Georgian", "Noto Sans Ethiopic", "Noto Sans Symbols", "Noto Sans Symbols2")
MISSING = "\u25a1"  # WHITE SQUARE, in DejaVu Sans: what a character no installed font has is drawn as


@functools.cache
def installed() -> tuple[tuple[str, str, frozenset[int]], ...]:
    """(family, font file, code points it draws) for each of FAMILIES that is installed, in FAMILIES' order."""
    _add_fonts_newer_than_the_cache()
    paths = [(family, _path_of(family)) for family in FAMILIES]
    return tuple((family, path, frozenset(FT2Font(path).get_charmap())) for family, path in paths if path)


def _add_fonts_newer_than_the_cache() -> None:
    """Fonts installed after matplotlib cached its font list (the Noto packages added to a machine that had drawn
    before) are not in that list: add them, so that they are found without deleting matplotlib's cache."""
    known = {font.fname for font in font_manager.fontManager.ttflist}
    for path in font_manager.findSystemFonts():
        if path not in known:
            with contextlib.suppress(Exception):  # a file FreeType cannot read is one font less, not an error
                font_manager.fontManager.addfont(path)


def _path_of(family: str) -> str | None:
    """The regular face of `family`, or None when it is not installed (asked quietly: no findfont warning)."""
    faces = [font for font in font_manager.fontManager.ttflist if font.name == family]
    regular = [font for font in faces if font.style == "normal" and font.weight in (400, "normal", "regular")]
    return (regular or faces)[0].fname if faces else None


def families() -> list[str]:
    """The installed caption families, for matplotlib's `fontfamily` (it falls back glyph by glyph)."""
    return [family for family, _, _ in installed()]


def drawable(text: str) -> str:
    """The text with each character that no installed font draws replaced by a box (white space kept)."""
    return "".join(c if c.isspace() or any(ord(c) in points for _, _, points in installed()) else MISSING
                   for c in text)


def legend_font(text: str, size: int) -> ImageFont.FreeTypeFont:
    """A Pillow font at `size` px for one line of `drawable` text: the first installed font with all its glyphs."""
    needed = {ord(c) for c in text if not c.isspace()}
    path = next((path for _, path, points in installed() if needed <= points), installed()[0][1])
    return ImageFont.truetype(path, size)
