"""Where the OpenAI weights come from (weights.py): the sources in order, served from 127.0.0.1.

A fake Hugging Face hub (the two HTTP calls `hf_hub_download` makes: HEAD then GET on
/REPO/resolve/REVISION/FILE) serves a tiny CLIP-format state dict under the ViT-B/32 hub copy's
name; a local server answers 404 for the `clip` package's URL, or the URL's host does not resolve.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from PIL import Image
from safetensors.torch import save_file

import cocoa_clip as cc
from cocoa_clip import cli
from cocoa_clip.models import clip_package, weights
from cocoa_clip.models.random_models import random_state_dict

REPO = Path(__file__).resolve().parents[1]
NAME = "ViT-B/32"
HUB_PATH = f"/{weights.HUB_REPOS[NAME]}/resolve/main/open_clip_model.safetensors"


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self, body: bool) -> None:
        path = self.path.split("?")[0]
        self.server.requests.append(path)
        data = self.server.files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's names)
        self._answer(False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(True)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 with a `files` dict (path -> bytes) and the paths it was asked for."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests = {}, []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.url = f"http://127.0.0.1:{httpd.server_port}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    return random_state_dict("tiny", seed=3)


@pytest.fixture(scope="module")
def safetensors_bytes(state_dict, tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("hub") / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path.read_bytes()


@pytest.fixture
def sources(monkeypatch, tmp_path, server):
    """Every source pointed at this test: the clip cache in tmp, the hub's cache in tmp and its endpoint at
    `server`, the package URL at `server` (404 unless the test serves it). Yields the clip cache folder."""
    root = tmp_path / "clip"
    sha = weights.expected_sha256(NAME)
    monkeypatch.setattr(weights, "package_url", lambda name: f"{server.url}/clip/models/{sha}/ViT-B-32.pt")
    monkeypatch.setattr(constants, "ENDPOINT", server.url)  # as HF_ENDPOINT sets them when huggingface_hub loads
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return root


def reference_embeddings(state_dict, pixels, tokens):
    """What the `clip` package's own model, built from the same tensors, gives."""
    net = clip_package().model.build_model(dict(state_dict)).float().eval()
    with torch.no_grad():
        return net.encode_image(pixels), net.encode_text(tokens)


def test_dead_url_falls_through_to_the_hub_copy(sources, server, safetensors_bytes, state_dict, caplog):
    server.files[HUB_PATH] = safetensors_bytes
    caplog.set_level("INFO", logger="cocoa_clip.models.weights")
    model = cc.load(NAME, download_root=str(sources), device="cpu", precision="fp32")

    assert any(path.endswith("/ViT-B-32.pt") for path in server.requests)  # the package URL was tried: 404
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(": ")[1] for line in lines] == ["clip cache", "hub cache", "clip URL", "hub"]
    assert "404" in lines[2] and lines[3].endswith("open_clip_model.safetensors")
    pixels = torch.rand(2, 3, model.n_px, model.n_px)
    tokens = clip_package().tokenize(["a dog", "a cat"])
    want_image, want_text = reference_embeddings(state_dict, cc.models.normalize(pixels), tokens)
    torch.testing.assert_close(model.encode_images(pixels), want_image, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.encode_texts(["a dog", "a cat"])[0], want_text, rtol=0, atol=1e-6)


def test_unresolvable_url_host_falls_through_too(sources, server, safetensors_bytes, monkeypatch):
    server.files[HUB_PATH] = safetensors_bytes
    sha = weights.expected_sha256(NAME)
    monkeypatch.setattr(weights, "package_url", lambda name: f"http://clip-weights.invalid/clip/models/{sha}/x.pt")
    found = weights.find(NAME, sources)
    assert found.source == "hub" and found.path.name == "open_clip_model.safetensors"


def test_pytorch_file_when_the_hub_has_no_safetensors(sources, server, state_dict, tmp_path):
    torch.save(state_dict, tmp_path / "sd.bin")
    server.files[HUB_PATH.replace("open_clip_model.safetensors", "open_clip_pytorch_model.bin")] = \
        (tmp_path / "sd.bin").read_bytes()
    model = cc.load(NAME, download_root=str(sources), device="cpu", precision="fp32")
    pixels = torch.rand(1, 3, model.n_px, model.n_px)
    want, _ = reference_embeddings(state_dict, cc.models.normalize(pixels), clip_package().tokenize(["x"]))
    torch.testing.assert_close(model.encode_images(pixels), want, rtol=0, atol=1e-6)


def test_clip_cache_is_used_only_with_the_right_checksum(sources, server, tiny_checkpoint, monkeypatch, caplog):
    sources.mkdir()
    cached = sources / "ViT-B-32.pt"
    cached.write_bytes(Path(tiny_checkpoint).read_bytes())
    caplog.set_level("INFO", logger="cocoa_clip.models.weights")
    with pytest.raises(cc.ModelLoadError) as refused:  # the real ViT-B/32 checksum: this file is not it
        cc.load(NAME, download_root=str(sources), device="cpu")
    assert "wrong SHA-256" in str(refused.value)
    assert refused.value.tried == ("clip cache", "hub cache", "clip URL", "hub")

    sha = weights.sha256(cached)  # a package whose URL names this file's checksum takes it, with no network
    monkeypatch.setattr(weights, "package_url", lambda name: f"{server.url}/clip/models/{sha}/ViT-B-32.pt")
    server.requests.clear()
    found = weights.find(NAME, sources)
    assert found == weights.Found(cached, "clip cache", sha256=sha) and server.requests == []


