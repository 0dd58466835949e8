"""Attention kernel choice for the vision side (EVA-ViT and Q-Former).

``sdpa`` (default) calls ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
kernels on GPU, a fused kernel on CPU); ``eager`` is the published BLIP-2 code's explicit
softmax(q k^T / sqrt(d) + mask) v, kept to compare against and for debugging. Same result up to
float rounding (tests/test_attention_switch.py). Model config key: ``vision_attn_implementation``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              dropout_p: float = 0.0, implementation: str = "sdpa") -> torch.Tensor:
    """[B, H, L, D] x [B, H, K, D] -> [B, H, L, D]; ``mask``: additive float or boolean (True = attend)."""
    if implementation == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = scores.softmax(dim=-1)
    if dropout_p:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)


def set_attn_implementation(module: nn.Module, implementation: str) -> int:
    """Switch every vision attention layer under ``module``; returns how many were switched."""
    if implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"vision_attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {implementation!r}")
    layers = [m for m in module.modules() if hasattr(m, "attn_implementation")]
    for layer in layers:
        layer.attn_implementation = implementation
    return len(layers)
