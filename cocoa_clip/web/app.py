"""The cocoa-clip web app: "what in this image looks like X rather than Y?", in a browser and over HTTP.

    python app.py                          # CLIP ViT-B/32 (app.py, the Space's entry point, runs main())
    python app.py --weights tiny.pt --port 7861
    python app.py --model shapes-demo      # the small bundled model, offline

This module lays out widgets and calls `cocoa_clip`; it holds no maths, and what callers send is
checked in `webinputs`. The main event is also an
HTTP API (`api_name="explain"`), with parameters named after the inputs:

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    overlay, reverse, colorbar, score, *rest = client.predict(
        image=handle_file("dog.jpg"), corpus="dog", foil="cat", api_name="/explain")

The score comes as text, as the page shows it (e.g. "+0.0239").
"""
from __future__ import annotations

# ZeroGPU (Hugging Face Spaces) patches torch when `spaces` is imported, so it comes first.
try:
    import spaces
except ImportError:
    spaces = None

import argparse
import contextvars
import dataclasses
import functools
import inspect
import logging
import os
import queue
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image
from starlette.exceptions import HTTPException

import cocoa_clip as cc
from cocoa_clip.engine.evaluate import MEASURE_LABELS, curves_of
from cocoa_clip.engine.explain import FLAT_NOTE
from cocoa_clip.engine.gradients import GradientSettings
from cocoa_clip.engine.images import BASELINES, default_sigma
from cocoa_clip.engine.rise import default_batch_size
from cocoa_clip.engine.targets import SAME_NOTE
from cocoa_clip.models import BUNDLED, DEFAULT_MODEL, shapes
from cocoa_clip.models.trust import TRUST_HELP
from cocoa_clip.models.weights import report_sources
from cocoa_clip.web import hosting
from cocoa_clip.web import inputs as valid
from cocoa_clip.web.inputs import MAX_EXAMPLE_IMAGES, MAX_SEED, MAX_TEMPLATE_CHARS, MAX_TEXT_CHARS, MAX_UPLOAD
from cocoa_clip.web.shelf import ModelShelf

log = logging.getLogger("cocoa_clip.app")

ASSETS = Path(__file__).resolve().parents[2] / "assets"  # the repository's example photos (absent once installed)
FALLBACK_MODEL = "shapes-demo"
MAX_MASKS = {"cpu": 20_000, "cuda": 50_000}

TIME_BUDGET_S = {"cpu": 300.0, "cuda": 100.0}  # RISE stops and answers from the masks done
MAX_GRADIENT_STEPS = 500          # Integrated Gradients steps, GradientSHAP samples
QUEUE_SIZE = 32                   # jobs waiting; more are refused with a sentence (one per visitor)
CURVE_STEPS = 50
DISK_BUDGET_MB = 1024             # everything written for visitors: uploads, Gradio's cache, downloads

FOIL_PRESET_CHOICES = [("none", "none"), ("CIFAR-100 classes (the paper's foil)", "cifar100"),
                       ("ImageNet-1k classes", "imagenet")]
BASELINE_CHOICES = [("blurred picture (the paper's)", "blur"), ("CLIP's mean colour", "mean"), ("black", "black")]
TARGET_CHOICES = [("COCOA: corpus rather than foil", "cocoa"), ("corpus only", "corpus"),
                  ("label-free: the image itself", "label-free"),
                  ("contrastive label-free: the image itself rather than the foil", "contrastive-label-free")]
METHOD_CHOICES = [("RISE (as in the paper)", "rise"), ("Integrated Gradients", "integrated-gradients"),
                  ("GradientSHAP", "gradient-shap")]
SCALE_CHOICES = [("auto (min-max for RISE, signed for gradients)", "auto"), ("min-max", "minmax"),
                 ("signed, centred on zero", "signed")]
MEASURE_CHOICES = [("contrastive corpus similarity", "similarity"),
                   ("zero-shot probability of the corpus", "probability")]
FRAMING_CHOICES = [("whole picture (pad to square)", "pad"),
                   ("the model's own (CLIP: centre crop; SigLIP: squash)", "model"), ("squash to square", "squash")]

# (image, corpus, foil, foil preset): the paper's kind of questions on the pictures in assets/.
EXAMPLES = [
    ["astronaut.jpg", "woman", "", "cifar100"],
    ["astronaut.jpg", "rocket", "woman", "none"],
    ["chelsea.jpg", "cat", "dog", "none"],
    ["coffee.jpg", "cup", "spoon", "none"],
    ["rocket.jpg", "smoke", "rocket", "none"],
]
# (objects drawn, scene seed, corpus, foil): scenes for the bundled shapes-demo model, drawn by models/shapes.py at
# start-up (so the installed package has them too); together they use every colour and shape the model knows.
SHAPE_EXAMPLES = [
    ([("orange", "cross"), ("yellow", "square")], 0, "orange cross", "yellow square"),
    ([("red", "circle"), ("blue", "star")], 0, "red circle", "blue star"),
    ([("green", "triangle"), ("purple", "square")], 3, "purple square", "green triangle"),
    ([("purple", "star"), ("green", "circle"), ("red", "triangle")], 0, "purple star", "green circle\nred triangle"),
]


def _either(words: list[str]) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1]


SHAPES_HINT = (f"**{FALLBACK_MODEL}** knows only coloured shapes: {_either(list(shapes.COLORS))} "
               f"{_either([name + ('es' if name.endswith('s') else 's') for name in shapes.SHAPES])}. "
               "Ask, say, *red circle* rather than *blue star*.")

