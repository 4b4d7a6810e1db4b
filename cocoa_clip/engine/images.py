"""Reading pictures safely, fitting them onto the model's square input, and mapping heatmaps back.

Framing is how a photo of any shape becomes the model's n_px x n_px input:

- "pad" (default): the whole photo, scaled so its long side is n_px and centred on a
  square filled with the model's mean colour (zero after normalisation). Nothing is cut and
  nothing distorted, so the heatmap covers the whole photo at its own aspect ratio.
- "model" (alias "crop"): the model's own preprocessing, as its library does it: for CLIP short
  side to n_px and centre crop (the heatmap covers the crop only; pixels outside it are NaN),
  for SigLIP the whole photo squashed to the square; with the model's interpolation. SigLIP 2
  (NaFlex) is squashed too, where its own processor keeps the aspect ratio (a grid of patches
  of the picture's shape): "pad" keeps it undistorted.
- "squash": the whole photo resized to the square, aspect ratio ignored.

RISE masks are laid over the photo's content box only, so its 7x7 grid follows the photo
and not the padding.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError, SettingsError
from ..models.encoder import Preprocessing

FRAMINGS = ("pad", "model", "squash")
FRAMING_ALIASES = {"crop": "model"}  # the name before other families came: CLIP's own preprocessing is a crop
BASELINES = ("blur", "mean", "black")
MAX_PIXELS = 50_000_000  # refuse larger images before decoding them (decompression bombs)
ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read an image as 8-bit RGB, upright as its EXIF orientation says.

    Accepts a path, encoded bytes, a PIL image or an (H, W[, C]) array: uint8, uint16 (0..65535),
    other integers (0..255), bool, or float (0..1; 0..255 when any value exceeds 1). Float image
    files (PIL mode F, e.g. a 32-bit TIFF) are read like float arrays, in their own units, never
    stretched by their own maximum. Grayscale, palette, 16-bit and CMYK images are converted;
    transparency is composited on white. Raises ImageError with a plain sentence for anything unreadable.
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
    else:
        image = _open(source)
    try:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"The image is {width}x{height} pixels ({width * height / 1e6:.0f} MP); "
                f"the limit is {max_pixels / 1e6:.0f} MP. Downscale it first."
            )
        if width == 0 or height == 0:
            raise ImageError("The image has no pixels.")
        try:
            return _to_rgb(ImageOps.exif_transpose(image))  # a new image: the source can be closed
        except (OSError, ValueError, SyntaxError) as error:
            raise ImageError(f"The image could not be decoded ({error}); the file may be truncated or corrupt.") \
                from error
    finally:
        if image is not source:
            image.close()  # the file we opened (PIL keeps multi-frame files open until closed)


def _open(source: str | os.PathLike | bytes) -> Image.Image:
    if isinstance(source, bytes):
        if not source:
            raise ImageError("The uploaded file is empty.")
        stream, label = io.BytesIO(source), "The uploaded data"
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"No image file at {path}.")
        if path.stat().st_size == 0:
            raise ImageError(f"{path} is empty.")
        stream, label = path, str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # load_image refuses those itself
            return Image.open(stream)  # reads the header only; load_image checks the size before decoding
    except Image.DecompressionBombError as error:
        raise ImageError(f"{label} is far too large to decode safely ({error}).") from error
    except UnidentifiedImageError as error:
        raise ImageError(f"{label} is not an image PIL can read (PNG, JPEG, WebP, TIFF, BMP, GIF ...).") from error
    except OSError as error:
        raise ImageError(f"{label} could not be read: {error}.") from error


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageError(f"An image array must be (H, W) or (H, W, 1|3|4); got shape {array.shape}.")
    if array.dtype != np.uint8:
        # Scaled by the dtype's range, never by the picture's own values: uint16 spans 0..65535, other
        # integers 0..255, floats 0..1 (or 0..255 when any value exceeds 1, as from an unnormalised pipeline).
        kind = array.dtype.kind
        if kind not in "buif":
            raise ImageError(f"An image array must hold numbers; got dtype {array.dtype}.")
        values = np.asarray(array, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ImageError("The image array holds NaN or infinite values.")
        if array.dtype == np.uint16:
            scale = 255.0 / 65535.0
        elif kind in "bf" and values.max(initial=0.0) <= 1.0:
            scale = 255.0
        else:
            scale = 1.0
        array = np.clip(values * scale, 0, 255).round().astype(np.uint8)
    return Image.fromarray(array.squeeze(2) if array.ndim == 3 and array.shape[2] == 1 else array)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # PIL's convert("RGB") clips 16-bit values at 255; rescale to 8 bits instead. Floats as float arrays:
        # 0..1, or 0..255 when any value exceeds 1 (their own units, so a dark picture stays dark).
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        else:
            top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    image = image.convert("RGB")
    image.load()
    return image


@dataclass(frozen=True)
class Framed:
    """A picture placed on the model's square input.

    canvas: (3, n_px, n_px) float32 RGB in [0, 1], what the model sees.
    box: (top, left, height, width) of the picture's content inside the canvas, in canvas pixels.
    source_box: (top, left, height, width) of the part of the original picture the content shows.
    image_size: (H, W) of the original picture.
    """

    canvas: torch.Tensor
    box: tuple[int, int, int, int]
    source_box: tuple[int, int, int, int]
    image_size: tuple[int, int]

    @property
    def content(self) -> torch.Tensor:
        """(3, h, w): the picture's pixels inside the canvas."""
        top, left, height, width = self.box
        return self.canvas[:, top:top + height, left:left + width]

    def with_content(self, content: torch.Tensor) -> torch.Tensor:
        """Canvases with new content: content (B, 3, h, w) -> (B, 3, n_px, n_px); the padding is kept."""
        top, left, height, width = self.box
        if (height, width) == tuple(self.canvas.shape[1:]):
            return content
        canvas = self.canvas.to(content).expand(content.shape[0], -1, -1, -1).clone()
        canvas[:, :, top:top + height, left:left + width] = content
        return canvas


