"""The README's and the docs' examples run as written (with the bundled model standing in for ViT-B/32,
which cannot be downloaded here), their command lines use only options the CLI has, and the docs site builds.

A Python block that needs a running app is marked on the line above its fence with
`<!-- test: needs a running app -->` (an HTML comment, invisible on the page) and only compiled."""
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cocoa_clip.cli import build_parser
from cocoa_clip.models import BUNDLED

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NEEDS_APP = "<!-- test: needs a running app -->"


def blocks(page: Path, language: str, runnable: bool | None = None) -> list[str]:
    """The page's code blocks in `language`; runnable=True only those not marked as needing an app,
    runnable=False only the marked ones."""
    found = re.findall(rf"(^[^\n]*\n)?```{language}\n(.*?)```", page.read_text(), flags=re.S | re.M)
    return [code for before, code in found if runnable is None or (NEEDS_APP not in (before or "")) == runnable]


def command_lines(page: Path) -> list[str]:
    return [line for block in blocks(page, "bash") for line in block.splitlines() if line.startswith("cocoa-clip ")]


def standing_in(code: str) -> str:
    """The example as it runs here: shapes-demo on the CPU for ViT-B/32, the repository's pictures by full path."""
    code = code.replace('cc.load("ViT-B/32")', 'cc.load("shapes-demo", device="cpu")')
    code = code.replace('cc.load("shapes-demo")', 'cc.load("shapes-demo", device="cpu")')
    return code.replace('"assets/', f'"{ROOT}/assets/')


PYTHON_PAGES = [page for page in PAGES if blocks(page, "python", runnable=True)]


def test_the_readme_and_the_guides_have_examples():
    names = {page.name for page in PYTHON_PAGES}
    assert {"README.md", "python.md", "faithfulness.md", "models.md"} <= names, names
    assert len(command_lines(ROOT / "README.md")) >= 1 and len(command_lines(ROOT / "docs" / "cli.md")) >= 5


@pytest.mark.skipif(not BUNDLED["shapes-demo"].is_file(), reason="needs the bundled shapes-demo model")
@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda page: page.name)
def test_python_examples_run(page, tmp_path, monkeypatch):
    """A page's blocks run in order in one namespace, as a reader would paste them."""
    code = standing_in("\n".join(blocks(page, "python", runnable=True)))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(page.relative_to(ROOT)), "exec"), namespace)
    saved = re.findall(r'\.save\("([^"]+)"\)', code)
    assert all((tmp_path / name).is_file() for name in saved), saved


def test_examples_that_need_an_app_still_compile():
    marked = [code for page in PAGES for code in blocks(page, "python", runnable=False)]
    assert marked and all("gradio_client" in code for code in marked)
    for code in marked:
        compile(code, "example", "exec")


@pytest.mark.skipif(not BUNDLED["shapes-demo"].is_file(), reason="needs the bundled shapes-demo model")
def test_readme_python_example_answers_the_question(tmp_path, monkeypatch):
    """The README's example asks the demo model a question it can answer: the orange cross is more
    "orange cross" than "yellow square"."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(standing_in("\n".join(blocks(ROOT / "README.md", "python"))), "README.md", "exec"), namespace)
    assert namespace["answer"].score > 0


@pytest.mark.parametrize("page", [page for page in PAGES if command_lines(page)], ids=lambda page: page.name)
def test_command_lines_parse(page):
    parser = build_parser()
    for line in command_lines(page):
        if not line.startswith("cocoa-clip serve"):  # serve hands its options to the web app's parser
            parser.parse_args(shlex.split(line, comments=True)[1:])  # argparse exits on an unknown option


@pytest.mark.parametrize("page", [page for page in PAGES if command_lines(page)], ids=lambda page: page.name)
def test_command_line_examples_do_not_overwrite_each_others_outputs(page):
    """Each command on a page that writes files writes its own (explicit or default paths)."""
    parser, written = build_parser(), []
    for line in command_lines(page):
        if line.split()[1] not in ("explain", "evaluate", "compare"):
            continue
        args = parser.parse_args(shlex.split(line, comments=True)[1:])
        stem = Path(args.image if isinstance(args.image, str) else args.image[0]).stem
        defaults = {"explain": f"{stem}_cocoa.png", "compare": f"{stem}_compare.png", "evaluate": None}
        outputs = [getattr(args, "out", None) or defaults[args.command]]
        outputs += [getattr(args, name, None) for name in ("heatmap", "colorbar", "plot", "labels")]
        written += [path for path in outputs if path]
    assert len(written) == len(set(written)), written


def test_readme_is_short_with_a_quick_start_first():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    start = "\n".join(lines[:60])
    for step in ("python3 -m venv", "pip install -r requirements-dev.txt", "python app.py", "python -m pytest"):
        assert step in start, step


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (requirements-dev.txt)")
def test_docs_site_builds_strictly(tmp_path):
    """Every page in the nav exists, every link resolves, and the API reference renders from the docstrings."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "insertion_deletion" in api and "Question" in api