INTRO = """
# cocoa-clip: what in this image looks like *X* rather than *Y*?
Upload a photo, say what to look for (the **corpus**) and what to contrast it with (the **foil**):
the heatmap shows where CLIP sees the corpus rather than the foil
(COCOA, [Lin et al., ICLR 2023](https://arxiv.org/abs/2210.00107)).
"""

READING_GUIDE = """
**Reading the map.** RISE maps use a min-max colour scale as in the paper: red marks the regions that most raise
the score, blue the least; only the ranking of regions is meaningful. Gradient maps use a signed scale: red pushes
towards the corpus, blue towards the foil. *Check this explanation* deletes and re-inserts pixels in the map's order
and compares with a random order.
"""

CSS = """
#model-banner.notice { border: 1px solid #d97706; background: #fffbeb; color: #78350f;
                       border-radius: 8px; padding: 4px 12px; }
#status, #estimate { font-size: 0.9em; }
"""


def gpu(function: Callable) -> Callable:
    """`spaces.GPU` on a ZeroGPU Space (the GPU is attached for the call), unchanged elsewhere."""
    return spaces.GPU(duration=120)(function) if spaces is not None else function


def job(method: Callable) -> Callable:
    """After each job (answered, refused or failed): the visitor may ask again, freed memory goes back
    to the system and the disk budget is kept. Works for plain and generator methods; Gradio still sees
    the method's own signature (and passes its gr.Request)."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream(self: CocoaApp, *args: Any, **kwargs: Any) -> Iterator:
            try:
                yield from method(self, *args, **kwargs)
            finally:
                self.after_job(_request(args, kwargs))
        return stream

    @functools.wraps(method)
    def call(self: CocoaApp, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            self.after_job(_request(args, kwargs))
    return call


def _request(args: tuple, kwargs: dict) -> gr.Request | None:
    """The gr.Request among an event's arguments (Gradio passes it by position), if any."""
    return next((value for value in (*args, *kwargs.values()) if isinstance(value, gr.Request)), None)


