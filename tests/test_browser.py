"""The web app in a real browser: Debian's Chromium, headless, driven by Playwright's Python package.

Set COCOA_SCREENSHOT=1 to also write assets/screenshot.png (a full page after a real answer).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest_app import REPO, served
from PIL import Image

import cocoa_clip as cc
from cocoa_clip.web import page as web_page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PICTURE = REPO / "assets" / "chelsea.jpg"  # 451 x 300: not square
TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # Gradio's queue statistics, with pandas 3
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def page():
    """The app serving the bundled shapes-demo CLIP (small, and its answers mean something)."""
    with served(cc.load("shapes-demo", device="cpu")) as (_, url), sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#explain")
        yield page
        browser.close()


def overlay_size(page, selector: str = "#overlay") -> tuple[int, int]:
    """Natural size of the answer image, once one has loaded."""
    page.wait_for_function(
        "s => { const i = document.querySelector(s + ' img'); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector)
    return tuple(page.evaluate("s => { const i = document.querySelector(s + ' img'); "
                               "return [i.naturalWidth, i.naturalHeight]; }", selector))


def score_text(page) -> str:
    return page.locator("#score input").input_value()


def test_upload_ask_swap_and_reuse_the_pass(page):
    assert score_text(page) == ""  # empty before the first answer, not "0"
    page.set_input_files("#image input[type=file]", str(PICTURE))
    page.locator("#corpus textarea").fill("cat")
    page.locator("#foil textarea").fill("dog")
    page.wait_for_selector("#image img")
    page.click("#explain")
    page.locator("#status").get_by_text(" masks in ").wait_for()  # the answer, not a frame of the map forming
    width, height = overlay_size(page)
    uploaded = Image.open(PICTURE).size
    assert width / height == pytest.approx(uploaded[0] / uploaded[1], rel=1e-3)
    assert (width, height) == uploaded  # the whole picture, at its own size
    score = score_text(page)
    assert re.fullmatch(r"[+-]\d\.\d{4}", score) and f"Score {score}:" in page.locator("#reading").inner_text()

    page.click("#swap")
    sync_api.expect(page.locator("#corpus textarea")).to_have_value("dog")
    sync_api.expect(page.locator("#foil textarea")).to_have_value("cat")
    page.locator("#reverse input[type=checkbox]").check()
    page.click("#explain")
    page.locator("#status").get_by_text("Reused the image pass").wait_for()
    assert "no new RISE run" in page.locator("#status").inner_text()
    assert float(score_text(page)) == pytest.approx(-float(score), abs=2e-4)
    assert overlay_size(page, "#overlay-reverse") == uploaded
    # Titles sit above the pictures: no label badge covers a picture's corner.
    for picture in ("#overlay", "#overlay-reverse", "#heatmap", "#curves", "#compare-overlay"):
        for badge in page.locator(f"{picture} [data-testid=block-label]").all():
            assert "hide" in badge.get_attribute("class").split(), picture  # for screen readers only
    assert page.get_by_text("Foil rather than corpus", exact=True).is_visible()


@pytest.mark.parametrize("typed", ["999999", "-5"])
def test_a_typed_mask_count_out_of_range_is_refused_in_a_sentence(page, typed):
    """Item 1: the box keeps what was typed, the page says why in one sentence, and nothing runs."""
    status = page.locator("#status").inner_text()
    page.get_by_text("Options", exact=True).click()
    page.locator("#masks input").fill(typed)
    page.locator("#masks input").press("Tab")
    sentence = (f"The number of masks must be a whole number from 1 to 20,000 on a CPU, or 0 or auto for auto "
                f"(masks until the map is stable); got {int(typed):,}.")  # written as the limits are
    page.locator("#estimate").get_by_text(sentence).wait_for()
    page.set_input_files("#image input[type=file]", str(PICTURE))
    page.locator("#corpus textarea").fill("cat")
    page.locator("#foil textarea").fill("dog")
    page.click("#explain")
    page.locator(".toast-body").get_by_text(sentence).wait_for()
    sync_api.expect(page.locator("#explain")).to_be_enabled()
    assert page.locator("#status").inner_text() == status  # nothing ran
    assert page.locator("#masks input").input_value() == typed
    page.get_by_text("Options", exact=True).click()
    page.reload()
    page.wait_for_selector("#explain")


def test_one_progress_bar_and_explain_waits_for_the_run(page):
    """Item 5: while this visitor's run goes, Explain is disabled and progress shows on the overlay only."""
    page.set_input_files("#image input[type=file]", str(PICTURE))
    page.locator("#corpus textarea").fill("a red circle")
    page.locator("#foil textarea").fill("a blue star")
    page.get_by_text("Options", exact=True).click()
    page.locator("#masks input").fill("6000")
    page.locator("#seed input").fill("7")  # masks no earlier test drew: a fresh RISE run
    page.click("#explain")
    sync_api.expect(page.locator("#explain")).to_be_disabled()
    sync_api.expect(page.locator("#explain")).to_have_text("Explaining…")
    page.locator("#overlay [data-testid=status-tracker]").get_by_text("masks").first.wait_for()
    for output in ("#score", "#reading", "#status"):
        assert "hide" in page.locator(f"{output} [data-testid=status-tracker]").first.get_attribute("class"), output
    page.locator("#status").get_by_text("RISE: 6,000 masks").wait_for(timeout=3 * TIMEOUT_MS)
    sync_api.expect(page.locator("#explain")).to_be_enabled()
    sync_api.expect(page.locator("#explain")).to_have_text("Explain")
    page.reload()
    page.wait_for_selector("#explain")