def frame(image: Image.Image, preprocessing: Preprocessing | int, mode: str = "pad") -> Framed:
    """Fit an RGB picture onto the model's square input as `mode` says (see the module docstring).

    preprocessing: the model's (`model.preprocessing`); a bare n_px means OpenAI CLIP's at that size.
    """
    if mode not in FRAMINGS and mode not in FRAMING_ALIASES:
        raise ImageError(f"Unknown framing {mode!r}; choose one of {', '.join(FRAMINGS)}.")
    if isinstance(preprocessing, int):
        preprocessing = Preprocessing(preprocessing)
    n_px, resample = preprocessing.n_px, _FILTERS[preprocessing.interpolation]
    mode = FRAMING_ALIASES.get(mode, mode)
    if mode == "model":
        mode = "crop" if preprocessing.resize == "shortest" else "squash"
    width, height = image.size
    full = (0, 0, height, width)
    if mode == "squash":
        return Framed(_to_tensor(image.resize((n_px, n_px), resample)), (0, 0, n_px, n_px), full, (height, width))
    if mode == "crop":
        # CLIP's preprocessing (torchvision's Resize(n_px) then CenterCrop(n_px), with their rounding), done by
        # resampling only the crop's source box: the same pixels, without enlarging the whole picture first.
        resized_long = int(n_px * max(width, height) / min(width, height))
        resized_width, resized_height = (resized_long, n_px) if width >= height else (n_px, resized_long)
        rtop, rleft = int(round((resized_height - n_px) / 2.0)), int(round((resized_width - n_px) / 2.0))
        sx, sy = width / resized_width, height / resized_height
        box = (rleft * sx, rtop * sy, (rleft + n_px) * sx, (rtop + n_px) * sy)
        crop = image.resize((n_px, n_px), resample, box=box)
        source = (round(box[1]), round(box[0]), round(box[3] - box[1]), round(box[2] - box[0]))
        return Framed(_to_tensor(crop), (0, 0, n_px, n_px), source, (height, width))
    scale = n_px / max(width, height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    top, left = (n_px - h) // 2, (n_px - w) // 2
    canvas = torch.tensor(preprocessing.mean).view(3, 1, 1).repeat(1, n_px, n_px)
    canvas[:, top:top + h, left:left + w] = _to_tensor(image.resize((w, h), resample))
    return Framed(canvas, (top, left, h, w), full, (height, width))


_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def unframe(content_map: torch.Tensor, framed: Framed) -> np.ndarray:
    """Map a heatmap over the content box, (h, w), to the original picture: (H, W) float32.

    Bilinear resampling; NaN outside the part of the picture the model saw (crop framing).
    """
    top, left, height, width = framed.source_box
    resized = F.interpolate(content_map[None, None].float().cpu(), size=(height, width), mode="bilinear",
                            align_corners=False)
    out = np.full(framed.image_size, np.nan, dtype=np.float32)
    # The crop box can reach one pixel past the picture through rounding.
    rows, cols = min(height, framed.image_size[0] - top), min(width, framed.image_size[1] - left)
    out[top:top + rows, left:left + cols] = resized[0, 0, :rows, :cols].numpy()
    return out


def blur(content: torch.Tensor, n_px: int, sigma: float | None = None) -> torch.Tensor:
    """A Gaussian blur of the picture, the paper's baseline for RISE and Integrated Gradients.

    content: (..., 3, h, w). sigma: in pixels of the model's input; None scales the paper's
    sigma 5 at 224 px with the input size (5 * n_px / 224). The kernel reaches 2 sigma each
    side, as the paper's kernel 21 for sigma 5. Reflect padding at the edges, replicate where
    the picture is too thin.
    """
    sigma = default_sigma(n_px) if sigma is None else sigma
    radius = max(1, round(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=content.dtype, device=content.device)
    kernel = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    flat = content.reshape(-1, 1, *content.shape[-2:])
    mode = "reflect" if radius < min(content.shape[-2:]) else "replicate"
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))
    return flat.reshape(content.shape)


