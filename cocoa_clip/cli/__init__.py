"""Command line: `cocoa-clip explain|evaluate|compare|models|download|batch|serve` (or `python -m cocoa_clip ...`).

    cocoa-clip explain dog.jpg --corpus dog --foil cat --out overlay.png
    cocoa-clip explain photos/*.jpg --corpus dog --foil cat --out maps/{stem}.png
    cocoa-clip evaluate dog.jpg --corpus dog --foil-preset cifar100 --json
    cocoa-clip compare park.jpg --caption dog --caption grass --caption sky
    cocoa-clip batch photos/ --corpus dog --foil cat --out-dir results --engine ray
    cocoa-clip serve --model shapes-demo --port 7861
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..batch import ENGINES, REPORT, RESULTS, Job, ModelSpec, check_engine, collect, failed_status
from ..batch import run as run_batch
from ..engine.compare import MAX_CAPTIONS, caption_questions, compare
from ..engine.evaluate import MEASURE_LABELS, MEASURES, check_steps, curves_of, insertion_deletion, measure_of
from ..engine.explain import METHODS, Explanation, explain
from ..engine.gradients import GradientSettings
from ..engine.images import BASELINES, FRAMING_ALIASES, FRAMINGS, ImageSource, check_baseline, load_image
from ..engine.presets import DEFAULT_TEMPLATE, FOIL_PRESETS
from ..engine.render import SCALES, check_style, save_npy
from ..engine.rise import AUTO, DEFAULT_ESTIMATOR, ESTIMATORS, RiseSettings
from ..engine.targets import SIMILARITIES, TARGETS, Question
from ..errors import CocoaError, ImageError, check_seed
from ..models import DEFAULT_MODEL, PRECISIONS, ClipModel, available_models, download, load, weights_on_disk
from ..models import registry as families
from ..models.weights import report_sources


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
    how.add_argument("--masks", type=_count_or_auto, default=None,
                     help="RISE masks, or auto: until the map is stable (default: 20000 on a GPU, 2000 on a CPU)")
    how.add_argument("--stability", type=float, default=0.97,
                     help="with --masks auto: stop when every map's estimated correlation with its limit reaches "
                          "this (default 0.97)")
    how.add_argument("--max-masks", type=int, default=None,
                     help="with --masks auto: the most masks to draw (default: 20000 on a GPU, 4000 on a CPU)")
    how.add_argument("--seed", type=int, default=0, help="random seed of the masks / noise")
    how.add_argument("--baseline", choices=BASELINES, default="blur",
                     help="what removed pixels show: the blurred picture (the paper's), CLIP's mean colour, or black")
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
    model.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    model.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto: fp16 on CUDA, bf16 autocast on CPUs that have it, else fp32")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no line per weights source tried")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv) if argv[:1] != ["serve"] else None
    if args is not None:
        report_sources(not getattr(args, "quiet", False) and args.command != "models")  # models: a listing, no log
    try:
        if args is None:
            return _serve(argv[1:])
        if args.command == "models":
            return _models_command(args.all)
        if args.command == "download":
            found = download(args.name)
            print(f"{args.name}: {found.path} ({found.source})")
            return 0
        return _run(args)
    except CocoaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"error: {error.strerror or error} ({error.filename or 'file'})", file=sys.stderr)
        return 2


def _models_command(every: bool = False) -> int:
    """Each model name with where its weights are on this machine (usable offline) or that they are missing;
    then each other family: the names it accepts, an example, and its models already on disk."""
    names = available_models()
    width = max(map(len, names))
    for name in names:
        found = weights_on_disk(name)
        where = f"on disk ({found.source}): {found.path}" if found else "not on disk: fetched on first use " \
            f"(or now: cocoa-clip download {name})"
        print(f"{name:{width}s}  {where}")
    cached = families.cached_names()
    for family in families.FAMILIES:
        print(f"{family.names}  {family.title}, e.g. --model {family.example} (needs {family.package})")
        if family.prefix == "open_clip" and every:
            import open_clip

            print("\n".join(f"  open_clip:{arch}:{tag}" for arch, tag in open_clip.list_pretrained()))
        elif family.prefix == "open_clip":
            print("  every ARCH:TAG of open_clip.list_pretrained() (`cocoa-clip models --all` lists them)")
        on_disk = [(name, path) for name, path in cached if name.startswith(family.prefix + ":")]
        print("\n".join(f"  on disk: {name}  {path}" for name, path in on_disk) or "  none on disk yet")
    return 0


def _serve(app_args: list[str]) -> int:
    """The web app, as app.py runs it; gradio is an optional dependency."""
    try:
        from ..web import app as webapp
    except ImportError as error:
        raise CocoaError(f"The web app needs gradio ({error}); install it with: pip install 'cocoa-clip[app]'.") \
            from error
    return webapp.main(app_args, prog="cocoa-clip serve")


def _run(args: argparse.Namespace) -> int:
    if hasattr(args, "stability"):
        _settings(args)  # refuse bad counts and thresholds before loading a model
    check_baseline(args.baseline, args.blur_sigma)
    _gradient(args)
    commands = {"explain": _explain_command, "evaluate": _evaluate_command, "compare": _compare_command,
                "batch": _batch_command}
    return commands[args.command](args)


def _question(args: argparse.Namespace) -> Question:
    return Question(corpus=args.corpus, foil=args.foil, foil_preset=args.foil_preset,
                    corpus_images=args.corpus_image, foil_images=args.foil_image,
                    target=args.target, template=args.template, similarity=args.similarity)


def _explain_command(args: argparse.Namespace) -> int:
    """Explain the images in turn. An unreadable image is reported and skipped (exit status 2 at the
    end); any other error is the question's or the settings', and stops the run."""
    question = _question(args)
    plan = _output_plan(args)
    check_style(args.opacity, args.cmap)
    model = _load(args)
    status = 0
    for image, paths in plan:
        try:
            picture = load_image(image)
        except ImageError as error:
            print(f"error: {error}", file=sys.stderr)  # the message names the file
            status = 2
            continue
        answer = _explain(model, question, picture, args)
        _report_explanation(answer, image, paths, args, several=len(plan) > 1)
    return status


def _evaluate_command(args: argparse.Namespace) -> int:
    """Insertion and deletion curves of a heatmap (computed, or read with --from-heatmap)."""
    question = _question(args)
    measure_of(question)  # a corpus and a foil, checked before any work
    check_steps(args.curve_steps)
    check_seed(args.seed)
    inputs = [args.image] + ([args.from_heatmap] if args.from_heatmap else [])
    _refuse_clashes(inputs, [(args.image, {"plot": args.plot})])
    saved = _read_heatmap(args.from_heatmap) if args.from_heatmap else None
    model = _load(args)
    options = {"steps": args.curve_steps, "seed": args.seed, "measure": args.measure}
    if saved is not None:
        curves = insertion_deletion(model, args.image, saved, question, framing=args.framing,
                                    baseline=args.curve_baseline or args.baseline, blur_sigma=args.blur_sigma,
                                    **options)
    else:
        answer = _explain(model, question, args.image, args)
        if args.curve_baseline is not None:
            answer.details.update(baseline=args.curve_baseline)
        curves = curves_of(model, answer, **options)  # its map as computed, with its own baseline
    if args.plot:
        _make_folders([args.plot])
        curves.plot(question.describe()).save(args.plot, format="PNG")
    if args.json:
        print(json.dumps({**curves.to_dict(), "question": question.describe(), "target": args.target,
                          "method": args.method}))
    else:
        for name, value in curves.aucs().items():
            print(f"{name:22s} {value: .4f}")
        print(f"({MEASURE_LABELS[args.measure]}; insertion: higher is better, deletion: lower is better)")
        print(curves.verdict())
    return 0


def _compare_command(args: argparse.Namespace) -> int:
    """Split one image among captions; write the coloured picture (and labels), print each caption's part."""
    caption_questions(args.caption, args.template)  # refuse bad caption lists before loading a model
    check_style(args.opacity)
    paths = {"out": _fill(args.out or "{stem}_compare.png", args.image), "labels": _fill(args.labels, args.image)}
    _refuse_clashes([args.image], [(args.image, paths)])
    model = _load(args)
    picture = load_image(args.image)
    with _progress(model, args) as progress:
        comparison = compare(model, picture, args.caption, template=args.template, progress=progress,
                             tie_margin=args.tie_margin, **_method(args))
    _make_folders(paths.values())
    comparison.overlay(opacity=args.opacity).save(paths["out"], format="PNG")
    if paths["labels"]:
        save_npy(paths["labels"], comparison.labels.astype(np.int16))
    parts = [{"caption": caption, "share": share, "decided_share": comparison.decided_shares[caption],
              "score": answer.score}
             for (caption, share), answer in zip(comparison.shares.items(), comparison.answers, strict=True)]
    if args.json:
        print(json.dumps({"image": args.image, "captions": parts, "undecided_share": comparison.undecided_share,
                          "tie_margin": comparison.tie_margin, "overlay": paths["out"], "labels": paths["labels"],
                          "details": comparison.answers[0].details}))
        return 0
    width = max(len(part["caption"]) for part in parts)
    for part in parts:
        print(f"{part['caption']:{width}s}  {part['share']:6.1%} of the picture, {part['decided_share']:6.1%} of the "
              f"decided pixels  score {part['score']:+.4f} (rather than the others)")
    print(f"{'no clear winner':{width}s}  {comparison.undecided_share:6.1%} of the picture (the top two maps within "
          f"{comparison.tie_margin:.0%} of the largest lead; left uncoloured)")
    print(f"overlay -> {paths['out']}" + (f"\nlabels -> {paths['labels']}" if paths["labels"] else ""))
    return 0


