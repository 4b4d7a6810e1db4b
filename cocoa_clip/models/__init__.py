"""Models: the encoder interface every explainer uses, the families that fill it in, and where weights come from.

    encoder.py     Model, Preprocessing: what the engine needs of any model
    registry.py    which family loads a name (the one place that says so), and the bundled models
    loading.py     load(name), download(name), available_models(): device and precision, then the adapter
    families/      one adapter per family, as peers: openai, openclip, hf, wrapped (cc.wrap)
    weights.py     the sources of OpenAI's weights; hub.py, the Hugging Face hub as every family reaches it
    trust.py       which weights files are opened how (no file runs code unless known or trusted); provenance
    shapes.py      the shapes world the bundled shapes-demo model was trained on; random_models.py, redrawn weights

Imports run one way: families -> encoder, hub, weights, registry; nothing here imports the engine or a surface.
"""
from .encoder import MEAN, STD, LearntHead, Model, Preprocessing, eval_mode
from .families.openai import ClipModel, normalize
from .families.openai_package import clip_package, clip_text
from .loading import (
    DEFAULT_MODEL,
    PRECISIONS,
    available_models,
    default_device,
    download,
    load,
    resolve_precision,
    split_revision,
    weights_on_disk,
)
from .registry import BUNDLED, FAMILIES, family_of

__all__ = [
    "MEAN", "STD", "LearntHead", "Model", "Preprocessing", "eval_mode", "ClipModel", "normalize",
    "clip_package", "clip_text", "DEFAULT_MODEL", "PRECISIONS", "available_models", "default_device",
    "download", "load", "resolve_precision", "split_revision", "weights_on_disk", "BUNDLED", "FAMILIES", "family_of",
]
