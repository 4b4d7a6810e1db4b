"""open_clip models, SigLIP included: `open_clip:ARCH[:TAG]`, or `open_clip:ARCH` with `--weights PATH`;
also open_clip's own schemas, `open_clip:hf-hub:ORG/REPO` and `open_clip:local-dir:DIR` (a folder with
open_clip_config.json and the weights). A hub revision pins `open_clip:ARCH:TAG@REV` and
`open_clip:hf-hub:ORG/REPO@REV`: open_clip's own download takes none, so the files are fetched at that
revision here and read as local files.

No weights file runs code (trust.py): open_clip reads with torch.load(weights_only=True), and a
TorchScript archive given as --weights is opened only when known by SHA-256, then handed to open_clip
as its plain tensors.

The architecture, its pretrained weights (downloaded and cached by open_clip itself), its
preprocessing (`open_clip.get_model_preprocess_cfg`: size, resize mode, interpolation, mean, std)
and its tokenizer all come from open_clip, so pictures and captions are read as open_clip reads them.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import ModelLoadError, UnsafeCheckpointError, spelled
from ..encoder import LearntHead, Model, Preprocessing
from ..hub import check_hub, hub_cached, hub_first
from ..tracing import AttentionTrace, differentiable_input, no_attention, traced_blocks
from ..trust import is_torchscript, provenance, read_state_dict, refusal, refused_by_torch, sha256
from ..weights import HUB_FILES
from . import ready

SCHEMAS = ("hf-hub:", "local-dir:")  # open_clip's own ways to name a model with its weights


@dataclass(eq=False, kw_only=True)
class OpenClipModel(LearntHead, Model):
    """An open_clip `CLIP` / `CustomTextCLIP` with its tokenizer (SimpleTokenizer or a Hugging Face one)."""

    net: torch.nn.Module
    tokenizer: object
    family: str = "open_clip"

    @property
    def context_length(self) -> int:
        return int(self.tokenizer.context_length)

    def encode_normalised(self, normalised: torch.Tensor) -> torch.Tensor:
        return self.net.encode_image(normalised)

    def attention_trace(self, normalised: torch.Tensor) -> AttentionTrace:
        visual = self.net.visual
        blocks = list(getattr(getattr(visual, "transformer", None), "resblocks", ()))
        if not blocks:  # open_clip's timm towers (its SigLIP models) and ResNets
            raise no_attention(self.name, "has an image tower from timm or a ResNet, not open_clip's own "
                                          "vision transformer (for SigLIP, load it with hf:)")
        plain = all(isinstance(block.attn, torch.nn.MultiheadAttention) for block in blocks)
        if not plain or visual.attn_pool is not None or visual.pool_type != "tok":
            raise no_attention(self.name, "pools its tokens or attends in a way other than open_clip's CLIP "
                                          "vision transformer (class token, standard attention)")
        with traced_blocks(blocks, batch_first=visual.transformer.batch_first) as (attentions, tokens):
            self.net.encode_image(differentiable_input(normalised, visual))

        def readout(block_tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
            pooled, _ = visual._pool(block_tokens)  # open_clip's own: the class token and ln_post, in its order
            return (pooled @ visual.proj if visual.proj is not None else pooled), None

        return AttentionTrace(attentions, tokens, readout, tuple(visual.grid_size))

    def token_ids(self, text: str) -> tuple[int, ...]:
        tokenizer = self.tokenizer
        if hasattr(tokenizer, "sot_token_id"):  # open_clip's SimpleTokenizer (CLIP's BPE)
            return (tokenizer.sot_token_id, *tokenizer.encode(text), tokenizer.eot_token_id)
        return tuple(tokenizer.tokenizer(tokenizer.clean_fn(text))["input_ids"])  # its HFTokenizer

    def _embed_captions(self, texts: list[str]) -> torch.Tensor:
        return self.net.encode_text(self.tokenizer(texts).to(self.device))


def load(rest: str, *, weights: str | os.PathLike | None, device: torch.device, precision: str,
         revision: str | None = None, trust: bool = False) -> OpenClipModel:
    """rest: "ARCH" or "ARCH:TAG" (the part after "open_clip:"); weights: a checkpoint for ARCH; revision: the hub
    revision of the tag's or hf-hub repository's files; trust: read files even where that could run their code."""
    open_clip = _package()
    schema = rest.startswith(SCHEMAS)  # the name says where config and weights are
    arch, _, tag = (rest, "", "") if schema else rest.partition(":")
    name = f"open_clip:{rest}"
    if not schema and arch not in open_clip.list_models():
        raise ModelLoadError(f"Unknown open_clip architecture {arch!r}; `python -m cocoa_clip models` lists them "
                             "(e.g. open_clip:ViT-B-32:laion2b_s34b_b79k).")
    tags = [] if schema else open_clip.list_pretrained_tags_by_model(arch)
    if tag and tag not in tags:
        raise ModelLoadError(f"open_clip has no weights {tag!r} for {arch}; its tags: {', '.join(tags) or 'none'}.")
    if schema and weights is not None:
        raise ModelLoadError(f"{name} names its own weights; drop --weights, or use open_clip:ARCH --weights PATH.")
    if arch.startswith("local-dir:") and not Path(arch[len("local-dir:"):]).is_dir():
        raise ModelLoadError(f"No folder at {arch[len('local-dir:'):]}; open_clip:local-dir:DIR needs a folder with "
                             "open_clip_config.json and the weights.")
    if weights is None and not tag and not schema:
        raise ModelLoadError(f"{name} needs its weights: open_clip:{arch}:TAG (TAG one of {', '.join(tags) or 'none'})"
                             f", or --weights PATH with a checkpoint for {arch}.")
    if weights is not None and not Path(weights).is_file():
        raise ModelLoadError(f"No checkpoint file at {weights}; pass --weights with the path of a {arch} checkpoint.")
    if revision is not None and (weights is not None or arch.startswith("local-dir:") or not (tag or schema)):
        raise ModelLoadError(f"A revision pins hub files; {weights or name} has none, so drop @{revision}.")
    # A local checkpoint for a tagged architecture is read with that tag's preprocessing.
    tagged = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    keys = ("mean", "std", "interpolation", "resize_mode")
    overrides = {f"image_{key}": tagged[key] for key in keys if key in tagged}
    if weights is None and not arch.startswith("local-dir:") and on_disk(rest, revision) is None:
        check_hub(name)  # offline: a sentence in seconds, not after the hub client's retries
    source = "file" if weights is not None else "open_clip"
    if revision is not None:  # fetched here at that revision, then read as local files
        arch, weights, source = _pinned(arch, tag, revision, name)
    file = weights if weights is not None else _file_read(arch, tag)
    digest = sha256(file) if file is not None else None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net = open_clip.create_model(arch, weights_only=not trust, **overrides,
                                             pretrained=_plain(weights, scratch, trust, digest) or tag or None)
                tokenizer = open_clip.get_tokenizer(arch)
        except UnsafeCheckpointError:
            raise
        except Exception as error:  # hub, url, file and shape errors all mean "no usable weights"
            raise _refusal_or_advice(name, arch, weights, error) from error
    file = file or _file_read(arch, tag)  # now downloaded, if it was not before
    config = open_clip.get_model_preprocess_cfg(net)
    size = config["size"] if isinstance(config["size"], int) else config["size"][0]
    if config.get("resize_mode", "shortest") not in ("shortest", "squash"):
        raise ModelLoadError(f"{name} resizes pictures by {config['resize_mode']!r}, "
                             "which cocoa-clip does not support.")
    preprocessing = Preprocessing(int(size), tuple(config["mean"]), tuple(config["std"]),
                                  config.get("resize_mode", "shortest"), config.get("interpolation", "bicubic"))
    return OpenClipModel(net=ready(net, device, precision), tokenizer=tokenizer, name=name, device=device,
                         precision=precision, preprocessing=preprocessing, weights=str(weights or tag),
                         provenance=provenance(source, file, revision=revision, digest=digest))


def _plain(weights: str | os.PathLike | None, scratch: str, trust: bool, digest: str | None) -> str | None:
    """The checkpoint path to hand open_clip: `weights` itself, or for a TorchScript archive (which open_clip
    would open with torch.jit.load, running its code) its tensors, read as trust.py allows, as a plain file."""
    if weights is None or not is_torchscript(weights):
        return None if weights is None else str(weights)
    state_dict = read_state_dict(weights, trust=trust, digest=digest)
    for key in ("input_resolution", "context_length", "vocab_size"):  # the archive's extras, as open_clip drops them
        state_dict.pop(key, None)
    path = os.path.join(scratch, "weights.pt")
    torch.save(dict(state_dict), path)
    return path


def _pinned(arch: str, tag: str, revision: str, name: str) -> tuple[str, str | None, str]:
    """(arch, weights, source) with the hub files of "ARCH:TAG" or "hf-hub:REPO" fetched at `revision`."""
    try:
        if arch.startswith("hf-hub:"):
            repo = arch[len("hf-hub:"):]
            folder = Path(hub_first(repo, ("open_clip_config.json",), revision)).parent
            hub_first(repo, HUB_FILES, revision)  # beside its config, in the same snapshot folder
            return f"local-dir:{folder}", None, "hub"
        # "org/repo/" or "org/repo/file.bin", split as open_clip's download_pretrained splits it
        repo, filename = os.path.split(_package().get_pretrained_cfg(arch, tag).get("hf_hub", ""))
    except Exception as error:
        raise ModelLoadError(_advice(name, arch, None, error)) from error
    if not repo:
        raise ModelLoadError(f"{name}: its weights come from a URL, which has no revisions; drop @{revision}.")
    files = HUB_FILES if not filename or filename in HUB_FILES else (Path(filename).stem + ".safetensors", filename)
    try:
        return arch, hub_first(repo, files, revision), "hub"
    except Exception as error:
        raise ModelLoadError(_advice(name, arch, None, error)) from error


def _file_read(arch: str, tag: str) -> str | None:
    """The weights file open_clip reads for this name, where it is on disk (its own choice in a local folder)."""
    if arch.startswith("local-dir:"):
        from open_clip.factory import _find_checkpoint_in_dir  # no public name; the same choice open_clip makes

        return _find_checkpoint_in_dir(Path(arch[len("local-dir:"):]))
    return on_disk(f"{arch}:{tag}" if tag else arch)


def _refusal_or_advice(name: str, arch: str, weights: object, error: Exception) -> ModelLoadError:
    """torch.load(weights_only=True) refusing a file's code becomes trust.py's sentence; the rest, advice."""
    if refused_by_torch(error):
        file = weights or _file_read(arch, "") or name
        kind = "a TorchScript archive" if is_torchscript(file) else "a pickle that holds more than tensors"
        return refusal(file, kind)
    return ModelLoadError(_advice(name, arch, weights, error))


def on_disk(rest: str, revision: str | None = None) -> str | None:
    """The cached weights of "ARCH:TAG" (open_clip's hub copy, or its URL download) or "hf-hub:REPO", or None."""
    open_clip = _package()
    if rest.startswith("local-dir:"):
        return rest[len("local-dir:"):] if Path(rest[len("local-dir:"):]).is_dir() else None
    if rest.startswith("hf-hub:"):
        return hub_cached(rest[len("hf-hub:"):], HUB_FILES, revision)
    arch, _, tag = rest.partition(":")
    config = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if config.get("hf_hub"):
        return hub_cached(config["hf_hub"].strip("/"), HUB_FILES, revision)
    if config.get("url"):
        path = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(config["url"])
        return str(path) if path.is_file() else None
    return None


def cached(repos: list[str]) -> list[tuple[str, str]]:
    """("ARCH:TAG", path) of each open_clip pretrained model whose hub copy is among the cached `repos`."""
    open_clip = _package()
    found = []
    for arch, tag in open_clip.list_pretrained():
        repo = open_clip.get_pretrained_cfg(arch, tag).get("hf_hub", "").strip("/")
        if repo in repos and (path := on_disk(f"{arch}:{tag}")):
            found.append((f"{arch}:{tag}", path))
    return found


def _advice(name: str, arch: str, weights: object, error: Exception) -> str:
    if weights is not None:
        return (f"Could not read {weights} as {arch} weights ({type(error).__name__}: {error}); "
                f"is it a complete checkpoint for that architecture?")
    cache = os.environ.get("HF_HUB_CACHE") or os.path.expanduser("~/.cache/huggingface/hub")
    return (f"Could not get the {name} weights or tokenizer ({type(error).__name__}). Connect to the internet once "
            f"(open_clip caches them in {cache}), or "
            + spelled(f'cc.load("open_clip:{arch}", weights=PATH).', f"pass --model open_clip:{arch} --weights PATH."))


def _package():
    try:
        import open_clip
    except ImportError as error:
        raise ModelLoadError("open_clip names need the open_clip_torch package: pip install open_clip_torch.") \
            from error
    return open_clip
