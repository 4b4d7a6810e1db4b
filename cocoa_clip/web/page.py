"""The page: its sections laid out as the visitor sees them, then the events wired to `CocoaApp`."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import numpy as np

import cocoa_clip as cc
from cocoa_clip.engine.gradients import GradientSettings
from cocoa_clip.engine.images import default_sigma
from cocoa_clip.models import shapes
from cocoa_clip.web import hosting
from cocoa_clip.web.handlers import MAX_GRADIENT_STEPS, CocoaApp
from cocoa_clip.web.inputs import MAX_EXAMPLE_IMAGES, MAX_SEED, MAX_TEMPLATE_CHARS, MAX_TEXT_CHARS
from cocoa_clip.web.shelf import ModelShelf
from cocoa_clip.web.words import (
    BASELINE_CHOICES,
    FOIL_PRESET_CHOICES,
    FRAMING_CHOICES,
    MEASURE_CHOICES,
    METHOD_CHOICES,
    SCALE_CHOICES,
    TARGET_CHOICES,
    public_name,
)

ASSETS = Path(__file__).resolve().parents[2] / "assets"  # the repository's example photos (absent once installed)
FALLBACK_MODEL = "shapes-demo"
QUEUE_SIZE = 32                   # jobs waiting; more are refused with a sentence (one per visitor)

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


def build_demo(model: cc.ClipModel, *, notice: str = "", calibrate: bool = True, shelf: ModelShelf | None = None,
               **limits: Any) -> gr.Blocks:
    """The Blocks app around one loaded model. `notice` is shown as a banner (e.g. why a fallback runs);
    `limits` go to CocoaApp (max_masks, job_seconds, disk_budget_mb); `shelf` (--models) adds a model dropdown."""
    app = CocoaApp(model, notice=notice, shelf=shelf, **limits)
    if calibrate and model.device.type == "cpu":
        app.calibrate()
    banner = f"Model: **{public_name(model.name)}**, {model.precision} on {model.device.type.upper()}."
    knows_shapes = Path(model.name).name == FALLBACK_MODEL
    w = SimpleNamespace()  # the page's widgets, by name, as the sections below create them
    with gr.Blocks(title="cocoa-clip: X rather than Y, to CLIP", delete_cache=(1800, 3600),
                   analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(" ".join(filter(None, [notice, banner, SHAPES_HINT if knows_shapes else ""])),
                    elem_id="model-banner", elem_classes=["notice"] if notice else None)
        w.answer_token = gr.State(None)
        w.choice = [gr.Dropdown(shelf.names, value=shelf.names[0], label="Model", elem_id="model",
                                  info=f"loaded on first use, at most {shelf.keep} in memory")] if shelf else []
        with gr.Row():
            with gr.Column(scale=1):
                _question(w, app, knows_shapes)
                with gr.Accordion("Options", open=False):
                    _options(w, app)
                with gr.Accordion("Corpus or foil made of images (optional)", open=False):
                    _image_captions(w)
            with gr.Column(scale=1):
                _answer(w)
        with gr.Accordion("Which caption where? Split the picture among several captions", open=False,
                          elem_id="compare-section"):
            _comparison(w)
        rows, label = _examples(app, knows_shapes)
        gr.Examples(rows, inputs=[w.image, w.corpus, w.foil, w.foil_preset], cache_examples=False,
                    elem_id="examples", label=label, api_visibility="private")
        gr.Markdown(READING_GUIDE)
        _wire(w, app)
    # Our door (app.admit) refuses at QUEUE_SIZE waiting jobs with a sentence; Gradio's own limit is the backstop.
    demo.queue(max_size=2 * QUEUE_SIZE, api_open=False)
    app.admission = hosting.Admission(lambda: hosting.queued_jobs(demo, "model"), max_waiting=QUEUE_SIZE)
    app.disk.keep_present()  # the examples Gradio has just copied in stay, however old
    hosting.every(5.0, app.housekeeping, "cocoa-housekeeping")
    demo.cocoa_app = app  # for tests and scripts
    return demo


def _question(w: SimpleNamespace, app: CocoaApp, knows_shapes: bool) -> None:
    """The picture, the question (corpus, foil, preset), the Explain and swap buttons, and the time estimate."""
    w.image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard", "webcam"],
                       elem_id="image", height=280)  # 280: Explain stays above the fold at 1280 x 900
    # Examples go in the info line, not as grey placeholder text, which reads as input (beside a preset, as a foil).
    w.corpus = gr.Textbox(label="What to look for (corpus), one caption per line", lines=2,
                          info=f"e.g. {'red circle' if knows_shapes else 'dog'}", max_length=MAX_TEXT_CHARS,
                          elem_id="corpus")
    w.foil = gr.Textbox(label="Rather than (foil), one caption per line", lines=2,
                        info=f"e.g. {'blue star' if knows_shapes else 'cat'}; or leave it empty and add a preset",
                        max_length=MAX_TEXT_CHARS, elem_id="foil")
    w.foil_preset = gr.Dropdown(FOIL_PRESET_CHOICES, value="none", label="Or add a foil preset",
                                info="CIFAR-100: the 99 other classes, as in the paper",
                                elem_id="foil-preset")
    with gr.Row():
        w.explain = gr.Button("Explain", variant="primary", elem_id="explain", scale=2)
        w.swap = gr.Button("⇄ Y rather than X", elem_id="swap", scale=1)
    w.estimate = gr.Markdown(app.estimate("rise", app.default_masks), elem_id="estimate")
    w.reverse = gr.Checkbox(False, elem_id="reverse",
                            label="Also ask the reverse question (foil rather than corpus), side by side")


def _options(w: SimpleNamespace, app: CocoaApp) -> None:
    """The options: caption template, target, method and each method's own settings, baseline, framing, style."""
    w.template = gr.Textbox(cc.DEFAULT_TEMPLATE, label="Caption template ('{}' uses captions as written)",
                            max_length=MAX_TEMPLATE_CHARS, elem_id="template")
    w.target = gr.Dropdown(TARGET_CHOICES, value="cocoa", label="Target", elem_id="target")
    w.method = gr.Dropdown(METHOD_CHOICES, value="rise", label="Method", elem_id="method")
    # A number box, not a slider: a slider clamps a typed 999999 to its maximum and runs that.
    w.masks = gr.Number(app.default_masks, label="RISE masks", precision=0, elem_id="masks",
                        info=f"1 to {app.max_masks:,}: more masks, smoother map, longer run; "
                             "0: auto, until the map is stable")
    paper = GradientSettings()
    w.steps = gr.Number(paper.n_steps, label="Integrated Gradients steps", precision=0, visible=False,
                        info=f"1 to {MAX_GRADIENT_STEPS}; the paper's 50", elem_id="steps")
    with gr.Row(visible=False) as w.shap_settings:
        w.samples = gr.Number(paper.n_samples, label="GradientSHAP samples", precision=0,
                              info=f"1 to {MAX_GRADIENT_STEPS}; the paper's 50", elem_id="samples")
        w.stdev = gr.Number(paper.stdev, label="GradientSHAP noise (standard deviation)",
                            info="in normalised input units; the paper's 0.2", elem_id="stdev")
    w.seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed")
    with gr.Row():
        w.baseline = gr.Dropdown(BASELINE_CHOICES, value="blur", label="Baseline",
                                 info="what hidden or removed pixels show", elem_id="baseline")
        w.blur_sigma = gr.Number(0, label="Blur sigma (pixels at the model's input)",
                                 info=f"0: {default_sigma(app.model.n_px):.3g} here (5 x input size / 224); "
                                      "5 is the paper's code at any size", elem_id="blur-sigma")
    w.framing = gr.Radio(FRAMING_CHOICES, value="pad", label="Framing", elem_id="framing")
    w.opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Heatmap opacity", elem_id="opacity")
    w.scale = gr.Radio(SCALE_CHOICES, value="auto", label="Colour scale", elem_id="scale")