def test_the_package_url_downloads_into_the_clip_cache_after_its_checksum(sources, server, tiny_checkpoint,
                                                                          monkeypatch):
    data = Path(tiny_checkpoint).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(weights, "package_url", lambda name: f"{server.url}/clip/models/{sha}/ViT-B-32.pt")
    server.files[f"/clip/models/{sha}/ViT-B-32.pt"] = data
    found = weights.find(NAME, sources)
    assert found == weights.Found(sources / "ViT-B-32.pt", "clip URL", sha256=sha)
    assert found.path.read_bytes() == data

    found.path.unlink()  # a corrupted download is refused and leaves no file behind
    server.files[f"/clip/models/{sha}/ViT-B-32.pt"] = data[:-10] + b"0123456789"
    with pytest.raises(cc.ModelLoadError, match="does not match"):
        weights.find(NAME, sources)
    assert list(sources.iterdir()) == []


def test_offline_gives_one_message_with_what_to_do(sources, server, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(cc.ModelLoadError) as refused:
        cc.load(NAME, download_root=str(sources), device="cpu")
    message = str(refused.value)
    assert server.requests == []  # nothing went to the network
    # From Python, the advice is Python: what a caller of cc.load would type.
    for advice in ("HF_HUB_OFFLINE", str(sources / "ViT-B-32.pt"), "weights=PATH", "HF_ENDPOINT",
                   'cocoa_clip.models.download("ViT-B/32")', 'cc.load("shapes-demo")'):
        assert advice in message
    assert "--" not in message and "cocoa-clip " not in message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize(("command", "fits", "does_not_fit"), [
    (["explain", "photo.jpg", "--corpus", "dog", "--foil", "cat"],
     ("--weights PATH", "cocoa-clip download ViT-B/32", "--model shapes-demo"), ("cc.load", "weights=PATH")),
    (["download"], ("connect this machine to the internet", "HF_ENDPOINT"),
     ("cocoa-clip download", "--model shapes-demo", "--weights", "cc.load")),
])
def test_offline_advice_fits_the_command(sources, server, monkeypatch, capsys, tmp_path, command, fits,
                                        does_not_fit):
    """The command line advises commands and flags; `download` offline does not advise `download`."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(weights, "default_root", lambda: sources)
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    command = [part.replace("photo.jpg", str(tmp_path / "photo.jpg")) for part in command]
    assert cli.main([*command, NAME] if command == ["download"] else [*command, "--model", NAME, "--quiet"]) == 2
    error = capsys.readouterr().err
    assert all(advice in error for advice in fits), error
    assert not any(advice in error for advice in does_not_fit), error
    with pytest.raises(cc.ModelLoadError, match=r'cc\.load\("shapes-demo"\)'):  # Python again once the command ends
        cc.load(NAME, download_root=str(sources), device="cpu")


def test_download_then_load_offline(sources, server, safetensors_bytes, state_dict, monkeypatch, capsys):
    server.files[HUB_PATH] = safetensors_bytes
    monkeypatch.setattr(weights, "default_root", lambda: sources)
    assert cli.main(["download", NAME]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"{NAME}: ") and out.out.strip().endswith("(hub)")
    assert "weights for ViT-B/32: clip URL:" in out.err  # each source tried, one line each

    server.files.clear()  # the hub is gone, and the machine offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = cc.load(NAME, device="cpu", precision="fp32")
    pixels = torch.rand(1, 3, model.n_px, model.n_px)
    want, _ = reference_embeddings(state_dict, cc.models.normalize(pixels), clip_package().tokenize(["x"]))
    torch.testing.assert_close(model.encode_images(pixels), want, rtol=0, atol=1e-6)

    capsys.readouterr()
    assert cli.main(["models"]) == 0
    printed = capsys.readouterr()
    assert "weights for" not in printed.err  # a listing, not a log of sources
    listing = {line.split()[0]: line for line in printed.out.splitlines()}
    assert "on disk (hub cache)" in listing[NAME] and "not on disk" in listing["RN50"]
    assert "on disk (bundled)" in listing["shapes-demo"]


def test_cli_explain_with_a_mirror_scores_as_the_clip_package(server, safetensors_bytes, state_dict, tmp_path):
    """Done-when of the issue: the package URL unreachable, a hub at HF_ENDPOINT, a fresh process."""
    server.files[HUB_PATH] = safetensors_bytes
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(photo)
    # The package URL goes through a proxy that refuses every connection; the local hub is reached directly.
    env = {**os.environ, "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": server.url,
           "HF_HUB_OFFLINE": "0", "PYTHONPATH": str(REPO), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
    command = [sys.executable, "-m", "cocoa_clip", "explain", str(photo), "--model", NAME, "--corpus", "dog",
               "--foil", "cat", "--framing", "crop", "--precision", "fp32", "--device", "cpu", "--masks", "16",
               "--json", "--out", str(tmp_path / "overlay.png")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "clip URL: [Errno 111] Connection refused" in done.stderr and "weights for ViT-B/32: hub: " in done.stderr
    score = json.loads(done.stdout)["score"]

    clip = clip_package()
    net = clip.model.build_model(dict(state_dict)).float().eval()
    with torch.no_grad():
        image = net.encode_image(clip.clip._transform(net.visual.input_resolution)(Image.open(photo))[None])
        texts = net.encode_text(clip.tokenize([cc.DEFAULT_TEMPLATE.format(c) for c in ("dog", "cat")]))
    image, texts = image / image.norm(dim=-1, keepdim=True), texts / texts.norm(dim=-1, keepdim=True)
    want = float(image[0] @ texts[0] - image[0] @ texts[1])
    assert score == pytest.approx(want, abs=1e-5)
    assert (tmp_path / "overlay.png").is_file()
