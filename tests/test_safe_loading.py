"""No weights file runs code by default (models/trust.py), and every model says what it was loaded from.

Each payload writes a marker file when it runs: a pickle whose unpickling calls Path.touch, and a
TorchScript archive whose __setstate__ maps the marker file into a tensor (TorchScript has no
`open`; torch.from_file with shared=True creates the file). The first test proves that both payloads
do run when loaded the unsafe way, so the marker's absence after a refusal means something.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import warnings

import pytest
import torch
from test_weights import HUB_PATH, NAME, server, sources  # noqa: F401 (fixtures)

import cocoa_clip as cc
from cocoa_clip import cli
from cocoa_clip.errors import UnsafeCheckpointError
from cocoa_clip.models import clip_package, normalize, trust
from cocoa_clip.models.encoder import Provenance
from cocoa_clip.models.loading import split_revision
from cocoa_clip.models.random_models import OPEN_CLIP_TINY, random_state_dict, write_hf_dir, write_open_clip_dir

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
open_clip = pytest.importorskip("open_clip")


class Payload:
    """Unpickling this calls Path(marker).touch(): code from a weights file."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


class _Evil(torch.nn.Module):
    """A TorchScript module whose loading (its __setstate__) creates the file named in its state."""

    def __init__(self, marker: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))
        self.path = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return self.w, self.path, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        # Used in the result, so TorchScript cannot drop the call as dead code.
        self.w = state[0] + 0 * torch.from_file(state[1], shared=True, size=1, dtype=torch.uint8).float().sum()
        self.path = state[1]
        self.training = state[2]


@pytest.fixture
def marker(tmp_path) -> pathlib.Path:
    return tmp_path / "payload-ran"


@pytest.fixture
def evil_pickle(tmp_path, marker) -> pathlib.Path:
    """A CLIP state dict with one more entry, whose unpickling touches the marker."""
    path = tmp_path / "evil.pt"
    torch.save({**random_state_dict("tiny"), "extra": Payload(marker)}, path)
    return path


@pytest.fixture
def evil_jit(tmp_path, marker) -> pathlib.Path:
    path = tmp_path / "evil_jit.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        torch.jit.script(_Evil(str(marker))).save(str(path))
    return path


@pytest.fixture
def tiny_arch(tmp_path_factory) -> str:
    """open_clip:cocoa-tiny, an open_clip architecture that reads the tiny CLIP's weights."""
    configs = tmp_path_factory.mktemp("configs")
    (configs / "cocoa-tiny.json").write_text(json.dumps(OPEN_CLIP_TINY))
    open_clip.add_model_config(configs)
    return "open_clip:cocoa-tiny"


def assert_refused(refused: pytest.ExceptionInfo, path: object, marker: pathlib.Path, trust_helps: bool = True) -> None:
    """One sentence naming the file and what to do, and no payload ran."""
    message = str(refused.value)
    assert isinstance(refused.value, UnsafeCheckpointError)
    assert message.startswith(f"Refused {path}: ") and message.endswith(".") and message.count(". ") == 0
    assert "\n" not in message and "convert it to safetensors" in message
    assert ("pass trust_checkpoint=True only if you trust whoever made it" in message) == trust_helps
    assert not marker.exists()


def jit_archive(path: pathlib.Path) -> tuple[torch.nn.Module, pathlib.Path]:
    """OpenAI's format: a traced CLIP saved as a TorchScript archive in fp16. Returns the reference model too."""
    clip = clip_package()
    weights = {name: tensor.half().float() for name, tensor in random_state_dict("tiny", seed=3).items()}
    reference = clip.model.build_model(weights).float().eval()  # weights exact in fp16, as the archive keeps them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(reference, (torch.rand(1, 3, 32, 32), clip.tokenize(["a dog"])))
    traced.half().save(str(path))
    return reference.float(), path  # the trace shares its tensors: back to float32 (exact: fp16 values)


def test_the_payloads_are_live(evil_pickle, evil_jit, marker):
    """Loaded the unsafe way, each payload writes its marker: so its absence below means it did not run."""
    torch.load(evil_pickle, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(evil_jit))
    assert marker.exists()


@pytest.mark.parametrize("payload", ["evil_pickle", "evil_jit"])
def test_the_clip_loader_refuses_payloads(payload, marker, request):
    path = request.getfixturevalue(payload)
    with pytest.raises(UnsafeCheckpointError) as refused:
        cc.load(weights=path, device="cpu", precision="fp32")
    assert_refused(refused, path, marker)


@pytest.mark.parametrize("payload", ["evil_pickle", "evil_jit"])
def test_the_open_clip_loader_refuses_payloads(payload, marker, request, tiny_arch):
    path = request.getfixturevalue(payload)
    with pytest.raises(UnsafeCheckpointError) as refused:
        cc.load(tiny_arch, weights=path, device="cpu", precision="fp32")
    assert_refused(refused, path, marker)


