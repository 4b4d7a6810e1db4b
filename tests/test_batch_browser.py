"""The batch report in a real browser: Debian's Chromium, headless, opened from the file system."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, sync_api  # skips this module where they skip

from cocoa_clip import batch
from cocoa_clip.batch import Job, ModelSpec

pytestmark = pytest.mark.browser
pytest.importorskip("pyarrow", reason="batch results need pyarrow (requirements-dev.txt)")


@pytest.fixture(scope="module")
def report(tiny_checkpoint, tmp_path_factory):
    """A batch of three pictures and a broken file, explained with overlays; the report's path."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(5)
    for index, size in enumerate([(30, 40), (40, 30), (36, 36)]):
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(folder / f"p{index}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    job = Job(out_dir=str(tmp_path_factory.mktemp("out")), question={"corpus": ("dog",), "foil": ("cat",)},
              model=ModelSpec("tiny", weights=tiny_checkpoint, device="cpu", precision="fp32"),
              options={"masks": 16}, overlays=True)
    batch.run(batch.collect(str(folder), job), job)
    return f"{job.out_dir}/report.html"


def scores(page) -> list[str]:
    return page.eval_on_selector_all("#results tbody td.score", "cells => cells.map(c => c.dataset.value)")


def test_the_report_shows_every_row_with_its_overlay_and_sorts_by_score(report):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"file://{report}")
        assert page.locator("#results tbody tr").count() == 4
        page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
        widths = page.eval_on_selector_all("#results img", "images => images.map(i => i.naturalWidth)")
        assert len(widths) == 3 and all(width > 0 for width in widths)  # thumbnails found beside the page
        assert "not an image" in page.locator("#results tbody tr").last.inner_text()

        first = scores(page)
        numbers = [float(value) for value in first[:3]]
        assert first[3] == "" and numbers == sorted(numbers, reverse=True)  # highest first, the failed row last
        page.click("th:has-text('score')")
        assert [float(value) for value in scores(page)[:3]] == sorted(numbers) and scores(page)[3] == ""
        page.click("th:has-text('image')")
        images = page.eval_on_selector_all("#results tbody td.image", "cells => cells.map(c => c.textContent)")
        assert images == sorted(images, reverse=True)
        page.locator("#results img").first.click()  # a thumbnail opens the full-size overlay
        page.wait_for_url("**/overlays/*.png")
        browser.close()
