"""Attention-based attributions of a target for vision transformers: LeGrad and Chefer et al.'s relevance.

Both read one forward pass of the image tower with its attention probabilities (Model.attention_trace)
and explain any target of this project (targets.Target), not only a caption's similarity.

- "legrad" (Bousselham et al., ICCV 2025; code github.com/WalBouss/LeGrad, legrad/wrapper.py): for each
  of the last `layers` blocks (2 by default, as LeWrapper's layer_index=-2), the target is read off that
  block's tokens through the model's own pooling and projection, and differentiated with respect to that
  block's attention only; the gradient's positive part, averaged over heads and query rows, is the
  block's map over the patches; the maps are summed over blocks. (LeGrad's code then min-max normalises
  the map; here it keeps its units, and the display scales it from min to max, so a map that is zero up to
  rounding shows as flat instead of as amplified noise.)
  Models that pool with an attention head (SigLIP) use that head's attention instead, at every block, as
  LeGrad's SigLIP code does.
- "attention-relevance" (Chefer, Gur and Wolf, "Generic attention-model explainability", ICCV 2021; code
  github.com/hila-chefer/Transformer-MM-Explainability): R = I, then for every block in order
  R <- R + mean_h(ReLU(dtarget/dA ⊙ A)) @ R, with the gradients of the final target; the map is the class
  token's row of R without its own column. Without a class token (SigLIP), the pooling head's probe is the
  query that reads the image: the map is mean_h(ReLU(dtarget/dP ⊙ P)) @ R over all patches, with P the
  head's attention.

The map over the patch grid is brought to the model's input by bilinear resampling (as both codes do),
so it is as coarse as the grid. One forward pass; one backward pass for attention-relevance, and one
short one per block for LeGrad (from that block's readout to its attention only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SettingsError
from ..models import Model
from ..models.tracing import AttentionTrace
from .images import Framed
from .targets import Target

ATTENTION_METHODS = ("legrad", "attention-relevance")
# cos(f(x), f(x)) is at its maximum at x: its gradient there is zero (and so is LeGrad's last block's term).
SELF_NOTE = ("The label-free target, the picture's cosine similarity to itself, is at its maximum on the picture, so "
             "its gradient is zero and attention-relevance has nothing to weigh: use legrad, rise or "
             "integrated-gradients for it.")
LEGRAD_LAYERS = 2  # LeGrad's default: LeWrapper(model, layer_index=-2) hooks the last two blocks


def trace(model: Model, framed: Framed) -> tuple[AttentionTrace, torch.Tensor]:
    """One differentiable pass over the framed picture: (the trace, the (D,) float32 embedding, detached)."""
    canvas = model.normalize(framed.canvas[None].to(model.device))
    traced = model.attention_trace(canvas)
    embedding, _ = traced.readout(traced.tokens[-1])
    return traced, embedding.detach()[0].float()


def attention_map(traced: AttentionTrace, framed: Framed, n_px: int, target: Target, method: str,
                  layers: int | None = None) -> torch.Tensor:
    """The method's map of the target over the picture's content box: (h, w) float32.

    layers: the last blocks LeGrad reads (default 2) or relevance propagates through (default all).
    """
    grid = grid_map(traced, target, method, layers)[0]
    upsampled = F.interpolate(grid[None, None], size=(n_px, n_px), mode="bilinear", align_corners=False)[0, 0]
    top, left, height, width = framed.box
    return upsampled[top:top + height, left:left + width].detach().cpu()


def grid_map(traced: AttentionTrace, target: Target, method: str, layers: int | None = None) -> torch.Tensor:
    """The method's map over the patch grid: (B, rows, cols) float32, rows and cols as `traced.grid`."""
    if method not in ATTENTION_METHODS:
        raise SettingsError(f"Unknown attention method {method!r}; choose one of {', '.join(ATTENTION_METHODS)}.")
    blocks = len(traced.attentions)
    if layers is not None and not (isinstance(layers, int) and 1 <= layers <= blocks):
        raise SettingsError(f"layers is how many of the last blocks to read, from 1 to {blocks}; got {layers!r}.")
    if method == "legrad":
        patches = legrad(traced, target, layers or min(LEGRAD_LAYERS, blocks))
    else:
        patches = relevance(traced, target, layers or blocks)
    return patches.reshape(-1, *traced.grid)


def legrad(traced: AttentionTrace, target: Target, layers: int) -> torch.Tensor:
    """LeGrad over the last `layers` blocks: (B, patches), in target units per unit of attention probability."""
    total = 0.0
    for attention, tokens in zip(traced.attentions[-layers:], traced.tokens[-layers:], strict=True):
        embedding, pooling = traced.readout(tokens)
        score = target(embedding).sum()  # pictures of a batch do not interact: each gets its own gradient
        if pooling is None:
            gradient, = torch.autograd.grad(score, attention, retain_graph=True)  # [B, H, N, N]
            # LeGrad's reduction: ReLU, mean over heads, then over every query row; a column per token.
            signal = gradient.float().clamp(min=0).mean(dim=1).mean(dim=1)[:, traced.prefix:]
        else:
            gradient, = torch.autograd.grad(score, pooling, retain_graph=True)  # [B, H, 1, N]
            signal = gradient.float().clamp(min=0).mean(dim=1)[:, 0, traced.prefix:]
        total = total + signal
    return total


def relevance(traced: AttentionTrace, target: Target, layers: int) -> torch.Tensor:
    """Chefer et al.'s relevance propagated through the last `layers` blocks: (B, patches), in its own units."""
    embedding, pooling = traced.readout(traced.tokens[-1])
    score = target(embedding).sum()
    attentions = list(traced.attentions[-layers:])
    gradients = torch.autograd.grad(score, attentions + ([pooling] if pooling is not None else []),
                                    retain_graph=True)
    batch, _, length, _ = attentions[0].shape
    propagated = torch.eye(length, device=embedding.device).expand(batch, length, length)
    for attention, gradient in zip(attentions, gradients, strict=False):  # the pooling head's gradient comes last
        weighted = (gradient.float() * attention.detach().float()).clamp(min=0).mean(dim=1)  # [B, N, N]
        propagated = propagated + weighted @ propagated
    if pooling is None:
        row = propagated[:, 0]  # the class token's row: how much each token gave the embedding
    else:
        head = (gradients[-1].float() * pooling.detach().float()).clamp(min=0).mean(dim=1)  # [B, 1, N]
        row = (head @ propagated)[:, 0]
    return row[:, traced.prefix:]