def test_an_open_clip_folder_with_a_payload_is_refused(tmp_path, marker):
    folder = pathlib.Path(write_open_clip_dir(tmp_path / "oc"))
    weights = folder / "open_clip_pytorch_model.bin"
    torch.save({**torch.load(weights, weights_only=True), "extra": Payload(marker)}, weights)
    with pytest.raises(UnsafeCheckpointError) as refused:
        cc.load(f"open_clip:local-dir:{folder}", device="cpu", precision="fp32")
    assert_refused(refused, weights, marker)


def test_a_transformers_folder_with_a_payload_is_refused(tmp_path, marker):
    """A save_pretrained folder with only pytorch_model.bin: transformers reads it with weights_only=True, even
    when trusted (so the sentence does not offer --trust-checkpoint)."""
    transformers = pytest.importorskip("transformers")
    folder = pathlib.Path(write_hf_dir(tmp_path / "hf", "clip"))
    state = transformers.CLIPModel.from_pretrained(folder).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save({**state, "extra": Payload(marker)}, folder / "pytorch_model.bin")
    for trusted in (False, True):
        with pytest.raises(UnsafeCheckpointError) as refused:
            cc.load(f"hf:{folder}", device="cpu", precision="fp32", trust_checkpoint=trusted)
        assert_refused(refused, folder / "pytorch_model.bin", marker, trust_helps=False)


def test_a_hub_bin_with_a_payload_is_refused(sources, server, evil_pickle, marker):  # noqa: F811 (fixtures)
    """The OpenAI hub copy where the hub offers only the .bin file, served on 127.0.0.1."""
    server.files[HUB_PATH.replace("open_clip_model.safetensors", "open_clip_pytorch_model.bin")] = \
        evil_pickle.read_bytes()
    with pytest.raises(UnsafeCheckpointError) as refused:
        cc.load(NAME, download_root=str(sources), device="cpu", precision="fp32")
    assert str(refused.value).startswith("Refused ") and str(refused.value).endswith(".")
    assert "open_clip_pytorch_model.bin" in str(refused.value) and "trust_checkpoint=True" in str(refused.value)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [False, True])
def test_open_clip_hub_files_at_a_revision(payload, sources, server, tmp_path, marker):  # noqa: F811 (fixtures)
    """open_clip:hf-hub:REPO@REV fetches its files at that revision (served on 127.0.0.1) and reads its .bin as
    tensors only: a clean one loads and names its commit, one with a payload is refused."""
    folder = pathlib.Path(write_open_clip_dir(tmp_path / "oc"))
    weights = folder / "open_clip_pytorch_model.bin"
    if payload:
        torch.save({**torch.load(weights, weights_only=True), "extra": Payload(marker)}, weights)
    for file in folder.iterdir():
        server.files[f"/org/tiny/resolve/v1/{file.name}"] = file.read_bytes()
    if payload:
        with pytest.raises(UnsafeCheckpointError) as refused:
            cc.load("open_clip:hf-hub:org/tiny@v1", device="cpu", precision="fp32")
        assert "open_clip_pytorch_model.bin: it is a pickle" in str(refused.value) and not marker.exists()
    else:
        loaded = cc.load("open_clip:hf-hub:org/tiny@v1", device="cpu", precision="fp32").provenance
        assert (loaded.source, loaded.revision, loaded.commit) == ("hub", "v1", "0" * 40)
        assert loaded.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    files = [path for path in server.requests if "/resolve/" in path]
    assert files and all("/resolve/v1/" in path for path in files)


