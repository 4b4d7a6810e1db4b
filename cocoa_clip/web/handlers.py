"""What the widgets call: `CocoaApp`, one served model with its pass cache, caps and visitors' answers."""
from __future__ import annotations

import contextvars
import functools
import inspect
import queue
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

import cocoa_clip as cc
from cocoa_clip.engine.auto import AUTO, DEFAULT_MASKS, MAX_MASKS, auto_cap
from cocoa_clip.engine.evaluate import MEASURE_LABELS, alike, curves_of
from cocoa_clip.engine.faithfulness import applicable_methods, compare_methods
from cocoa_clip.engine.gradients import GradientSettings
from cocoa_clip.engine.images import BASELINES
from cocoa_clip.engine.rise import default_batch_size
from cocoa_clip.web import hosting, words
from cocoa_clip.web import inputs as valid
from cocoa_clip.web.inputs import MAX_SEED
from cocoa_clip.web.jobs import STOPPING, Work
from cocoa_clip.web.shelf import ModelShelf

try:  # ZeroGPU (Hugging Face Spaces); app.py, the Space's entry point, imports it before torch
    import spaces
except ImportError:
    spaces = None

INTERNAL = ("on_update", "should_stop")  # explain's parameters for explain_live, not the API's
TIME_BUDGET_S = {"cpu": 300.0, "cuda": 100.0}  # RISE stops and answers from the masks done
MAX_GRADIENT_STEPS = 500          # Integrated Gradients steps, GradientSHAP samples
CURVE_STEPS = 50
DISK_BUDGET_MB = 1024             # everything written for visitors: uploads, Gradio's cache, downloads
MIN_DISK_BUDGET_MB = 100          # one answer at MAX_SIDE: upload (up to 20 MB), two heatmaps, four PNGs
ANSWER_MEMORY_MB = 512            # visitors' latest answers kept for "Check this explanation"
ANSWER_IDLE_MINUTES = 30.0        # ... each until its visitor has been idle this long
MAX_SESSIONS = 1000               # visitors whose session (Gradio's) and latest answer (ours) stay in memory


def gpu(function: Callable) -> Callable:
    """`spaces.GPU` on a ZeroGPU Space (the GPU is attached for the call), unchanged elsewhere."""
    return spaces.GPU(duration=120)(function) if spaces is not None else function