def default_sigma(n_px: int) -> float:
    """The blur's default sigma in input pixels: the paper's 5 at 224 px, scaled with the input size."""
    return 5.0 * n_px / 224


def baseline(content: torch.Tensor, preprocessing: Preprocessing | int, kind: str = "blur",
             sigma: float | None = None) -> torch.Tensor:
    """What "removed" pixels show, for RISE, gradients and insertion/deletion: content's shape.

    preprocessing: the model's (`model.preprocessing`); a bare n_px means OpenAI CLIP's at that size.
    kind: "blur" (the paper's; `sigma` as in `blur`), "mean" (the model's own normalisation mean, so
    zero after its normalisation, as the padding) or "black".
    """
    check_baseline(kind, sigma)
    if isinstance(preprocessing, int):
        preprocessing = Preprocessing(preprocessing)
    if kind == "blur":
        return blur(content, preprocessing.n_px, sigma)
    colour = content.new_tensor(preprocessing.mean if kind == "mean" else (0.0, 0.0, 0.0)).view(3, 1, 1)
    return colour.expand(content.shape).clone()


def check_baseline(kind: str, sigma: float | None = None) -> None:
    """Refuse an unknown baseline, or a blur sigma that is not a positive number of pixels (at most 100)."""
    if kind not in BASELINES:
        raise SettingsError(f"Unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}.")
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float))
                              or not 0.0 < sigma <= 100.0):
        raise SettingsError(f"The blur sigma must be a number of pixels above 0 and at most 100; got {sigma!r}.")


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def digest(tensor: torch.Tensor) -> str:
    """A content hash of a tensor, for cache keys."""
    return hashlib.sha1(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()

