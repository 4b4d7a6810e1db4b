"""The command line's parser: every command, its options, and what each option means."""
from __future__ import annotations

import argparse

from ..batch import ENGINES
from ..engine.auto import AUTO, AUTO_CAP, MAX_MASKS
from ..engine.compare import MAX_CAPTIONS
from ..engine.evaluate import MEASURES
from ..engine.explain import METHODS
from ..engine.gradients import GradientSettings
from ..engine.images import BASELINES, FRAMING_ALIASES, FRAMINGS
from ..engine.presets import DEFAULT_TEMPLATE, FOIL_PRESETS
from ..engine.render import SCALES
from ..engine.rise import DEFAULT_ESTIMATOR, ESTIMATORS
from ..engine.targets import SIMILARITIES, TARGETS
from ..models import DEFAULT_MODEL, PRECISIONS
from ..models.trust import TRUST_HELP


class _Help(argparse.HelpFormatter):
    """Shows each option's default, where it has one the help does not already state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == [] \
                or action.default == argparse.SUPPRESS:  # identity: 0 is a default worth showing, unlike False
            return text
        return f"{text} (default: {action.default})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cocoa-clip",
        description="Explain what in an image makes CLIP see the corpus rather than the foil (COCOA).",
    )
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{explain,evaluate,compare,models,download,batch,serve}")
    explain_parser = commands.add_parser(
        "explain", help="heatmap of an image for a question", formatter_class=_Help,
        description="Write a heatmap of each IMAGE: where CLIP sees the corpus rather than the foil. Prints the "
                    "score. In output paths {stem} stands for the image's file name without its extension; with "
                    "several images every output path needs it. Missing folders are made.")
    _question_options(explain_parser, several=True)
    explain_parser.add_argument("--out", metavar="PNG",
                                help="overlay at the image's own size (default: {stem}_cocoa.png here)")
    explain_parser.add_argument("--heatmap", metavar="NPY",
                                help="also save the raw heatmap, float32 H x W of the image")
    explain_parser.add_argument("--colorbar", metavar="PNG", help="also save the raw heatmap with a colour bar")
    explain_parser.add_argument("--opacity", type=float, default=0.5,
                                help="weight of the heatmap in the overlay, 0 to 1")
    explain_parser.add_argument("--scale", choices=("auto",) + SCALES, default="auto",
                                help="colours: minmax (RISE, as in the paper) or signed (centred on zero); "
                                     "auto picks by method")
    explain_parser.add_argument("--cmap", help="matplotlib colour map (default: jet for minmax, bwr for signed)")

    evaluate_parser = commands.add_parser(
        "evaluate", help="insertion/deletion check of a heatmap", formatter_class=_Help,
        description="Explain IMAGE (or read --from-heatmap), then measure insertion and deletion curves of "
                    "the corpus against the foil (--measure), next to a random pixel order.")
    _question_options(evaluate_parser)
    evaluate_parser.add_argument("--from-heatmap", metavar="NPY",
                                 help="evaluate this saved heatmap instead of computing one")
    evaluate_parser.add_argument("--curve-steps", type=int, default=50, help="points on each curve")
    evaluate_parser.add_argument("--curve-baseline", choices=BASELINES, default=None,
                                 help="what the curves put in place of removed pixels (default: the heatmap's "
                                      "--baseline and --blur-sigma)")
    evaluate_parser.add_argument("--measure", choices=MEASURES, default="similarity",
                                 help="what the curves record: contrastive corpus similarity, or CLIP's zero-shot "
                                      "probability of the corpus against the foil classes (the paper's corpus "
                                      "majority probability)")
    evaluate_parser.add_argument("--plot", metavar="PNG", help="save the curves as a plot")
    evaluate_parser.add_argument("--methods", type=method_list, default=None, metavar="M1,M2,...",
                                 help="one table instead: each method's map scored in both measures, ranked by "
                                      "--measure (e.g. rise,integrated-gradients,legrad,attention-relevance)")

    compare_parser = commands.add_parser(
        "compare", help="which of several captions each region of an image looks like", formatter_class=_Help,
        description="Split IMAGE among captions: each caption is asked 'this rather than the other captions' "
                    "(one RISE pass serves them all) and each pixel goes to the caption whose map is highest "
                    "there. Prints each caption's score and share of the picture.")
    _image_argument(compare_parser)
    compare_parser.add_argument("--caption", action="append", default=[], metavar="TEXT",
                                help=f"a caption to compare; repeat, 2 to {MAX_CAPTIONS} in all")
    compare_parser.add_argument("--template", default=DEFAULT_TEMPLATE,
                                help="caption template; '{}' uses captions as written")
    _method_options(compare_parser, estimator=False)
    _model_options(compare_parser)
    compare_parser.add_argument("--out", metavar="PNG",
                                help="the picture coloured by caption, with a legend "
                                     "(default: {stem}_compare.png here)")
    compare_parser.add_argument("--labels", metavar="NPY",
                                help="also save the label map: int16 H x W, each pixel's caption (0 = first), "
                                     "-1 where no caption clearly wins, -2 where the model saw nothing")
    compare_parser.add_argument("--tie-margin", type=float, default=0.1, metavar="SHARE",
                                help="no clear winner where the top two maps are closer than this share of the "
                                     "picture's largest lead")
    compare_parser.add_argument("--opacity", type=float, default=0.6, help="weight of the colours, 0 to 1")

    models_parser = commands.add_parser("models", help="list the model names --model accepts, and where their "
                                        "weights are")
    models_parser.add_argument("--all", action="store_true", help="also every open_clip ARCH:TAG pair")
    download_parser = commands.add_parser(
        "download", help="fetch a model's weights ahead of time (for an offline machine, a Docker image, a Space)",
        formatter_class=_Help,
        description="Fetch NAME's weights to where later runs find them with no network: the clip package's "
                    "cache (from its URL) or the Hugging Face hub's cache (HF_HOME; HF_ENDPOINT for a mirror).")
    download_parser.add_argument("name", metavar="NAME", help="a model name (see `models`), e.g. ViT-B/32, "
                                 "open_clip:ViT-B-32:laion2b_s34b_b79k or hf:google/siglip-base-patch16-224")
    _trust_options(download_parser)
    _batch_parser(commands)
    # `serve` hands its arguments to the web app's own parser (main() routes them before this one).
    commands.add_parser("serve", help="the web app and its HTTP API, as app.py serves it (options: serve --help; "
                                      "needs pip install 'cocoa-clip[app]')")
    return parser


def _batch_parser(commands: argparse._SubParsersAction) -> None:
    batch_parser = commands.add_parser(
        "batch", help="explain a whole collection: results table, heatmaps and an HTML report", formatter_class=_Help,
        description="Explain every image of INPUT (a folder, searched recursively; a glob in quotes; or a .csv, "
                    ".jsonl or .parquet table with an image column and optional corpus, foil, target and seed "
                    "columns, captions separated by '|'). The options fill what the table leaves out. Writes "
                    "results.parquet, heatmaps/, thumbnails/, manifest.json and report.html in --out-dir. The exit "
                    "status is the number of rows that failed (their error column says why).")
    batch_parser.add_argument("input", metavar="INPUT", help="folder, glob or table of images")
    batch_parser.add_argument("--out-dir", required=True, metavar="DIR", help="where the results go")
    _question_options(batch_parser, image=False)
    run = batch_parser.add_argument_group("batch")
    run.add_argument("--engine", choices=ENGINES, default="local",
                     help="local: in this process, without Ray; ray: a Ray Data pipeline with an actor pool")
    run.add_argument("--ray-address", metavar="ADDR",
                     help="join this Ray cluster ('auto': the one `ray start` made); default: start a local Ray")
    run.add_argument("--workers", type=int, default=1, help="Ray actors, one model each")
    run.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each Ray actor reserves")
    run.add_argument("--overlays", action="store_true", help="also write full-size overlays under DIR/overlays/")
    run.add_argument("--evaluate", action="store_true", help="add insertion and deletion AUCs to every row")
    run.add_argument("--resume", action="store_true",
                     help="go on with the results already in DIR (rows that failed are tried again)")


def _image_argument(parser: argparse.ArgumentParser, several: bool = False) -> None:
    parser.add_argument("image", metavar="IMAGE", nargs="+" if several else None,
                        help=f"the picture{'s' if several else ''} to explain (any size; PNG, JPEG, WebP, TIFF ...)")


def _question_options(parser: argparse.ArgumentParser, several: bool = False, image: bool = True) -> None:
    if image:
        _image_argument(parser, several)
    what = parser.add_argument_group("question")
    what.add_argument("--corpus", action="append", default=[], metavar="TEXT",
                      help="what to look for; repeat for several captions")
    foils = what.add_mutually_exclusive_group()
    foils.add_argument("--foil", action="append", default=[], metavar="TEXT",
                       help="what to contrast with; repeat for several")
    foils.add_argument("--foil-preset", choices=sorted(FOIL_PRESETS),
                       help="foil = these classes minus the corpus (cifar100: the paper's 99 other classes)")
    what.add_argument("--corpus-image", action="append", default=[], metavar="PATH",
                      help="an image for the corpus; repeatable")
    what.add_argument("--foil-image", action="append", default=[], metavar="PATH",
                      help="an image for the foil; repeatable")
    what.add_argument("--template", default=DEFAULT_TEMPLATE, help="caption template; '{}' uses captions as written")
    what.add_argument("--target", choices=TARGETS, default="cocoa",
                      help="cocoa: corpus rather than foil; corpus: corpus only; label-free: the image itself (RELAX); "
                           "contrastive-label-free: the image itself rather than the foil")
    what.add_argument("--similarity", choices=SIMILARITIES, default="cosine", help="cosine (the paper) or dot product")
    _method_options(parser, estimator=True)
    _model_options(parser)


def _method_options(parser: argparse.ArgumentParser, estimator: bool) -> None:
    how = parser.add_argument_group("method")
    how.add_argument("--method", choices=METHODS, default="rise", help="attribution method")
    how.add_argument("--masks", type=count_or_auto, default=None,
                     help=f"RISE masks, 1 to {MAX_MASKS['cpu']:,} on a CPU or {MAX_MASKS['cuda']:,} on a GPU; or auto "
                          "(or 0): until the map is stable (default: auto on a CPU, 20000 on a GPU)")
    how.add_argument("--stability", type=float, default=0.97,
                     help="with --masks auto: stop when every map's estimated correlation with its limit reaches "
                          "this at two checkpoints in a row (default 0.97)")
    how.add_argument("--max-masks", type=int, default=None,
                     help=f"with --masks auto: the most masks to draw (default: {AUTO_CAP['cpu']:,} on a CPU, "
                          f"{AUTO_CAP['cuda']:,} on a GPU)")
    how.add_argument("--seed", type=int, default=0, help="random seed of the masks / noise")
    how.add_argument("--baseline", choices=BASELINES, default="blur",
                     help="what removed pixels show: the blurred picture (the paper's), the model's mean colour "
                          "(zero after its normalisation), or black")
    how.add_argument("--blur-sigma", type=float, default=None, metavar="PIXELS",
                     help="the blur's sigma in pixels of the model's input (default: 5 x input size / 224; "
                          "5 reproduces the paper's code, kernel 21, at any size)")
    gradients = GradientSettings()
    how.add_argument("--steps", type=int, default=gradients.n_steps,
                     help="Integrated Gradients: steps of the path integral (the paper's 50)")
    how.add_argument("--samples", type=int, default=gradients.n_samples,
                     help="GradientSHAP: noisy samples (the paper's 50)")
    how.add_argument("--stdev", type=float, default=gradients.stdev,
                     help="GradientSHAP: noise standard deviation, in normalised input units (the paper's 0.2)")
    if estimator:
        how.add_argument("--estimator", choices=ESTIMATORS, default=DEFAULT_ESTIMATOR,
                         help="RISE estimator: regression (least noise), centered (mean score subtracted) "
                              "or paper (the paper's)")
    how.add_argument("--framing", choices=(*FRAMINGS, *FRAMING_ALIASES), default="pad",
                     help="pad: whole image on a square; model (alias crop): the model's own preprocessing (CLIP: "
                          "centre crop; SigLIP: squash); squash: resize to square")
    how.add_argument("--batch-size", type=int, default=None, help="masked images per forward pass (default: by device)")
    how.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                     help="stop RISE after this long and answer from the masks done (default: no limit)")


def _model_options(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME",
                       help="an OpenAI CLIP name (ViT-B/32 ...), open_clip:ARCH[:TAG] or hf:REPO_OR_DIR (see `models`)")
    model.add_argument("--weights", metavar="PATH", help="local checkpoint: an OpenAI CLIP .pt (JIT archive or state "
                       "dict), or with --model open_clip:ARCH one for that architecture")
    _trust_options(model)
    model.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    model.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto: fp16 on CUDA, bf16 autocast on CPUs with bf16 arithmetic, else fp32; int8 (CPU): "
                            "the image tower's Linear layers in int8 for RISE's passes")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no line per weights source tried")


def _trust_options(group: argparse._ActionsContainer) -> None:
    """--revision and --trust-checkpoint: where every command that loads a model takes them."""
    group.add_argument("--revision", metavar="REV", help="hub revision (branch, tag or commit) to pin; same as "
                       "NAME@REV")
    group.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def method_list(text: str) -> list[str]:
    """Comma-separated method names, each one of METHODS."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    wrong = [name for name in names if name not in METHODS]
    if not names or wrong:
        raise argparse.ArgumentTypeError(f"{wrong[0] if wrong else text!r} is not a method; give some of "
                                         f"{','.join(METHODS)}, separated by commas")
    return names


def count_or_auto(text: str) -> int | str:
    """--masks: a whole number (0 means auto) or "auto"; the range is the library's, checked for the device."""
    return AUTO if text.strip().lower() == AUTO else int(text)
