"""Procedurally generated scenes of coloured shapes: a toy world with known answers.

Used to train the small demo CLIP (``scripts/train_shapes_demo.py``) and by
localisation benchmarks: every scene knows which pixels belong to which object,
so "does the explanation point at the red circle?" can be checked exactly.

Everything here is pure and seeded: the same ``np.random.Generator`` state gives
the same scene, bit for bit.  Only numpy and Pillow are needed.

Units: images are ``size x size`` RGB pixels; boxes are pixel coordinates
``(x0, y0, x1, y1)`` with ``x1``/``y1`` exclusive; masks are ``(n_objects, H, W)``
boolean arrays indexed ``[object, row (y), column (x)]``.

Example
-------
>>> import numpy as np
>>> from cocoa_clip.models.shapes import render_scene, two_object_scene
>>> scene = render_scene(np.random.default_rng(0), size=64)
>>> scene.image.size, scene.masks.shape[1:]
((64, 64), (64, 64))
>>> a, b = two_object_scene(np.random.default_rng(1)).objects
>>> a.color != b.color and a.shape != b.shape
True
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "SHAPES",
    "CLASS_NAMES",
    "SceneObject",
    "Scene",
    "render_scene",
    "two_object_scene",
]

#: Object colours (saturated sRGB); backgrounds are kept desaturated so that
#: an object's colour is never confused with the background's.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (35, 70, 230),
    "yellow": (240, 220, 30),
    "purple": (150, 40, 200),
    "orange": (250, 140, 20),
}

#: Object shapes.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

#: Every "colour shape" name, e.g. ``"red circle"``; colour-major order.
CLASS_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)

_SUPERSAMPLE = 4  # shapes are drawn at 4x resolution, then box-filtered (anti-aliasing)


@dataclass(frozen=True)
class SceneObject:
    """One object in a scene.

    ``box`` is the object's bounding square ``(x0, y0, x1, y1)`` in pixels
    (``x1``, ``y1`` exclusive); ``rotation`` is in degrees (counter-clockwise).
    """

    color: str
    shape: str
    box: tuple[int, int, int, int]
    rotation: float = 0.0

    @property
    def name(self) -> str:
        """E.g. ``"red circle"``."""
        return f"{self.color} {self.shape}"

    @property
    def class_index(self) -> int:
        """Index of :attr:`name` in :data:`CLASS_NAMES`."""
        return CLASS_NAMES.index(self.name)


@dataclass
class Scene:
    """A rendered scene.

    ``image``: RGB ``PIL.Image`` of ``size x size`` pixels.
    ``objects``: the objects in drawing order (later ones on top).
    ``masks``: bool array of shape ``(n_objects, H, W)``; ``masks[i]`` marks the
    pixels where object ``i`` is visible (pixels covered by an object drawn later
    belong to that later object only), so masks never overlap.
    ``background``: the kind of background (``"noise"``, ``"gradient"``, ``"blobs"``,
    ``"stripes"``).
    """

    image: Image.Image
    objects: list[SceneObject]
    masks: np.ndarray
    background: str = field(default="noise")

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    def label_map(self) -> np.ndarray:
        """int8 array ``(H, W)``: index of the visible object at each pixel, -1 for background."""
        out = np.full(self.masks.shape[1:], -1, dtype=np.int8)
        for i, m in enumerate(self.masks):
            out[m] = i
        return out


# --------------------------------------------------------------------------- backgrounds


def _random_muted_color(rng: np.random.Generator) -> np.ndarray:
    """A desaturated RGB colour in [0, 255], shape (3,)."""
    h = rng.random()
    s = rng.uniform(0.0, 0.35)
    v = rng.uniform(0.15, 0.8)
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], shape (size, size): bilinear upsampling of a cells x cells grid."""
    grid = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray((grid * 255).astype(np.uint8), mode="L").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A float32 (size, size, 3) background in [0, 255] and its kind."""
    kind = ("noise", "gradient", "blobs", "stripes")[rng.integers(4)]
    c0, c1 = _random_muted_color(rng), _random_muted_color(rng)
    if kind == "noise":
        t = np.zeros((size, size), np.float32)
    elif kind == "gradient":
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
        t = np.cos(ang) * xx + np.sin(ang) * yy
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind == "blobs":
        t = _smooth_noise(rng, size, int(rng.integers(3, 7)))
    else:  # stripes
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(0.1, 0.35) * size
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(ang) * xx + np.sin(ang) * yy) / period)
        c1 = c0 + (c1 - c0) * 0.5  # keep stripes low-contrast
    bg = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    bg = bg + rng.normal(0.0, rng.uniform(3.0, 14.0), size=(size, size, 3))
    return bg.astype(np.float32), kind


# --------------------------------------------------------------------------- shapes


def _polygon(shape: str, cx: float, cy: float, r: float, rot_deg: float) -> list[tuple[float, float]]:
    """Vertices of a shape centred at (cx, cy) with "radius" r (half the box side)."""
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(x * 0.82, y * 0.82) for x, y in pts]
    elif shape == "triangle":
        pts = [(np.cos(a), np.sin(a)) for a in np.deg2rad([-90, 30, 150])]
        pts = [(x, y + 0.18) for x, y in pts]  # centre the triangle's bounding box
    elif shape == "star":
        pts = []
        for k in range(10):
            a = np.deg2rad(-90 + 36 * k)
            rr = 1.0 if k % 2 == 0 else 0.45
            pts.append((rr * np.cos(a), rr * np.sin(a) + 0.08))
    elif shape == "cross":
        w, L = 0.34, 0.95
        pts = [(-w, -L), (w, -L), (w, -w), (L, -w), (L, w), (w, w),
               (w, L), (-w, L), (-w, w), (-L, w), (-L, -w), (-w, -w)]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    th = np.deg2rad(rot_deg)
    c, s = np.cos(th), np.sin(th)
    return [(cx + r * (c * x + s * y), cy + r * (-s * x + c * y)) for x, y in pts]


def _shape_alpha(shape: str, box: tuple[int, int, int, int], rot_deg: float, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape, float32 (size, size)."""
    S = _SUPERSAMPLE
    canvas = Image.new("L", (size * S, size * S), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2 * S, (y0 + y1) / 2 * S, (x1 - x0) / 2 * S
    if shape == "circle":
        draw.ellipse([cx - r * 0.95, cy - r * 0.95, cx + r * 0.95, cy + r * 0.95], fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rot_deg), fill=255)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection area of two boxes divided by the smaller box's area."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / small