def _batch_command(args: argparse.Namespace) -> int:
    """Explain a collection; print where the results went. Exit status: the number of failed rows."""
    check_engine(args.engine, args.workers, args.gpus_per_worker, args.ray_address)
    question = {"corpus": args.corpus, "foil": args.foil, "foil_preset": args.foil_preset,
                "corpus_images": args.corpus_image, "foil_images": args.foil_image, "target": args.target,
                "template": args.template, "similarity": args.similarity}
    options = {name: value for name, value in _method(args).items() if name not in ("seed", "cache", "gradient")}
    if _gradient(args) != GradientSettings():  # the job's settings are stored as JSON, which holds no dataclass
        raise CocoaError("batch runs gradient methods with the paper's settings; leave out --steps, --samples "
                         "and --stdev (or use explain).")
    job = Job(out_dir=args.out_dir, model=ModelSpec(args.model, args.weights, args.device, args.precision),
              question=question, options={**options, "estimator": args.estimator}, seed=args.seed,
              evaluate=args.evaluate, overlays=args.overlays)
    rows = collect(args.input, job)
    with _batch_progress(len(rows), args.quiet) as progress:
        summary = run_batch(rows, job, engine=args.engine, workers=args.workers,
                            gpus_per_worker=args.gpus_per_worker, ray_address=args.ray_address,
                            resume=args.resume, on_result=progress)
    out = summary.out_dir
    if args.json:
        print(json.dumps({**dataclasses.asdict(summary), "out_dir": str(out), "results": str(out / RESULTS),
                          "report": str(out / REPORT)}))
    else:
        print(f"{summary.rows} rows: {summary.explained} explained now, {summary.skipped} done before, "
              f"{summary.failed} failed{' (see the error column)' if summary.failed else ''}; "
              f"{summary.seconds:.1f} s\nresults -> {out / RESULTS}\nreport -> {out / REPORT}")
    if summary.failed:
        print(f"error: {summary.failed} of {summary.rows} rows failed", file=sys.stderr)
    return failed_status(summary)


