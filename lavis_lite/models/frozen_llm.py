"""Training forward of a *frozen* decoder-only LLM, doing only the work the loss needs.

MiniGPT4-Qwen's recipe trains ``llm_proj`` alone: no LLM weight needs a gradient, and the loss reaches
``llm_proj`` only through the image-token positions. transformers' forward computes every layer at every
position; with the LLM frozen much of that is provably unused. This module runs the decoder's own
modules (its Linear layers, RMSNorms, rotary table; nothing re-learned) in a loop that skips it. Each
skip is a switch of ``model.frozen_llm`` (all exact: same loss and ``llm_proj`` gradient up to fp32
rounding, tests/test_frozen_llm.py):

* ``trim_trailing``: positions after the last supervised target of the batch cannot influence the loss
  (attention is causal), so the batch is cut there (the closing ``<|im_end|>`` and padding).
* ``last_layer_supervised_only``: the last layer's keys and values are needed at every position, but
  its queries, attention output, MLP and the final norm only where a next token is scored (replies:
  about half the positions).
* ``const_text_qkv``: in layer 0 a text position's input is a frozen word embedding, so its
  norm / q / k / v are constants: computed without autograd; only the image columns keep a graph.
* ``image_grad_attention`` (with ``const_text_qkv``): layer 0's attention backward computes only the
  image columns' gradients (frozen_attention.py), not every position's. CPU only (it reuses the CPU flash
  kernel's log-sum-exp); on other devices layer 0 keeps SDPA's own backward.
* the shared prefix (``model.share_prefix``, shared_prefix.py) runs once per batch, as before.
* ``attention: math`` computes attention as explicit matrix products instead of the fused SDPA kernel
  (measured slower on CPU at these lengths; kept for comparison).
* ``causal_chunk`` (CPU, with ``image_grad_attention``): layer 0's attention forward runs per chunk of
  that many queries over only the keys the chunk can see. The CPU flash kernel computes every score of a
  row block that has a mask (and below 512 keys even in its causal mode), so one call does ~2x the causal
  work; chunks of 32 take ~30% off that forward at 150-250 positions. Same values up to rounding; 0 = one
  call. (Chunking the other layers too, forward and backward through autograd, measured no net gain:
  the slices' gradient bookkeeping ate the saving.)

Right-padded rows (the ChatCollator's layout) use a causal mask only: a real position never sees a
later one, so padding is invisible to it. Used only when :func:`unsupported_reason` returns None:
a transformers Qwen2 / Qwen3 / Llama / Mistral decoder, no trainable LLM weight (LoRA and full finetuning
take transformers' path), no gradient checkpointing, no packing, no sliding window, no attention dropout.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from lavis_lite.models.frozen_attention import image_column_attention
from lavis_lite.models.shared_prefix import grad_checkpointing_on, llm_is_frozen

IGNORE_INDEX = -100
SUPPORTED = ("Qwen2Model", "Qwen3Model", "LlamaModel", "MistralModel")


@dataclass
class FrozenLLMOptions:
    """``model.frozen_llm``: the frozen-LLM training path and its exact skips (docs/performance.md)."""
    enabled: bool = True
    trim_trailing: bool = True
    last_layer_supervised_only: bool = True
    const_text_qkv: bool = True
    image_grad_attention: bool = True
    attention: str = "sdpa"
    causal_chunk: int = 32

    @classmethod
    def from_config(cls, cfg) -> FrozenLLMOptions:
        if isinstance(cfg, cls):
            return cfg
        if isinstance(cfg, bool):
            return cls(enabled=cfg)
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise KeyError(f"model.frozen_llm: unknown key(s) {unknown}; known: {sorted(known)}")
        opts = cls(**cfg)
        if opts.attention not in ("math", "sdpa"):
            raise ValueError(f"model.frozen_llm.attention must be 'math' or 'sdpa', got {opts.attention!r}")
        if isinstance(opts.causal_chunk, bool) or not isinstance(opts.causal_chunk, int) or opts.causal_chunk < 0:
            raise ValueError(f"model.frozen_llm.causal_chunk must be an integer >= 0 (0 = off), "
                             f"got {opts.causal_chunk!r}")
        return opts


def unsupported_reason(llm, decoder) -> str | None:
    """Why the frozen path cannot run this LLM (None: it can)."""
    if decoder is None or type(decoder).__name__ not in SUPPORTED:
        return f"decoder {type(decoder).__name__} is not one of {SUPPORTED}"
    if not type(decoder).__module__.startswith("transformers.models."):
        return "not a transformers model"
    if not llm_is_frozen(llm):
        return "an LLM weight trains"
    if grad_checkpointing_on(llm, decoder):
        return "LLM gradient checkpointing is on"
    cfg = decoder.config
    if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "sliding_window", None) and \
            any(t == "sliding_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "sliding-window attention"
    if decoder.training and float(getattr(cfg, "attention_dropout", 0.0) or 0.0) > 0:
        return "attention dropout"
    return None


# ---- blocks: the decoder layer's own modules, called piecewise ---------------------------------------
def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _heads(attn, x, proj, norm):
    out = proj(x).unflatten(-1, (-1, attn.head_dim))  # [B, T, H, d]
    if norm is not None:
        out = norm(out)
    return out.transpose(1, 2)  # [B, H, T, d]


def _q(layer, x, cos, sin):
    """Rotated queries of normed hidden states ``x`` [B, T, D]."""
    attn = layer.self_attn
    return _rope(_heads(attn, x, attn.q_proj, getattr(attn, "q_norm", None)), cos, sin)


def _kv(layer, x, cos, sin):
    """Rotated keys and the values of normed hidden states ``x``."""
    attn = layer.self_attn
    return _rope(_heads(attn, x, attn.k_proj, getattr(attn, "k_norm", None)), cos, sin), \
        _heads(attn, x, attn.v_proj, None)


def _qkv(layer, h, cos, sin):
    """Layer input norm + rotated q, k and v of hidden states ``h`` [B, T, D]."""
    x = layer.input_layernorm(h)
    return (_q(layer, x, cos, sin), *_kv(layer, x, cos, sin))


def _mlp_block(layer, h):
    """Post-attention norm, SwiGLU MLP and residual."""
    mlp = layer.mlp
    x = layer.post_attention_layernorm(h)
    return h + mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))


def _math_attention(q, k, v, mask, scale):
    """softmax(q k^T * scale + mask) v with grouped KV heads, as explicit matrix products (off by default:
    measured 14% slower per step than the fused SDPA kernel on CPU, docs/performance.md)."""
    batch, heads, steps, dim = q.shape
    kv_heads, n_keys = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    scores = torch.matmul(q.reshape(batch, kv_heads, groups * steps, dim), k.transpose(-1, -2)) * scale
    scores = scores.view(batch, kv_heads, groups, steps, n_keys).masked_fill(~mask[:, :, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(batch, kv_heads, groups * steps, n_keys)
    return torch.matmul(probs, v).view(batch, heads, steps, dim)


def _attend_mlp(layer, h, q, k, v, mask, causal: bool, math: bool = False, span=None, key_offset: int = 0,
                chunk: int = 0):
    """Attention of queries ``q`` (rows of ``h``) over ``k``/``v``, o_proj, residual, MLP, residual.
    ``span``: only these columns need gradients (frozen_attention.py), whose forward then runs in query
    chunks of ``chunk`` (0 = one call)."""
    attn = layer.self_attn
    groups = q.shape[1] // k.shape[1]
    if span is not None:
        out = image_column_attention(q, k, v, mask, attn.scaling, span, key_offset, chunk)
    elif math:
        if mask is None:  # causal, queries and keys the same columns
            steps = q.shape[2]
            mask = _causal_mask(torch.arange(steps, device=q.device), steps, q.device)[None, None]
        out = _math_attention(q, k, v, mask, attn.scaling)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                             scale=attn.scaling, enable_gqa=groups > 1)
    return _mlp_block(layer, h + attn.o_proj(out.transpose(1, 2).flatten(2)))


# ---- the forward ----------------------------------------------------------------------------------
def _prefix_kv(decoder, prefix_embeds):
    """Keys and values of every layer for the shared prefix (one row, no autograd)."""
    n = prefix_embeds.shape[1]
    pos = torch.arange(n, device=prefix_embeds.device)[None]
    with torch.no_grad():
        cos, sin = decoder.rotary_emb(prefix_embeds, pos)
        cos, sin = cos[:, None], sin[:, None]
        h, kv = prefix_embeds, []
        for layer in decoder.layers:
            q, k, v = _qkv(layer, h, cos, sin)
            kv.append((k, v))
            h = _attend_mlp(layer, h, q, k, v, None, True)
    return kv


def _causal_mask(q_pos, n_keys, device):
    """Boolean [.., Tq, n_keys]: key j visible to a query at absolute position p iff j <= p."""
    return torch.arange(n_keys, device=device) <= q_pos[..., None]


def supervised_hidden(decoder, inputs_embeds, attention_mask, labels, prefix_len=0, grad_cols=None,
                      opts: FrozenLLMOptions | None = None):
    """Final-norm hidden states at the positions whose next token is supervised, and those targets.

    ``inputs_embeds`` [B, L, D] (rows share their first ``prefix_len`` embeddings), ``attention_mask``
    [B, L], ``labels`` [B, L]; ``grad_cols`` [L] bool: the columns whose embeddings may carry a gradient
    (image tokens); None = every column. Returns (hidden [N, D], targets [N]) in row-major order, the
    same selection as transformers' forward followed by ``hidden[:, :-1][labels[:, 1:] != -100]``."""
    opts = opts or FrozenLLMOptions()
    batch, length, _ = inputs_embeds.shape
    device = inputs_embeds.device
    targets_all = labels[:, 1:]
    select = targets_all != IGNORE_INDEX  # [B, L-1]: output position j predicts token j + 1
    end = length
    if opts.trim_trailing:
        cols = select.any(0).nonzero()
        end = int(cols[-1]) + 1 if len(cols) else 1
    end = max(end, prefix_len + 1)
    select = F.pad(select, (0, 1), value=False)[:, prefix_len:end]  # [B, T] over the computed columns
    targets = F.pad(targets_all, (0, 1), value=IGNORE_INDEX)[:, prefix_len:end][select]
    right_padded = bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())

    h = inputs_embeds[:, prefix_len:end]
    steps = h.shape[1]
    pos = torch.arange(prefix_len, end, device=device)
    cos, sin = decoder.rotary_emb(h, pos[None])
    cos, sin = cos[:, None], sin[:, None]  # [1, 1, T, d]
    prefix = _prefix_kv(decoder, inputs_embeds[:1, :prefix_len].detach()) if prefix_len else None
    n_keys = prefix_len + steps
    mask = None
    if prefix_len or not right_padded:
        mask = _causal_mask(pos, n_keys, device)[None, None]  # [1, 1, T, K]
        if not right_padded:
            mask = mask & attention_mask[:, None, None, :end].bool()

    span = None  # layer-0 columns (relative to prefix_len) whose inputs carry a gradient
    if opts.const_text_qkv and grad_cols is not None and torch.is_grad_enabled() and h.requires_grad:
        cols = grad_cols[prefix_len:end].nonzero()
        span = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 0)

    chunk = opts.causal_chunk  # layer 0's custom attention, which runs on the CPU only
    layers = list(decoder.layers)
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        if i == last and opts.last_layer_supervised_only:
            k, v = _kv(layer, layer.input_layernorm(h), cos, sin)
            if prefix is not None:
                k, v = _with_prefix(prefix[i], k, v, batch)
            return _last_layer_supervised(decoder, layer, h, k, v, select, pos, cos, sin, attention_mask,
                                          prefix_len, end, right_padded, opts), targets
        live = None
        if i == 0 and span is not None:
            q, k, v = _qkv_const_text(layer, h, cos, sin, span)
            # the custom backward uses the CPU flash kernel's log-sum-exp; other devices keep SDPA's backward
            live = span if opts.image_grad_attention and h.device.type == "cpu" else None
        else:
            q, k, v = _qkv(layer, h, cos, sin)
        if prefix is not None:
            k, v = _with_prefix(prefix[i], k, v, batch)
        if live is not None:
            h = _attend_mlp(layer, h, q, k, v, mask, True, span=live, key_offset=prefix_len, chunk=chunk)
        else:
            h = _attend_mlp(layer, h, q, k, v, mask, True, opts.attention == "math")
    return decoder.norm(h[select]), targets


