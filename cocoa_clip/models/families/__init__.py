"""The adapters, one module per family, as peers (which name goes to which: ../registry.py)."""
from __future__ import annotations

import torch


def ready(net: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    """A loaded network for inference: on the device, frozen, in eval mode, fp16 weights when asked (CUDA)."""
    net = net.to(device).eval().requires_grad_(False)
    return net.half() if precision == "fp16" else net.float()
