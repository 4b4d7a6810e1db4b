"""RISE masks (Petsiuk et al., 2018): random coarse grids, upsampled bilinearly with a random shift.

A mask is stored as what generates it: a (g, g) binary grid and a pixel shift (dy, dx).
Its full-resolution form is

    mask = crop(upsample(grid, ((g + 1) * cell_h, (g + 1) * cell_w)), dy, dx, h, w),
    cell = ceil(size / g),  shift drawn uniformly from [0, cell),

exactly as in RISE. Bilinear upsampling (align_corners=False) is separable and linear, so
the cropped mask is  Ry[dy] @ grid @ Rx[dx].T  with fixed (h, g) and (w, g) interpolation
matrices. That makes rendering a batch two small matrix products, and lets weighted sums of
masks (the RISE heatmap) be accumulated at grid resolution, grouped by shift, and
upsampled once: the cost of asking a new question no longer depends on the image size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class MaskSet:
    """N RISE masks over an (h, w) picture.

    grids: (N, g, g) bool, True where the picture is kept.
    shifts: (N, 2) int64, (dy, dx) in pixels, each in [0, cell).
    """

    grids: torch.Tensor
    shifts: torch.Tensor
    size: tuple[int, int]
    p_keep: float

    def __len__(self) -> int:
        return int(self.grids.shape[0])

    @property
    def grid(self) -> int:
        return int(self.grids.shape[1])

    @property
    def cells(self) -> tuple[int, int]:
        """Cell size in pixels along (height, width)."""
        return math.ceil(self.size[0] / self.grid), math.ceil(self.size[1] / self.grid)

    def render(self, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Masks start..stop at full resolution: (B, h, w) float32 in [0, 1] on `device`."""
        ry, rx = self.interpolators(device)
        shifts = self.shifts[start:stop].to(device)
        grids = self.grids[start:stop].to(device=device, dtype=torch.float32)
        return ry[shifts[:, 0]] @ grids @ rx[shifts[:, 1]].transpose(1, 2)

    def weighted_sum(self, weights: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """sum_i weights[i, q] * mask_i for every column q: weights (N, Q) -> (Q, h, w).

        Computed at grid resolution grouped by shift, then upsampled once per shift.
        """
        device = weights.device
        n_rows, n_cols = self.cells
        g = self.grid
        by_shift = torch.zeros(weights.shape[1], n_rows * n_cols, g * g, device=device)
        for start in range(0, len(self), chunk):
            shifts = self.shifts[start:start + chunk].to(device)
            grids = self.grids[start:start + chunk].to(device=device, dtype=torch.float32).flatten(1)
            index = shifts[:, 0] * n_cols + shifts[:, 1]
            by_shift.index_add_(1, index, weights[start:start + chunk].float().T[:, :, None] * grids[None])
        ry, rx = self.interpolators(device)
        by_shift = by_shift.view(-1, n_rows, n_cols, g, g)
        rows = torch.einsum("qabgk,bwk->qagw", by_shift, rx)  # shape = [Q, shift_y, g, w]
        return torch.einsum("ahg,qagw->qhw", ry, rows)

    def interpolators(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(cell_h, h, g) and (cell_w, w, g): for each shift, the rows of the upsampling matrix it keeps."""
        return tuple(
            _interpolator(self.grid, cell, length, torch.device(device))
            for cell, length in zip(self.cells, self.size, strict=True)
        )


def sample_masks(n: int, size: tuple[int, int], grid: int = 7, p_keep: float = 0.5, seed: int = 0) -> MaskSet:
    """Draw n RISE masks for an (h, w) picture from a seeded generator of their own.

    Only the grids and shifts are drawn (g*g + 2 numbers a mask, on the CPU, so a seed gives
    the same masks on every device); full-resolution masks are rendered batch by batch where
    they are used.
    """
    generator = torch.Generator().manual_seed(seed)
    # device="cpu" even under torch.set_default_device: the CPU generator draws the same numbers everywhere.
    grids = torch.rand(n, grid, grid, generator=generator, device="cpu") < p_keep
    cells = torch.tensor([math.ceil(side / grid) for side in size], device="cpu")
    shifts = (torch.rand(n, 2, generator=generator, device="cpu") * cells).long().clamp_max(cells - 1)
    return MaskSet(grids=grids, shifts=shifts, size=(int(size[0]), int(size[1])), p_keep=p_keep)


def _interpolator(grid: int, cell: int, length: int, device: torch.device) -> torch.Tensor:
    upsampled = (grid + 1) * cell
    # Linear interpolation of each unit vector = the columns of the upsampling matrix.
    basis = torch.eye(grid, device=device)[:, None, :]  # shape = [g, 1, g]
    matrix = F.interpolate(basis, size=upsampled, mode="linear", align_corners=False)[:, 0, :].T  # shape = [up, g]
    offsets = torch.arange(cell, device=device)[:, None] + torch.arange(length, device=device)[None, :]
    return matrix[offsets]  # shape = [cell, length, g]
