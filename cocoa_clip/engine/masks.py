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

import functools
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

    def __getitem__(self, index: slice | torch.Tensor) -> MaskSet:
        """Some of the masks (a slice or an index tensor), as a MaskSet."""
        return MaskSet(self.grids[index], self.shifts[index], self.size, self.p_keep)

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

    def pooled(self, blocks: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Each mask averaged over a (blocks, blocks) grid of pixel blocks: (N, blocks * blocks) float64.

        Computed from the grids and shifts, (P_y R_y[dy]) grid (P_x R_x[dx]).T, without rendering.
        """
        (ry, rx), (py, px) = self.interpolators(device), self.block_means(blocks, device)
        ay, ax = py @ ry.double(), px @ rx.double()  # shape = [cell, blocks, g]
        shifts = self.shifts.to(device)
        grids = self.grids.to(device=device, dtype=torch.float64)
        return (ay[shifts[:, 0]] @ grids @ ax[shifts[:, 1]].transpose(1, 2)).flatten(1)

    def pooled_covariance(self, blocks: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Exact Cov(pooled[a, b], mask(y, x)) = p (1 - p) A_y[a, y] A_x[b, x] over the mask distribution.

        Returns (A_y, A_x), (blocks, h) and (blocks, w) float64. Why it factorises: a mask is
        sum_c bit_c phi_c with independent bits and phi_c(y, x) = R_y[dy][y, c_y] R_x[dx][x, c_x];
        the footprints of each shift sum to one at every pixel (bilinear weights), so
        E[mask(u) mask(v)] = p^2 + p (1 - p) K_y[u_y, v_y] K_x[u_x, v_x] with K = E_shift[R R.T],
        and independent uniform shifts along each axis make K separable.
        """
        return tuple(_pooled_covariance(self.grid, cell, length, blocks, torch.device(device))
                     for cell, length in zip(self.cells, self.size, strict=True))

    def block_means(self, blocks: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(blocks, h) and (blocks, w) float64 averaging matrices over near-equal runs of rows / columns."""
        return tuple(_block_mean(blocks, length, torch.device(device)) for length in self.size)

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
    they are used. Mask i's numbers are the generator's i-th row, so the first k of n masks
    are the k masks of the same seed: a run that stops early or resumes draws the same masks.
    """
    generator = torch.Generator().manual_seed(seed)
    # device="cpu" even under torch.set_default_device: the CPU generator draws the same numbers everywhere.
    uniform = torch.rand(n, grid * grid + 2, generator=generator, device="cpu")  # one row a mask
    grids = (uniform[:, :grid * grid] < p_keep).view(n, grid, grid)
    cells = torch.tensor([math.ceil(side / grid) for side in size], device="cpu")
    shifts = (uniform[:, grid * grid:] * cells).long().clamp_max(cells - 1)
    return MaskSet(grids=grids, shifts=shifts, size=(int(size[0]), int(size[1])), p_keep=p_keep)


@functools.lru_cache(maxsize=64)
def _interpolator(grid: int, cell: int, length: int, device: torch.device) -> torch.Tensor:
    upsampled = (grid + 1) * cell
    # Linear interpolation of each unit vector = the columns of the upsampling matrix.
    basis = torch.eye(grid, device=device)[:, None, :]  # shape = [g, 1, g]
    matrix = F.interpolate(basis, size=upsampled, mode="linear", align_corners=False)[:, 0, :].T  # shape = [up, g]
    offsets = torch.arange(cell, device=device)[:, None] + torch.arange(length, device=device)[None, :]
    return matrix[offsets]  # shape = [cell, length, g]


@functools.lru_cache(maxsize=64)
def _pooled_covariance(grid: int, cell: int, length: int, blocks: int, device: torch.device) -> torch.Tensor:
    """Block means of K = E_shift[R R.T] along one axis: (blocks, length) float64."""
    r = _interpolator(grid, cell, length, device).double()
    return _block_mean(blocks, length, device) @ torch.einsum("sug,svg->uv", r, r) / r.shape[0]


@functools.lru_cache(maxsize=64)
def _block_mean(blocks: int, length: int, device: torch.device) -> torch.Tensor:
    edges = [round(j * length / blocks) for j in range(blocks + 1)]
    matrix = torch.zeros(blocks, length, dtype=torch.float64, device=device)
    for j in range(blocks):
        start = min(edges[j], length - 1)  # a side shorter than `blocks` repeats pixels rather than leave a block empty
        matrix[j, start:max(edges[j + 1], start + 1)] = 1.0
    return matrix / matrix.sum(1, keepdim=True)
