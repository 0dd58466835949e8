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


def causal_chunks(n_queries: int, chunk: int, key_offset: int) -> list[tuple[int, int, int]]:
    """``(start, stop, n_keys)`` per query chunk of a causal attention whose query ``t`` sits at key
    position ``key_offset + t``: queries ``start..stop-1`` see no key at or after ``key_offset + stop``.
    One chunk when ``chunk`` is 0 or covers every query."""
    if chunk <= 0 or chunk >= n_queries:
        return [(0, n_queries, key_offset + n_queries)]
    return [(s, min(n_queries, s + chunk), key_offset + min(n_queries, s + chunk))
            for s in range(0, n_queries, chunk)]


def _flash_forward(q, kr, vr, fmask, scale, chunks):
    """The CPU flash kernel's (output, log-sum-exp), one call per query chunk over only the keys it can
    see (the kernel itself computes every score of a masked row block, and below 512 keys even with
    ``is_causal``): the same values up to rounding, ~30% less work at 150-250 positions."""
    outs, lses = [], []
    for start, stop, n_keys in chunks:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q[:, :, start:stop], kr[:, :, :n_keys], vr[:, :, :n_keys], 0.0, False,
            attn_mask=fmask[..., start:stop, :n_keys], scale=scale)
        outs.append(out)
        lses.append(lse)
    return (outs[0], lses[0]) if len(outs) == 1 else (torch.cat(outs, 2), torch.cat(lses, 2))


def _additive(mask: torch.Tensor | None, dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


class ImageColumnAttention(torch.autograd.Function):
    """softmax(q k^T * scale + mask) v; gradients only for query rows ``span`` and key columns
    ``span + key_offset`` (q [B, H, T, d], k / v [B, Hkv, K, d]; query t sits at key position
    ``key_offset + t``; mask bool broadcastable to [B, 1, T, K], causal (optionally with key padding), or
    None for plain causal with K == T). The backward relies on causality: rows before the span see no
    span key, span rows see no key after the span. ``chunk`` > 0: the forward runs per query chunk over the
    keys the chunk can see (:func:`causal_chunks`)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, span, key_offset, chunk=0):
        groups = q.shape[1] // k.shape[1]
        kr = k.repeat_interleave(groups, dim=1) if groups > 1 else k
        vr = v.repeat_interleave(groups, dim=1) if groups > 1 else v
        n = q.shape[2]
        plain = mask is None
        if plain:
            mask = (torch.arange(n, device=q.device) <= torch.arange(n, device=q.device)[:, None])[None, None]
        if plain and chunk <= 0:  # K == T: one call in the kernel's own causal mode
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, kr, vr, 0.0, True, scale=scale)
        else:
            out, lse = _flash_forward(q, kr, vr, _additive(mask, q.dtype), scale, causal_chunks(n, chunk, key_offset))
        ctx.save_for_backward(q, kr, vr, out, lse, mask)
        ctx.scale, ctx.span, ctx.key_offset, ctx.groups = scale, span, key_offset, groups
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, kr, vr, out, lse, mask = ctx.saved_tensors
        scale, (a, b), off, groups = ctx.scale, ctx.span, ctx.key_offset, ctx.groups
        grad_out = grad_out.contiguous().to(q.dtype)
        batch, heads, _, dim = q.shape
        dq = q.new_zeros(q.shape)
        dk_c = dv_c = None
        if b > a:
            # causal: queries before the image rows see no image key, image rows see no key after them
            qa, ga, oa, lse_a = q[:, :, a:], grad_out[:, :, a:], out[:, :, a:], lse[:, :, a:, None]
            delta = (ga * oa).sum(-1, keepdim=True)  # [B, H, T-a, 1]
            kc, vc = kr[:, :, off + a:off + b], vr[:, :, off + a:off + b]
            # image key columns, query rows a..T
            p = torch.exp(torch.matmul(qa, kc.transpose(-1, -2)).float() * scale - lse_a).to(q.dtype)
            p = p.masked_fill(~mask[..., a:, off + a:off + b], 0.0)
            dv_c = torch.matmul(p.transpose(-1, -2), ga)
            ds = p * (torch.matmul(ga, vc.transpose(-1, -2)) - delta)
            dk_c = torch.matmul(ds.transpose(-1, -2), qa) * scale
            # image query rows a..b, key columns 0..off+b
            n = b - a
            kk, vv = kr[:, :, :off + b], vr[:, :, :off + b]
            p = torch.exp(torch.matmul(qa[:, :, :n], kk.transpose(-1, -2)).float() * scale - lse_a[:, :, :n]).to(q.dtype)
            p = p.masked_fill(~mask[..., a:b, :off + b], 0.0)
            ds = p * (torch.matmul(ga[:, :, :n], vv.transpose(-1, -2)) - delta[:, :, :n])
            dq[:, :, a:b] = torch.matmul(ds, kk) * scale
            if groups > 1:  # sum the query heads sharing a key/value head
                dk_c = dk_c.unflatten(1, (-1, groups)).sum(2)
                dv_c = dv_c.unflatten(1, (-1, groups)).sum(2)
        kv_shape = (batch, heads // groups, kr.shape[2], dim)
        dk, dv = q.new_zeros(kv_shape), q.new_zeros(kv_shape)
        if dk_c is not None:
            dk[:, :, off + a:off + b] = dk_c
            dv[:, :, off + a:off + b] = dv_c
        return dq, dk, dv, None, None, None, None, None


def image_column_attention(q, k, v, mask, scale, span, key_offset=0, chunk=0):
    kind = q.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else q.dtype
    q, k, v = (t.to(dtype) for t in (q, k, v))  # as autocast runs SDPA (lower precision, one dtype)
    return ImageColumnAttention.apply(q, k, v, mask, scale, tuple(span), int(key_offset), int(chunk))
