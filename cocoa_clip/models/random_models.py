"""CLIP-format models with random weights: for tests and speed benchmarks, and for the
model-randomisation sanity check (an explanation that survives re-initialising the weights
does not explain what the model learnt; Adebayo et al., 2018, and the paper's appendix).

A CLIP model is fully described by its state dict (`clip.model.build_model` reads every size off
the weight shapes), so a random one written to disk goes through exactly the loading path of
real weights. Speed does not depend on the weight values.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from .families.openai import ClipModel
from .families.openai_package import clip_package

# Sizes as clip.model.CLIP takes them. The text side keeps CLIP's tokenizer (vocabulary 49408,
# context 77); widths must be multiples of 64 (heads = width // 64).
ARCHITECTURES = {
    "tiny": dict(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=8,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1),
    # CLIP's ResNet image tower (RN50 and kin) at toy size: 64 px in, a 2 x 2 grid into attention pooling.
    "tiny-resnet": dict(embed_dim=32, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8,
                        vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                        transformer_heads=1, transformer_layers=1),
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
}


def random_state_dict(architecture: str = "tiny", seed: int = 0, **overrides: int) -> dict[str, torch.Tensor]:
    """The state dict of a randomly initialised CLIP (float32) of a named architecture."""
    CLIP = clip_package().model.CLIP
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**{**ARCHITECTURES[architecture], **overrides})
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def write_checkpoint(path: str | os.PathLike, architecture: str = "tiny", seed: int = 0, **overrides: int) -> str:
    """Save a random CLIP as a plain state dict that `clip.load` / `cocoa_clip.load(weights=...)` read."""
    torch.save(random_state_dict(architecture, seed, **overrides), path)
    return str(path)


def randomised(model: ClipModel, seed: int = 0) -> ClipModel:
    """A copy of `model` with every weight drawn afresh by CLIP's own initialisation (the original is untouched)."""
    net = copy.deepcopy(model.net).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in net.modules():
            reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
            if module is not net and reset is not None:  # linear, convolution, layer norm, attention
                reset()
        for module in net.visual.modules():  # the image tower's bare tensors, scaled as CLIP builds them
            for name, tensor in module.named_parameters(recurse=False):
                if name in ("class_embedding", "positional_embedding", "proj"):
                    width = tensor.shape[0] if name == "proj" else tensor.shape[-1]
                    torch.nn.init.normal_(tensor, std=width ** -0.5)
        net.initialize_parameters()  # token embedding, text tower, projections, attention pooling
    if model.device.type == "cuda" and model.precision == "fp16":
        clip_package().model.convert_weights(net)
    net = net.to(model.device).eval().requires_grad_(False)
    return ClipModel(net=net, name=f"{model.name} (randomised, seed {seed})", device=model.device,
                     precision=model.precision)


# Other families' tiny random models, written to disk in each library's own format so that they go
# through the same loading path as real weights (tests and the speed benchmark; no downloads).
OPEN_CLIP_TINY = {  # open_clip's config for ARCHITECTURES["tiny"] (OpenAI-format: QuickGELU)
    "embed_dim": 32, "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}
SIGLIP_PREPROCESS = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "resize_mode": "squash",
                     "interpolation": "bilinear"}
_WORDS = "a photo of the dog cat bird red blue green circle square star picture on grass sky orange cross".split()


def write_open_clip_dir(folder: str | os.PathLike, sigmoid: bool = False, seed: int = 0) -> str:
    """A random tiny open_clip model as `open_clip:local-dir:FOLDER` reads it; returns FOLDER.

    sigmoid: a SigLIP-style head (learnt logit bias -2.5, scale 10) read with SigLIP's preprocessing
    (squash, bilinear, mean and std 0.5). Otherwise the tiny OpenAI-format CLIP of `random_state_dict`.
    """
    import json
    import math

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": dict(OPEN_CLIP_TINY), "preprocess_cfg": SIGLIP_PREPROCESS if sigmoid else {}}
    state = random_state_dict("tiny", seed)
    if sigmoid:
        config["model_cfg"]["init_logit_bias"] = -2.5
        state["logit_bias"] = torch.tensor([-2.5])
        state["logit_scale"] = torch.tensor(math.log(10.0))
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    return str(folder)


def write_hf_dir(folder: str | os.PathLike, kind: str = "clip", seed: int = 0) -> str:
    """A random tiny transformers CLIPModel ("clip"), SiglipModel ("siglip") or Siglip2Model ("siglip2", a 4 x 4
    grid of 8 px patches) with its processor, written
    by save_pretrained, as `hf:FOLDER` reads it; returns FOLDER. CLIP's tokenizer is built from the
    vocabulary the `clip` package ships; SigLIP's is a SentencePiece model trained here on a few words."""
    import math

    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    vision = dict(layers, image_size=32, patch_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "clip":
            tokenizer = _clip_tokenizer(folder)
            text = dict(layers, vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                        eos_token_id=49407, pad_token_id=49407)
            net = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                                 projection_dim=16))
            images = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
            processor = transformers.CLIPProcessor(image_processor=images, tokenizer=tokenizer)
        elif kind == "siglip":
            tokenizer = _sentencepiece_tokenizer(folder)
            text = dict(layers, vocab_size=tokenizer.vocab_size, max_position_embeddings=16)
            net = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
            images = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
            processor = transformers.SiglipProcessor(image_processor=images, tokenizer=tokenizer)
        else:
            tokenizer = _sentencepiece_tokenizer(folder, lower_case=False)  # cased, as SigLIP 2's Gemma tokenizer
            text = dict(layers, vocab_size=tokenizer.vocab_size, max_position_embeddings=16)
            vision = dict(layers, patch_size=8, num_patches=16)
            net = transformers.Siglip2Model(transformers.Siglip2Config(text_config=text, vision_config=vision))
            images = transformers.Siglip2ImageProcessor(patch_size=8, max_num_patches=16)
            processor = transformers.Siglip2Processor(image_processor=images, tokenizer=tokenizer)
        if kind != "clip":
            with torch.no_grad():
                net.logit_scale.fill_(math.log(10.0))
                net.logit_bias.fill_(-2.5)
    net.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def _clip_tokenizer(folder: Path):
    """transformers' CLIPTokenizer with OpenAI CLIP's BPE, from the vocabulary inside the `clip` package."""
    import gzip
    import json

    import transformers

    clip = clip_package()
    bpe = Path(clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]  # as simple_tokenizer reads it
    symbols = list(clip.simple_tokenizer.bytes_to_unicode().values())
    vocabulary = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocabulary += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocabulary)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                      pad_token="<|endoftext|>")


def _sentencepiece_tokenizer(folder: Path, lower_case: bool = True):
    """transformers' SiglipTokenizer on a tiny SentencePiece model (pad 0, end 1, unknown 2, as SigLIP's)."""
    import io

    import sentencepiece
    import transformers

    sentences = [" ".join(_WORDS[i:] + _WORDS[:i]) for i in range(len(_WORDS))] * 20
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, vocab_size=60,
                                             pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
                                             hard_vocab_limit=False)
    (folder / "spiece.model").write_bytes(model.getvalue())
    return transformers.SiglipTokenizer(str(folder / "spiece.model"), model_max_length=16, do_lower_case=lower_case)
