"""Attention whose backward computes only the gradients a frozen LLM's layer 0 needs.

With the LLM frozen and only ``llm_proj`` training, layer 0's queries, keys and values are constants
at every text position (their inputs are frozen word embeddings); only the image columns carry a
gradient. The fused SDPA backward computes dQ, dK and dV at every position (on CPU ~4x its forward).
:class:`ImageColumnAttention` runs the same fused forward (identical output) but its backward computes
only dQ of the image query rows and dK / dV of the image key columns, from the saved log-sum-exp:

    P[:, cols] = exp(S[:, cols] - lse),  dV_c = P[:, c]^T dO,  dS[:, c] = P[:, c] * (dO V_c^T - D),
    dK_c = scale * dS[:, c]^T Q,  dQ_r = scale * dS[r, :] K,  with D = rowsum(dO * O),

i.e. O(T x n) work for n image columns instead of O(T x K). Every other gradient entry is returned as
zero: exact because those inputs are constants (frozen_llm.py's ``const_text_qkv`` makes them so;
tests/test_frozen_llm.py compares the llm_proj gradient with transformers' forward).
"""
from __future__ import annotations

import torch


def _additive(mask: torch.Tensor | None, dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


class ImageColumnAttention(torch.autograd.Function):
    """softmax(q k^T * scale + mask) v; gradients only for query rows ``span`` and key columns
    ``span + key_offset`` (q [B, H, T, d], k / v [B, Hkv, K, d], mask bool broadcastable to [B, 1, T, K]
    or None for causal with K == T)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, span, key_offset):
        groups = q.shape[1] // k.shape[1]
        kr = k.repeat_interleave(groups, dim=1) if groups > 1 else k
        vr = v.repeat_interleave(groups, dim=1) if groups > 1 else v
        fmask = _additive(mask, q.dtype)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, kr, vr, 0.0, mask is None, attn_mask=fmask, scale=scale)
        if mask is None:
            n = q.shape[2]
            mask = (torch.arange(n, device=q.device) <= torch.arange(n, device=q.device)[:, None])[None, None]
        ctx.save_for_backward(q, kr, vr, out, lse, mask)
        ctx.scale, ctx.span, ctx.key_offset, ctx.groups = scale, span, key_offset, groups
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, kr, vr, out, lse, mask = ctx.saved_tensors
        scale, (a, b), off, groups = ctx.scale, ctx.span, ctx.key_offset, ctx.groups
        grad_out = grad_out.contiguous().to(q.dtype)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(kr), torch.zeros_like(vr)
        if b > a:
            delta = (grad_out * out).sum(-1, keepdim=True)  # [B, H, T, 1]
            # key columns c = off+a .. off+b: every query row
            kc, vc = kr[:, :, off + a:off + b], vr[:, :, off + a:off + b]
            p = torch.exp(torch.matmul(q, kc.transpose(-1, -2)).float() * scale - lse[..., None]).to(q.dtype)
            p = p.masked_fill(~mask[..., off + a:off + b], 0.0)
            dv[:, :, off + a:off + b] = torch.matmul(p.transpose(-1, -2), grad_out)
            ds = p * (torch.matmul(grad_out, vc.transpose(-1, -2)) - delta)
            dk[:, :, off + a:off + b] = torch.matmul(ds.transpose(-1, -2), q) * scale
            # query rows a .. b: every key column
            qr, gr = q[:, :, a:b], grad_out[:, :, a:b]
            p = torch.exp(torch.matmul(qr, kr.transpose(-1, -2)).float() * scale - lse[:, :, a:b, None]).to(q.dtype)
            p = p.masked_fill(~mask[..., a:b, :], 0.0)
            ds = p * (torch.matmul(gr, vr.transpose(-1, -2)) - delta[:, :, a:b])
            dq[:, :, a:b] = torch.matmul(ds, kr) * scale
        if groups > 1:  # sum the query heads sharing a key/value head
            dk = dk.unflatten(1, (-1, groups)).sum(2)
            dv = dv.unflatten(1, (-1, groups)).sum(2)
        return dq, dk, dv, None, None, None, None


def image_column_attention(q, k, v, mask, scale, span, key_offset=0):
    kind = q.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else q.dtype
    q, k, v = (t.to(dtype) for t in (q, k, v))  # as autocast runs SDPA (lower precision, one dtype)
    return ImageColumnAttention.apply(q, k, v, mask, scale, tuple(span), int(key_offset))
