"""Attention traces of vision transformers: what the attention-based explainers (LeGrad, Chefer et al.'s
relevance) need of a model, read in one differentiable forward pass.

Each adapter of a ViT family fills in `Model.attention_trace`; the engine never asks which family it
holds. PyTorch's fused attention returns no probabilities that autograd can reach (the weights
`nn.MultiheadAttention` returns are averaged or copied after they were used), so while a trace runs
each self-attention module is given a forward that computes the same attention step by step and
keeps its probabilities; the module's own forward is restored afterwards.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import SettingsError

# The methods every model takes (the engine's METHODS without the attention methods; a test keeps them equal).
OTHER_METHODS = ("rise", "integrated-gradients", "gradient-shap")
Readout = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None]"]


@dataclass(frozen=True)
class AttentionTrace:
    """One forward pass of the image tower, kept for gradients.

    attentions: per block, (B, H, N, N) post-softmax probabilities (rows: queries), in the autograd graph.
    tokens: per block, its output tokens (B, N, C).
    readout: a block's tokens (B, N, C) -> (the embedding (B, D) the model would give were that block its last,
        the attention probabilities (B, H, 1, N) of an attention-pooling head, or None when the model reads
        its class token). On the last block's tokens it gives the model's own embedding.
    grid: (rows, cols) of the patch grid; the last rows * cols tokens are the patches, row-major.
    """

    attentions: Sequence[torch.Tensor]
    tokens: Sequence[torch.Tensor]
    readout: Readout
    grid: tuple[int, int]

    @property
    def prefix(self) -> int:
        """Tokens before the patches (1 for the class token, 0 for SigLIP)."""
        return self.tokens[-1].shape[1] - self.grid[0] * self.grid[1]


def no_attention(name: str, reason: str) -> SettingsError:
    """The sentence for a model whose attention maps cannot be reached: why, and what does apply."""
    return SettingsError(f"{name} {reason}, so legrad and attention-relevance do not apply to it; "
                         f"use {', '.join(OTHER_METHODS[:-1])} or {OTHER_METHODS[-1]}.")


def differentiable_input(normalised: torch.Tensor, weights: torch.nn.Module) -> torch.Tensor:
    """A copy of the input that autograd follows (the weights are frozen), in the weights' dtype."""
    dtype = next(weights.parameters()).dtype
    return normalised.detach().to(dtype).requires_grad_(True)


def self_attention(mha: torch.nn.MultiheadAttention, x: torch.Tensor,
                   attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.MultiheadAttention's self-attention in eval mode, step by step: (output, probabilities (B, H, N, N)).

    x: (B, N, C) when `mha.batch_first`, else (N, B, C); the output has x's layout.
    """
    tokens = x if mha.batch_first else x.transpose(0, 1)
    batch, length, width = tokens.shape
    heads = mha.num_heads
    q, k, v = F.linear(tokens, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))  # [B, H, N, c]
    logits = (q * (width // heads) ** -0.5) @ k.transpose(-1, -2)
    if attn_mask is not None:
        logits = logits + attn_mask
    probabilities = logits.softmax(dim=-1)
    out = mha.out_proj((probabilities @ v).transpose(1, 2).reshape(batch, length, width))
    return (out if mha.batch_first else out.transpose(0, 1)), probabilities


@contextlib.contextmanager
def traced_blocks(blocks: Sequence[torch.nn.Module], batch_first: bool) -> Iterator[tuple[list, list]]:
    """While open, each block's `attn` (an nn.MultiheadAttention, as in OpenAI clip and open_clip) keeps its
    probabilities and each block's output tokens are kept: yields (attentions, tokens), filled by a forward."""
    attentions: list[torch.Tensor] = []
    tokens: list[torch.Tensor] = []

    def attend(mha: torch.nn.MultiheadAttention):
        def forward(query, key=None, value=None, need_weights=False, attn_mask=None, **_):
            out, probabilities = self_attention(mha, query, attn_mask)
            attentions.append(probabilities)
            return out, None
        return forward

    def keep(_module, _inputs, output: torch.Tensor) -> None:
        tokens.append(output if batch_first else output.transpose(0, 1))

    hooks = [block.register_forward_hook(keep) for block in blocks]
    for block in blocks:
        block.attn.forward = attend(block.attn)  # an instance attribute, found before the class's forward
    try:
        yield attentions, tokens
    finally:
        for block, hook in zip(blocks, hooks, strict=True):
            hook.remove()
            del block.attn.forward


def pooling_head(head: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A SigLIP attention-pooling head (transformers' SiglipMultiheadAttentionPoolingHead: a learnt probe
    attends over the tokens, then a residual MLP), step by step: ((B, C) pooled, (B, H, 1, N) probabilities)."""
    mha = head.attention
    batch, length, width = tokens.shape
    heads = mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    q = F.linear(head.probe.expand(batch, -1, -1), w_q, b_q).reshape(batch, 1, heads, -1).transpose(1, 2)
    k, v = (F.linear(tokens, w, b).reshape(batch, length, heads, -1).transpose(1, 2)
            for w, b in ((w_k, b_k), (w_v, b_v)))  # shape = [B, H, N, c]
    probabilities = ((q * (width // heads) ** -0.5) @ k.transpose(-1, -2)).softmax(dim=-1)
    pooled = mha.out_proj((probabilities @ v).transpose(1, 2).reshape(batch, 1, width))
    pooled = pooled + head.mlp(head.layernorm(pooled))
    return pooled[:, 0], probabilities
