"""The web app in a real browser: Debian's Chromium, headless, driven by Playwright's Python package.

Set COCOA_SCREENSHOT=1 to also write assets/screenshot.png (a full page after a real answer).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest_app import REPO, served
from PIL import Image

import cocoa_clip as cc

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


def test_upload_ask_swap_and_reuse_the_pass(page):
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
    score = page.locator("#score input").input_value()
    assert score and abs(float(score)) < 2

    page.click("#swap")
    sync_api.expect(page.locator("#corpus textarea")).to_have_value("dog")
    sync_api.expect(page.locator("#foil textarea")).to_have_value("cat")
    page.locator("#reverse input[type=checkbox]").check()
    page.click("#explain")
    page.locator("#status").get_by_text("Reused the image pass").wait_for()
    assert "no new RISE run" in page.locator("#status").inner_text()
    assert float(page.locator("#score input").input_value()) == pytest.approx(-float(score), abs=1e-5)
    assert overlay_size(page, "#overlay-reverse") == uploaded


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


def test_an_example_fills_the_question_and_answers(page):
    page.locator("#examples tbody tr").first.click()  # the astronaut: "woman" against the CIFAR-100 classes
    sync_api.expect(page.locator("#corpus textarea")).to_have_value("woman")
    page.locator("#reverse input[type=checkbox]").uncheck()  # a preset foil has no reverse question
    page.click("#explain")
    page.locator("#reading").get_by_text("the cifar100 classes").wait_for()
    assert overlay_size(page) == Image.open(REPO / "assets" / "astronaut.jpg").size


def test_the_demo_model_finds_the_orange_cross(page):
    """A real answer: shapes-demo scores the cross, rather than the square, above zero."""
    page.reload()  # a fresh page, without earlier tests' error messages
    page.wait_for_selector("#explain")
    page.locator("#examples tbody tr").last.click()
    sync_api.expect(page.locator("#corpus textarea")).to_have_value("orange cross")
    page.locator("#reverse input[type=checkbox]").check()
    page.click("#explain")
    page.locator("#reading").get_by_text('"orange cross" rather than "yellow square"').wait_for()
    assert overlay_size(page) == Image.open(REPO / "assets" / "shapes_scene.png").size
    assert float(page.locator("#score input").input_value()) > 0.01

    page.locator("#measure input").click()
    page.get_by_role("option", name="zero-shot probability of the corpus").click()
    page.click("#check")
    page.locator("#curves-text").get_by_text("Curves of the probability of the corpus").wait_for()
    assert "beats a random ranking" in page.locator("#curves-text").inner_text()
    page.wait_for_selector("#curves img")

    page.get_by_text("Which caption where?").click()
    page.locator("#compare-captions textarea").fill("orange cross\nyellow square")
    page.click("#compare")
    page.locator("#compare-parts").get_by_text("Reused the image pass").wait_for()  # the pass explain made
    assert "**" not in page.locator("#compare-parts").inner_text()  # rendered as Markdown
    width, height = overlay_size(page, "#compare-overlay")
    assert width == Image.open(REPO / "assets" / "shapes_scene.png").width and height > width
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
    page.locator("#status").get_by_text("RISE: 2,000 masks").wait_for()
    assert "Stability 0." in page.locator("#status").inner_text()