# --------------------------------------------------------------------------- scenes


def render_scene(
    rng: np.random.Generator,
    size: int = 64,
    n_objects: int | None = None,
    *,
    specs: list[tuple[str, str]] | None = None,
    min_objects: int = 1,
    max_objects: int = 4,
    min_frac: float = 0.2,
    max_frac: float = 0.4,
    max_overlap: float = 0.1,
    max_rotation: float = 20.0,
) -> Scene:
    """Render coloured shapes on a random textured background.

    Parameters
    ----------
    rng: source of all randomness (the scene is a pure function of its state).
    size: image side in pixels.
    n_objects: number of objects; default uniform in ``[min_objects, max_objects]``.
        Ignored when ``specs`` is given.
    specs: optional explicit ``[(color, shape), ...]`` to draw.  Otherwise objects
        are random with distinct names (no two "red circle"s in one scene).
    min_frac, max_frac: object box side as a fraction of ``size``.
    max_overlap: largest allowed box intersection over the smaller box's area
        (0 = disjoint boxes).  If an object cannot be placed after 200 tries it
        is dropped (only possible with many large objects).
    max_rotation: shapes are rotated uniformly in ``[-max_rotation, max_rotation]`` degrees.

    Returns
    -------
    :class:`Scene` with an RGB image of ``size x size`` and ``(n, size, size)`` masks.
    """
    if specs is None:
        n = int(rng.integers(min_objects, max_objects + 1)) if n_objects is None else int(n_objects)
        picks = rng.choice(len(CLASS_NAMES), size=n, replace=False)
        specs = [tuple(CLASS_NAMES[i].split(" ")) for i in picks]
    img, kind = _background(rng, size)
    objects: list[SceneObject] = []
    alphas: list[np.ndarray] = []
    for color, shape in specs:
        if color not in COLORS or shape not in SHAPES:
            raise ValueError(f"unknown object {color} {shape}")
        for _ in range(200):
            side = int(round(rng.uniform(min_frac, max_frac) * size))
            side = max(side, 4)
            x0 = int(rng.integers(1, max(2, size - side)))
            y0 = int(rng.integers(1, max(2, size - side)))
            box = (x0, y0, x0 + side, y0 + side)
            if all(_overlap(box, o.box) <= max_overlap for o in objects):
                break
        else:
            continue
        rot = float(rng.uniform(-max_rotation, max_rotation))
        obj = SceneObject(color=color, shape=shape, box=box, rotation=rot)
        alpha = _shape_alpha(shape, box, rot, size)
        rgb = np.array(COLORS[color], np.float32) + rng.uniform(-20, 20, size=3)
        shade = 1.0 + rng.uniform(-0.08, 0.08) * np.linspace(-1, 1, size, dtype=np.float32)[None, :, None]
        img = img * (1 - alpha[..., None]) + (rgb[None, None, :] * shade) * alpha[..., None]
        objects.append(obj)
        alphas.append(alpha)
    masks = np.zeros((len(objects), size, size), dtype=bool)
    covered = np.zeros((size, size), dtype=bool)
    for i in range(len(objects) - 1, -1, -1):  # topmost first
        m = (alphas[i] >= 0.5) & ~covered
        masks[i] = m
        covered |= m
    image = Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), mode="RGB")
    return Scene(image=image, objects=objects, masks=masks, background=kind)


def two_object_scene(rng: np.random.Generator, size: int = 64, **kwargs) -> Scene:
    """A scene with exactly two objects of different colour AND different shape.

    For "A rather than B" questions: ``scene.objects[0]`` and ``scene.objects[1]``
    share no attribute, so each name identifies exactly one object.  Boxes are
    disjoint and objects fairly large (25-40 % of ``size``).  Extra keyword
    arguments go to :func:`render_scene`.
    """
    colors = list(COLORS)
    ci = rng.choice(len(colors), size=2, replace=False)
    si = rng.choice(len(SHAPES), size=2, replace=False)
    specs = [(colors[ci[0]], SHAPES[si[0]]), (colors[ci[1]], SHAPES[si[1]])]
    opts = dict(min_frac=0.25, max_frac=0.4, max_overlap=0.0)
    opts.update(kwargs)
    while True:  # placement of two objects at <= 40 % of the side always succeeds quickly
        scene = render_scene(rng, size, specs=specs, **opts)
        if len(scene.objects) == 2:
            return scene
