"""Shared-prefix forward for a frozen LLM.

Every ChatML training sample starts with the same tokens: the system block and the first user
header (``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n``, ~20
tokens), before its first image. When no LLM weight trains (MiniGPT4-Qwen's recipe: only ``llm_proj``),
those positions' keys and values are the same for every sample and need no gradient. So they are
computed once per batch, for one row, without autograd, and the batch runs only the rest of each
sequence on top of them as a KV cache, with position ids continuing from the prefix. Same loss and
gradients up to float rounding (tests/test_shared_prefix.py), ~15% fewer LLM positions at ~130 tokens
per sample.

Not used (the caller checks :func:`can_share_prefix`) when a weight of the LLM trains (LoRA, full
finetuning: the prefix then needs gradients), with LLM gradient checkpointing (transformers turns the
KV cache off there), with packing (rows hold several conversations), or when the batch's rows do not
start alike.
"""
from __future__ import annotations

import functools
import inspect

import torch
from torch import nn


@functools.lru_cache(maxsize=None)
def _cache_kwarg(decoder_cls: type) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns, then goes)."""
    return "cache" if "cache" in inspect.signature(decoder_cls.forward).parameters else "past_key_values"


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, stop_id: int,
                         labels: torch.Tensor | None = None) -> int:
    """Number of leading columns that are real tokens, identical in every row, before any ``stop_id``
    (the image token: its embedding differs per sample even though its id does not).

    With ``labels``: the prefix also ends before the first supervised token of any row. Output
    position ``j`` predicts token ``j + 1``, and the prefix's outputs are never scored, so the
    prefix may cover at most the positions before the first supervised token minus one
    (otherwise reply tokens of rows that agree past the start of a reply would leave the loss).
    """
    if input_ids.shape[0] < 2:
        return 0  # nothing to share
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0) & (input_ids[0] != stop_id)
    n = int(same.int().cumprod(0).sum())
    if labels is not None:
        supervised = (labels != -100).any(0).nonzero()
        if len(supervised):
            n = min(n, int(supervised[0]) - 1)
    return max(n, 0)


def llm_is_frozen(llm: nn.Module) -> bool:
    return not any(p.requires_grad for p in llm.parameters())


def grad_checkpointing_on(llm: nn.Module, decoder: nn.Module | None) -> bool:
    from lavis_lite.models.llm import is_grad_checkpointing
    return is_grad_checkpointing(llm) or bool(getattr(decoder, "gradient_checkpointing", False))


def can_share_prefix(llm: nn.Module, decoder: nn.Module | None) -> bool:
    """The LLM qualifies: frozen, no gradient checkpointing, a separate decoder returning a KV cache."""
    if decoder is None or decoder is llm:
        return False
    if not type(decoder).__module__.startswith("transformers.models."):
        return False  # remote code (Qwen-1) keeps its own past-key-value layout
    return llm_is_frozen(llm) and not grad_checkpointing_on(llm, decoder)


def forward_with_shared_prefix(decoder: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                               prefix_len: int) -> torch.Tensor:
    """Last hidden states of positions ``prefix_len:`` of every row (rows start with the same
    ``prefix_len`` embeddings): the prefix runs once, for row 0, without autograd."""
    from transformers import DynamicCache

    batch, length = inputs_embeds.shape[:2]
    if not 0 < prefix_len < length:
        raise ValueError(f"prefix_len must be in [1, {length - 1}], got {prefix_len}")
    with torch.no_grad():
        out = decoder(inputs_embeds=inputs_embeds[:1, :prefix_len].detach(), use_cache=True)
    past = out.cache if "cache" in out else out.past_key_values
    layers = getattr(past, "layers", None)
    if layers is None:
        raise TypeError(f"{type(decoder).__name__} returned no transformers Cache ({type(past).__name__}); "
                        "set model.share_prefix: False")
    shared = [(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1)) for layer in layers]
    cache = DynamicCache(ddp_cache_data=shared, config=getattr(decoder, "config", None))
    positions = torch.arange(prefix_len, length, device=inputs_embeds.device).expand(batch, -1)
    return decoder(inputs_embeds=inputs_embeds[:, prefix_len:], attention_mask=attention_mask,
                   position_ids=positions, use_cache=True, **{_cache_kwarg(type(decoder)): cache}).last_hidden_state
