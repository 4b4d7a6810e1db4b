import torch
import torch.nn.functional as F

from cocoa_clip.engine.masks import MaskSet, sample_masks


def reference_mask(grid: torch.Tensor, shift: torch.Tensor, size: tuple[int, int],
                   cells: tuple[int, int]) -> torch.Tensor:
    """RISE as written in its paper: upsample the grid to (g + 1) * cell, then crop at the shift."""
    up = (grid.shape[0] + 1) * cells[0], (grid.shape[1] + 1) * cells[1]
    full = F.interpolate(grid[None, None].float(), size=up, mode="bilinear", align_corners=False)[0, 0]
    return full[shift[0]:shift[0] + size[0], shift[1]:shift[1] + size[1]]


def test_rendered_masks_equal_upsample_then_crop():
    masks = sample_masks(40, (37, 61), grid=7, seed=3)
    expected = torch.stack([reference_mask(g, s, masks.size, masks.cells)
                            for g, s in zip(masks.grids, masks.shifts, strict=True)])
    assert torch.allclose(masks.render(0, 40), expected, atol=1e-6)


def test_weighted_sum_at_grid_resolution_equals_sum_of_full_masks():
    masks = sample_masks(300, (30, 50), grid=5, seed=1)
    weights = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    expected = torch.einsum("nq,nhw->qhw", weights, masks.render(0, 300))
    assert torch.allclose(masks.weighted_sum(weights, chunk=64), expected, atol=1e-4)


def test_masks_keep_about_half_the_picture_everywhere():
    masks = sample_masks(4000, (56, 56), p_keep=0.5, seed=0)
    rendered = masks.render(0, 4000)
    assert abs(rendered.mean().item() - 0.5) < 0.01
    per_pixel = rendered.mean(0)
    assert per_pixel.min() > 0.45 and per_pixel.max() < 0.55
    assert rendered.min() >= 0 and rendered.max() <= 1


def test_keep_probability_is_the_share_of_kept_cells():
    assert abs(sample_masks(3000, (20, 20), p_keep=0.25).grids.float().mean().item() - 0.25) < 0.01


def test_masks_are_seeded_and_shifts_stay_inside_a_cell():
    a, b, c = (sample_masks(50, (224, 100), seed=s) for s in (7, 7, 8))
    assert torch.equal(a.grids, b.grids) and torch.equal(a.shifts, b.shifts)
    assert not torch.equal(a.grids, c.grids)
    assert a.cells == (32, 15)
    assert (a.shifts >= 0).all() and (a.shifts[:, 0] < 32).all() and (a.shifts[:, 1] < 15).all()


def test_shifts_cover_every_offset_of_a_cell_evenly():
    """RISE shifts each mask by an offset drawn uniformly from its cell (13 x 7 pixels here)."""
    masks = sample_masks(6000, (91, 43), grid=7, seed=2)
    assert masks.cells == (13, 7)
    for axis, cell in enumerate(masks.cells):
        counts = torch.bincount(masks.shifts[:, axis], minlength=cell)
        assert len(counts) == cell and counts.min() > 0.8 * 6000 / cell and counts.max() < 1.2 * 6000 / cell


def test_a_shifted_mask_is_the_unshifted_one_moved_by_the_shift():
    grid = sample_masks(1, (40, 40), grid=5, seed=6).grids[0]
    masks = MaskSet(grids=torch.stack([grid, grid]), shifts=torch.tensor([[0, 0], [3, 5]]), size=(40, 40), p_keep=0.5)
    unshifted, shifted = masks.render(0, 2)
    torch.testing.assert_close(shifted[:-3, :-5], unshifted[3:, 5:])
    assert not torch.allclose(shifted, unshifted)


def test_a_seed_draws_the_same_masks_whatever_the_default_device():
    """Masks come from the seed's CPU generator, so GPU and CPU runs (or torch.set_default_device) share them."""
    expected = sample_masks(30, (24, 24), seed=9)
    with torch.device("meta"):
        drawn = sample_masks(30, (24, 24), seed=9)
        assert drawn.render(0, 30, "meta").shape == (30, 24, 24)
    assert drawn.grids.device.type == "cpu" and torch.equal(drawn.grids, expected.grids)
    assert torch.equal(drawn.shifts, expected.shifts)
    torch.testing.assert_close(drawn.render(0, 30, torch.device("cpu")), expected.render(0, 30))


def test_sampling_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sample_masks(100, (32, 32), seed=5)
    assert torch.equal(torch.rand(3), expected)
