"""Shared fixtures: tiny CLIP-format checkpoints (real loading path) and a planted encoder (known answer)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import cocoa_clip as cc  # noqa: E402
from cocoa_clip.models import MEAN, STD, ClipModel, clip_package  # noqa: E402
from cocoa_clip.models.random_models import write_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A random 32 px CLIP written as a plain state dict, as a user's --weights file would be."""
    return write_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pt", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_checkpoint) -> ClipModel:
    """The tiny CLIP loaded in float32 on the CPU (exact arithmetic for equivalence tests)."""
    return cc.load(weights=tiny_checkpoint, device="cpu", precision="fp32")


@pytest.fixture
def photo() -> Image.Image:
    """A non-square random RGB picture, 45 x 70 (H x W)."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8))


class PlantedNet(torch.nn.Module):
    """An encoder whose image embedding depends only on the picture's top-left region.

    embedding = b + r(x) * u, with r the mean contrast |x - 0.5| of the region; captions that
    mention "dog" embed as b + 2u, others as b - 2u. So "dog rather than cat" points along u and
    its score rises with the region's contrast: every faithful attribution must light up the region.
    """

    n_px = 64

    def __init__(self, region: tuple[slice, slice]):
        super().__init__()
        self.region = region
        self.visual = torch.nn.Module()
        self.visual.input_resolution = self.n_px
        self.context_length = 77
        self.register_buffer("b", torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.register_buffer("u", torch.tensor([0.0, 1.0, 0.0, 0.0]))
        self.dog = clip_package().clip._tokenizer.encode("dog")[0]
        self.calls = 0

    def encode_image(self, normalised: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        mean = normalised.new_tensor(MEAN).view(1, 3, 1, 1)
        std = normalised.new_tensor(STD).view(1, 3, 1, 1)
        pixels = normalised * std + mean
        contrast = (pixels[:, :, self.region[0], self.region[1]] - 0.5).abs().mean((1, 2, 3)) * 2
        return self.b + contrast[:, None] * self.u

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        has_dog = (tokens == self.dog).any(1).float()[:, None]
        return self.b + (4 * has_dog - 2) * self.u


PLANTED_REGION = (slice(0, 20), slice(0, 20))  # canvas pixels of a 64 px input


@pytest.fixture
def planted() -> ClipModel:
    return ClipModel(net=PlantedNet(PLANTED_REGION), name="planted", device=torch.device("cpu"), precision="fp32")


@pytest.fixture
def noise_square() -> Image.Image:
    """A 64 x 64 binary-noise picture: blurring it lowers the contrast the planted encoder sees."""
    rng = np.random.default_rng(1)
    return Image.fromarray((rng.integers(0, 2, (64, 64, 1)) * 255).repeat(3, 2).astype(np.uint8))