@contextlib.contextmanager
def _batch_progress(total: int, quiet: bool) -> Iterator[Callable[[dict], None] | None]:
    """A bar on stderr: images done, images per minute, time left."""
    if quiet:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="image", disable=None, file=sys.stderr,
              bar_format="{n_fmt}/{total_fmt} images |{bar}| {elapsed}<{remaining} left{postfix}") as bar:
        def update(result: dict) -> None:
            bar.update(1)
            elapsed = bar.format_dict["elapsed"]
            bar.set_postfix_str(f"{bar.n / elapsed * 60:.1f} images/min" if elapsed > 0 else "")

        yield update


def _output_plan(args: argparse.Namespace) -> list[tuple[str, dict[str, str | None]]]:
    """Each image with the files it gets: --out, --heatmap and --colorbar with {stem} filled in.

    Refuses, before any work, patterns that would make two images (or two outputs) share a file.
    """
    patterns = {"out": args.out or "{stem}_cocoa.png", "heatmap": args.heatmap, "colorbar": args.colorbar}
    if len(args.image) > 1:
        for option, pattern in patterns.items():
            if pattern and "{stem}" not in pattern:
                example = Path(pattern).with_name("{stem}" + (Path(pattern).suffix or ".png"))
                raise CocoaError(f"With several images, put {{stem}} in --{option} so that each image gets its own "
                                 f"file, e.g. --{option} {example}.")
    repeated = [image for image, count in Counter(args.image).items() if count > 1]
    if repeated:
        raise CocoaError(f"{repeated[0]} is given more than once.")
    plan = [(image, {option: _fill(pattern, image) for option, pattern in patterns.items()}) for image in args.image]
    _refuse_clashes(args.image, plan)
    return plan


def _fill(pattern: str | None, image: str) -> str | None:
    """An output path pattern with {stem} replaced by the image's file name without extension."""
    return pattern.replace("{stem}", Path(image).stem) if pattern else None


def _make_folders(paths: Iterable[str | None]) -> None:
    for path in filter(None, paths):
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _refuse_clashes(images: Sequence[str], plan: list[tuple[str, dict[str, str | None]]]) -> None:
    """Refuse outputs that would overwrite an input file or one another."""
    inputs = {Path(image).resolve(): image for image in images}
    writers: dict[Path, str] = {}
    for image, paths in plan:
        for path in filter(None, paths.values()):
            target = Path(path).resolve()
            if target in inputs:
                raise CocoaError(f"{path} would overwrite the input {inputs[target]}; "
                                 "name the outputs differently (e.g. --out maps/{stem}.png).")
            if target in writers:
                raise CocoaError(f"{writers[target]} and {image} would both be written to {path}; "
                                 "give the outputs different names (or folders).")
            writers[target] = image


