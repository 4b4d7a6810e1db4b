"""RISE as COCOA uses it: one batched pass of masked images through the encoder, then any
number of questions answered from the stored embeddings.

Every target is <g(f(x_masked)), d> for a direction d (see targets.py), so the expensive part,
f over N masked copies of the picture, does not depend on the question. `masked_pass` does it
once; `saliency` turns the (N, D) embeddings and any (Q, D) directions into (Q, h, w) maps.

    heatmap = sum_i (s_i - c) * mask_i / (N * p)

with s_i the target on masked image i and p the keep probability. The paper's estimator uses
c = 0; the "centered" one (the default) uses c = mean_i s_i, a control variate. Exactly,

    paper map = centred map + mean_i s_i x coverage / p,    coverage = sum_i mask_i / N,

and the coverage term is not a constant at practical mask counts: it is the masks' own sampling
noise, times the mean score, and it can dominate the map (label-free, 600 masks: the two maps
correlate 0.18). The centred default removes this coverage noise (0.97 correlation with a
20,000-mask map at about half the masks).
"""
from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from threading import Lock

import torch

from .errors import SettingsError, check_seed
from .images import Framed, check_baseline, digest
from .images import baseline as baseline_of
from .masks import MaskSet, sample_masks
from .models import ClipModel, eval_mode
from .targets import Target

ESTIMATORS = ("centered", "paper")
MAX_MASKS = 200_000
Progress = Callable[[int, int], None]  # (masks done, masks in all)


@dataclass(frozen=True)
class RiseSettings:
    """RISE hyper-parameters; defaults are the paper's (appendix I), but for the mask count.

    n_masks None means 20,000 on a GPU (the paper's CLIP setting) and 2,000 on a CPU.
    batch_size None picks one from the device (halved on out-of-memory errors).
    baseline, blur_sigma: what masked pixels show (see images.baseline; the paper's is a blur).
    """

    n_masks: int | None = None
    grid: int = 7
    p_keep: float = 0.5
    seed: int = 0
    batch_size: int | None = None
    baseline: str = "blur"
    blur_sigma: float | None = None

    def __post_init__(self) -> None:
        if self.n_masks is not None and not (isinstance(self.n_masks, int) and 1 <= self.n_masks <= MAX_MASKS):
            raise SettingsError(
                f"The number of masks must be a whole number from 1 to {MAX_MASKS:,}; got {self.n_masks!r}.")
        if not (isinstance(self.grid, int) and 2 <= self.grid <= 64):
            raise SettingsError(f"The RISE grid must be a whole number from 2 to 64; got {self.grid!r}.")
        if not 0.0 < self.p_keep < 1.0:
            raise SettingsError(f"The keep probability must lie strictly between 0 and 1; got {self.p_keep!r}.")
        check_seed(self.seed)
        if self.batch_size is not None and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise SettingsError(f"The batch size must be a positive whole number; got {self.batch_size!r}.")
        check_baseline(self.baseline, self.blur_sigma)

    def masks_for(self, device: torch.device) -> int:
        return self.n_masks or (20_000 if device.type == "cuda" else 2_000)


@dataclass
class MaskedPass:
    """What one RISE pass over one picture learnt; every question is a cheap query on it.

    embeddings: (N, D) float32 raw image embeddings of the N masked pictures, on the model's device.
    image_embedding: (D,) float32 raw embedding of the unmasked picture.
    complete: False when a time budget stopped the pass early (then N is the masks done).
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
        """The pass as if only its first n masks had been drawn (masks are independent draws)."""
        masks = MaskSet(self.masks.grids[:n], self.masks.shifts[:n], self.masks.size, self.masks.p_keep)
        return dataclasses.replace(self, masks=masks, embeddings=self.embeddings[:n], complete=n >= len(self.masks))

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
    """Push N masked copies of the framed picture through the image encoder, in batches.

    Masked pixels take the baseline's values (the blurred picture, as in the paper); the padding around
    the picture stays as it is. Out-of-memory errors halve the batch and carry on. `deadline`
    (time.monotonic() seconds) stops the pass early, keeping the masks done so far.
    """
    started = time.perf_counter()
    n_masks = settings.masks_for(model.device)
    content = framed.content.to(model.device)
    masks = sample_masks(n_masks, tuple(content.shape[1:]), settings.grid, settings.p_keep, settings.seed)
    baseline = baseline_of(content, model.n_px, settings.baseline, settings.blur_sigma)
    batch = settings.batch_size or default_batch_size(model)
    chunks: list[torch.Tensor] = []
    done = 0
    with eval_mode(model):
        image_embedding = model.encode_canvas(framed.canvas)
        while done < n_masks and (deadline is None or time.monotonic() < deadline):
            stop = min(done + batch, n_masks)
            try:
                mask = masks.render(done, stop, model.device)[:, None]  # shape = [B, 1, h, w]
                pixels = framed.with_content(baseline + mask * (content - baseline))
                chunks.append(model.encode_images(pixels))
            except torch.OutOfMemoryError:
                if batch == 1:
                    raise
                batch = max(1, batch // 2)
                _release(model.device)
                continue
            done = stop
            if progress is not None:
                progress(done, n_masks)
    embeddings = torch.cat(chunks) if chunks else image_embedding.new_zeros(0, image_embedding.shape[0])
    run = MaskedPass(masks, embeddings, image_embedding, time.perf_counter() - started, batch, model.precision)
    return run.head(done)


def saliency(run: MaskedPass, targets: Sequence[Target], estimator: str = "centered") -> torch.Tensor:
    """RISE heatmaps for several targets from one pass: (Q, h, w) float32 over the picture's content box."""
    if estimator not in ESTIMATORS:
        raise SettingsError(f"Unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}.")
    if len(run.masks) == 0:
        raise SettingsError("The time budget ran out before the first batch of masks; allow more time or fewer masks.")
    # Float64 scores: similarities near 1 differ in their 7th digit, which centring brings to the front.
    embeddings = run.embeddings.double()
    scores = torch.stack([target(embeddings) for target in targets], dim=1)  # shape = [N, Q]
    if estimator == "centered":
        scores = scores - scores.mean(0, keepdim=True)
    return run.masks.weighted_sum(scores.float()) / (len(run.masks) * run.masks.p_keep)


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

    Keys hold the model instance, a hash of the framed picture and the RISE settings, so only
    the same picture, model and masks ever share an entry.
    """

    max_bytes: int = 1 << 30
    _entries: OrderedDict = field(default_factory=OrderedDict)
    _lock: Lock = field(default_factory=Lock)

    @staticmethod
    def key(model: ClipModel, framed: Framed, settings: RiseSettings) -> tuple:
        return (model.key, model.precision, digest(framed.canvas), framed.box, settings.masks_for(model.device),
                settings.grid, settings.p_keep, settings.seed, settings.baseline, settings.blur_sigma)

    def get(self, key: tuple) -> MaskedPass | None:
        with self._lock:
            run = self._entries.get(key)
            if run is not None:
                self._entries.move_to_end(key)
            return run

    def put(self, key: tuple, run: MaskedPass) -> None:
        if not run.complete or run.nbytes > self.max_bytes:
            return
        with self._lock:
            self._entries[key] = run
            self._entries.move_to_end(key)
            while sum(entry.nbytes for entry in self._entries.values()) > self.max_bytes:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
