"""The top-level pipeline: a picture and questions in, heatmaps over the whole picture out.

    captions -> text embeddings -> contrastive direction            (targets.resolve)
    picture -> framed canvas -> masked batch -> image embeddings    (images.frame, rise.masked_pass)
    embeddings x directions -> scores -> heatmap -> overlay         (rise.saliency, images.unframe, render)
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..errors import SettingsError, writing
from ..models import Model
from . import render
from .attention import ATTENTION_METHODS, SELF_NOTE, attention_map, trace
from .gradients import GRADIENT_METHODS, GradientSettings, attribute, precision
from .images import Framed, ImageSource, frame, load_image, unframe
from .rise import DEFAULT_ESTIMATOR, ESTIMATORS, PassCache, Progress, RiseResult, RiseSettings, run_rise
from .targets import Question, Target, resolve
from .zeroshot import ZeroShot, zero_shot

METHODS = ("rise",) + GRADIENT_METHODS + ATTENTION_METHODS
FLAT_NOTE = ("The map is flat (its range is below numerical noise): no region of the picture changes the score, "
             "so it is shown in one colour.")
DEFAULT_CACHE = PassCache()  # masked passes of recent pictures, so a new question costs no forward pass


@dataclass
class Explanation:
    """One answer: where in `image` the model sees the question's corpus rather than its foil.

    heatmap: (H, W) float32 at the picture's own size; NaN outside what the model saw (CLIP's own framing crops).
    score: the target on the whole picture; for COCOA, its contrastive corpus similarity
        (mean cosine similarity to the corpus minus that to the foil).
    details: how it was computed (masks, seconds, cached, precision, baseline, batch size, ...).
    notes: things the user should know (e.g. a caption was truncated).
    content_map: (h, w) float32, the map as computed, over the picture's content box at the model's
        input (images.Framed.box); insertion and deletion rank it. None for a map read from a file.
    zero_shot: the model's own answer to the question in words (`zero_shot.text`, e.g. "rocket 87%, woman 13%"),
        from its zero-shot head over the corpus and the foil classes; None without a corpus and a foil, or a head.
    """

    heatmap: np.ndarray
    score: float
    image: Image.Image
    question: Question
    method: str
    details: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    content_map: np.ndarray | None = None
    zero_shot: ZeroShot | None = None

    def __post_init__(self) -> None:
        if render.is_flat(self.heatmap) and FLAT_NOTE not in self.notes:
            self.notes = (*self.notes, FLAT_NOTE)

    @property
    def scale(self) -> str:
        """The colour scale that suits the method: signed for gradient attributions, min-max otherwise (RISE, as
        in the paper; the attention methods, whose maps are not negative)."""
        return "signed" if self.method in GRADIENT_METHODS else "minmax"

    def overlay(self, *, opacity: float = 0.5, scale: str | None = None, cmap: str | None = None) -> Image.Image:
        """The heatmap over the picture, at the picture's size (RGB)."""
        return render.overlay(self.image, self.heatmap, scale=scale or self.scale, cmap=cmap, opacity=opacity)

    def colorbar(self, *, scale: str | None = None, cmap: str | None = None) -> Image.Image:
        """The raw heatmap with a colour bar (RGB)."""
        return render.colorbar_figure(self.heatmap, scale=scale or self.scale, cmap=cmap,
                                      title=self.question.describe())

    def save(self, overlay: str | os.PathLike | None = None, heatmap: str | os.PathLike | None = None,
             **style: object) -> None:
        """Write the overlay as PNG and/or the raw heatmap as float32 .npy."""
        if overlay is not None:
            with writing(overlay):
                self.overlay(**style).save(overlay, format="PNG")
        if heatmap is not None:
            render.save_heatmap(heatmap, self.heatmap)


