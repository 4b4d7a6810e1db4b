import warnings

import numpy as np
import pytest
from PIL import Image

import cocoa_clip as cc
from cocoa_clip.engine import fonts
from cocoa_clip.engine.evaluate import Curves
from cocoa_clip.engine.render import colorbar_figure, colorize, label_overlay, limits, overlay, save_heatmap


def test_limits_minmax_and_signed():
    heatmap = np.array([[-1.0, 0.5], [2.0, np.nan]])
    assert limits(heatmap, "minmax") == (-1.0, 2.0)
    assert limits(heatmap, "signed") == (-2.0, 2.0)
    assert limits(np.zeros((2, 2)), "minmax")[0] < 0 < limits(np.zeros((2, 2)), "minmax")[1]


def test_signed_scale_puts_zero_in_the_middle_of_the_colour_map():
    colours = colorize(np.array([[-3.0, 0.0, 1.0]]), "signed", "bwr")
    middle = colours[0, 1, :3]
    np.testing.assert_allclose(middle, [1.0, 1.0, 1.0], atol=0.01)  # bwr's centre is white


def test_overlay_blends_by_opacity_and_leaves_nan_pixels_alone():
    photo = Image.new("RGB", (3, 2), (10, 20, 30))
    heatmap = np.array([[0.0, 1.0, np.nan], [0.5, 0.2, 0.1]], dtype=np.float32)
    untouched = np.asarray(overlay(photo, heatmap, opacity=0.0))
    assert (untouched == [10, 20, 30]).all()
    full = np.asarray(overlay(photo, heatmap, opacity=1.0, cmap="gray"))
    assert tuple(full[0, 0]) == (0, 0, 0) and tuple(full[0, 1]) == (255, 255, 255)
    assert tuple(full[0, 2]) == (10, 20, 30)


def test_overlay_refuses_mismatched_shapes_and_bad_opacity():
    photo = Image.new("RGB", (3, 2))
    with pytest.raises(cc.SettingsError, match="heatmap is"):
        overlay(photo, np.zeros((3, 3)))
    with pytest.raises(cc.SettingsError, match="Opacity"):
        overlay(photo, np.zeros((2, 3)), opacity=2)
    with pytest.raises(cc.SettingsError, match="colour map"):
        overlay(photo, np.zeros((2, 3)), cmap="no-such-map")


def test_colorbar_figure_is_an_image():
    figure = colorbar_figure(np.random.rand(30, 60), scale="signed", title="dog rather than cat")
    assert figure.mode == "RGB" and figure.width == 640 and 200 < figure.height < 640


@pytest.mark.parametrize("shape, clamped", [((4000, 10), (400, 100)), ((10, 4000), (100, 400))])
def test_colorbar_figure_of_a_thin_map_stays_within_four_to_one(shape, clamped):
    """A map thinner than 4:1 gets the figure of a 4:1 map: never taller than 4 widths, nor a sliver."""
    figure = colorbar_figure(np.random.rand(*shape))
    assert figure.size == colorbar_figure(np.random.rand(*clamped)).size
    assert figure.width == 640 and 640 / 4 < figure.height < 4 * 640


def test_colorbar_figure_follows_the_maps_aspect():
    heights = [colorbar_figure(np.random.rand(*shape)).height for shape in ((30, 60), (30, 30), (60, 30))]
    assert heights[0] < heights[1] < heights[2]


def test_label_outlines_do_not_wrap_around_the_picture():
    from cocoa_clip.engine.render import label_overlay

    labels = np.zeros((600, 600), dtype=int)  # outlines 4 px wide at this size
    labels[1:] = 1  # one change, between the first two rows
    photo = Image.new("RGB", (600, 600), (128, 128, 128))
    out = np.asarray(label_overlay(photo, labels, np.zeros((600, 600)), opacity=0.5))
    outlined = (out != out[300, 300]).any(axis=(1, 2))
    assert outlined[0] and not outlined[2:].any()


def test_exports_keep_size_and_dtype(tiny, photo, tmp_path):
    answer = cc.explain(tiny, photo, cc.Question(corpus=["dog"], foil=["cat"]), masks=30, cache=None)
    answer.save(overlay=tmp_path / "o.png", heatmap=tmp_path / "h.npy")
    saved = np.load(tmp_path / "h.npy")
    assert saved.dtype == np.float32 and saved.shape == (45, 70)
    np.testing.assert_array_equal(saved, answer.heatmap)
    with Image.open(tmp_path / "o.png") as image:
        assert image.format == "PNG" and image.size == (70, 45)
    save_heatmap(tmp_path / "x.npy", np.ones((2, 2), dtype=np.float64))
    assert np.load(tmp_path / "x.npy").dtype == np.float32


def test_captions_in_any_script_draw_without_glyph_warnings(monkeypatch):
    """CJK and emoji captions in the legend and the colour bar's title: no `Glyph ... missing` warning, whether or
    not a font with those glyphs is installed (without one, they are drawn as boxes on purpose)."""
    names = ["赤い十字", "red cross 🚀"]
    labels = np.zeros((40, 80), dtype=np.int16)
    labels[:, 40:] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        legend = label_overlay(Image.new("RGB", (80, 40)), labels, np.ones((40, 80)), names=names)
        colorbar_figure(np.random.default_rng(0).random((8, 8)), title=f'"{names[0]}" rather than "{names[1]}"')
        Curves(*(np.linspace(0, 1, 3),) * 5).plot(title=names[0])
    assert legend.height > 40


def test_glyphs_no_installed_font_has_are_boxes(monkeypatch):
    dejavu = [entry for entry in fonts.installed() if entry[0] == "DejaVu Sans"]
    monkeypatch.setattr(fonts, "installed", lambda: tuple(dejavu))
    assert fonts.drawable("赤い 十字 red Ωmega") == f"{fonts.MISSING * 2} {fonts.MISSING * 2} red Ωmega"
    assert fonts.families() == ["DejaVu Sans"]


def test_a_line_is_drawn_in_the_first_installed_font_with_all_its_glyphs():
    cjk = [path for _, path, points in fonts.installed() if ord("赤") in points]
    if not cjk:
        pytest.skip("no font with CJK glyphs is installed (Debian: fonts-noto-cjk, as packages.txt asks)")
    assert fonts.drawable("赤い十字") == "赤い十字" and fonts.legend_font("赤い十字", 20).path == cjk[0]
    assert fonts.legend_font("red cross", 20).path == fonts.installed()[0][1]  # Latin stays in DejaVu Sans