class CocoaApp:
    """What the widgets call: one model, its RISE pass cache, and the last answers for checking.

    >>> app = CocoaApp(cc.load(weights="tiny.pt", device="cpu"))                  # doctest: +SKIP
    >>> overlay, reverse, colorbar, score, reading, status, files, token = app.explain(
    ...     "assets/chelsea.jpg", corpus="cat", foil="dog")                         # doctest: +SKIP
    """

    def __init__(self, model: cc.ClipModel, *, notice: str = "", cache_bytes: int = 512 << 20,
                 max_masks: int | None = None, job_seconds: float | None = None,
                 disk_budget_mb: float = DISK_BUDGET_MB, shelf: ModelShelf | None = None):
        """max_masks, job_seconds: a deployment's caps (default per device: MAX_MASKS, TIME_BUDGET_S).
        disk_budget_mb: bound on everything this process writes for visitors (oldest files go first)."""
        hosting.tame_malloc()
        self.model = model
        self.shelf = shelf  # --models: the models a visitor may choose, loaded on first use
        self.notice = notice
        self.cache = cc.PassCache(max_bytes=cache_bytes)
        self.device = model.device.type
        self.max_masks = max_masks or MAX_MASKS.get(self.device, MAX_MASKS["cpu"])
        self.default_masks = min(cc.RiseSettings().masks_for(model.device), self.max_masks)
        self.job_seconds = job_seconds or TIME_BUDGET_S.get(self.device, TIME_BUDGET_S["cpu"])
        self.masks_per_second: float | None = None  # measured: by calibrate(), then by every fresh pass
        self.answers = hosting.AnswerStore()
        self.admission: hosting.Admission | None = None  # set by build_demo, which has the queue
        workspace = hosting.workspace()
        # Inside Gradio's folder, so that Gradio serves the downloads without copying them.
        self._outputs = Path(tempfile.mkdtemp(prefix="outputs-", dir=workspace.gradio))
        self.disk = hosting.DiskBudget(workspace.root, int(disk_budget_mb * (1 << 20)))

    # ---------------------------------------------------------------- events

    @gpu
    @job
    def explain(
        self,
        image: Any,
        corpus: Any = "",
        foil: Any = "",
        foil_preset: Any = "none",
        template: Any = cc.DEFAULT_TEMPLATE,
        target: Any = "cocoa",
        method: Any = "rise",
        masks: Any = None,
        seed: Any = 0,
        opacity: Any = 0.5,
        scale: Any = "auto",
        framing: Any = "pad",
        reverse: Any = False,
        corpus_images: Any = None,
        foil_images: Any = None,
        baseline: Any = "blur",
        blur_sigma: Any = None,
        steps: Any = None,
        samples: Any = None,
        stdev: Any = None,
        model_name: Any = None,
        progress: gr.Progress = gr.Progress(),
        request: gr.Request = None,
        on_update: Callable[[list[cc.Explanation]], None] | None = None,
    ) -> tuple:
        """Explain `image` for the question (and its reverse when asked).

        Returns (overlay, reverse overlay or None, heatmap with colour bar, score as text, reading, status,
        download paths, answer token). Every bad input raises gr.Error with a sentence to act on.
        """
        with valid.user_errors():
            picture, size_note = valid.picture(image)
            target = valid.choice(target, "target", cc.TARGETS)
            captions = {side: valid.captions(text, side) for side, text in (("corpus", corpus), ("foil", foil))}
            pictures = {side: valid.image_files(files, side) for side, files in (("corpus", corpus_images),
                                                                               ("foil", foil_images))}
            preset = valid.preset(foil_preset)
            if target in ("cocoa", "corpus") and not (captions["corpus"] or pictures["corpus"]):
                raise valid.refuse("Type at least one caption to look for (or add a corpus image).")
            if target in ("cocoa", "contrastive-label-free") and not (captions["foil"] or pictures["foil"] or preset):
                raise valid.refuse("Type at least one caption to contrast with, or choose a foil preset "
                                   "(or add a foil image).")
            question = cc.Question(
                corpus=captions["corpus"], foil=captions["foil"], foil_preset=preset,
                corpus_images=pictures["corpus"], foil_images=pictures["foil"], target=target,
                template=valid.template(template))
            questions = [question, question.swapped()] if valid.flag(reverse, "reverse") else [question]
            style = {"opacity": valid.number(opacity, "opacity", 0.0, 1.0),
                     "scale": valid.choice(scale, "colour scale", [v for _, v in SCALE_CHOICES])}
            options = self._run_options(method, masks, seed, framing, progress, baseline=baseline,
                                        blur_sigma=blur_sigma, steps=steps, samples=samples, stdev=stdev)
            answers = cc.explain(self._model(model_name), picture, questions, on_update=on_update, **options)
            self._measured(answers[0])
            answers = _noted(answers, size_note)
            return self._present(answers, style, hosting.visitor(request))

    def explain_live(self, *inputs: Any) -> Iterator[tuple]:
        """`explain` (same inputs), showing the map as it forms: a frame after the first batch of masks, then
        about every half second (overlay and status only), and explain's full answer last. API callers of this
        generator get that last value. On ZeroGPU the GPU call runs in another process: no frames there."""
        if spaces is not None:
            yield self.explain(*inputs)
            return
        frames: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["answer"] = self.explain(*inputs, on_update=frames.put)
            except BaseException as error:  # noqa: BLE001 - raised again in the event's thread
                outcome["error"] = error
            finally:
                frames.put(None)

        # The event's context travels with the work: Gradio's progress bar finds its event through it.
        threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True).start()
        style = inspect.signature(self.explain).bind(*inputs).arguments
        while (answers := frames.get()) is not None:
            if not frames.empty():
                continue  # a newer frame (or the end) is waiting: show that instead
            first = answers[0]
            overlay = first.overlay(opacity=float(style.get("opacity", 0.5)),
                                    scale=None if style.get("scale", "auto") == "auto" else style["scale"])
            yield (overlay, *[gr.skip()] * 4, _live_status(first), *[gr.skip()] * 2)
        if "error" in outcome:
            raise outcome["error"]
        yield outcome["answer"]

    # Gradio names the API's parameters after the signature: explain's inputs (and its progress bar).
    explain_live.__signature__ = inspect.signature(explain).replace(
        parameters=[p for p in inspect.signature(explain).parameters.values() if p.name != "on_update"])
    # ... and finds its gr.Request (the visitor, whose answer "Check" reads) through the annotations.
    explain_live.__annotations__ = {name: kind for name, kind in explain.__annotations__.items() if name != "on_update"}

    @gpu
    @job
    def compare(
        self,
        image: Any,
        captions: Any = "",
        template: Any = cc.DEFAULT_TEMPLATE,
        method: Any = "rise",
        masks: Any = None,
        seed: Any = 0,
        framing: Any = "pad",
        baseline: Any = "blur",
        blur_sigma: Any = None,
        steps: Any = None,
        samples: Any = None,
        stdev: Any = None,
        model_name: Any = None,
        progress: gr.Progress = gr.Progress(),
        request: gr.Request = None,
    ) -> tuple:
        """Split `image` among captions (each one rather than the others): (coloured picture with legend, parts)."""
        with valid.user_errors():
            picture, size_note = valid.picture(image)
            names = valid.captions(captions, "captions to compare")
            options = self._run_options(method, masks, seed, framing, progress, baseline=baseline,
                                        blur_sigma=blur_sigma, steps=steps, samples=samples, stdev=stdev)
            comparison = cc.compare(self._model(model_name), picture, names, template=valid.template(template),
                                    **options)
            self._measured(comparison.answers[0])
        decided = comparison.decided_shares
        parts = [f"- **{caption}**: {share:.0%} of the picture, {decided[caption]:.0%} of the decided pixels; "
                 f"score {answer.score:+.4f} rather than the others"
                 for (caption, share), answer in zip(comparison.shares.items(), comparison.answers, strict=True)]
        parts.append(f"- no clear winner (uncoloured): {comparison.undecided_share:.0%} of the picture, where the "
                     f"top two captions are within {comparison.tie_margin:.0%} of the largest lead")
        return comparison.overlay(), "\n".join([*parts, "", _status(_noted(comparison.answers[:1], size_note)[0])])

    @gpu
    @job
    def check(self, token: Any, measure: Any = "similarity", progress: gr.Progress = gr.Progress(),
              request: gr.Request = None) -> tuple:
        """Insertion and deletion curves of the visitor's latest answer, recording `measure`: (plot, areas in words)."""
        answers = self.answers.get(hosting.visitor(request), token)
        if answers is None:
            raise valid.refuse("Explain a picture first (or again: each visitor's latest answer is kept for a while).")
        answer = answers[0]
        with valid.user_errors():
            measure = valid.choice(measure, "measure", [v for _, v in MEASURE_CHOICES])
            progress(0.0, desc="Insertion and deletion: re-scoring the picture as pixels come and go")
            model = self._model(answer.details["model"] if self.shelf else None)  # the model that answered
            curves = curves_of(model, answer, steps=CURVE_STEPS, measure=measure)
        aucs = curves.aucs()
        # 4 significant digits, not 4 decimals: probabilities against 999 foils are tiny and still ordered.
        text = (f"Curves of the {MEASURE_LABELS[measure]}. Insertion area {aucs['insertion_auc']:+.4g} "
                f"(random order {aucs['random_insertion_auc']:+.4g}, higher is better); "
                f"deletion area {aucs['deletion_auc']:+.4g} (random order {aucs['random_deletion_auc']:+.4g}, "
                f"lower is better). {curves.verdict()}")
        return curves.plot(answer.question.describe()), text

    def estimate(self, method: Any = "rise", masks: Any = None, *, markdown: bool = True) -> str:
        """A time estimate for a RISE run: masks divided by the throughput measured on this machine."""
        if method != "rise":
            return "Gradient methods: one backward pass per step, a few seconds on a GPU, longer on a CPU."
        try:
            n_masks = valid.masks(masks, self.max_masks, self.default_masks)
        except gr.Error as error:
            return error.message
        if n_masks == "auto":
            return f"Auto: masks are drawn until the map is stable (at most {self.max_masks:,})."
        if not self.masks_per_second:
            return f"{n_masks:,} masks; the first run measures this machine's speed."
        seconds = n_masks / self.masks_per_second
        text = (f"{n_masks:,} masks: about {_duration(seconds)} on this {self.device.upper()} "
                f"({self.masks_per_second:,.0f} masks/s measured here).")
        if seconds > 30 and markdown:
            text += " Fewer masks answer sooner with a noisier map; a repeated question on the same picture is instant."
        return text

    def calibrate(self) -> float:
        """Measure masks per second with one batch of masks on a plain grey picture (not cached)."""
        grey = Image.new("RGB", (self.model.n_px, self.model.n_px), (128, 128, 128))
        batch = default_batch_size(self.model)
        answer = cc.explain(self.model, grey, cc.Question(corpus=["a photo"], target="corpus"), masks=batch, cache=None)
        self._measured(answer)
        return self.masks_per_second or 0.0

    # ---------------------------------------------------------------- helpers

    def _run_options(self, method: Any, masks: Any, seed: Any, framing: Any, progress: gr.Progress, *,
                     baseline: Any = "blur", blur_sigma: Any = None, steps: Any = None, samples: Any = None,
                     stdev: Any = None) -> dict:
        """What `cc.explain` takes from the method widgets, checked, with progress reports wired in."""
        method = valid.choice(method, "method", cc.METHODS)
        n_masks = valid.masks(masks, self.max_masks, self.default_masks)
        auto = n_masks == "auto"
        paper = GradientSettings()
        gradient = GradientSettings(
            n_steps=valid.whole(steps, "number of Integrated Gradients steps", 1, MAX_GRADIENT_STEPS,
                                default=paper.n_steps),
            n_samples=valid.whole(samples, "number of GradientSHAP samples", 1, MAX_GRADIENT_STEPS,
                                  default=paper.n_samples),
            stdev=paper.stdev if stdev is None else valid.number(stdev, "GradientSHAP noise", 0.0, 10.0))
        options = {"method": method, "masks": n_masks, "max_masks": self.max_masks if auto else None,
                   "seed": valid.whole(seed, "seed", 0, MAX_SEED, default=0),
                   "framing": valid.choice(framing, "framing", (*cc.FRAMINGS, "crop")), "gradient": gradient,
                   "baseline": valid.choice(baseline, "baseline", BASELINES),
                   # 0, what an emptied number box sends, means the default too.
                   "blur_sigma": None if blur_sigma in (None, 0) else valid.number(blur_sigma, "blur sigma", 0.1,
                                                                                    100.0),
                   "time_budget": self.job_seconds, "cache": self.cache}
        if method == "rise":
            progress(0.0, desc=self.estimate(method, n_masks, markdown=False))

            def on_masks(done: int, total: int) -> None:
                progress((done, total), desc="RISE: masked pictures through the encoder", unit="masks")

            options["progress"] = on_masks
        else:
            progress(0.0, desc=f"{_label(METHOD_CHOICES, method)}: computing gradients")
        return options

    def _model(self, name: Any) -> cc.Model:
        """The model a visitor chose from --models (loaded on first use), else the one served."""
        if self.shelf is None or name in (None, ""):
            return self.model
        return self.shelf.get(valid.choice(name, "model", self.shelf.names))

    def _measured(self, answer: cc.Explanation) -> None:
        details = answer.details
        if answer.method == "rise" and not details.get("cached") and details.get("pass_seconds"):
            self.masks_per_second = details["masks"] / details["pass_seconds"]

    def _present(self, answers: list[cc.Explanation], style: dict, visitor: str) -> tuple:
        folder = self._output_folder()
        scale = None if style["scale"] == "auto" else style["scale"]
        overlays = [a.overlay(opacity=style["opacity"], scale=scale) for a in answers]
        files = []
        for answer, overlay, name in zip(answers, overlays, ("question", "reverse"), strict=False):
            overlay.save(folder / f"{name}_overlay.png", format="PNG")
            cc.save_heatmap(folder / f"{name}_heatmap.npy", answer.heatmap)
            files += [str(folder / f"{name}_overlay.png"), str(folder / f"{name}_heatmap.npy")]
        token = uuid.uuid4().hex
        picture = answers[0].image
        self.answers.put(visitor, token, answers,
                         nbytes=picture.width * picture.height * 3 + sum(a.heatmap.nbytes for a in answers))
        first = answers[0]
        reading = _reading(first) + ("" if len(answers) == 1 else f" Reverse question: {answers[1].score:+.4f}.")
        return (overlays[0], overlays[1] if len(answers) > 1 else None, first.colorbar(scale=scale),
                f"{first.score:+.4f}", reading, _status(first), files, token)

    def _output_folder(self) -> Path:
        folder = self._outputs / uuid.uuid4().hex
        folder.mkdir(parents=True)  # parents: the disk budget removes emptied folders
        return folder

    def after_job(self, request: gr.Request | None) -> None:
        if self.admission is not None:
            self.admission.finished(hosting.visitor(request))
        hosting.trim_memory()
        self.disk.enforce()

    def admit(self, event: Callable, inputs: int, where: int = 0) -> Callable:
        """The queue's door for `event` (Gradio's `validator`, one verdict per each of its `inputs`): refuses a
        visitor's second job, and every job while the queue is full, with a sentence on input number `where`."""
        @functools.wraps(event)  # the event's signature, so that Gradio passes the gr.Request here too
        def validator(*args: Any) -> list[dict]:
            refusal = self.admission.refusal(hosting.visitor(_request(args, {}))) if self.admission else None
            return [gr.validate(refusal is None or index != where, refusal or "") for index in range(inputs)]
        return validator


