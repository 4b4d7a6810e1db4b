"""What each command does: load the model once, explain or check each picture, print and write the results."""
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

from ..batch import REPORT, RESULTS, Job, ModelSpec, check_engine, collect, failed_status
from ..batch import run as run_batch
from ..engine.compare import caption_questions, compare
from ..engine.evaluate import MEASURE_LABELS, check_steps, curves_of, insertion_deletion, measure_of
from ..engine.explain import Explanation, explain
from ..engine.faithfulness import compare_methods
from ..engine.gradients import GradientSettings
from ..engine.images import ImageSource, check_baseline, load_image
from ..engine.render import check_style, save_npy
from ..engine.rise import RiseSettings
from ..engine.targets import Question
from ..errors import CocoaError, ImageError, SettingsError, check_seed, writing
from ..models import ClipModel, available_models, load, weights_on_disk
from ..models import registry as families
from ..models.trust import commit_of
from ..models.weights import Found


def _pins(found: Found) -> str:
    """What pins a file on disk, where it is known without reading it again: its hub commit, its SHA-256."""
    commit, digest = commit_of(found.path), found.sha256
    return (f"  commit {commit}" if commit else "") + (f"  sha256 {digest}" if digest else "")


def models_command(every: bool = False) -> int:
    """Each model name with where its weights are on this machine (usable offline) or that they are missing;
    then each other family: the names it accepts, an example, and its models already on disk."""
    names = available_models()
    width = max(map(len, names))
    for name in names:
        found = weights_on_disk(name)
        where = f"on disk ({found.source}): {found.path}{_pins(found)}" if found else \
            f"not on disk: fetched on first use (or now: cocoa-clip download {name})"
        print(f"{name:{width}s}  {where}")
    cached = families.cached_names()
    for family in families.FAMILIES:
        print(f"{family.names}  {family.title}, e.g. --model {family.example} (needs {family.package})")
        if family.note:
            print(f"  note: {family.note}")
        if family.prefix == "open_clip" and every:
            import open_clip

            print("\n".join(f"  open_clip:{arch}:{tag}" for arch, tag in open_clip.list_pretrained()))
        elif family.prefix == "open_clip":
            print("  every ARCH:TAG of open_clip.list_pretrained() (`cocoa-clip models --all` lists them)")
        on_disk = [(name, path) for name, path in cached if name.startswith(family.prefix + ":")]
        print("\n".join(f"  on disk: {name}  {path}" for name, path in on_disk) or "  none on disk yet")
    return 0


def serve(app_args: list[str]) -> int:
    """The web app, as app.py runs it; gradio is an optional dependency."""
    try:
        from ..web import app as webapp
    except ImportError as error:
        raise CocoaError(f"The web app needs gradio ({error}); install it with: pip install 'cocoa-clip[app]'.") \
            from error
    return webapp.main(app_args, prog="cocoa-clip serve")


def run(args: argparse.Namespace) -> int:
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
    if args.methods:
        return _methods_table(args, question)
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
        with writing(args.plot):
            curves.plot(question.describe()).save(args.plot, format="PNG")
    if args.json:
        print(to_json({**curves.to_dict(), "question": question.describe(), "target": args.target,
                          "method": args.method}))
    else:
        for name, value in curves.aucs().items():
            print(f"{name:22s} {value: .4f}")
        print(f"({MEASURE_LABELS[args.measure]}; insertion: higher is better, deletion: lower is better)")
        print(curves.verdict())
    return 0


def _methods_table(args: argparse.Namespace, question: Question) -> int:
    """evaluate --methods: every method's map of the question, scored side by side (engine/faithfulness.py)."""
    if args.from_heatmap or args.plot:
        raise SettingsError("--methods scores the maps it computes itself; drop --from-heatmap and --plot.")
    table = compare_methods(_load(args), args.image, question, args.methods, rank_by=args.measure,
                            framing=args.framing, steps=args.curve_steps, seed=args.seed, masks=args.masks,
                            gradient=_gradient(args), baseline=args.baseline)
    print(json.dumps(table.to_dict()) if args.json else table.text())
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
    with writing(paths["out"]):
        comparison.overlay(opacity=args.opacity).save(paths["out"], format="PNG")
    if paths["labels"]:
        save_npy(paths["labels"], comparison.labels.astype(np.int16))
    parts = [{"caption": caption, "share": share, "decided_share": comparison.decided_shares[caption],
              "score": answer.score}
             for (caption, share), answer in zip(comparison.shares.items(), comparison.answers, strict=True)]
    if args.json:
        print(to_json({"image": args.image, "captions": parts, "undecided_share": comparison.undecided_share,
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
    job = Job(out_dir=args.out_dir, model=ModelSpec(args.model, args.weights, args.device, args.precision,
                                                    args.revision, args.trust_checkpoint),
              question=question, options={**options, "estimator": args.estimator}, seed=args.seed,
              evaluate=args.evaluate, overlays=args.overlays)
    rows = collect(args.input, job)
    with _batch_progress(len(rows), args.quiet) as progress:
        summary = run_batch(rows, job, engine=args.engine, workers=args.workers,
                            gpus_per_worker=args.gpus_per_worker, ray_address=args.ray_address,
                            resume=args.resume, on_result=progress)
    out = summary.out_dir
    if args.json:
        print(to_json({**dataclasses.asdict(summary), "out_dir": str(out), "results": str(out / RESULTS),
                          "report": str(out / REPORT)}))
    else:
        dropped = (f"; {summary.dropped} earlier results dropped, their pictures no longer in {args.input} "
                   "(deleted, changed or renamed)" if summary.dropped else "")
        print(f"{summary.rows} rows: {summary.explained} explained now, {summary.skipped} done before, "
              f"{summary.failed} failed{' (see the error column)' if summary.failed else ''}{dropped}; "
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
    return load(args.model, weights=args.weights, device=args.device, precision=args.precision,
                revision=args.revision, trust_checkpoint=args.trust_checkpoint)


def _method(args: argparse.Namespace) -> dict:
    """The explain options the method group sets."""
    return {"method": args.method, "masks": args.masks, "stability": args.stability, "max_masks": args.max_masks,
            "seed": args.seed, "framing": args.framing,
            "batch_size": args.batch_size, "time_budget": args.time_budget, "cache": None,
            "baseline": args.baseline, "blur_sigma": args.blur_sigma, "gradient": _gradient(args)}


def _gradient(args: argparse.Namespace) -> GradientSettings:
    return GradientSettings(n_steps=args.steps, n_samples=args.samples, stdev=args.stdev)


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
        with writing(paths["colorbar"]):
            answer.colorbar(scale=style["scale"], cmap=args.cmap).save(paths["colorbar"], format="PNG")
    for note in answer.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(to_json({"image": image, "score": answer.score, "question": answer.question.describe(),
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


def to_json(payload: object) -> str:
    """One JSON line with every float at 7 significant digits: what float32 results carry, and no
    0.7000000000000001 from float64 arithmetic on the way."""
    return json.dumps(_rounded(payload))


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return float(f"{value:.7g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    return value