def _explain(model: ClipModel, question: Question, image: ImageSource, args: argparse.Namespace) -> Explanation:
    with _progress(model, args) as progress:
        return explain(model, image, question, estimator=args.estimator, progress=progress, **_method(args))


def _load(args: argparse.Namespace) -> ClipModel:
    return load(args.model, weights=args.weights, device=args.device, precision=args.precision)


def _method(args: argparse.Namespace) -> dict:
    """The explain options the method group sets."""
    return {"method": args.method, "masks": args.masks, "stability": args.stability, "max_masks": args.max_masks,
            "seed": args.seed, "framing": args.framing,
            "batch_size": args.batch_size, "time_budget": args.time_budget, "cache": None,
            "baseline": args.baseline, "blur_sigma": args.blur_sigma, "gradient": _gradient(args)}


def _gradient(args: argparse.Namespace) -> GradientSettings:
    return GradientSettings(n_steps=args.steps, n_samples=args.samples, stdev=args.stdev)


def _count_or_auto(text: str) -> int | str:
    """--masks: a whole number or "auto"."""
    return AUTO if text.strip().lower() == AUTO else int(text)


def _settings(args: argparse.Namespace) -> RiseSettings:
    return RiseSettings(n_masks=args.masks, stability=args.stability, max_masks=args.max_masks)


@contextlib.contextmanager
def _progress(model: ClipModel, args: argparse.Namespace) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr for RISE's masks (None when quiet or for gradient methods)."""
    if args.quiet or args.method != "rise":
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=_settings(args).masks_for(model.device), unit="mask", disable=None,
              file=sys.stderr) as bar:
        yield lambda done, total: bar.update(done - bar.n)


def _report_explanation(answer: Explanation, image: str, paths: dict[str, str | None], args: argparse.Namespace,
                        several: bool) -> None:
    """Write the image's files, then print its answer (text, or one JSON line per image)."""
    _make_folders(paths.values())
    style = {"opacity": args.opacity, "scale": None if args.scale == "auto" else args.scale, "cmap": args.cmap}
    answer.save(overlay=paths["out"], heatmap=paths["heatmap"], **style)
    if paths["colorbar"]:
        answer.colorbar(scale=style["scale"], cmap=args.cmap).save(paths["colorbar"], format="PNG")
    for note in answer.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"image": image, "score": answer.score, "question": answer.question.describe(),
                          "target": args.target, "method": answer.method, "overlay": paths["out"],
                          "heatmap": paths["heatmap"], "colorbar": paths["colorbar"],
                          "zero_shot": answer.zero_shot.to_dict() if answer.zero_shot else None,
                          "details": answer.details, "notes": list(answer.notes)}), flush=True)
        return
    indent = "  " if several else ""
    label = "contrastive corpus similarity" if args.target == "cocoa" else f"{args.target} score"
    details = answer.details
    lines = [f"score {answer.score:+.4f}  ({label}: {answer.question.describe()})"]
    lines += [f"zero-shot answer: {answer.zero_shot.text}"] if answer.zero_shot else []
    lines += [f"{answer.method}, {details['precision']} on {details['device']}, {details['seconds']:.1f} s"
              + (f", {details['masks']} masks" if answer.method == "rise" else "")
              + (f", stability {details['stability']:.3f}" if details.get("stability") is not None else "")
              + ("" if details.get("complete", True) else " (the time budget ran out first)")]
    lines += [f"{name} -> {path}" for name, path in (("overlay", paths["out"]), ("heatmap", paths["heatmap"]),
                                                    ("colour bar", paths["colorbar"])) if path]
    print("\n".join(([image] if several else []) + [indent + line for line in lines]), flush=True)


def _read_heatmap(path: str) -> np.ndarray:
    """A saved (H, W) heatmap of real numbers, as float32; anything else is refused in a sentence."""
    try:
        heatmap = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # EOFError: an empty file
        raise CocoaError(f"Could not read {path} as a .npy heatmap ({error}).") from error
    if not isinstance(heatmap, np.ndarray):  # an .npz archive
        heatmap.close()
        raise CocoaError(f"{path} is an archive of several arrays; save one heatmap with numpy.save (.npy).")
    if heatmap.dtype.kind not in "biuf":
        raise CocoaError(f"{path} holds {heatmap.dtype} values; a heatmap holds real numbers.")
    if heatmap.ndim != 2:
        raise CocoaError(f"{path} holds a {heatmap.ndim}-d array; a heatmap is 2-d (H x W).")
    return heatmap.astype(np.float32)