# -------------------------------------------------------------------- words


def _label(choices: list[tuple[str, str]], value: str) -> str:
    return next((label for label, v in choices if v == value), value)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _reading(answer: cc.Explanation) -> str:
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


def _noted(answers: list[cc.Explanation], note: str) -> list[cc.Explanation]:
    """The answers with one more note for the visitor (none added when `note` is empty)."""
    return [dataclasses.replace(answer, notes=(*answer.notes, note)) for answer in answers] if note else answers


def _status(answer: cc.Explanation) -> str:
    details = answer.details
    where = f"{details.get('precision')} on {details.get('device')}"
    if answer.method != "rise":
        settings = (f"{details['steps']} steps" if "steps" in details
                    else f"{details['samples']} samples, noise {details['stdev']:g}")
        text = f"{_label(METHOD_CHOICES, answer.method)} ({settings}): {details['seconds']:.1f} s ({where})."
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


def _live_status(answer: cc.Explanation) -> str:
    """The status line while RISE runs: masks so far and how stable the map already is."""
    stability = answer.details.get("stability")
    return (f"RISE running: {answer.details['masks']:,} masks so far"
            + (f", stability {stability:.3f}" if stability is not None else "") + "; the map refines as masks come.")


# -------------------------------------------------------------------- layout


def build_demo(model: cc.ClipModel, *, notice: str = "", calibrate: bool = True, shelf: ModelShelf | None = None,
               **limits: Any) -> gr.Blocks:
    """The Blocks app around one loaded model. `notice` is shown as a banner (e.g. why a fallback runs);
    `limits` go to CocoaApp (max_masks, job_seconds, disk_budget_mb); `shelf` (--models) adds a model dropdown."""
    app = CocoaApp(model, notice=notice, shelf=shelf, **limits)
    if calibrate and model.device.type == "cpu":
        app.calibrate()
    banner = f"Model: **{public_name(model.name)}**, {model.precision} on {model.device.type.upper()}."
    knows_shapes = Path(model.name).name == FALLBACK_MODEL
    with gr.Blocks(title="cocoa-clip: X rather than Y, to CLIP", delete_cache=(1800, 3600),
                   analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(" ".join(filter(None, [notice, banner, SHAPES_HINT if knows_shapes else ""])),
                    elem_id="model-banner", elem_classes=["notice"] if notice else None)
        answer_token = gr.State(None)
        choice = [gr.Dropdown(shelf.names, value=shelf.names[0], label="Model", elem_id="model",
                              info=f"loaded on first use, at most {shelf.keep} in memory")] if shelf else []
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard", "webcam"],
                                 elem_id="image", height=360)
                corpus = gr.Textbox(label="What to look for (corpus), one caption per line", lines=2,
                                    placeholder="red circle" if knows_shapes else "dog", max_length=MAX_TEXT_CHARS,
                                    elem_id="corpus")
                foil = gr.Textbox(label="Rather than (foil), one caption per line", lines=2,
                                  placeholder="blue star" if knows_shapes else "cat", max_length=MAX_TEXT_CHARS,
                                  elem_id="foil")
                foil_preset = gr.Dropdown(FOIL_PRESET_CHOICES, value="none", label="Or add a foil preset",
                                          info="CIFAR-100: the 99 other classes, as in the paper",
                                          elem_id="foil-preset")
                with gr.Row():
                    explain = gr.Button("Explain", variant="primary", elem_id="explain", scale=2)
                    swap = gr.Button("⇄ Y rather than X", elem_id="swap", scale=1)
                estimate = gr.Markdown(app.estimate("rise", app.default_masks), elem_id="estimate")
                reverse = gr.Checkbox(False, elem_id="reverse",
                                      label="Also ask the reverse question (foil rather than corpus), side by side")
                with gr.Accordion("Options", open=False):
                    template = gr.Textbox(cc.DEFAULT_TEMPLATE, label="Caption template ('{}' uses captions as written)",
                                          max_length=MAX_TEMPLATE_CHARS, elem_id="template")
                    target = gr.Dropdown(TARGET_CHOICES, value="cocoa", label="Target", elem_id="target")
                    method = gr.Dropdown(METHOD_CHOICES, value="rise", label="Method", elem_id="method")
                    # A number box, not a slider: a slider clamps a typed 999999 to its maximum and runs that.
                    masks = gr.Number(app.default_masks, label="RISE masks", precision=0, elem_id="masks",
                                      info=f"100 to {app.max_masks:,}: more masks, smoother map, longer run; "
                                           "0: auto, until the map is stable")
                    paper = GradientSettings()
                    steps = gr.Number(paper.n_steps, label="Integrated Gradients steps", precision=0, visible=False,
                                      info=f"1 to {MAX_GRADIENT_STEPS}; the paper's 50", elem_id="steps")
                    with gr.Row(visible=False) as shap_settings:
                        samples = gr.Number(paper.n_samples, label="GradientSHAP samples", precision=0,
                                            info=f"1 to {MAX_GRADIENT_STEPS}; the paper's 50", elem_id="samples")
                        stdev = gr.Number(paper.stdev, label="GradientSHAP noise (standard deviation)",
                                          info="in normalised input units; the paper's 0.2", elem_id="stdev")
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed")
                    with gr.Row():
                        baseline = gr.Dropdown(BASELINE_CHOICES, value="blur", label="Baseline",
                                               info="what hidden or removed pixels show", elem_id="baseline")
                        blur_sigma = gr.Number(0, label="Blur sigma (pixels at the model's input)",
                                               info=f"0: {default_sigma(model.n_px):.3g} here (5 x input size / 224); "
                                                    "5 is the paper's code at any size", elem_id="blur-sigma")
                    framing = gr.Radio(FRAMING_CHOICES, value="pad", label="Framing", elem_id="framing")
                    opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Heatmap opacity", elem_id="opacity")
                    scale = gr.Radio(SCALE_CHOICES, value="auto", label="Colour scale", elem_id="scale")
                with gr.Accordion("Corpus or foil made of images (optional)", open=False):
                    corpus_images = gr.File(label=f"Corpus images (up to {MAX_EXAMPLE_IMAGES})", file_count="multiple",
                                            file_types=["image"], elem_id="corpus-images")
                    foil_images = gr.File(label=f"Foil images (up to {MAX_EXAMPLE_IMAGES})", file_count="multiple",
                                          file_types=["image"], elem_id="foil-images")
            with gr.Column(scale=1):
                # Titles above the pictures, not Gradio's label badges, which cover the pictures' top-left corner.
                with gr.Row():
                    with gr.Column(min_width=160):
                        gr.Markdown("**Corpus rather than foil**", elem_classes=["picture-title"])
                        overlay = gr.Image(label="Corpus rather than foil", show_label=False, format="png",
                                           interactive=False, elem_id="overlay")
                    with gr.Column(visible=False, min_width=160) as reverse_column:
                        gr.Markdown("**Foil rather than corpus**", elem_classes=["picture-title"])
                        overlay_reverse = gr.Image(label="Foil rather than corpus", show_label=False, format="png",
                                                   interactive=False, elem_id="overlay-reverse")
                score = gr.Textbox(label="Score of the whole picture (the reading below says what it measures)",
                                   value="", interactive=False, max_lines=1, elem_id="score")
                reading = gr.Markdown(label="Reading", elem_id="reading")
                status = gr.Markdown(label="Status", elem_id="status")
                with gr.Accordion("Raw heatmap and downloads", open=False):
                    colorbar = gr.Image(label="Heatmap with colour bar", show_label=False, format="png",
                                        interactive=False, elem_id="heatmap")
                    downloads = gr.File(label="Overlay PNG and heatmap .npy (float32, H x W)", interactive=False,
                                        file_count="multiple",
                                        elem_id="downloads")
                with gr.Row(equal_height=True):
                    check = gr.Button("Check this explanation (insertion / deletion)", elem_id="check", scale=1)
                    measure = gr.Dropdown(MEASURE_CHOICES, value="similarity", elem_id="measure", scale=2,
                                          label="Measured on the picture as its pixels are inserted or deleted",
                                          info="the paper's two measures; the probability is CLIP's zero-shot "
                                               "classifier over the corpus and each foil")
                curves = gr.Image(label="Insertion and deletion curves", show_label=False, format="png",
                                  interactive=False, elem_id="curves")
                curves_text = gr.Markdown(label="Areas", elem_id="curves-text")
        with gr.Accordion("Which caption where? Split the picture among several captions", open=False,
                          elem_id="compare-section"):
            gr.Markdown("Each caption is asked *this rather than the other captions*, all from one pass over the "
                        "picture above (with its options); each region takes the colour of the caption it looks "
                        "like most (never a colour a caption names), faded where that is less clear, and stays "
                        "uncoloured where no caption clearly wins.")
            with gr.Row():
                with gr.Column(scale=1):
                    compare_captions = gr.Textbox(label="Captions to compare, one per line (2 to 10)", lines=4,
                                                  placeholder="dog\ngrass\nsky", max_length=MAX_TEXT_CHARS,
                                                  elem_id="compare-captions")
                    compare = gr.Button("Compare", variant="primary", elem_id="compare")
                    compare_parts = gr.Markdown(label="Parts", elem_id="compare-parts")
                with gr.Column(scale=1):
                    compare_overlay = gr.Image(label="Which caption where", show_label=False, format="png",
                                               interactive=False, elem_id="compare-overlay")
        rows, label = _examples(app, knows_shapes)
        gr.Examples(rows, inputs=[image, corpus, foil, foil_preset], cache_examples=False, elem_id="examples",
                    label=label, api_visibility="private")
        gr.Markdown(READING_GUIDE)

        inputs = [image, corpus, foil, foil_preset, template, target, method, masks, seed, opacity, scale, framing,
                  reverse, corpus_images, foil_images, baseline, blur_sigma, steps, samples, stdev, *choice]
        run = _one_at_a_time(explain, "Explaining…").then(
            app.explain_live, inputs,
            [overlay, overlay_reverse, colorbar, score, reading, status, downloads, answer_token],
            api_name="explain", preprocess=False, concurrency_limit=1, concurrency_id="model",
            validator=app.admit(app.explain, len(inputs)),
            show_progress_on=[overlay],  # one progress bar, not a copy clipped into every output
            show_progress="minimal",  # over the forming map, not a panel that hides it
            api_description="Heatmap of where the model sees the corpus rather than the foil.")
        _ready_again(run, explain)
        run.then(app.estimate, [method, masks], estimate, queue=False, api_visibility="private")
        _ready_again(_one_at_a_time(check, "Checking…").then(
            app.check, [answer_token, measure], [curves, curves_text], api_name="check", concurrency_limit=1,
            concurrency_id="model", show_progress_on=[curves], validator=app.admit(app.check, 2, where=1)), check)
        compare_inputs = [image, compare_captions, template, method, masks, seed, framing, baseline, blur_sigma,
                          steps, samples, stdev, *choice]
        _ready_again(_one_at_a_time(compare, "Comparing…").then(
            app.compare, compare_inputs, [compare_overlay, compare_parts], api_name="compare", preprocess=False,
            concurrency_limit=1, concurrency_id="model", show_progress_on=[compare_overlay],
            validator=app.admit(app.compare, len(compare_inputs)),
            api_description="The picture split among captions: which one each region looks like most."), compare)
        swap_these = [corpus, foil, corpus_images, foil_images]
        swap.click(lambda corpus, foil, corpus_pictures, foil_pictures: (foil, corpus, foil_pictures, corpus_pictures),
                   swap_these, swap_these, queue=False, api_visibility="private")
        reverse.change(lambda ask: gr.Column(visible=ask), reverse, reverse_column, queue=False,
                       api_visibility="private")
        method.change(lambda chosen: (gr.Number(visible=chosen == "rise"),
                                      gr.Number(visible=chosen == "integrated-gradients"),
                                      gr.Row(visible=chosen == "gradient-shap")),
                      method, [masks, steps, shap_settings], queue=False, api_visibility="private")
        for control in (masks, method):
            control.change(app.estimate, [method, masks], estimate, queue=False, api_visibility="private",
                           preprocess=False)
    # Our door (app.admit) refuses at QUEUE_SIZE waiting jobs with a sentence; Gradio's own limit is the backstop.
    demo.queue(max_size=2 * QUEUE_SIZE, api_open=False)
    app.admission = hosting.Admission(lambda: hosting.queued_jobs(demo, "model"), max_waiting=QUEUE_SIZE)
    app.disk.keep_present()  # the examples Gradio has just copied in stay, however old
    app.disk.watch()
    demo.cocoa_app = app  # for tests and scripts
    return demo