def explain(
    model: Model,
    image: ImageSource,
    questions: Question | Sequence[Question],
    *,
    method: str = "rise",
    masks: int | str | None = None,
    seed: int = 0,
    framing: str = "pad",
    estimator: str = DEFAULT_ESTIMATOR,
    baseline: str = "blur",
    blur_sigma: float | None = None,
    batch_size: int | None = None,
    gradient: GradientSettings = GradientSettings(),
    progress: Progress | None = None,
    time_budget: float | None = None,
    cache: PassCache | None = DEFAULT_CACHE,
    stability: float = 0.97,
    max_masks: int | None = None,
    on_update: Callable[[Explanation | list[Explanation]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Explanation | list[Explanation]:
    """Explain one picture for one question, or for several at the price of one RISE pass.

    image: a path, bytes, PIL image or array. masks: a number of RISE masks (1 to 20,000 on a CPU,
    to 200,000 on a GPU), or "auto" (or 0): draw masks until every map's estimated correlation
    with its infinite-mask limit reaches `stability` at two checkpoints in a row, at most
    `max_masks` (default 4,000 on a CPU, 20,000 on a GPU). Default (None): auto on a CPU,
    20,000 masks on a GPU (the paper's setting). framing: "pad" (whole picture, default), "model"
    (the model's own preprocessing; alias "crop") or "squash".
    estimator: "regression" (default, least noise), "centered" or "paper" (the paper's).
    time_budget: seconds after which RISE stops and answers from the masks done. seed: RISE's
    masks, or GradientSHAP's noise. on_update: called with the answers so far as RISE runs
    (after a small first batch of rise.FIRST_BATCH masks, then after full batches at most every
    half second), last with the final answers.
    details carry "masks" (masks used) and "stability".
    baseline: what removed pixels show, "blur" (the paper's), "mean" or "black"; blur_sigma: the
    blur's sigma in input pixels (default 5 x n_px / 224; 5 is the paper's code at any size).
    gradient: Integrated Gradients' steps, GradientSHAP's samples and noise.
    should_stop: asked between batches of masks (or of gradient steps); True raises errors.Cancelled,
    e.g. when the person who asked has gone.
    method: "rise" (default), "integrated-gradients", "gradient-shap", or for vision transformers
    "legrad" and "attention-relevance" (one forward pass; see engine/attention.py).
    Returns a list when given a list.

    >>> model = load("shapes-demo")                                         # doctest: +SKIP
    >>> answer = explain(model, "scene.png", Question(corpus=["red circle"], foil=["blue star"]))  # doctest: +SKIP
    >>> answer.overlay().save("overlay.png")                                # doctest: +SKIP
    """
    if method not in METHODS:
        raise SettingsError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if estimator not in ESTIMATORS:
        raise SettingsError(f"Unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}.")
    if time_budget is not None and not (isinstance(time_budget, (int, float)) and 0 < time_budget < math.inf):
        raise SettingsError(f"The time budget must be a positive number of seconds; got {time_budget!r}.")
    single = isinstance(questions, Question)
    questions = [questions] if single else list(questions)
    if not questions or not all(isinstance(q, Question) for q in questions):
        raise SettingsError("Give at least one Question to explain.")
    picture = load_image(image)
    framed = frame(picture, model.preprocessing, framing)
    started = time.perf_counter()

    if method == "rise":
        settings = RiseSettings(masks, seed=seed, batch_size=batch_size, stability=stability, max_masks=max_masks,
                                baseline=baseline, blur_sigma=blur_sigma).for_device(model.device)
        key = PassCache.key(model, framed, settings)
        cached = cache.get(key) if cache is not None else None
        image_embedding = cached.image_embedding if cached is not None else model.encode_canvas(framed.canvas)
        targets = [resolve(model, q, image_embedding, framing) for q in questions]  # bad questions fail before the pass
        words = [zero_shot(model, q, image_embedding, framing) for q in questions]  # once, not at every frame

        def answers_of(result: RiseResult) -> list[Explanation]:
            run = result.run
            details = {"masks": len(run.masks), "estimator": estimator, "seed": seed, "cached": run.cached,
                       "complete": run.complete, "batch_size": run.batch_size, "pass_seconds": run.seconds}
            if settings.auto:
                details.update(auto=True, stability_target=settings.stability)
            per_answer = [{"stability": _rounded(value)} for value in result.stability.tolist()]
            return _answers(result.maps, targets, words, framed, picture, image_embedding, method, model, framing,
                            details, started, per_answer, baseline=baseline, blur_sigma=blur_sigma)

        on_frame = None
        if on_update is not None:
            def on_frame(result: RiseResult) -> None:
                frame_answers = answers_of(result)
                on_update(frame_answers[0] if single else frame_answers)

        deadline = time.monotonic() + time_budget if time_budget is not None else None
        result = run_rise(model, framed, settings, targets, estimator, resume=cached, progress=progress,
                          deadline=deadline, on_frame=on_frame, should_stop=should_stop)
        if cache is not None:
            cache.put(key, result.run)
        answers = answers_of(result)
        if on_update is not None:
            on_update(answers[0] if single else answers)
    elif method in ATTENTION_METHODS:
        traced, image_embedding = trace(model, framed)  # the one forward pass; the score and the maps share it
        targets = [_noted(resolve(model, q, image_embedding, framing), method) for q in questions]
        words = [zero_shot(model, q, image_embedding, framing) for q in questions]
        maps = [attention_map(traced, framed, model.n_px, t, method) for t in targets]
        answers = _answers(maps, targets, words, framed, picture, image_embedding, method, model, framing,
                           {"precision": precision(model), "patch_grid": list(traced.grid)}, started,
                           baseline=baseline, blur_sigma=blur_sigma)
    else:
        settings = dataclasses.replace(gradient, seed=seed, baseline=baseline, blur_sigma=blur_sigma)
        with torch.no_grad():  # in the precision the gradients use, so that the score and the map agree
            image_embedding = model.encode_images(framed.canvas[None].to(model.device))[0]
        targets = [resolve(model, q, image_embedding, framing) for q in questions]
        words = [zero_shot(model, q, image_embedding, framing) for q in questions]
        results = [attribute(model, framed, t, method, settings, should_stop) for t in targets]
        own = {"steps": settings.n_steps} if method == "integrated-gradients" else {
            "samples": settings.n_samples, "stdev": settings.stdev}
        details = {"convergence_delta": [d for _, d in results], "seed": seed, "precision": precision(model), **own}
        answers = _answers([m for m, _ in results], targets, words, framed, picture, image_embedding, method, model,
                           framing, details, started, baseline=baseline, blur_sigma=blur_sigma)
    return answers[0] if single else answers


def _answers(maps: Sequence[torch.Tensor], targets: Sequence[Target], words: Sequence[ZeroShot | None],
             framed: Framed, picture: Image.Image, image_embedding: torch.Tensor, method: str, model: Model,
             framing: str, details: dict, started: float, per_answer: Sequence[dict] | None = None, *,
             baseline: str = "blur", blur_sigma: float | None = None) -> list[Explanation]:
    """One Explanation per map and target (with its zero-shot answer in words), with the shared details (and each
    answer's own, if given)."""
    details = {"precision": model.precision, **details, "device": str(model.device), "framing": framing,
               "model": model.name, "provenance": dataclasses.asdict(model.provenance) if model.provenance else None,
               "baseline": baseline, "blur_sigma": blur_sigma,
               "seconds": time.perf_counter() - started}
    return [
        Explanation(heatmap=unframe(heat, framed), score=float(target(image_embedding[None])[0]), image=picture,
                    question=target.question, method=method, notes=target.notes,
                    details={**details, **(per_answer[index] if per_answer else {})},
                    content_map=heat.float().cpu().numpy(), zero_shot=said)
        for index, (heat, target, said) in enumerate(zip(maps, targets, words, strict=True))
    ]


def _noted(target: Target, method: str) -> Target:
    """The target, with a note where its gradient vanishes by construction (see attention.SELF_NOTE)."""
    itself = target.question.target == "label-free" and target.normalize
    if method == "attention-relevance" and itself:
        return dataclasses.replace(target, notes=(*target.notes, SELF_NOTE))
    return target


def _rounded(value: float) -> float | None:
    """A stability for details: 4 decimals, None where there is none (under 4 masks, a flat map)."""
    return None if math.isnan(value) else round(value, 4)


def score(model: Model, image: ImageSource, question: Question, framing: str = "pad") -> float:
    """The question's target on the whole picture (for COCOA: contrastive corpus similarity)."""
    framed = frame(load_image(image), model.preprocessing, framing)
    embedding = model.encode_canvas(framed.canvas)
    target: Target = resolve(model, question, embedding, framing)
    return float(target(embedding[None])[0])