def job(method: Callable) -> Callable:
    """A job on the device: it counts as its visitor's from its start, waits for the device (the job
    before may still be stopping), and after it (answered, refused, failed or stopped) the visitor may ask
    again, freed memory goes back to the system and the disk budget is kept. Gradio still sees the
    method's own signature (and passes its gr.Request)."""
    @functools.wraps(method)
    def call(self: CocoaApp, *args: Any, **kwargs: Any) -> Any:
        request = _request(args, kwargs)
        if self.admission is not None:
            self.admission.started(hosting.visitor(request), hosting.address(request, self.trust_proxy))
        try:
            with self.work.turn():
                return method(self, *args, **kwargs)
        finally:
            self.after_job(request)
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
                 disk_budget_mb: float = DISK_BUDGET_MB, shelf: ModelShelf | None = None,
                 answer_memory_mb: float = ANSWER_MEMORY_MB, answer_idle_minutes: float = ANSWER_IDLE_MINUTES,
                 max_sessions: int = MAX_SESSIONS, trust_proxy: bool = False):
        """max_masks, job_seconds: a deployment's caps (default per device: engine.auto.MAX_MASKS, TIME_BUDGET_S).
        The masks box takes what the library takes (0 or auto for auto), up to the smaller of the two maxima.
        disk_budget_mb: bound on everything this process writes for visitors (oldest files go first).
        answer_memory_mb, answer_idle_minutes, max_sessions: bounds on the visitors' answers kept for "Check"
        (max_sessions also goes to Gradio's launch: see app.launch_options).
        trust_proxy: count visitors by their forwarded address too (see hosting.address).
        With a `shelf` (--models), `model` is its first model, and the shelf alone holds it (so that it
        can be dropped like the others)."""
        hosting.tame_malloc()
        self._served = None if shelf is not None else model
        self.shelf = shelf  # --models: the models a visitor may choose, loaded on first use
        self.notice = notice
        self.cache = cc.PassCache(max_bytes=cache_bytes)
        self.device = model.device.type
        self.max_masks = min(max_masks or MAX_MASKS[self.device], MAX_MASKS[self.device])
        default = DEFAULT_MASKS[self.device]
        self.default_masks = 0 if default == AUTO else min(default, self.max_masks)  # the box shows auto as 0
        self.job_seconds = job_seconds or TIME_BUDGET_S.get(self.device, TIME_BUDGET_S["cpu"])
        self.masks_per_second: float | None = None  # measured: by calibrate(), then by every fresh pass
        self.answers = hosting.AnswerStore(max_visitors=max_sessions, max_bytes=int(answer_memory_mb * (1 << 20)),
                                           idle_seconds=answer_idle_minutes * 60)
        self.admission: hosting.Admission | None = None  # set by build_demo, which has the queue
        self.trust_proxy = trust_proxy
        self.work = Work()
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
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple:
        """Explain `image` for the question (and its reverse when asked).

        Returns (overlay, reverse overlay or None, heatmap with colour bar, score as text, reading, status,
        download paths, answer token). Every bad input raises gr.Error with a sentence to act on.
        should_stop: True once the client has gone; the run then stops within a batch, and keeps no answer.
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
                     "scale": valid.choice(scale, "colour scale", [v for _, v in words.SCALE_CHOICES])}
            options = self._run_options(method, masks, seed, framing, progress, baseline=baseline,
                                        blur_sigma=blur_sigma, steps=steps, samples=samples, stdev=stdev)
            stop = self.work.should_stop(should_stop)
            answers = cc.explain(self._model(model_name), picture, questions, on_update=on_update,
                                 should_stop=stop, **options)
            if stop():  # gone while the answer was being made: an orphan keeps no answer
                raise cc.Cancelled()
            self._measured(answers[0])
            answers = words.noted(answers, size_note)
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
        gone = threading.Event()

        def work() -> None:
            try:
                outcome["answer"] = self.explain(*inputs, on_update=frames.put, should_stop=gone.is_set)
            except BaseException as error:  # noqa: BLE001 - raised again in the event's thread
                outcome["error"] = error
            finally:
                frames.put(None)

        # The event's context travels with the work: Gradio's progress bar finds its event through it.
        threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True).start()
        style = inspect.signature(self.explain).bind(*inputs).arguments
        try:
            while (answers := frames.get()) is not None:
                if not frames.empty():
                    continue  # a newer frame (or the end) is waiting: show that instead
                first = answers[0]
                overlay = first.overlay(opacity=float(style.get("opacity", 0.5)),
                                        scale=None if style.get("scale", "auto") == "auto" else style["scale"])
                yield (overlay, *[gr.skip()] * 4, words.live_status(first), *[gr.skip()] * 2)
        finally:
            # Closed by a cancel or a disconnect (GeneratorExit at the yield): the work stops within a batch,
            # in its own thread, and frees the visitor's place (job's after_job) only then. Not joined here:
            # Gradio closes generators in its event loop, which a join would hold up for every visitor.
            gone.set()
        if "error" in outcome:
            raise outcome["error"]
        yield outcome["answer"]

    # Gradio names the API's parameters after the signature: explain's inputs (and its progress bar).
    explain_live.__signature__ = inspect.signature(explain).replace(
        parameters=[p for p in inspect.signature(explain).parameters.values() if p.name not in INTERNAL])
    # ... and finds its gr.Request (the visitor, whose answer "Check" reads) through the annotations.
    explain_live.__annotations__ = {name: kind for name, kind in explain.__annotations__.items()
                                    if name not in INTERNAL}

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
                                    should_stop=self.work.should_stop(), **options)
            self._measured(comparison.answers[0])
        decided = comparison.decided_shares
        parts = [f"- **{caption}**: {share:.0%} of the picture, {decided[caption]:.0%} of the decided pixels; "
                 f"score {answer.score:+.4f} rather than the others"
                 for (caption, share), answer in zip(comparison.shares.items(), comparison.answers, strict=True)]
        parts.append(f"- no clear winner (uncoloured): {comparison.undecided_share:.0%} of the picture, where the "
                     f"top two captions are within {comparison.tie_margin:.0%} of the largest lead")
        first = words.noted(comparison.answers[:1], size_note)[0]
        return comparison.overlay(), "\n".join([*parts, "", words.status(first)])

    @gpu
    @job
    def check(self, token: Any, measure: Any = "similarity", progress: gr.Progress = gr.Progress(),
              request: gr.Request = None) -> tuple:
        """Insertion and deletion curves of the visitor's latest answer, recording `measure`: (plot, areas in words)."""
        answer = self._latest(token, request)
        with valid.user_errors():
            measure = valid.choice(measure, "measure", [v for _, v in words.MEASURE_CHOICES])
            progress(0.0, desc="Insertion and deletion: re-scoring the picture as pixels come and go")
            answered_by = words.public_name(answer.details["model"]) if self.shelf else None
            model = self._model(answered_by)
            curves = curves_of(model, answer, steps=CURVE_STEPS, measure=measure)
        aucs = curves.aucs()
        insertion, random_insertion, deletion, random_deletion = alike(
            *(aucs[name] for name in ("insertion_auc", "random_insertion_auc", "deletion_auc", "random_deletion_auc")))
        text = (f"Curves of the {MEASURE_LABELS[measure]}. Insertion area {insertion} (random order "
                f"{random_insertion}, higher is better); deletion area {deletion} (random order {random_deletion}, "
                f"lower is better). {curves.verdict()}")
        return curves.plot(answer.question.describe()), text

    @gpu
    @job
    def check_methods(self, token: Any, measure: Any = "similarity", progress: gr.Progress = gr.Progress(),
                      request: gr.Request = None) -> str:
        """Every method that applies, on the visitor's latest picture and question, scored side by side and ranked
        by `measure` (engine/faithfulness.py): the table as Markdown."""
        answer = self._latest(token, request)
        with valid.user_errors():
            measure = valid.choice(measure, "measure", [v for _, v in words.MEASURE_CHOICES])
            progress(0.0, desc="Explaining with every method, then inserting and deleting each map's pixels")
            model = self._model(answer.details["model"] if self.shelf else None)
            table = compare_methods(model, answer.image, answer.question, applicable_methods(model), rank_by=measure,
                                    framing=answer.details.get("framing", "pad"), steps=CURVE_STEPS,
                                    masks=self.default_masks, baseline=answer.details.get("baseline", "blur"))
        return f"```\n{table.text()}\n```"

    def _latest(self, token: Any, request: gr.Request | None) -> cc.Explanation:
        """The visitor's latest answer (its first question), or a refusal in a sentence."""
        answers = self.answers.get(hosting.visitor(request), token)
        if answers is None:
            raise valid.refuse("Explain a picture first (or again: each visitor's latest answer is kept for a while).")
        return answers[0]

    def estimate(self, method: Any = "rise", masks: Any = None, *, markdown: bool = True) -> str:
        """A time estimate for a RISE run: masks divided by the throughput measured on this machine."""
        if method in ("legrad", "attention-relevance"):
            return "One forward and one backward pass: an answer at once (vision transformers only)."
        if method != "rise":
            return "Gradient methods: one backward pass per step, a few seconds on a GPU, longer on a CPU."
        try:
            n_masks = valid.masks(masks, self.device, self.max_masks)
        except gr.Error as error:
            return error.message
        if n_masks == "auto":
            return (f"Auto: masks are drawn until the map is stable (at most "
                    f"{auto_cap(None, self.device, self.max_masks):,}).")
        if not self.masks_per_second:
            return f"{n_masks:,} masks; the first run measures this machine's speed."
        seconds = n_masks / self.masks_per_second
        text = (f"{n_masks:,} masks: about {words.duration(seconds)} on this {self.device.upper()} "
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
        n_masks = valid.masks(masks, self.device, self.max_masks)
        auto = n_masks == AUTO
        paper = GradientSettings()
        gradient = GradientSettings(
            n_steps=valid.whole(steps, "number of Integrated Gradients steps", 1, MAX_GRADIENT_STEPS,
                                default=paper.n_steps),
            n_samples=valid.whole(samples, "number of GradientSHAP samples", 1, MAX_GRADIENT_STEPS,
                                  default=paper.n_samples),
            stdev=paper.stdev if stdev is None else valid.number(stdev, "GradientSHAP noise", 0.0, 10.0))
        options = {"method": method, "masks": n_masks,
                   "max_masks": auto_cap(None, self.device, self.max_masks) if auto else None,
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
            progress(0.0, desc=f"{words.label(words.METHOD_CHOICES, method)}: computing gradients")
        return options

    @property
    def model(self) -> cc.Model:
        """The model served (with --models, the first one: loaded again if the shelf dropped it)."""
        return self._served if self.shelf is None else self.shelf.get(self.shelf.names[0])

    def _model(self, name: Any) -> cc.Model:
        """The model a visitor chose from --models by its public name (loaded on first use), else the one served."""
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
        reading = words.reading(first) + ("" if len(answers) == 1 else f" Reverse question: {answers[1].score:+.4f}.")
        reading = "\n\n".join(filter(None, [words.in_words(first), reading]))  # the answer first, the map second
        return (overlays[0], overlays[1] if len(answers) > 1 else None, first.colorbar(scale=scale),
                f"{first.score:+.4f}", reading, words.status(first), files, token)

    def _output_folder(self) -> Path:
        folder = self._outputs / uuid.uuid4().hex
        folder.mkdir(parents=True)  # parents: the disk budget removes emptied folders
        return folder

    def after_job(self, request: gr.Request | None) -> None:
        if self.admission is not None:
            self.admission.finished(hosting.visitor(request))
        self.housekeeping()

    def housekeeping(self) -> None:
        """After every job and every few seconds: answers of visitors gone idle go, freed memory goes back to
        the system, and the disk budget is kept (uploads arrive between jobs)."""
        self.answers.sweep()
        hosting.trim_memory()
        self.disk.enforce()

    def admit(self, event: Callable, inputs: int, where: int = 0) -> Callable:
        """The queue's door for `event` (Gradio's `validator`, one verdict per each of its `inputs`): refuses a
        visitor's second job, every job while the queue is full and once the server stops, with a sentence on
        input number `where`; a job let in has its place reserved at once."""
        @functools.wraps(event)  # the event's signature, so that Gradio passes the gr.Request here too
        def validator(*args: Any) -> list[dict]:
            request = _request(args, {})
            refusal = None
            if self.work.stopping.is_set():
                refusal = STOPPING
            elif self.admission is not None:
                refusal = self.admission.admit(hosting.visitor(request), hosting.address(request, self.trust_proxy))
            return [gr.validate(refusal is None or index != where, refusal or "") for index in range(inputs)]
        return validator
