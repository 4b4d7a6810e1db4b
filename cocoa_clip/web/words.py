"""What the page says: the choices' labels, the model's answer in words, the reading of a score, the status of a run."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import cocoa_clip as cc
from cocoa_clip.engine.explain import FLAT_NOTE
from cocoa_clip.engine.targets import SAME_NOTE

FOIL_PRESET_CHOICES = [("none", "none"), ("CIFAR-100 classes (the paper's foil)", "cifar100"),
                       ("ImageNet-1k classes", "imagenet")]
BASELINE_CHOICES = [("blurred picture (the paper's)", "blur"), ("the model's mean colour", "mean"), ("black", "black")]
TARGET_CHOICES = [("COCOA: corpus rather than foil", "cocoa"), ("corpus only", "corpus"),
                  ("label-free: the image itself", "label-free"),
                  ("contrastive label-free: the image itself rather than the foil", "contrastive-label-free")]
METHOD_CHOICES = [("RISE (as in the paper)", "rise"), ("Integrated Gradients", "integrated-gradients"),
                  ("GradientSHAP", "gradient-shap"), ("LeGrad (vision transformers)", "legrad"),
                  ("Attention relevance, Chefer et al. (vision transformers)", "attention-relevance")]
SCALE_CHOICES = [("auto (min-max for RISE, signed for gradients)", "auto"), ("min-max", "minmax"),
                 ("signed, centred on zero", "signed")]
MEASURE_CHOICES = [("contrastive corpus similarity", "similarity"),
                   ("zero-shot probability of the corpus", "probability")]
FRAMING_CHOICES = [("whole picture (pad to square)", "pad"),
                   ("the model's own (CLIP: centre crop; SigLIP: squash)", "model"), ("squash to square", "squash")]


def label(choices: list[tuple[str, str]], value: str) -> str:
    return next((label for label, v in choices if v == value), value)


def duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def in_words(answer: cc.Explanation) -> str:
    """The model's own zero-shot answer, first on the page ("rocket 87%, woman 13%"); empty when there is none."""
    return f"**The model's own answer:** {answer.zero_shot.text}" if answer.zero_shot else ""


def reading(answer: cc.Explanation) -> str:
    """One plain sentence about the score of the whole picture (two when the map is flat)."""
    question, score = answer.question, answer.score
    flat = " No region of the picture changes it: the map is flat, shown in one colour." * (FLAT_NOTE in answer.notes)
    if SAME_NOTE in answer.notes:
        return (f"Score {score:+.4f}: the corpus and the foil are the same to the model ({question.describe()}), "
                "so the question compares a caption with itself and neither side is closer." + flat)
    if flat:
        return f"Score {score:+.4f} ({question.describe()})." + flat
    if question.target == "cocoa":
        leaning = "the corpus than to the foil" if score > 0 else "the foil than to the corpus"
        return (f"Score {score:+.4f}: on the whole, the model finds this picture closer to {leaning} "
                f"({question.describe()}; mean cosine similarity to the corpus minus that to the foil). "
                "The map shows where.")
    if question.target == "corpus":
        return (f"Score {score:+.4f}: mean cosine similarity of the picture to {question.describe()}; "
                "the map shows where it comes from.")
    if question.target == "label-free":
        return (f"Score {score:+.4f}: the picture's similarity to itself; "
                "the map shows what makes it what it is to the model.")
    return (f"Score {score:+.4f}: the picture's similarity to itself minus its mean similarity to the foil; "
            "the map shows what sets it apart from the foil.")


def noted(answers: list[cc.Explanation], note: str) -> list[cc.Explanation]:
    """The answers with one more note for the visitor (none added when `note` is empty)."""
    return [dataclasses.replace(answer, notes=(*answer.notes, note)) for answer in answers] if note else answers


def status(answer: cc.Explanation) -> str:
    details = answer.details
    where = f"{details.get('precision')} on {details.get('device')}"
    if "patch_grid" in details:  # the attention methods: one pass, read at the model's patch grid
        rows, cols = details["patch_grid"]
        text = (f"{label(METHOD_CHOICES, answer.method)}: {details['seconds']:.2f} s, one pass, a map of "
                f"{rows} x {cols} patches ({where}).")
    elif answer.method != "rise":
        settings = (f"{details['steps']} steps" if "steps" in details
                    else f"{details['samples']} samples, noise {details['stdev']:g}")
        text = f"{label(METHOD_CHOICES, answer.method)} ({settings}): {details['seconds']:.1f} s ({where})."
    elif details.get("cached"):
        text = (f"Reused the image pass: {details['seconds']:.2f} s, no new RISE run "
                f"({details['masks']:,} masks from the cache).")
    else:
        text = f"RISE: {details['masks']:,} masks in {details['pass_seconds']:.1f} s ({where})."
        if not details.get("complete", True):
            text += " The time budget ran out: the map uses the masks done so far and is noisier."
    if details.get("stability") is not None:
        text += f" Stability {details['stability']:.3f} (estimated correlation with the map of endless masks)."
    return " ".join([text, f"Model: {public_name(details.get('model', '?'))}.", *answer.notes])


def public_name(name: str) -> str:
    """A model's name as the page shows it: a local path (--weights, hf:DIR) by its last part, no server folders."""
    prefix, _, rest = name.rpartition(":")
    return f"{prefix}{':' if prefix else ''}{Path(rest).name}" if os.path.exists(rest) else name


def live_status(answer: cc.Explanation) -> str:
    """The status line while RISE runs: masks so far and how stable the map already is."""
    stability = answer.details.get("stability")
    return (f"RISE running, the map is still forming: {answer.details['masks']:,} masks so far"
            + (f", stability {stability:.3f}" if stability is not None else "") + "; it refines as masks come.")
