"""The package as a user installs it: `pip install .` into a fresh virtual environment, then the `cocoa-clip`
command from another folder (no PYTHONPATH, no repository on the path)."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv that sees the packages of the Python running the tests (torch, gradio: no downloads) with cocoa-clip
    installed from a copy of the source (so that the build leaves nothing in the repository). Returns its bin folder.

    The running Python may itself be a venv: `--system-site-packages` would then expose the base interpreter's
    packages, not the venv's, so a .pth file adds the running interpreter's own site-packages instead."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "cocoa_clip", source / "cocoa_clip", ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "venv"
    # Without the venv's own seed packages (an old setuptools), so the build uses the running Python's setuptools.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    # addsitedir, not bare paths: the .pth files in those folders (a venv's own, editable installs) run too.
    additions = "; ".join(f"site.addsitedir({folder!r})" for folder in site.getsitepackages())
    (Path(own) / "running-python.pth").write_text(f"import site; {additions}\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
           "--no-build-isolation", "--disable-pip-version-check", str(source)]
    result = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    shutil.rmtree(source)  # what runs now is the installed copy only
    return venv / "bin"


def command(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    return subprocess.run([str(bin_dir / "cocoa-clip"), *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


@pytest.mark.slow
def test_the_installed_command_works_from_any_folder(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    usage = command(installed, "--help", cwd=elsewhere)
    assert usage.returncode == 0 and all(name in usage.stdout for name in
                                         ("explain", "evaluate", "compare", "models", "serve"))
    serve = command(installed, "serve", "--help", cwd=elsewhere)
    assert serve.returncode == 0 and serve.stdout.startswith("usage: cocoa-clip serve") and "--port" in serve.stdout

    Image.new("RGB", (40, 30), (200, 30, 30)).save(elsewhere / "red.png")
    explain = command(installed, "explain", "red.png", "--model", "shapes-demo", "--corpus", "red square",
                      "--foil-preset", "cifar100", "--masks", "32", "--quiet", cwd=elsewhere)
    assert explain.returncode == 0, explain.stderr
    assert explain.stdout.startswith("score ") and (elsewhere / "red_cocoa.png").is_file()
    assert "CIFAR-100" in explain.stderr  # the preset's class list came with the package, as did the weights
