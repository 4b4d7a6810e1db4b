import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

import cocoa_clip as cc
from cocoa_clip.engine.evaluate import insertion_deletion
from cocoa_clip.engine.images import blur, frame, load_image, unframe


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_grayscale_palette_rgba_cmyk_become_rgb(tmp_path):
    base = Image.fromarray(np.arange(60 * 40 * 3, dtype=np.uint8).reshape(40, 60, 3) % 251)
    for mode in ("L", "P", "RGBA", "CMYK", "LA", "1"):
        image = load_image(save(base.convert(mode), tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"))
        assert image.mode == "RGB" and image.size == (60, 40)


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(clear).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_images_keep_their_contrast(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 32).reshape(32, 64)).astype(np.uint16)
    image = load_image(save(Image.fromarray(ramp), tmp_path / "deep.png"))
    values = np.asarray(image)[..., 0]
    assert values.min() == 0 and values.max() == 255 and len(np.unique(values)) > 100


def test_exif_orientation_is_respected(tmp_path):
    """Orientation 6: the camera stored the picture turned; it must be shown turned 90 degrees clockwise."""
    stored = np.zeros((20, 30, 3), dtype=np.uint8)
    stored[:10, :15] = (255, 0, 0)  # top left: red
    stored[10:, :15] = (0, 255, 0)  # bottom left: green
    stored[:, 15:] = (0, 0, 255)  # right half: blue
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(Image.fromarray(stored), tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    upright = np.asarray(load_image(path)).astype(int)
    assert upright.shape == (30, 20, 3)
    # Turned clockwise, the stored left side is the top (its top edge now on the right) and the right side the bottom.
    for (row, col), colour in (((7, 15), (255, 0, 0)), ((7, 4), (0, 255, 0)), ((22, 10), (0, 0, 255))):
        assert np.abs(upright[row, col] - colour).max() < 40, (row, col)


def test_arrays_of_any_range_are_read():
    assert load_image(np.random.rand(10, 12, 3)).size == (12, 10)
    assert load_image(np.zeros((10, 12), dtype=np.uint16)).size == (12, 10)
    with pytest.raises(cc.ImageError, match="shape"):
        load_image(np.zeros((2, 3, 4, 5)))
    with pytest.raises(cc.ImageError, match="numbers"):
        load_image(np.full((2, 3), "x"))


@pytest.mark.parametrize("array, value", [
    (np.full((2, 2), 0.5), 128),                  # float in 0..1
    (np.full((2, 2), 100.0), 100),                # float beyond 1: read as 0..255, not stretched to white
    (np.full((2, 2), 128, dtype=np.int64), 128),  # integers: 0..255
    (np.full((2, 2), 32896, dtype=np.uint16), 128),  # uint16: 0..65535
    (np.ones((2, 2), dtype=bool), 255),
])
def test_arrays_are_scaled_by_their_dtype_not_their_values(array, value):
    assert np.asarray(load_image(array))[0, 0, 0] == value


def test_files_are_closed_after_reading_and_after_refusing(tmp_path, monkeypatch):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    opened, open_image = [], Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(open_image(*args, **kwargs)) or opened[-1])
    assert load_image(tmp_path / "anim.gif").size == (8, 8)  # PIL keeps multi-frame files open until closed
    with pytest.raises(cc.ImageError, match="limit"):
        load_image(tmp_path / "big.png", max_pixels=100)
    assert len(opened) == 2 and all(image.fp is None for image in opened)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"this is not an image at all", "not an image"),
])
def test_unreadable_files_say_so(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(cc.ImageError, match=message):
        load_image(path)
    with pytest.raises(cc.ImageError, match=message):
        load_image(content)


def test_missing_file(tmp_path):
    with pytest.raises(cc.ImageError, match="No image file"):
        load_image(tmp_path / "missing.jpg")


def test_truncated_file_says_corrupt(tmp_path):
    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(data, "JPEG")
    with pytest.raises(cc.ImageError, match="truncated or corrupt"):
        load_image(data.getvalue()[: len(data.getvalue()) // 2])


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels: only its header is valid, as in a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_decompression_bombs_are_refused_before_decoding(side):
    with pytest.raises(cc.ImageError, match="too large|limit is 50 MP"):
        load_image(huge_png_header(side, side))


def test_pad_framing_keeps_the_whole_picture_and_aspect():
    image = Image.new("RGB", (200, 100), "white")
    framed = frame(image, 64, "pad")
    top, left, height, width = framed.box
    assert (height, width) == (32, 64) and top == 16 and left == 0
    assert framed.canvas.shape == (3, 64, 64)
    assert torch.allclose(framed.content, torch.ones(3, 32, 64))
    # The padding is CLIP's mean colour: zero after CLIP's normalisation.
    assert torch.allclose(framed.canvas[:, 0, 0], torch.tensor(cc.models.MEAN))


@pytest.mark.parametrize("size", [(300, 100), (97, 211), (224, 224), (20, 13)])
def test_crop_framing_is_clips_own_preprocessing(size):
    picture = Image.fromarray(np.random.default_rng(3).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    preprocess = cc.models.clip_package().clip._transform(32)  # Resize, CenterCrop, ToTensor, Normalize
    std, mean = (torch.tensor(values).view(3, 1, 1) for values in (cc.models.STD, cc.models.MEAN))
    expected = preprocess(picture) * std + mean
    torch.testing.assert_close(frame(picture, 32, "crop").canvas, expected, atol=1.5 / 255, rtol=0)


def test_crop_framing_of_a_long_strip_resamples_only_the_crop():
    strip = Image.new("RGB", (200_000, 10), (200, 100, 50))  # enlarging it whole would take about 12 GB
    framed = frame(strip, 224, "crop")
    assert framed.source_box == (0, 99_995, 10, 10)
    assert torch.allclose(framed.canvas[:, 100, 100], torch.tensor([200, 100, 50]) / 255.0, atol=1e-6)


def test_crop_framing_marks_outside_the_crop_as_nan():
    framed = frame(Image.new("RGB", (300, 100)), 32, "crop")
    heatmap = unframe(torch.ones(32, 32), framed)
    assert heatmap.shape == (100, 300)
    assert np.isnan(heatmap[:, :90]).all() and np.isnan(heatmap[:, 210:]).all()
    assert (heatmap[:, 110:190] == 1).all()


@pytest.mark.parametrize("mode", ["pad", "crop", "squash"])
def test_heatmaps_come_back_at_the_picture_size(tiny, mode):
    image = Image.new("RGB", (123, 47), "gray")
    answer = cc.explain(tiny, image, cc.Question(corpus=["dog"], foil=["cat"]), masks=20, framing=mode, cache=None)
    assert answer.heatmap.shape == (47, 123) and answer.heatmap.dtype == np.float32
    assert answer.overlay().size == (123, 47)


def test_thin_pictures_still_blur():
    thin = torch.rand(3, 2, 224)
    assert blur(thin, 224).shape == thin.shape


def test_blur_keeps_constants_and_smooths_noise():
    flat = torch.full((3, 40, 40), 0.3)
    assert torch.allclose(blur(flat, 224), flat, atol=1e-6)
    noise = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert blur(noise, 224).std() < noise.std() / 3


@pytest.mark.parametrize("n_px", [32, 64, 224, 336])
def test_the_blur_is_the_papers_at_224_px_scaled_with_the_input_size(n_px):
    """Kernel 21, sigma 5 at 224 px (appendix I): torchvision's Gaussian blur with both scaled to the input."""
    picture = torch.rand(3, n_px, n_px, generator=torch.Generator().manual_seed(n_px))
    kernel = 2 * round(10 * n_px / 224) + 1
    expected = gaussian_blur(picture, kernel_size=kernel, sigma=5.0 * n_px / 224)
    torch.testing.assert_close(blur(picture, n_px), expected, atol=1e-5, rtol=0)


def test_unknown_framing(tiny):
    with pytest.raises(cc.ImageError, match="framing"):
        frame(Image.new("RGB", (4, 4)), 32, "stretch")


def test_blur_sigma_5_is_the_papers_kernel_21_at_any_input_size():
    """--blur-sigma 5 reproduces the paper's code (kernel 21, sigma 5 px) whatever the input size; the default
    scales it: sigma 5 x n_px / 224, kernel 41 at 448 px."""
    from torchvision.transforms.functional import gaussian_blur

    noise = torch.rand(3, 60, 50, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(blur(noise, 336, sigma=5), gaussian_blur(noise, [21, 21], [5.0, 5.0]), atol=1e-5)
    assert torch.allclose(blur(noise, 224), gaussian_blur(noise, [21, 21], [5.0, 5.0]), atol=1e-5)
    assert torch.allclose(blur(noise, 448), gaussian_blur(noise, [41, 41], [10.0, 10.0]), atol=1e-5)


def test_baselines_mean_and_black():
    from cocoa_clip.engine.images import baseline
    from cocoa_clip.models import MEAN

    content = torch.rand(2, 3, 8, 9)
    assert torch.equal(baseline(content, 32, "black"), torch.zeros_like(content))
    mean = baseline(content, 32, "mean")
    assert mean.shape == content.shape and torch.allclose(mean[1, :, 4, 4], torch.tensor(MEAN))
    assert torch.equal(baseline(content, 32, "blur", 2.0), blur(content, 32, 2.0))
    for kind, sigma in (("grey", None), ("blur", 0), ("blur", -1.0), ("blur", True)):
        with pytest.raises(cc.SettingsError):
            baseline(content, 32, kind, sigma)


def test_the_mean_baseline_is_each_models_own_mean():
    """"mean" is zero after the model's own normalisation, whatever its family (ImageNet's here, SigLIP's 0.5)."""
    from cocoa_clip.engine.images import baseline
    from cocoa_clip.models import MEAN, Preprocessing

    content = torch.rand(2, 3, 8, 9)
    for mean in ((0.485, 0.456, 0.406), (0.5, 0.5, 0.5)):
        preprocessing = Preprocessing(32, mean=mean, std=(0.229, 0.224, 0.225))
        assert preprocessing.normalize(baseline(content, preprocessing, "mean")).abs().max() < 1e-6
    assert torch.allclose(baseline(content, 32, "mean")[0, :, 0, 0], torch.tensor(MEAN))  # a bare size is CLIP's


@pytest.mark.parametrize("method", ["rise", "integrated-gradients", "evaluate"])
def test_rise_gradients_and_curves_remove_pixels_to_the_models_own_mean(method, noise_square):
    """With the mean baseline, removed pixels are zero at the encoder's input (ImageNet's mean here, not CLIP's)."""
    seen = []

    def encoder(normalised: torch.Tensor) -> torch.Tensor:
        seen.append(normalised.detach().clone())
        return torch.cat([normalised.mean((2, 3)), normalised.std((2, 3)) + 1.0], dim=1)  # shape = [B, 6]

    model = cc.wrap(encoder, n_px=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    question = cc.Question(corpus_images=[noise_square], foil_images=[noise_square.rotate(90)])
    if method == "evaluate":
        insertion_deletion(model, noise_square, np.ones((64, 64), np.float32), question, steps=4, baseline="mean")
    else:
        cc.explain(model, noise_square, question, method=method, masks=32, baseline="mean", cache=None)
    pictures = torch.cat(seen)  # shape = [N, 3, 32, 32]
    removed = (pictures.abs() < 1e-5).all(dim=1).float().mean((1, 2))  # share of each picture at zero
    assert removed.max() > 0.2  # insertion's start, IG's baseline, a sparse mask: a fifth of it or more


def test_a_float_tiff_is_read_in_its_own_units_as_a_16_bit_png_of_the_same_picture(tmp_path):
    """A 32-bit float TIFF holding 0.12..0.41 is a dark picture (31..105), not one stretched to 73..255."""
    values = np.linspace(0.12, 0.41, 12 * 16, dtype=np.float32).reshape(12, 16)
    Image.fromarray(values, mode="F").save(tmp_path / "dark.tif")
    Image.fromarray((values * 65535).round().astype(np.uint16)).save(tmp_path / "dark.png")
    assert Image.open(tmp_path / "dark.tif").mode == "F"
    pixels = np.asarray(load_image(tmp_path / "dark.tif"))
    assert (pixels.min(), pixels.max()) == (31, 105)
    np.testing.assert_array_equal(pixels, np.asarray(load_image(tmp_path / "dark.png")))
    Image.fromarray(values * 255, mode="F").save(tmp_path / "bright.tif")  # floats above 1 are 0..255
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "bright.tif")), pixels)