def test_gradient_methods_show_their_own_settings(page):
    page.get_by_text("Options", exact=True).click()
    sync_api.expect(page.locator("#masks")).to_be_visible()  # the accordion opens in a moment, not at once
    sync_api.expect(page.locator("#steps")).to_be_hidden()
    page.locator("#method input").click()
    page.get_by_role("option", name="Integrated Gradients").click()
    sync_api.expect(page.locator("#steps")).to_be_visible()
    sync_api.expect(page.locator("#masks")).to_be_hidden()
    assert page.locator("#steps input").input_value() == "50"
    page.locator("#method input").click()
    page.get_by_role("option", name="GradientSHAP").click()
    sync_api.expect(page.locator("#samples")).to_be_visible()
    sync_api.expect(page.locator("#stdev")).to_be_visible()
    sync_api.expect(page.locator("#steps")).to_be_hidden()
    page.reload()
    page.wait_for_selector("#explain")


def test_a_non_image_upload_shows_the_error(page, tmp_path):
    fake = tmp_path / "holiday.png"  # an image's name, text inside: the browser lets it through
    fake.write_text("these are notes, not pixels\n")
    page.set_input_files("#image input[type=file]", str(fake))
    page.locator("#corpus textarea").fill("cat")
    page.click("#explain")
    page.get_by_text("is not an image PIL can read").first.wait_for()
    assert str(tmp_path) not in page.locator("body").inner_text()

    notes = tmp_path / "notes.txt"  # not even named like an image: the upload widget refuses it
    notes.write_text("notes\n")
    page.set_input_files("#image input[type=file]", str(notes))
    page.get_by_text("Invalid file type").first.wait_for()


def test_the_demo_models_own_scenes_come_first(page):
    """Item 2: serving shapes-demo, its scenes lead the examples, and the banner says what it knows."""
    page.reload()
    page.wait_for_selector("#explain")
    assert "knows only coloured shapes" in page.locator("#model-banner").inner_text()
    rows = page.locator("#examples tbody tr")
    corpora = [rows.nth(i).inner_text().split() for i in range(rows.count())]
    assert [" ".join(row[:2]) for row in corpora[:4]] == [corpus for *_, corpus, _ in web_page.SHAPE_EXAMPLES]
    assert len(corpora) > 4  # the photos follow
    rows.last.click()  # a photo: "smoke" rather than "rocket"
    sync_api.expect(page.locator("#corpus textarea")).to_have_value("smoke")
    rows.first.click()
    sync_api.expect(page.locator("#corpus textarea")).to_have_value("orange cross")


