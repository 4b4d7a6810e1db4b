"""RISE as COCOA uses it: one batched pass of masked images through the encoder, then any
number of questions answered from the stored embeddings.

Every target is <g(f(x_masked)), d> for a direction d (see targets.py), so the expensive part,
f over N masked copies of the picture, does not depend on the question. `masked_passes` does it
(in batches, resumable, stoppable); `saliency` turns the (N, D) embeddings and any (Q, D)
directions into (Q, h, w) maps; `run_rise` drives a pass to a fixed count or until the maps are
stable, reporting maps as they form.

    paper:      heatmap = sum_i s_i mask_i / (N p)
    centered:   heatmap = sum_i (s_i - mean s) mask_i / (N p)
    regression: heatmap = sum_i (s_i - a - <beta, F_i>) mask_i / (N p) + sum_j beta_j Cov(F_j, mask) / p

with s_i the target on masked image i, p the keep probability and F_i mask i averaged over
8 x 8 pixel blocks. E[paper] = E[s] + Cov(s, mask) / p; the other two estimate Cov(s, mask) / p,
the paper's map less a constant that min-max display removes (the masks' mean is p at every
pixel), so their maps compare across questions and, for `compare`, sum to zero. "centered"
subtracts the mean score (a control variate); "regression" subtracts the part of each score that
a ridge fit on the mask's block averages explains and adds that part's exact expectation back
(a least-squares control variate): most of a score's variation is which blocks a mask keeps,
so the Monte Carlo is left with a small residual (0.97 correlation with a 20,000-mask map from
well under 200 masks on the demo model's scenes, against about 500 for "centered").

Stability: the masks split into two independent halves (even and odd draws); the correlation r
of their two maps, corrected to the whole count by Spearman-Brown (2r / (1 + r)), estimates the
correlation of two independent full-count maps, and its square root that of a map with its
infinite-mask limit.

Exactly, paper map = centred map + mean_i s_i x coverage / p with coverage = sum_i mask_i / N: the
coverage term is the masks' own sampling noise times the mean score, and it can dominate the
paper's map at practical counts (label-free, 600 masks: the two maps correlate 0.18).
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from threading import Lock

import torch

from ..errors import Cancelled, SettingsError, check_seed
from ..models import ClipModel, eval_mode
from .auto import AUTO, NULL_MASKS, auto_cap, checkpoints, mask_count, null, settled
from .images import Framed, check_baseline, digest
from .images import baseline as baseline_of
from .masks import MaskSet, sample_masks
from .targets import Target

ESTIMATORS = ("regression", "centered", "paper")
COMPARABLE = ("regression", "centered")  # estimate Cov(score, mask) / p: maps that compare across questions
DEFAULT_ESTIMATOR = "regression"
BLOCKS = 8  # the regression's features: each mask averaged over 8 x 8 pixel blocks
RIDGE = 0.01  # ridge penalty as a share of the features' mean variance: keeps few-mask fits tame
FIRST_BATCH = 8  # masks in the first batch when frames are wanted: a rough first map within a second or so
Progress = Callable[[int, int], None]  # (masks done, masks in all)


@dataclass(frozen=True)
class RiseSettings:
    """RISE hyper-parameters; defaults are the paper's (appendix I), but for the mask count.

    n_masks: a whole number, "auto" (or 0): draw masks until every map's stability reaches
    `stability` (see auto.py), at most `max_masks`; None means the device's default, auto on a CPU
    and 20,000 on a GPU (the paper's CLIP setting). `for_device` settles both for a device and
    checks them against its range (auto.MAX_MASKS). batch_size None picks one from the device
    (halved on out-of-memory errors). baseline, blur_sigma: what masked pixels show (see images.baseline).
    """

    n_masks: int | str | None = None
    grid: int = 7
    p_keep: float = 0.5
    seed: int = 0
    batch_size: int | None = None
    stability: float = 0.97
    max_masks: int | None = None
    baseline: str = "blur"
    blur_sigma: float | None = None

    def __post_init__(self) -> None:
        if self.n_masks is not None:  # checked against the widest range; for_device narrows it to the device's
            object.__setattr__(self, "n_masks", mask_count(self.n_masks, None))
        if self.max_masks is not None:
            object.__setattr__(self, "max_masks", auto_cap(self.max_masks, None))
        if not (isinstance(self.grid, int) and 2 <= self.grid <= 64):
            raise SettingsError(f"The RISE grid must be a whole number from 2 to 64; got {self.grid!r}.")
        if not 0.0 < self.p_keep < 1.0:
            raise SettingsError(f"The keep probability must lie strictly between 0 and 1; got {self.p_keep!r}.")
        check_seed(self.seed)
        if self.batch_size is not None and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise SettingsError(f"The batch size must be a positive whole number; got {self.batch_size!r}.")
        if not (isinstance(self.stability, (int, float)) and 0.0 < self.stability < 1.0):
            raise SettingsError(f"The stability must lie strictly between 0 and 1; got {self.stability!r}.")
        check_baseline(self.baseline, self.blur_sigma)

    @property
    def auto(self) -> bool:
        """True for "auto" (None becomes auto or a count only in `for_device`)."""
        return self.n_masks == AUTO

    def for_device(self, device: torch.device) -> RiseSettings:
        """These settings on `device`: the default count settled, counts checked against the device's range."""
        n_masks = mask_count(self.n_masks, device)
        max_masks = auto_cap(self.max_masks, device) if n_masks == AUTO else self.max_masks
        return dataclasses.replace(self, n_masks=n_masks, max_masks=max_masks)

    def masks_for(self, device: torch.device) -> int:
        """The masks to draw on `device`: the count asked for, or for "auto" the most it may draw."""
        settled = self.for_device(device)
        return settled.max_masks if settled.auto else settled.n_masks

    def checkpoints(self, device: torch.device) -> list[int]:
        """Mask counts at which "auto" estimates stability (auto.checkpoints of its cap on `device`)."""
        return checkpoints(self.masks_for(device))


@dataclass
class MaskedPass:
    """What one RISE pass over one picture learnt; every question is a cheap query on it.

    embeddings: (N, D) float32 raw image embeddings of the N masked pictures, on the model's device.
    image_embedding: (D,) float32 raw embedding of the unmasked picture.
    complete: False when a time budget stopped the pass early (then N is the masks done).
    cached: True when no masked picture went through the encoder for this answer.
    """

    masks: MaskSet
    embeddings: torch.Tensor
    image_embedding: torch.Tensor
    seconds: float
    batch_size: int
    precision: str
    complete: bool = True
    cached: bool = False

    def head(self, n: int) -> MaskedPass:
        """The pass as if only its first n masks had been drawn (the first n masks of a seed do not depend on N)."""
        return dataclasses.replace(self, masks=self.masks[:n], embeddings=self.embeddings[:n],
                                   complete=self.complete and n >= len(self.masks))

    def compact(self) -> MaskedPass:
        """A copy that holds only its own masks' memory (a pass's arrays may be views of a longer buffer)."""
        masks = MaskSet(self.masks.grids.clone(), self.masks.shifts.clone(), self.masks.size, self.masks.p_keep)
        return dataclasses.replace(self, masks=masks, embeddings=self.embeddings.clone())

    @property
    def nbytes(self) -> int:
        return self.embeddings.nelement() * 4 + self.masks.grids.nelement() + self.masks.shifts.nelement() * 8


def masked_pass(
    model: ClipModel,
    framed: Framed,
    settings: RiseSettings = RiseSettings(),
    progress: Progress | None = None,
    deadline: float | None = None,
) -> MaskedPass:
    """Push N masked copies of the framed picture through the image encoder, in batches (see `masked_passes`)."""
    run = None
    for run in masked_passes(model, framed, settings, deadline=deadline):
        if progress is not None:
            progress(len(run.masks), settings.masks_for(model.device))
    if run is None:
        raise SettingsError("The time budget ran out before the first batch of masks; allow more time or fewer masks.")
    return run.compact()


def masked_passes(
    model: ClipModel,
    framed: Framed,
    settings: RiseSettings = RiseSettings(),
    *,
    resume: MaskedPass | None = None,
    breaks: Sequence[int] = (),
    deadline: float | None = None,
    first_batch: int | None = None,
) -> Iterator[MaskedPass]:
    """The pass so far after every batch, up to settings.masks_for(device) masks.

    Masked pixels take the baseline's values (the blurred picture, as in the paper); the padding
    around the picture stays as it is. Out-of-memory errors halve the batch and carry on. `resume`: a
    pass of the same picture and settings to continue (its masks are the first ones of the seed;
    it yields its own prefixes at `breaks` first, at no cost). `breaks`: mask counts at which a
    batch ends, so that a caller can stop there. `deadline` (time.monotonic() seconds) stops early,
    keeping the masks done. `first_batch`: masks in the first batch (then full ones), so that a
    first frame comes early; the maps do not depend on batch sizes.
    """
    started = time.perf_counter()
    n_masks = settings.masks_for(model.device)
    content = framed.content.to(model.device)
    masks = sample_masks(n_masks, tuple(content.shape[1:]), settings.grid, settings.p_keep, settings.seed)
    batch = settings.batch_size or default_batch_size(model)
    done = min(len(resume.masks), n_masks) if resume is not None else 0
    with eval_mode(model):
        image_embedding = resume.image_embedding if resume is not None else model.encode_canvas(framed.canvas)
        embeddings = image_embedding.new_empty(n_masks, image_embedding.shape[0])
        run = MaskedPass(masks, embeddings, image_embedding, 0.0, batch, model.precision, cached=True)
        if resume is not None:
            embeddings[:done] = resume.embeddings[:done]
            for point in [b for b in breaks if b < done] + [done]:
                yield run.head(point)
        if done == n_masks:
            return
        baseline = baseline_of(content, model.preprocessing, settings.baseline, settings.blur_sigma)
        size = min(batch, first_batch or batch)
        while done < n_masks and (deadline is None or time.monotonic() < deadline):
            stop = min([done + size, n_masks] + [b for b in breaks if b > done])
            try:
                mask = masks.render(done, stop, model.device)[:, None]  # shape = [B, 1, h, w]
                pixels = framed.with_content(baseline + mask * (content - baseline))
                embeddings[done:stop] = model.encode_images(pixels)
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                batch = size = max(1, size // 2)
                _release(model.device)
                continue
            size = batch
            done = stop
            yield dataclasses.replace(run.head(done), seconds=time.perf_counter() - started, batch_size=batch,
                                      complete=done == n_masks, cached=False)


def saliency(run: MaskedPass, targets: Sequence[Target], estimator: str = DEFAULT_ESTIMATOR) -> torch.Tensor:
    """RISE heatmaps for several targets from one pass: (Q, h, w) float32 over the picture's content box."""
    return estimate(run.masks, scores(run, targets), estimator)


def scores(run: MaskedPass, targets: Sequence[Target]) -> torch.Tensor:
    """Each target on each masked picture: (N, Q) float64."""
    # Float64 scores: similarities near 1 differ in their 7th digit, which centring brings to the front.
    embeddings = run.embeddings.double()
    return torch.stack([target(embeddings) for target in targets], dim=1)


def estimate(masks: MaskSet, scores: torch.Tensor, estimator: str = DEFAULT_ESTIMATOR) -> torch.Tensor:
    """Heatmaps from masks and their (N, Q) scores: (Q, h, w) float32. Each column is estimated on its own."""
    if estimator not in ESTIMATORS:
        raise SettingsError(f"Unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}.")
    if len(masks) == 0:
        raise SettingsError("The time budget ran out before the first batch of masks; allow more time or fewer masks.")
    n, p = len(masks), masks.p_keep
    if estimator == "paper":
        return masks.weighted_sum(scores.float()) / (n * p)
    scores = scores - scores.mean(0, keepdim=True)
    if estimator == "centered":
        return masks.weighted_sum(scores.float()) / (n * p)
    # Least-squares control variate: ridge fit of the centred scores on the centred block averages.
    # The penalty depends on the masks only, so each map is linear in its own scores (questions asked
    # together equal questions asked alone; compare's scores sum to zero and so do its maps).
    features = masks.pooled(BLOCKS, scores.device)  # shape = [N, BLOCKS ** 2]
    features = features - features.mean(0, keepdim=True)
    gram = features.T @ features
    penalty = RIDGE * gram.diagonal().mean() + 1e-12
    beta = torch.linalg.solve(gram + penalty * torch.eye(len(gram), dtype=gram.dtype, device=gram.device),
                              features.T @ scores)  # shape = [BLOCKS ** 2, Q]
    residual = scores - features @ beta
    ay, ax = masks.pooled_covariance(BLOCKS, scores.device)
    fitted = torch.einsum("ay,abq,bx->qyx", ay, beta.view(BLOCKS, BLOCKS, -1), ax) * (1 - p)
    return masks.weighted_sum(residual.float()) / (n * p) + fitted.float()


def stability(masks: MaskSet, scores: torch.Tensor, estimator: str = DEFAULT_ESTIMATOR) -> torch.Tensor:
    """Estimated correlation of each map with its infinite-mask limit: (Q,) float, from split halves.

    The two halves (even and odd draws) are independent estimates from N/2 masks each; their
    correlation r, stepped up to N masks by Spearman-Brown (2r / (1 + r)), is the reliability of
    the map, and its square root the correlation with the limit. NaN for fewer than 4 masks or
    a flat map.
    """
    if len(masks) < 4:
        return torch.full((scores.shape[1],), math.nan)
    halves = [estimate(masks[start::2], scores[start::2], estimator).flatten(1).double() for start in (0, 1)]
    halves = [half - half.mean(1, keepdim=True) for half in halves]
    r = (halves[0] * halves[1]).sum(1) / (halves[0].norm(dim=1) * halves[1].norm(dim=1))
    reliability = (2 * r / (1 + r)).clamp(min=0.0)
    return reliability.sqrt().cpu()


@dataclass
class RiseResult:
    """A pass and its maps: maps (Q, h, w) float32; stability (Q,) as `stability` gives it."""

    run: MaskedPass
    maps: torch.Tensor
    stability: torch.Tensor


Frames = Callable[[RiseResult], None]


def run_rise(
    model: ClipModel,
    framed: Framed,
    settings: RiseSettings,
    targets: Sequence[Target],
    estimator: str = DEFAULT_ESTIMATOR,
    *,
    resume: MaskedPass | None = None,
    progress: Progress | None = None,
    deadline: float | None = None,
    on_frame: Frames | None = None,
    frame_seconds: float = 0.5,
    should_stop: Callable[[], bool] | None = None,
) -> RiseResult:
    """Run (or resume) a pass to its count, or with "auto" until every map is stable (auto.settled).

    on_frame gets the maps so far after a first batch of FIRST_BATCH masks, then every
    `frame_seconds` or so (after full batches); the caller has the final result (not sent to
    on_frame). Under auto, questions whose corpus equals their foil have flat maps whatever the
    masks: when every question is such, the run stops after NULL_MASKS masks. should_stop is asked
    after every batch; True raises Cancelled (a cancelled run has no answer, unlike one out of time).
    """
    settings = settings.for_device(model.device)
    if settings.auto and all(null(target.direction) for target in targets):
        settings = dataclasses.replace(settings, max_masks=min(NULL_MASKS, settings.max_masks))
    total = settings.masks_for(model.device)
    breaks = settings.checkpoints(model.device) if settings.auto else ()
    last_frame, run, readings = -math.inf, None, []
    for run in masked_passes(model, framed, settings, resume=resume, breaks=breaks, deadline=deadline,
                             first_batch=FIRST_BATCH if on_frame is not None else None):
        if should_stop is not None and should_stop():
            raise Cancelled()
        done = len(run.masks)
        if progress is not None:
            progress(done, total)
        if settings.auto and done in breaks and done < total:
            readings.append(stability(run.masks, scores(run, targets), estimator))
            if settled(readings, settings.stability):
                run = dataclasses.replace(run, complete=True)
                break
        if on_frame is not None and time.monotonic() - last_frame >= frame_seconds and done < total:
            last_frame = time.monotonic()
            values = scores(run, targets)
            on_frame(RiseResult(run, estimate(run.masks, values, estimator), stability(run.masks, values, estimator)))
    if run is None or len(run.masks) == 0:
        raise SettingsError("The time budget ran out before the first batch of masks; allow more time or fewer masks.")
    run = run.compact()
    values = scores(run, targets)
    return RiseResult(run, estimate(run.masks, values, estimator), stability(run.masks, values, estimator))


def default_batch_size(model: ClipModel) -> int:
    """On a CPU 64 images at 224 px (larger batches stop paying), more for smaller inputs;
    on a GPU as many as fit in about a quarter of free memory, at most 1024."""
    if model.device.type != "cuda":
        return int(min(512, 64 * max(1, (224 // model.n_px) ** 2)))
    free, _ = torch.cuda.mem_get_info(model.device)
    per_image = 8 * 3 * model.n_px ** 2 * 4  # canvas, mask, blend and activations, measured loosely
    return int(max(16, min(1024, free // 4 // per_image)))


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class PassCache:
    """Least-recently-used store of masked passes, bounded in bytes, safe across threads.

    Keys hold the model instance, a hash of the framed picture and the RISE settings but the mask
    count, so only the same picture, model and masks ever share an entry. A seed's first n masks
    do not depend on the count, so an entry serves any count: its first n masks when it has as
    many, else the start of a pass that resumes where it stopped. It keeps the longest pass.
    """

    max_bytes: int = 1 << 30
    _entries: OrderedDict = field(default_factory=OrderedDict)
    _lock: Lock = field(default_factory=Lock)

    @staticmethod
    def key(model: ClipModel, framed: Framed, settings: RiseSettings) -> tuple:
        return (model.key, model.precision, digest(framed.canvas), framed.box,
                settings.grid, settings.p_keep, settings.seed, settings.baseline, settings.blur_sigma)

    def get(self, key: tuple) -> MaskedPass | None:
        with self._lock:
            run = self._entries.get(key)
            if run is not None:
                self._entries.move_to_end(key)
            return run

    def put(self, key: tuple, run: MaskedPass) -> None:
        if run.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._entries and len(self._entries[key].masks) >= len(run.masks):
                return
            self._entries[key] = run.compact()
            self._entries.move_to_end(key)
            while sum(entry.nbytes for entry in self._entries.values()) > self.max_bytes:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
