"""Gradient attributions of a target through captum: Integrated Gradients and GradientSHAP.

Both work in the model's normalised input space (what the paper's captum runs saw) with the
blurred picture as the baseline (appendix I; `baseline` picks another, see images.baseline).
The map is the attribution summed over colour channels, so Integrated Gradients' completeness
holds for it: the map sums to target(picture) - target(baseline), up to the integral's
discretisation error.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import GradientShap, IntegratedGradients

from ..errors import Cancelled, SettingsError, check_seed, shown
from ..models import Model
from .images import Framed, check_baseline
from .images import baseline as baseline_of
from .targets import Target

GRADIENT_METHODS = ("integrated-gradients", "gradient-shap")


@dataclass(frozen=True)
class GradientSettings:
    """n_steps: Integrated Gradients' Riemann steps; n_samples and stdev: GradientSHAP's noisy
    samples and their standard deviation in normalised input units (paper: 50 and 0.2).
    baseline, blur_sigma: the reference picture (see images.baseline; the paper's is a blur)."""

    n_steps: int = 50
    n_samples: int = 50
    stdev: float = 0.2
    internal_batch_size: int = 16
    seed: int = 0
    baseline: str = "blur"
    blur_sigma: float | None = None

    def __post_init__(self) -> None:
        for name in ("n_steps", "n_samples", "internal_batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and 1 <= value <= 10_000):
                raise SettingsError(f"{name} must be a whole number from 1 to 10,000; got {shown(value)}.")
        if not 0.0 <= self.stdev <= 10.0:
            raise SettingsError(f"stdev must lie between 0 and 10; got {self.stdev!r}.")
        check_seed(self.seed)
        check_baseline(self.baseline, self.blur_sigma)


def attribute(model: Model, framed: Framed, target: Target, method: str = "integrated-gradients",
              settings: GradientSettings = GradientSettings(),
              should_stop: Callable[[], bool] | None = None) -> tuple[torch.Tensor, float | None]:
    """Attribute the target over the picture: returns ((h, w) float32 over the content box, convergence delta).

    The delta (Integrated Gradients only) is sum(map) - (target(x) - target(baseline)).
    should_stop is asked before every forward pass (a batch of steps); True raises Cancelled.
    """
    if method not in GRADIENT_METHODS:
        raise SettingsError(f"Unknown gradient method {method!r}; choose one of {', '.join(GRADIENT_METHODS)}.")
    canvas = framed.canvas[None].to(model.device)
    content = framed.content[None].to(model.device)
    baseline = framed.with_content(baseline_of(content, model.preprocessing, settings.baseline, settings.blur_sigma))
    inputs, baselines = model.normalize(canvas), model.normalize(baseline)

    def forward(normalised: torch.Tensor) -> torch.Tensor:
        if should_stop is not None and should_stop():
            raise Cancelled()
        return target(model.encode_normalised(normalised).float())

    with _seeded(settings.seed, model.device):
        attributions, delta = _run(method, forward, inputs, baselines, settings)
    top, left, height, width = framed.box
    return attributions[0].sum(0)[top:top + height, left:left + width].float().detach(), delta


def precision(model: Model) -> str:
    """The precision gradients run in: the weights' own dtype (autocast serves batched forward passes only)."""
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(model.weight_dtype, "fp32")


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's and numpy's global generators (captum's GradientSHAP draws from both), then restore them."""
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            np.random.seed(seed % 2 ** 32)
            yield
    finally:
        np.random.set_state(state)


def _run(method: str, forward, inputs: torch.Tensor, baselines: torch.Tensor,
         settings: GradientSettings) -> tuple[torch.Tensor, float | None]:
    if method == "integrated-gradients":
        attributions, delta_tensor = IntegratedGradients(forward).attribute(
            inputs, baselines=baselines, n_steps=settings.n_steps,
            internal_batch_size=settings.internal_batch_size, return_convergence_delta=True)
        return attributions, float(delta_tensor.sum())
    attributions = GradientShap(forward).attribute(
        inputs, baselines=baselines, n_samples=settings.n_samples, stdevs=settings.stdev)
    return attributions, None