def test_an_example_with_a_preset_foil_answers(page):
    page.reload()
    page.wait_for_selector("#explain")
    page.locator("#examples tbody tr").nth(4).click()  # the astronaut: "woman" against the CIFAR-100 classes
    sync_api.expect(page.locator("#corpus textarea")).to_have_value("woman")
    page.click("#explain")
    page.locator("#reading").get_by_text("the CIFAR-100 classes").wait_for()
    assert overlay_size(page) == Image.open(REPO / "assets" / "astronaut.jpg").size
    assert 'without "woman"' in page.locator("#status").inner_text()


def test_the_demo_model_finds_the_orange_cross(page):
    """A real answer: shapes-demo scores the cross, rather than the square, above zero."""
    page.reload()  # a fresh page, without earlier tests' error messages
    page.wait_for_selector("#explain")
    page.locator("#examples tbody tr").first.click()
    sync_api.expect(page.locator("#corpus textarea")).to_have_value("orange cross")
    page.locator("#reverse input[type=checkbox]").check()
    page.click("#explain")
    page.locator("#reading").get_by_text('"orange cross" rather than "yellow square"').wait_for()
    assert overlay_size(page) == (256, 256)
    # The answer first: the model's own answer in words, above the score and its reading.
    said = page.locator("#reading").inner_text()
    assert re.match(r"The model's own answer: orange cross \d+%, yellow square \d+%", said), said
    reading_y, score_y = (page.locator(selector).bounding_box()["y"] for selector in ("#reading", "#score"))
    assert reading_y < score_y
    assert float(score_text(page)) > 0.01

    page.locator("#measure input").click()
    page.get_by_role("option", name="zero-shot probability of the corpus").click()
    page.click("#check")
    page.locator("#curves-text").get_by_text("Curves of the probability of the corpus").wait_for()
    assert "beats a random ranking" in page.locator("#curves-text").inner_text()
    page.wait_for_selector("#curves img")

    page.get_by_text("Which caption where?").click()
    page.locator("#compare-captions textarea").fill("orange cross\nyellow square")
    page.click("#compare")
    parts = page.locator("#compare-parts")
    parts.get_by_text("Reused the image pass").wait_for()  # the pass explain made
    text = parts.inner_text()
    assert "**" not in text  # rendered as Markdown
    assert "of the decided pixels" in text and "no clear winner (uncoloured)" in text
    shares = [float(share) for share in re.findall(r"(\d+)% of the picture", text)]
    assert len(shares) == 3 and sum(shares) == pytest.approx(100, abs=2)
    width, height = overlay_size(page, "#compare-overlay")
    assert width >= 256 and height > 256
    if os.environ.get("COCOA_SCREENSHOT") == "1":
        page.screenshot(path=str(REPO / "assets" / "screenshot.png"), full_page=True)


def test_the_map_forms_while_rise_runs(page):
    """Frames: the overlay appears with a running status (masks so far, stability) before the answer."""
    page.reload()
    page.wait_for_selector("#explain")
    page.set_input_files("#image input[type=file]", str(REPO / "assets" / "coffee.jpg"))  # a picture no test asked
    page.wait_for_selector("#image img")
    page.locator("#corpus textarea").fill("orange cross")
    page.locator("#foil textarea").fill("yellow square")
    page.click("#explain")
    page.locator("#status").get_by_text("RISE running").wait_for()
    assert overlay_size(page) == Image.open(REPO / "assets" / "coffee.jpg").size
    if os.environ.get("COCOA_SCREENSHOT") == "1":
        page.wait_for_timeout(1500)  # a few frames on
        page.screenshot(path=str(REPO / "assets" / "live_frame.png"), full_page=False)
    page.locator("#status").get_by_text("RISE:", exact=False).wait_for()  # auto, the default on a CPU
    assert "Stability 0." in page.locator("#status").inner_text()