def _image_captions(w: SimpleNamespace) -> None:
    """A corpus or foil made of pictures ("why is my picture like these rather than those?")."""
    w.corpus_images = gr.File(label=f"Corpus images (up to {MAX_EXAMPLE_IMAGES})", file_count="multiple",
                              file_types=["image"], elem_id="corpus-images")
    w.foil_images = gr.File(label=f"Foil images (up to {MAX_EXAMPLE_IMAGES})", file_count="multiple",
                            file_types=["image"], elem_id="foil-images")


def _answer(w: SimpleNamespace) -> None:
    """The answer: overlays (and the reverse question's), score and reading, downloads, the check's curves."""
    # Titles above the pictures, not Gradio's label badges, which cover the pictures' top-left corner.
    with gr.Row():
        with gr.Column(min_width=160):
            gr.Markdown("**Corpus rather than foil**", elem_classes=["picture-title"])
            w.overlay = gr.Image(label="Corpus rather than foil", show_label=False, format="png",
                                 interactive=False, elem_id="overlay")
        with gr.Column(visible=False, min_width=160) as w.reverse_column:
            gr.Markdown("**Foil rather than corpus**", elem_classes=["picture-title"])
            w.overlay_reverse = gr.Image(label="Foil rather than corpus", show_label=False, format="png",
                                         interactive=False, elem_id="overlay-reverse")
    w.reading = gr.Markdown(label="Reading", elem_id="reading")  # the model's answer in words, then the score's reading
    w.score = gr.Textbox(label="Score of the whole picture (the reading above says what it measures)",
                         value="", interactive=False, max_lines=1, elem_id="score")
    w.status = gr.Markdown(label="Status", elem_id="status")
    with gr.Accordion("Raw heatmap and downloads", open=False):
        w.colorbar = gr.Image(label="Heatmap with colour bar", show_label=False, format="png",
                              interactive=False, elem_id="heatmap")
        w.downloads = gr.File(label="Overlay PNG and heatmap .npy (float32, H x W)", interactive=False,
                              file_count="multiple",
                              elem_id="downloads")
    with gr.Row():  # not equal_height: stretched to the dropdown's height the button read as a white card
        w.check = gr.Button("Check this explanation (insertion / deletion)", variant="primary", size="md",
                            elem_id="check", scale=1)
        w.measure = gr.Dropdown(MEASURE_CHOICES, value="similarity", elem_id="measure", scale=2,
                                label="Measured on the picture as its pixels are inserted or deleted",
                                info="the paper's two measures; the probability is CLIP's zero-shot "
                                     "classifier over the corpus and each foil")
    w.curves = gr.Image(label="Insertion and deletion curves", show_label=False, format="png",
                        interactive=False, elem_id="curves")
    w.curves_text = gr.Markdown(label="Areas", elem_id="curves-text")
    w.check_methods = gr.Button("Compare the methods on this question (every method's map, checked the same way)",
                                elem_id="check-methods")
    w.methods_table = gr.Markdown(label="Methods compared", elem_id="methods-table")


