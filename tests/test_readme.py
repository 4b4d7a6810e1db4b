"""The README's examples run as written (with the bundled model standing in for ViT-B/32, which
cannot be downloaded here), and its command lines use only options the CLI has."""
import re
import shlex
from pathlib import Path

import pytest

from cocoa_clip.cli import build_parser
from cocoa_clip.models import BUNDLED

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.mark.skipif(not BUNDLED["shapes-demo"].is_file(), reason="needs the bundled shapes-demo model")
def test_python_examples_run(tmp_path, monkeypatch):
    code = "\n".join(block for block in blocks("python") if "gradio_client" not in block)
    assert "cc.load(" in code and "cc.explain(" in code
    code = code.replace('cc.load("ViT-B/32")', 'cc.load("shapes-demo", device="cpu")')
    code = code.replace('"assets/', f'"{ROOT}/assets/')
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "overlay.png").is_file()
    assert namespace["rocket"].score == pytest.approx(-namespace["woman"].score, abs=1e-6)


def test_command_lines_parse():
    lines = [line for block in blocks("bash") for line in block.splitlines() if line.startswith("cocoa-clip ")]
    assert len(lines) >= 5
    parser = build_parser()
    for line in lines:
        if not line.startswith("cocoa-clip serve"):  # serve hands its options to the web app's parser
            parser.parse_args(shlex.split(line, comments=True)[1:])  # argparse exits on an unknown option


def test_command_line_examples_do_not_overwrite_each_others_outputs():
    """Each README command that writes files writes its own (explicit or default paths)."""
    lines = [line for block in blocks("bash") for line in block.splitlines() if line.startswith("cocoa-clip ")]
    parser, written = build_parser(), []
    for line in lines:
        if line.split()[1] not in ("explain", "evaluate", "compare"):
            continue
        args = parser.parse_args(shlex.split(line, comments=True)[1:])
        stem = Path(args.image if isinstance(args.image, str) else args.image[0]).stem
        defaults = {"explain": f"{stem}_cocoa.png", "compare": f"{stem}_compare.png", "evaluate": None}
        outputs = [getattr(args, "out", None) or defaults[args.command]]
        outputs += [getattr(args, name, None) for name in ("heatmap", "colorbar", "plot", "labels")]
        written += [path for path in outputs if path]
    assert len(written) == len(set(written)), written
