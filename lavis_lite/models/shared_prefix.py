"""Shared-prefix forward: the tokens every row of a batch starts with run once, for one row.

Every ChatML training sample starts with the same tokens: the system block and the first user
header (``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n``, ~20
tokens), before its first image. Those positions' keys and values are the same for every row (causal
attention: a position sees only what comes before it). So they are computed once per batch, for row 0,
and the batch runs only the rest of each sequence on top of them as a KV cache (expanded over the
rows, no copy), with position ids continuing from the prefix.

* Frozen LLM (MiniGPT4-Qwen's recipe: only ``llm_proj`` trains): the prefix needs no gradient and
  runs without autograd.
* LLM that trains (full finetuning, LoRA): the prefix runs with autograd. Its keys and values reach
  every row through ``expand``, whose backward sums the rows' gradients, so every parameter gets the
  gradient of the unshared forward: the prefix's outputs are never scored (the prefix ends before the
  first supervised target), they act only through those keys and values.

Same loss and gradients up to float rounding (tests/test_shared_prefix.py, frozen;
tests/test_shared_prefix_trained.py, full and LoRA). ~15% fewer LLM positions at ~130 tokens per
sample, ~30% in the CPU demo (~68).

Not used (the caller checks :func:`can_share_prefix`) with LLM gradient checkpointing (transformers
turns the KV cache off there), while dropout is active in the LLM (training mode and a dropout
probability > 0, LoRA's included: each row would draw its own mask over the prefix, the shared
prefix one mask for all), with packing (rows hold several conversations), for remote-code models
(their own past-key-value layout), or when the batch's rows do not start alike.
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


# Config fields transformers' decoders read as functional dropout probabilities (not nn.Dropout modules).
_DROPOUT_CONFIG_KEYS = ("attention_dropout", "hidden_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop", "dropout")


def dropout_active(decoder: nn.Module) -> bool:
    """True when a forward of ``decoder`` would draw a random mask: an ``nn.Dropout`` (LoRA's included)
    in training mode with p > 0, or, in training mode, a dropout probability > 0 in its config."""
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0 for m in decoder.modules()):
        return True
    cfg = getattr(decoder, "config", None)
    return decoder.training and any(float(getattr(cfg, key, 0.0) or 0.0) > 0 for key in _DROPOUT_CONFIG_KEYS)


def share_prefix_refusal(llm: nn.Module, decoder: nn.Module | None) -> str | None:
    """Why the prefix cannot be shared for this LLM now (None: it can)."""
    if decoder is None or decoder is llm:
        return "no separate decoder (get_decoder)"
    if not type(decoder).__module__.startswith("transformers.models."):
        return "not a transformers model"  # remote code (Qwen-1) keeps its own past-key-value layout
    if grad_checkpointing_on(llm, decoder):
        return "LLM gradient checkpointing is on"
    if dropout_active(decoder):
        return "dropout is active in the LLM"
    return None


def can_share_prefix(llm: nn.Module, decoder: nn.Module | None) -> bool:
    """The LLM qualifies: a separate transformers decoder returning a KV cache, no gradient
    checkpointing, no active dropout. Frozen or trained (see the module docstring)."""
    return share_prefix_refusal(llm, decoder) is None


def forward_with_shared_prefix(decoder: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                               prefix_len: int) -> torch.Tensor:
    """Last hidden states of positions ``prefix_len:`` of every row (rows start with the same
    ``prefix_len`` embeddings): the prefix runs once, for row 0; with autograd only when a decoder
    weight trains (the expanded keys and values then carry every row's gradient back to it)."""
    from transformers import DynamicCache

    batch, length = inputs_embeds.shape[:2]
    if not 0 < prefix_len < length:
        raise ValueError(f"prefix_len must be in [1, {length - 1}], got {prefix_len}")
    trains = torch.is_grad_enabled() and any(p.requires_grad for p in decoder.parameters())
    prefix = inputs_embeds[:1, :prefix_len]
    with torch.set_grad_enabled(trains):
        out = decoder(inputs_embeds=prefix if trains else prefix.detach(), use_cache=True)
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
