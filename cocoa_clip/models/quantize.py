"""int8 on CPUs: the image tower's Linear layers with int8 weights and dynamically quantised activations.

`torch.ao.quantization.quantize_dynamic` swaps nn.Linear for its int8 twin (per-tensor weight
scale, activations quantised per batch on the fly). nn.MultiheadAttention keeps its input
projection as a raw (3D, D) parameter that quantize_dynamic cannot reach, so each one is first
replaced by `SelfAttention`, the same computation with that projection as an nn.Linear: with
the attention projections included, about two thirds of a ViT's multiply-adds run in int8.

Only forward-only passes (RISE's batches and the picture's own embedding) use the int8 copy;
gradient methods keep the float tower, as they do under bf16 autocast: `Int8Tower` holds both
and picks by `forward_only()`, a context variable (so threads do not see one another's choice).
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SettingsError

_FORWARD_ONLY = contextvars.ContextVar("cocoa_clip_int8", default=False)
TOWERS = ("visual", "vision_model")  # where families keep the image tower (clip and open_clip; transformers)


class SelfAttention(nn.Module):
    """nn.MultiheadAttention's self-attention (query = key = value) with its input projection as an nn.Linear.

    Takes (L, B, D), or (B, L, D) when batch_first, as the module it replaces; returns (output, None).
    """

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        dim = attention.embed_dim
        self.heads, self.batch_first = attention.num_heads, attention.batch_first
        self.in_proj = nn.Linear(dim, 3 * dim, bias=attention.in_proj_bias is not None)
        self.in_proj.weight = nn.Parameter(attention.in_proj_weight.detach().clone(), requires_grad=False)
        if attention.in_proj_bias is not None:
            self.in_proj.bias = nn.Parameter(attention.in_proj_bias.detach().clone(), requires_grad=False)
        self.out_proj = nn.Linear(dim, dim)
        self.out_proj.load_state_dict(attention.out_proj.state_dict())

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        x = query if self.batch_first else query.transpose(0, 1)  # shape = [B, L, D]
        batch, length, dim = x.shape
        q, k, v = self.in_proj(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        mask = attn_mask.to(q.dtype) if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # shape = [B, heads, L, D / heads]
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


class Int8Tower(nn.Module):
    """An image tower and its int8 copy: the copy runs inside `forward_only()`, the float tower elsewhere.

    Attributes the tower's own code reads (input_resolution, conv1, ...) come from the float tower.
    """

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.full = tower
        self.quantized = quantize(copy.deepcopy(tower))

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        return (self.quantized if _FORWARD_ONLY.get() else self.full)(*args, **kwargs)

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("full"), name)


def quantize(tower: nn.Module) -> nn.Module:
    """The tower with every self-attention made a SelfAttention and every nn.Linear int8 (in place)."""
    for parent in list(tower.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention) and child._qkv_same_embed_dim:
                setattr(parent, name, SelfAttention(child))
    with warnings.catch_warnings():  # torch marks its quantised tensors as deprecated; they still run
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(tower.float(), {nn.Linear}, dtype=torch.qint8, inplace=True)


def int8_image_tower(net: nn.Module) -> nn.Module:
    """`net` with its image tower (net.visual or net.vision_model) wrapped in an Int8Tower."""
    for name in TOWERS:
        if isinstance(getattr(net, name, None), nn.Module):
            setattr(net, name, Int8Tower(getattr(net, name)))
            return net
    raise SettingsError("int8 is offered for models with a CLIP-style image tower (net.visual or "
                        "net.vision_model); use fp32 for this one.")


@contextlib.contextmanager
def forward_only() -> Iterator[None]:
    """Int8 towers run their int8 copy inside this context (in this thread or task only)."""
    token = _FORWARD_ONLY.set(True)
    try:
        yield
    finally:
        _FORWARD_ONLY.reset(token)