@pytest.mark.parametrize("payload", ["evil_pickle", "evil_jit"])
@pytest.mark.parametrize("arch", ["", "open_clip:cocoa-tiny"])
def test_the_cli_refuses_in_one_line(payload, arch, marker, request, tiny_arch, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (40, 30), "red").save(tmp_path / "picture.png")
    path = request.getfixturevalue(payload)
    model = ["--model", arch] if arch else []
    assert cli.main(["explain", str(tmp_path / "picture.png"), "--corpus", "dog", "--foil", "cat", *model,
                     "--weights", str(path), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Refused {path}: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "pass --trust-checkpoint only" in err and "trust_checkpoint=True" not in err and not marker.exists()


@pytest.fixture
def known(monkeypatch):
    """Registers SHA-256s as known TorchScript archives (as OpenAI's are); returns the set to add to."""
    hashes = set(trust.known_archives())
    monkeypatch.setattr(trust, "known_archives", lambda: hashes)
    return hashes


def test_a_known_jit_archive_loads_and_embeds_as_the_plain_model(tmp_path, known, tiny_arch):
    """OpenAI's downloads are TorchScript archives with fp16 weights; known by hash, they load and embed as the
    plain model does, through the clip loader and through open_clip."""
    reference, path = jit_archive(tmp_path / "ViT-tiny.pt")
    with pytest.raises(UnsafeCheckpointError):  # unknown: refused
        cc.load(weights=path, device="cpu", precision="fp32")
    known.add(hashlib.sha256(path.read_bytes()).hexdigest())
    pixels = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = reference.encode_image(normalize(pixels))
        texts = reference.encode_text(clip_package().tokenize(["a dog", "a cat"]))
    for name in ("ViT-B/32", tiny_arch):  # the clip loader (--weights wins over the name) and open_clip
        model = cc.load(name, weights=path, device="cpu", precision="fp32")
        assert next(model.net.parameters()).dtype == torch.float32
        torch.testing.assert_close(model.encode_images(pixels), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.encode_texts(["a dog", "a cat"])[0], texts, atol=1e-5, rtol=1e-4)
        assert model.provenance.sha256 in known
    assert isinstance(cc.load(weights=path, device="cpu").net, clip_package().model.CLIP)


def test_trust_checkpoint_opens_an_unknown_archive(tmp_path):
    reference, path = jit_archive(tmp_path / "ViT-tiny.pt")
    model = cc.load(weights=path, device="cpu", precision="fp32", trust_checkpoint=True)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_images(pixels), reference.encode_image(normalize(pixels)),
                                   atol=1e-5, rtol=1e-4)
    from PIL import Image

    Image.new("RGB", (40, 30), "red").save(tmp_path / "picture.png")
    assert cli.main(["explain", str(tmp_path / "picture.png"), "--corpus", "dog", "--foil", "cat", "--weights",
                     str(path), "--trust-checkpoint", "--masks", "16", "--device", "cpu", "--quiet"]) == 0


def test_the_bundled_model_is_pinned():
    model = cc.load("shapes-demo", device="cpu", precision="fp32")
    assert model.provenance.source == "bundled" and model.provenance.sha256 == trust.BUNDLED_SHA256["shapes-demo"]


def test_answers_name_what_was_loaded(tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    model = cc.load(weights=tiny_checkpoint, device="cpu", precision="fp32")
    digest = hashlib.sha256(pathlib.Path(tiny_checkpoint).read_bytes()).hexdigest()
    assert model.provenance == Provenance(source="file", file=tiny_checkpoint, sha256=digest)
    picture = Image.new("RGB", (40, 30), "red")
    answer = cc.explain(model, picture, cc.Question(corpus=["dog"], foil=["cat"]), masks=16, cache=None)
    assert answer.details["provenance"] == {"source": "file", "file": tiny_checkpoint, "revision": None,
                                            "commit": None, "sha256": digest}
    picture.save(tmp_path / "picture.png")
    assert cli.main(["explain", str(tmp_path / "picture.png"), "--corpus", "dog", "--foil", "cat", "--weights",
                     tiny_checkpoint, "--masks", "16", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["details"]["provenance"]["sha256"] == digest


def test_a_revision_reaches_the_hub_and_is_reported(sources, server, state_dict_bytes):  # noqa: F811 (fixtures)
    server.files[HUB_PATH.replace("/main/", "/v1.0/")] = state_dict_bytes
    model = cc.load(f"{NAME}@v1.0", download_root=str(sources), device="cpu", precision="fp32")
    assert any("/resolve/v1.0/" in path for path in server.requests)
    assert not any("/resolve/main/" in path for path in server.requests)
    loaded = model.provenance
    assert (loaded.source, loaded.revision, loaded.commit) == ("hub", "v1.0", "0" * 40)  # the fake hub's commit
    assert loaded.sha256 == hashlib.sha256(state_dict_bytes).hexdigest()
    assert loaded.file.endswith("open_clip_model.safetensors")


@pytest.fixture
def state_dict_bytes(tmp_path) -> bytes:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in random_state_dict("tiny", seed=3).items()}, str(tmp_path / "w"))
    return (tmp_path / "w").read_bytes()


def test_names_with_a_revision():
    assert split_revision("ViT-L/14@336px") == ("ViT-L/14@336px", None)  # an @ of the name's own
    assert split_revision("ViT-L/14@336px@abc123") == ("ViT-L/14@336px", "abc123")
    assert split_revision("hf:org/repo@main") == ("hf:org/repo", "main")
    assert split_revision("open_clip:hf-hub:org/repo@v2") == ("open_clip:hf-hub:org/repo", "v2")
    assert split_revision("ViT-B/32", "v1") == ("ViT-B/32", "v1")
    with pytest.raises(cc.SettingsError, match="give one of them"):
        split_revision("ViT-B/32@v1", "v2")
    with pytest.raises(cc.ModelLoadError, match="drop @v1"):
        cc.load("shapes-demo@v1", device="cpu")
