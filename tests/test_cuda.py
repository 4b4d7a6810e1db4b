"""GPU checks (skipped without CUDA): the GPU path gives the CPU's maps, fast paths included."""
import numpy as np
import pytest
import torch

import cocoa_clip as cc
from cocoa_clip.engine.rise import default_batch_size

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DOG_CAT = cc.Question(corpus=["dog"], foil=["cat"])


def test_cuda_fp32_map_equals_the_cpu_map(tiny, tiny_checkpoint, photo):
    """Masks are drawn on the CPU from the seed, so both devices explain with the same masks."""
    gpu = cc.load(weights=tiny_checkpoint, device="cuda", precision="fp32")
    on_cpu = cc.explain(tiny, photo, DOG_CAT, masks=500, cache=None)
    on_gpu = cc.explain(gpu, photo, DOG_CAT, masks=500, cache=None)
    assert on_gpu.details["device"].startswith("cuda")
    np.testing.assert_allclose(on_gpu.heatmap, on_cpu.heatmap, rtol=1e-2, atol=1e-3 * np.abs(on_cpu.heatmap).max())
    assert on_gpu.score == pytest.approx(on_cpu.score, abs=1e-4)


def test_cuda_fp16_keeps_the_map_and_the_cache_skips_the_pass(tiny, tiny_checkpoint, photo):
    gpu = cc.load(weights=tiny_checkpoint, device="cuda")
    assert gpu.precision == "fp16" and next(gpu.net.parameters()).dtype == torch.float16
    cache = cc.PassCache()
    fp16 = cc.explain(gpu, photo, DOG_CAT, masks=2000, cache=cache)
    fp32 = cc.explain(tiny, photo, DOG_CAT, masks=2000, cache=None)
    assert np.corrcoef(fp16.heatmap.ravel(), fp32.heatmap.ravel())[0, 1] > 0.98
    again = cc.explain(gpu, photo, DOG_CAT.swapped(), masks=2000, cache=cache)
    assert again.details["cached"]
    np.testing.assert_allclose(again.heatmap, -fp16.heatmap, atol=1e-6)
    assert 16 <= default_batch_size(gpu) <= 1024


def test_cuda_integrated_gradients_is_complete(tiny_checkpoint, photo):
    gpu = cc.load(weights=tiny_checkpoint, device="cuda", precision="fp32")
    answer = cc.explain(gpu, photo, DOG_CAT, method="integrated-gradients")
    delta = answer.details["convergence_delta"][0]
    assert np.isfinite(answer.heatmap).all() and abs(delta) < 1e-3


def test_cuda_auto_and_regression_match_the_cpu(tiny, tiny_checkpoint, photo):
    """The regression fit runs in float64 on the device; "auto" stops where the CPU stops."""
    gpu = cc.load(weights=tiny_checkpoint, device="cuda", precision="fp32")
    on_cpu = cc.explain(tiny, photo, DOG_CAT, masks="auto", stability=0.9, cache=None)
    on_gpu = cc.explain(gpu, photo, DOG_CAT, masks="auto", stability=0.9, max_masks=4000, cache=None)
    assert on_gpu.details["masks"] == on_cpu.details["masks"]
    np.testing.assert_allclose(on_gpu.heatmap, on_cpu.heatmap, rtol=1e-2, atol=1e-3 * np.abs(on_cpu.heatmap).max())


def test_cuda_bf16_runs_fp32_weights_under_autocast_and_says_so(tiny_checkpoint, photo):
    gpu = cc.load(weights=tiny_checkpoint, device="cuda", precision="bf16")
    assert next(gpu.net.parameters()).dtype == torch.float32
    assert cc.explain(gpu, photo, DOG_CAT, masks=200, cache=None).details["precision"] == "bf16"
    answer = cc.explain(gpu, photo, DOG_CAT, method="integrated-gradients")
    assert answer.details["precision"] == "fp32" and abs(answer.details["convergence_delta"][0]) < 1e-3
