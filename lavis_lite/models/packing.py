"""Multimodal sequence packing: several conversations per row, none attending to another.

The model turns each conversation into one sequence of input embeddings (its images' projected
query tokens already spliced in at their ``<ImageHere>`` places) plus labels. Packing puts several
of those sequences into one row of at most ``max_len`` tokens so that fewer padding tokens are
computed. Correctness needs three things, all done here:

* each conversation's position ids restart at 0 (rotary embeddings see the same positions as unpacked);
* attention is block-diagonal causal: a token sees only earlier tokens of its own conversation;
* the first label of every conversation is ignored, so the last token of one conversation is never
  trained to predict the first token of the next (unpacked, that target does not exist either).

Images stay matched to their conversation because they are spliced in before packing.
With these, the mean loss over supervised tokens of a packed batch equals the unpacked one
(``tests/test_packing.py`` checks it on a Qwen2 model).

Two ways to express the block-diagonal mask to a transformers model:
``attention="mask"`` builds an explicit 4-D boolean mask [rows, 1, L, L] (True = may attend), which
transformers passes unchanged to SDPA / eager attention; ``attention="position_ids"`` gives no mask and
lets transformers derive the same mask from the restarting position ids (its packed-sequence detection,
which flash-attention varlen also uses).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

IGNORE_INDEX = -100
ATTENTION_MODES = ("mask", "position_ids")


@dataclass
class PackedBatch:
    inputs_embeds: torch.Tensor          # [rows, L, D]
    labels: torch.Tensor                 # [rows, L], IGNORE_INDEX on padding and segment starts
    position_ids: torch.Tensor           # [rows, L], restart at 0 for every conversation
    segment_ids: torch.Tensor            # [rows, L], 0.. per conversation in a row, -1 on padding
    attention_mask: torch.Tensor | None  # [rows, 1, L, L] bool, or None with attention="position_ids"
    rows: list[list[int]] = field(default_factory=list)  # sample indices held by each row, in order

    def model_kwargs(self) -> dict:
        """Keyword arguments for a transformers causal LM (``model(**kwargs, labels=...)``).

        ``use_cache=False``: transformers only derives the packed mask from position ids when no
        KV cache is in play, and training never needs one.
        """
        return {"inputs_embeds": self.inputs_embeds, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids, "use_cache": False}


def plan_rows(lengths: list[int], max_len: int, sort: bool = True) -> list[list[int]]:
    """Group sample indices into rows whose total length fits ``max_len``.

    First-fit decreasing when ``sort`` (fewest rows in practice), otherwise first-fit in the given
    order. A sample longer than ``max_len`` is an error: it should have been truncated by preprocess.
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    for i, n in enumerate(lengths):
        if n <= 0:
            raise ValueError(f"sample {i} has length {n}; every packed sample needs at least one token")
        if n > max_len:
            raise ValueError(f"sample {i} has {n} tokens, more than the packing length {max_len}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if sort else list(range(len(lengths)))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(max_len - lengths[i])
    for row in rows:  # keep the original sample order inside a row: easier to read and debug
        row.sort()
    return rows


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[rows, L] segment ids (-1 = padding) -> [rows, 1, L, L] bool mask, True where query may attend key.

    Padding tokens attend causally among themselves only, so no query row is fully masked
    (a fully masked row makes SDPA return NaN, which would poison gradients even if ignored by the loss).
    """
    length = segment_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril_()
    same = segment_ids.unsqueeze(-1) == segment_ids.unsqueeze(-2)
    return (same & causal).unsqueeze(1)


def additive_mask(bool_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask (True = attend) -> additive float mask (0 / most negative), for eager attention."""
    zero = torch.zeros((), dtype=dtype, device=bool_mask.device)
    return torch.where(bool_mask, zero, torch.finfo(dtype).min)


def pack_sequences(embeds: list[torch.Tensor], labels: list[torch.Tensor], max_len: int,
                   rows: list[list[int]] | None = None, attention: str = "mask",
                   pad_to_multiple_of: int = 1, attn_implementation: str = "sdpa") -> PackedBatch:
    """Pack per-sample ``embeds`` ([L_i, D]) and ``labels`` ([L_i]) into rows of at most ``max_len``.

    Rows are padded to the longest row (rounded up to ``pad_to_multiple_of``), not to ``max_len``.
    ``rows`` may be given (from :func:`plan_rows`); otherwise it is planned here.
    With ``attention="mask"`` the mask is boolean for SDPA and additive (in the embeddings' dtype)
    for ``attn_implementation="eager"``, which adds the mask to its scores.
    """
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    if len(embeds) != len(labels):
        raise ValueError(f"{len(embeds)} embedding sequences but {len(labels)} label sequences")
    if not embeds:
        raise ValueError("nothing to pack: no samples")
    lengths = []
    for i, (e, l) in enumerate(zip(embeds, labels)):
        if e.ndim != 2 or l.ndim != 1 or e.shape[0] != l.shape[0]:
            raise ValueError(f"sample {i}: embeds {tuple(e.shape)} and labels {tuple(l.shape)} do not match "
                             "(expected [L, D] and [L])")
        lengths.append(int(l.shape[0]))
    if rows is None:
        rows = plan_rows(lengths, max_len)
    else:
        seen = sorted(i for row in rows for i in row)
        if seen != list(range(len(embeds))):
            raise ValueError(f"rows {rows} must hold every sample index 0..{len(embeds) - 1} exactly once")
        for row in rows:
            if sum(lengths[i] for i in row) > max_len:
                raise ValueError(f"row {row} holds {sum(lengths[i] for i in row)} tokens > max_len {max_len}")

    row_len = max(sum(lengths[i] for i in row) for row in rows)
    row_len = -(-row_len // pad_to_multiple_of) * pad_to_multiple_of
    n_rows, dim = len(rows), embeds[0].shape[1]
    ref = embeds[0]
    out_embeds = ref.new_zeros(n_rows, row_len, dim)
    out_labels = torch.full((n_rows, row_len), IGNORE_INDEX, dtype=torch.long, device=ref.device)
    positions = torch.zeros(n_rows, row_len, dtype=torch.long, device=ref.device)
    segments = torch.full((n_rows, row_len), -1, dtype=torch.long, device=ref.device)
    for r, row in enumerate(rows):
        start = 0
        for seg, i in enumerate(row):
            n = lengths[i]
            out_embeds[r, start:start + n] = embeds[i]
            out_labels[r, start:start + n] = labels[i]
            out_labels[r, start] = IGNORE_INDEX  # never a target across a conversation boundary
            positions[r, start:start + n] = torch.arange(n, device=ref.device)
            segments[r, start:start + n] = seg
            start += n
        # Padding continues as its own run of positions from 0, so position-id based detection
        # sees it as one more (ignored) sequence instead of a continuation of the last conversation.
        positions[r, start:] = torch.arange(row_len - start, device=ref.device)
    mask = None
    if attention == "mask":
        mask = block_causal_mask(segments)
        if attn_implementation == "eager":
            mask = additive_mask(mask, ref.dtype)
    return PackedBatch(out_embeds, out_labels, positions, segments, mask, [list(r) for r in rows])


def pad_sequences(embeds: list[torch.Tensor], labels: list[torch.Tensor], pad_to: int | None = None,
                  pad_to_multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample per row, right-padded to the longest sample (or to ``pad_to``).

    Returns (inputs_embeds [B, L, D], labels [B, L], attention_mask [B, L] built from lengths).
    """
    lengths = [int(l.shape[0]) for l in labels]
    longest = max(lengths)
    if pad_to is not None:
        if pad_to < longest:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest sample ({longest} tokens)")
        longest = pad_to
    longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    ref = embeds[0]
    out = ref.new_zeros(len(embeds), longest, ref.shape[1])
    out_labels = torch.full((len(embeds), longest), IGNORE_INDEX, dtype=torch.long, device=ref.device)
    mask = torch.zeros(len(embeds), longest, dtype=torch.long, device=ref.device)
    for i, (e, l) in enumerate(zip(embeds, labels)):
        out[i, :lengths[i]] = e
        out_labels[i, :lengths[i]] = l
        mask[i, :lengths[i]] = 1
    return out, out_labels, mask


def padding_stats(lengths: list[int], max_len: int) -> dict:
    """Tokens computed per mode for a batch of sample lengths: how much each option saves."""
    rows = plan_rows(lengths, max_len)
    return {"real_tokens": sum(lengths),
            "pad_to_max": len(lengths) * max_len,
            "pad_to_longest": len(lengths) * max(lengths),
            "packed": len(rows) * max(sum(lengths[i] for i in r) for r in rows),
            "packed_rows": len(rows)}


def arrange_batch(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                  lengths: list[int], max_len: int, packing: bool = False, pad_to_max: bool = False,
                  attn_implementation: str = "sdpa") -> dict:
    """Lay out a right-padded batch (padded to its longest sample) for the LLM.

    * default: unchanged (padding to the longest sample);
    * ``pad_to_max``: right-pad to ``max_len`` (the published recipe; same loss, more compute);
    * ``packing``: several samples per row (see :func:`pack_sequences`).
    Returns {"inputs_embeds", "attention_mask", "labels", "position_ids"} for the model's LLM call.
    """
    if packing and pad_to_max:
        raise ValueError("packing and pad_to_max_txt_len exclude each other; switch one off")
    if packing:
        embeds = [inputs_embeds[i, :n] for i, n in enumerate(lengths)]
        labs = [labels[i, :n] for i, n in enumerate(lengths)]
        # flash-attention takes no 4-D mask: it reads the restarting position ids (varlen) instead
        attention = "position_ids" if str(attn_implementation).startswith("flash") else "mask"
        packed = pack_sequences(embeds, labs, max_len, attention=attention, attn_implementation=attn_implementation)
        return {"inputs_embeds": packed.inputs_embeds, "attention_mask": packed.attention_mask,
                "labels": packed.labels, "position_ids": packed.position_ids}
    if pad_to_max and inputs_embeds.shape[1] < max_len:
        extra = max_len - inputs_embeds.shape[1]
        inputs_embeds = torch.nn.functional.pad(inputs_embeds, (0, 0, 0, extra))
        attention_mask = torch.nn.functional.pad(attention_mask, (0, extra), value=0)
        labels = torch.nn.functional.pad(labels, (0, extra), value=IGNORE_INDEX)
    return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask, "labels": labels, "position_ids": None}