def _one_at_a_time(button: gr.Button, busy: str) -> Any:
    """The button's click event, which first disables the button (labelled `busy`) so that a second click
    cannot queue a second run; `_ready_again` re-enables it when the run ends."""
    return button.click(lambda: gr.Button(busy, interactive=False), None, button, queue=False,
                        api_visibility="private")


def _ready_again(run: Any, button: gr.Button) -> None:
    """Re-enable the button, with its own label, when the run ends well or badly (Gradio's .then follows
    success only, .failure the rest)."""
    label = button.value
    for after in (run.then, run.failure):
        after(lambda: gr.Button(label, interactive=True), None, button, queue=False, api_visibility="private")


def _examples(app: CocoaApp, knows_shapes: bool) -> tuple[list[list[str]], str]:
    """Example rows (picture, corpus, foil, foil preset) and their label: the model's own kind of picture first.

    The photos come from the repository's assets/ (kept there with their licences, not in the installed
    package); the shapes scenes are drawn here, so every installation has examples that work offline.
    """
    folder = app._outputs / "examples"
    folder.mkdir(exist_ok=True)
    scenes = []
    for objects, seed, corpus, foil in SHAPE_EXAMPLES:
        path = folder / f"{'_'.join(colour + '_' + shape for colour, shape in objects)}.png"
        scene = shapes.render_scene(np.random.default_rng(seed), 256, specs=objects, min_frac=0.25, max_frac=0.4,
                                    max_overlap=0.0)
        scene.image.save(path)
        scenes.append([str(path), corpus, foil, "none"])
    photos = [[str(ASSETS / name), *rest] for name, *rest in EXAMPLES if (ASSETS / name).is_file()]
    if knows_shapes:
        return scenes + photos, f"Examples: scenes {FALLBACK_MODEL} knows first, then photos (for CLIP)"
    return photos + scenes, "Examples: photos (assets/LICENSES.md), then scenes for the bundled shapes-demo model"


