import urllib.error

import numpy as np
import pytest
import torch

import cocoa_clip as cc
from cocoa_clip.errors import AUDIENCE
from cocoa_clip.models import BUNDLED, clip_package, loading, resolve_precision
from cocoa_clip.models.random_models import write_checkpoint


def test_a_plain_state_dict_loads_through_clips_builder(tiny):
    assert isinstance(tiny.net, clip_package().model.CLIP)
    assert tiny.n_px == 32 and tiny.context_length == 77 and tiny.device.type == "cpu"
    assert next(tiny.net.parameters()).dtype == torch.float32


def test_text_embeddings_are_cached_per_caption(tiny):
    first, _ = tiny.encode_texts(["a dog", "a cat"])
    again, _ = tiny.encode_texts(["a cat", "a dog"])
    torch.testing.assert_close(first.flip(0), again)
    assert first.shape == (2, 32) and first.dtype == torch.float32


def test_missing_and_corrupt_checkpoints_say_what_to_do(tmp_path, tiny_checkpoint):
    with pytest.raises(cc.ModelLoadError, match="No checkpoint file"):
        cc.load(weights=tmp_path / "nothing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(open(tiny_checkpoint, "rb").read()[:5000])
    with pytest.raises(cc.ModelLoadError, match="Could not read .* as a CLIP checkpoint"):
        cc.load(weights=corrupt, device="cpu")


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(cc.ModelLoadError, match="Unknown model 'ViT-Z/99'.*ViT-B/32"):
        cc.load("ViT-Z/99")


def test_offline_download_names_the_cache_path_and_weights_flag(monkeypatch, tmp_path):
    def offline(url, root):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(clip_package().clip, "_download", offline)
    with pytest.raises(cc.ModelLoadError) as error:
        cc.load("ViT-B/32", device="cpu", download_root=str(tmp_path))
    message = str(error.value)  # read by a Python caller: Python advice
    assert str(tmp_path / "ViT-B-32.pt") in message and "weights=PATH" in message and "--weights" not in message
    if BUNDLED["shapes-demo"].is_file():
        assert 'cc.load("shapes-demo")' in message
    token = AUDIENCE.set("cli")  # read at a command line: flags
    try:
        with pytest.raises(cc.ModelLoadError) as error:
            cc.load("ViT-B/32", device="cpu", download_root=str(tmp_path))
    finally:
        AUDIENCE.reset(token)
    assert "--weights PATH" in str(error.value) and "weights=PATH" not in str(error.value)


def test_precision_choices(monkeypatch):
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    for flags, precision in (({"avx512_bf16"}, "bf16"), ({"avx512f"}, "fp32")):  # a CPU with and without bf16 units
        monkeypatch.setattr(loading, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert resolve_precision("auto", torch.device("cpu")) == precision
    with pytest.raises(cc.SettingsError, match="precision"):
        resolve_precision("int4", torch.device("cpu"))
    with pytest.raises(cc.SettingsError, match="CUDA only"):
        cc.load("ViT-B/32", device="cpu", precision="fp16")


def test_bad_devices(tiny_checkpoint):
    with pytest.raises(cc.SettingsError, match="device"):
        cc.load(weights=tiny_checkpoint, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(cc.SettingsError, match="no GPU"):
            cc.load(weights=tiny_checkpoint, device="cuda")


def test_clip_package_imports_in_a_fresh_interpreter():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", "import clip, cocoa_clip; print(clip.available_models()[0])"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "RN50"


def test_a_resnet_clip_explains_with_rise_and_gradients(tmp_path, photo):
    """CLIP's ResNet towers (RN50 and kin) load by the same path and every method answers on them."""
    model = cc.load(weights=write_checkpoint(tmp_path / "rn.pt", "tiny-resnet"), device="cpu", precision="fp32")
    assert type(model.net.visual).__name__ == "ModifiedResNet" and model.n_px == 64
    question = cc.Question(corpus=["dog"], foil=["cat"])
    rise = cc.explain(model, photo, question, masks=64, cache=None)
    gradients = cc.explain(model, photo, question, method="integrated-gradients")
    assert rise.heatmap.shape == gradients.heatmap.shape == (45, 70)
    assert np.isfinite(rise.heatmap).all() and rise.heatmap.std() > 0
    assert rise.score == pytest.approx(gradients.score) == pytest.approx(cc.score(model, photo, question))
    assert abs(gradients.details["convergence_delta"][0]) < 1e-3
