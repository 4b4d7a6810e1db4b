"""cocoa-clip: what in this image looks like X rather than Y, to CLIP?

COCOA (Contrastive Corpus Attribution, Lin et al., ICLR 2023) on CLIP, in four lines:

    import cocoa_clip as cc
    model = cc.load("ViT-B/32")                                    # or cc.load(weights="clip.pt")
    answer = cc.explain(model, "dog.jpg", cc.Question(corpus=["dog"], foil=["cat"]))
    answer.overlay().save("overlay.png"); print(answer.score)

Other models by name prefix, `cc.load("open_clip:ViT-B-32:laion2b_s34b_b79k")` or
`cc.load("hf:google/siglip-base-patch16-224")`, and any image encoder with `cc.wrap(encoder, n_px=..., ...)`.

The data flow one way, each step a module of engine/:

    captions -> text embeddings -> contrastive direction              (targets)
    picture -> framed canvas -> masked batch -> image embeddings      (images, masks, rise)
    embeddings . direction -> scores -> heatmap -> overlay            (rise, images, render)

Folders: models/ (what the engine needs of a model, the families that provide it, where weights come
from), engine/ (the pipeline above, gradients, evaluate, compare), and the surfaces on top of both:
cli/, batch/ and web/. Imports run surfaces -> engine -> models, never back.
"""
from .engine.compare import Comparison, compare
from .engine.evaluate import MEASURES, Curves, insertion_deletion
from .engine.explain import METHODS, Explanation, explain, score
from .engine.faithfulness import MethodTable, compare_methods
from .engine.images import FRAMINGS, load_image
from .engine.presets import DEFAULT_TEMPLATE, FOIL_PRESETS, class_names
from .engine.render import overlay, save_heatmap
from .engine.rise import ESTIMATORS, PassCache, RiseSettings
from .engine.targets import TARGETS, Question, Target
from .errors import (
    Cancelled,
    CocoaError,
    ImageError,
    ModelLoadError,
    QuestionError,
    SettingsError,
    UnsafeCheckpointError,
)
from .models import ClipModel, Model, Preprocessing, available_models, load
from .models.families.wrapped import wrap

__all__ = [
    "load", "available_models", "ClipModel", "Model", "Preprocessing", "wrap",
    "Question", "Target", "explain", "score", "Explanation",
    "load_image", "overlay", "save_heatmap", "class_names", "PassCache", "RiseSettings",
    "insertion_deletion", "Curves", "compare", "Comparison", "compare_methods", "MethodTable",
    "METHODS", "TARGETS", "FRAMINGS", "ESTIMATORS", "MEASURES", "FOIL_PRESETS", "DEFAULT_TEMPLATE",
    "Cancelled", "CocoaError", "ImageError", "ModelLoadError", "QuestionError", "SettingsError",
    "UnsafeCheckpointError",
]