def _comparison(w: SimpleNamespace) -> None:
    """Which caption where: the picture split among several captions."""
    gr.Markdown("Each caption is asked *this rather than the other captions*, all from one pass over the "
                "picture above (with its options); each region takes the colour of the caption it looks "
                "like most (never a colour a caption names), faded where that is less clear, and stays "
                "uncoloured where no caption clearly wins.")
    with gr.Row():
        with gr.Column(scale=1):
            w.compare_captions = gr.Textbox(label="Captions to compare, one per line (2 to 10)", lines=4,
                                            info="e.g. dog, grass and sky, on three lines", max_length=MAX_TEXT_CHARS,
                                            elem_id="compare-captions")
            w.compare = gr.Button("Compare", variant="primary", elem_id="compare")
            w.compare_parts = gr.Markdown(label="Parts", elem_id="compare-parts")
        with gr.Column(scale=1):
            w.compare_overlay = gr.Image(label="Which caption where", show_label=False, format="png",
                                         interactive=False, elem_id="compare-overlay")


def _wire(w: SimpleNamespace, app: CocoaApp) -> None:
    """The events: each button's run (one at a time, with the queue's door), and the widgets that follow others."""
    inputs = [w.image, w.corpus, w.foil, w.foil_preset, w.template, w.target, w.method, w.masks, w.seed, w.opacity,
              w.scale, w.framing, w.reverse, w.corpus_images, w.foil_images, w.baseline, w.blur_sigma, w.steps,
              w.samples, w.stdev, *w.choice]
    run = _one_at_a_time(w.explain, "Explaining…").then(
        app.explain_live, inputs,
        [w.overlay, w.overlay_reverse, w.colorbar, w.score, w.reading, w.status, w.downloads, w.answer_token],
        api_name="explain", preprocess=False, concurrency_limit=1, concurrency_id="model",
        validator=app.admit(app.explain, len(inputs)),
        show_progress_on=[w.overlay],  # one progress bar, not a copy clipped into every output
        show_progress="minimal",  # over the forming map, not a panel that hides it
        api_description="Heatmap of where the model sees the corpus rather than the foil.")
    _ready_again(run, w.explain)
    run.then(app.estimate, [w.method, w.masks], w.estimate, queue=False, api_visibility="private")
    _ready_again(_one_at_a_time(w.check, "Checking…").then(
        app.check, [w.answer_token, w.measure], [w.curves, w.curves_text], api_name="check", concurrency_limit=1,
        concurrency_id="model", show_progress_on=[w.curves], validator=app.admit(app.check, 2, where=1)), w.check)
    _ready_again(_one_at_a_time(w.check_methods, "Comparing methods…").then(
        app.check_methods, [w.answer_token, w.measure], w.methods_table, api_name="check_methods",
        concurrency_limit=1, concurrency_id="model", show_progress_on=[w.methods_table],
        validator=app.admit(app.check_methods, 2, where=1)), w.check_methods)
    compare_inputs = [w.image, w.compare_captions, w.template, w.method, w.masks, w.seed, w.framing, w.baseline,
                      w.blur_sigma, w.steps, w.samples, w.stdev, *w.choice]
    cleared = _one_at_a_time(w.compare, "Comparing…").then(  # a failed run leaves no earlier parts beside its error
        lambda: (None, ""), None, [w.compare_overlay, w.compare_parts], queue=False, api_visibility="private")
    _ready_again(cleared.then(
        app.compare, compare_inputs, [w.compare_overlay, w.compare_parts], api_name="compare", preprocess=False,
        concurrency_limit=1, concurrency_id="model", show_progress_on=[w.compare_overlay],
        validator=app.admit(app.compare, len(compare_inputs)),
        api_description="The picture split among captions: which one each region looks like most."), w.compare)
    swap_these = [w.corpus, w.foil, w.corpus_images, w.foil_images]
    w.swap.click(lambda corpus, foil, corpus_pictures, foil_pictures: (foil, corpus, foil_pictures, corpus_pictures),
                 swap_these, swap_these, queue=False, api_visibility="private")
    w.reverse.change(lambda ask: gr.Column(visible=ask), w.reverse, w.reverse_column, queue=False,
                     api_visibility="private")
    w.method.change(lambda chosen: (gr.Number(visible=chosen == "rise"),
                                    gr.Number(visible=chosen == "integrated-gradients"),
                                    gr.Row(visible=chosen == "gradient-shap")),
                    w.method, [w.masks, w.steps, w.shap_settings], queue=False, api_visibility="private")
    for control in (w.masks, w.method):
        control.change(app.estimate, [w.method, w.masks], w.estimate, queue=False, api_visibility="private",
                       preprocess=False)


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