def _with_prefix(prefix_kv, k, v, batch):
    pk, pv = prefix_kv
    return (torch.cat((pk.expand(batch, -1, -1, -1), k), dim=2),
            torch.cat((pv.expand(batch, -1, -1, -1), v), dim=2))


def _qkv_const_text(layer, h, cos, sin, span):
    """Layer-0 q/k/v: the text columns without autograd (constants), columns ``span`` with it."""
    a, b = span
    with torch.no_grad():
        const = _qkv(layer, h.detach(), cos, sin)
    if a == b:
        return const
    live = _qkv(layer, h[:, a:b], cos[:, :, a:b], sin[:, :, a:b])
    return tuple(torch.cat((c[:, :, :a], x, c[:, :, b:]), dim=2) for c, x in zip(const, live))


def _last_layer_supervised(decoder, layer, h, k, v, select, pos, cos, sin, attention_mask, prefix_len, end,
                           right_padded, opts):
    """The last layer at the scored positions only: their queries over every key, o_proj, MLP, norm.
    Per-position work runs on the flat [N, D] scored set; only attention sees them as a per-row block
    [B, W] (W = most scored positions in a row), padded with column 0 and dropped again."""
    counts = select.sum(1)
    width = max(int(counts.max()), 1)
    order = torch.sort((~select).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=h.device)[None] < counts[:, None]
    idx = torch.where(valid, order, torch.zeros_like(order))  # [B, W] column of each scored position
    cols = idx[valid]  # [N], row-major like h[select]
    hq = h[select]  # [N, D]
    attn = layer.self_attn
    q = _q(layer, layer.input_layernorm(hq[None]), cos[:, :, cols], sin[:, :, cols])[0].transpose(0, 1)  # [N, H, d]
    block = q.new_zeros(*idx.shape, *q.shape[1:])
    block[valid] = q
    mask = _causal_mask(pos[idx], k.shape[2], h.device)[:, None]  # [B, 1, W, K]
    if not right_padded:
        mask = mask & attention_mask[:, None, None, :end].bool()
    block = block.transpose(1, 2)  # [B, H, W, d]
    if opts.attention == "math":
        out = _math_attention(block, k, v, mask, attn.scaling)
    else:
        out = F.scaled_dot_product_attention(block, k, v, attn_mask=mask, scale=attn.scaling,
                                             enable_gqa=block.shape[1] > k.shape[1])
    return decoder.norm(_mlp_block(layer, hq + attn.o_proj(out.transpose(1, 2)[valid].flatten(1))))  # [N, D]