def launch_options() -> dict:
    """Safe launch settings (docs/security.md says what each guards against); `run_history` only where this
    Gradio accepts it."""
    options = dict(ssr_mode=False, enable_monitoring=False, share=False, show_error=False,
                   max_file_size=MAX_UPLOAD, run_history=False, theme=gr.themes.Soft(), css=CSS,
                   app_kwargs={"exception_handlers": {HTTPException: valid.gradio_refusal}})
    accepted = inspect.signature(gr.Blocks.launch).parameters
    return {key: value for key, value in options.items() if key in accepted}


# -------------------------------------------------------------------- start-up


def load_model(name: str | None = None, weights: str | None = None, device: str | None = None,
               say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
               trust_checkpoint: bool = False) -> tuple[cc.ClipModel, str]:
    """The model to serve, and a notice for the banner when it is not the one asked for.

    A model the user named (--model, --weights) must load. With nothing named, ViT-B/32 is tried and,
    when its weights cannot be had (offline), the bundled shapes-demo model runs instead, if present.
    trust_checkpoint: --trust-checkpoint, which lets a weights file run code (cc.load's, unsafe).
    """
    if name is not None or weights is not None:
        return cc.load(name or DEFAULT_MODEL, weights=weights, device=device, trust_checkpoint=trust_checkpoint), ""
    try:
        return cc.load(DEFAULT_MODEL, device=device), ""
    except cc.ModelLoadError as error:
        if not BUNDLED[FALLBACK_MODEL].is_file():
            raise
        say(f"error: {error}")
        say(f"Serving the bundled {FALLBACK_MODEL} model instead.")
        # The reason names server paths: it goes to the operator's console (above), not to the page.
        tried = f" (tried: {', '.join(error.tried)})" if error.tried else ""
        notice = (f"⚠ The {DEFAULT_MODEL} weights could not be had on this server{tried}; its console says how to "
                  f"add them. Meanwhile it runs the small bundled {FALLBACK_MODEL} model, which knows coloured "
                  "shapes only.")
        return cc.load(FALLBACK_MODEL, device=device), notice


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description="Serve the cocoa-clip web app (and its HTTP API).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="NAME",
                       help=f"an OpenAI CLIP name, open_clip:ARCH[:TAG] or hf:REPO_OR_DIR (default {DEFAULT_MODEL}, "
                            f"else {FALLBACK_MODEL} if it is offline)")
    which.add_argument("--models", metavar="A,B,C", help="offer these models in a dropdown (the first loads at start, "
                       "the others on first use, at most two in memory)")
    parser.add_argument("--weights", metavar="PATH", help="local checkpoint: OpenAI CLIP .pt, or one for --model "
                        "open_clip:ARCH")
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (0.0.0.0 serves other machines)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    limits = parser.add_argument_group("limits for a public deployment")
    limits.add_argument("--max-masks", type=_positive(int), metavar="N",
                        help=f"most RISE masks a visitor may ask for (default {MAX_MASKS['cpu']:,} on a CPU, "
                             f"{MAX_MASKS['cuda']:,} on a GPU)")
    limits.add_argument("--job-seconds", type=_positive(float), metavar="S",
                        help="time budget of a RISE run; it then answers from the masks done "
                             f"(default {TIME_BUDGET_S['cpu']:.0f} on a CPU, {TIME_BUDGET_S['cuda']:.0f} on a GPU)")
    limits.add_argument("--disk-budget", type=_positive(float), metavar="MB", default=DISK_BUDGET_MB,
                        help="most disk used for visitors (uploads, Gradio's cache, downloads); oldest files go first")
    return parser.parse_args(argv)


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Serve the app: `python app.py [options]` or `cocoa-clip serve [options]` (prog names the command in --help)."""
    args = parse_args(argv, prog)
    report_sources()  # one console line per weights source tried
    try:
        names = [name.strip() for name in (args.models or "").split(",") if name.strip()]
        model, notice = load_model(names[0] if names else args.model, args.weights, args.device,
                                   trust_checkpoint=args.trust_checkpoint)
    except cc.CocoaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    hosting.remove_on_signals()  # SIGTERM too ends through atexit, which removes visitors' files
    shelf = ModelShelf(names, lambda name: cc.load(name, device=args.device, trust_checkpoint=args.trust_checkpoint),
                       loaded=model) if names else None
    demo = build_demo(model, notice=notice, max_masks=args.max_masks, job_seconds=args.job_seconds,
                      disk_budget_mb=args.disk_budget, shelf=shelf)
    globals()["demo"] = demo
    demo.launch(server_name=args.host, server_port=args.port, **launch_options())
    return 0


def __getattr__(name: str) -> Any:
    """`webapp.demo`, built on first use with the default model (for `gradio app.py` and Spaces tooling)."""
    if name == "demo":
        model, notice = load_model()
        globals()["demo"] = build_demo(model, notice=notice)
        return globals()["demo"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
