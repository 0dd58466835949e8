"""Length-grouped sampling: batches of similar length, so padding to the longest sample wastes little.

Like transformers' ``LengthGroupedSampler``: shuffle all indices, cut them into "mega-batches" of
``batch_size * world_size * mega_batch_mult`` samples, sort each mega-batch by length (longest first)
and cut it into batches. Every rank computes the same global order from ``seed + epoch`` and takes its
own share of every global batch, so ranks see disjoint samples of similar length at each step.
The batches are then shuffled so that length does not trend through the epoch (the first batch stays
the longest one, so an out-of-memory shows up at step 0 rather than hours later).
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler

from lavis_lite.common.dist_utils import get_rank, get_world_size


def _record_text(rec: dict):
    """(characters of text, number of turns) of an instruction / caption / VQA record, or None."""
    if "conversations" in rec:
        turns = rec["conversations"]
        return sum(len(t.get("value", "")) for t in turns), len(turns)
    parts = []
    for key in ("caption", "text_input", "question", "answer", "answers", "instruction", "output"):
        value = rec.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value[:1] if isinstance(v, str))  # one caption / answer is what trains
    return (sum(len(p) for p in parts), max(1, len(parts))) if parts else None


def estimate_lengths(annotation: list[dict], num_query_token: int = 32, chars_per_token: float = 4.0,
                     per_turn_overhead: int = 5) -> list[int]:
    """Cheap token-length estimate of records (no tokenizer needed).

    Text characters (``conversations`` turns, or caption / question / answer fields) / ``chars_per_token``
    + a ChatML header per turn + ``num_query_token`` per image (``images`` list or ``image`` path).
    """
    lengths = []
    for i, rec in enumerate(annotation):
        text = _record_text(rec)
        if text is None:
            raise KeyError(f"record {i} has no 'conversations', caption or question/answer text; "
                           "cannot estimate its length")
        chars, turns = text
        images = rec.get("images", rec.get("image"))
        n_images = len(images) if isinstance(images, list) else int(images is not None)
        lengths.append(max(1, math.ceil(chars / chars_per_token) + per_turn_overhead * turns
                           + num_query_token * n_images))
    return lengths


class LengthGroupedSampler(Sampler[int]):
    def __init__(self, lengths: list[int], batch_size: int, num_replicas: int | None = None,
                 rank: int | None = None, shuffle: bool = True, seed: int = 0, mega_batch_mult: int = 50,
                 drop_last: bool = False):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not lengths:
            raise ValueError("LengthGroupedSampler needs at least one sample length")
        self.lengths = [int(n) for n in lengths]
        self.batch_size = int(batch_size)
        self.num_replicas = get_world_size() if num_replicas is None else int(num_replicas)
        self.rank = get_rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside 0..{self.num_replicas - 1}")
        self.shuffle, self.seed, self.mega_batch_mult, self.drop_last = shuffle, seed, mega_batch_mult, drop_last
        self.epoch = 0
        global_batch = self.batch_size * self.num_replicas
        n = len(self.lengths)
        self.num_global_batches = n // global_batch if drop_last else math.ceil(n / global_batch)
        self.num_samples = self.num_global_batches * self.batch_size  # per rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def global_batches(self) -> list[list[int]]:
        """The global batches of this epoch (identical on every rank), longest first."""
        n = len(self.lengths)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        global_batch = self.batch_size * self.num_replicas
        total = self.num_global_batches * global_batch
        while len(order) < total:  # pad by repeating from the start, as DistributedSampler does
            order += order[: total - len(order)]
        order = order[:total]
        mega = global_batch * self.mega_batch_mult
        grouped = []
        for s in range(0, total, mega):
            grouped += sorted(order[s:s + mega], key=lambda i: -self.lengths[i])
        batches = [grouped[s:s + global_batch] for s in range(0, total, global_batch)]
        if self.shuffle and len(batches) > 1:
            longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
            rest = [b for k, b in enumerate(batches) if k != longest]
            perm = torch.randperm(len(rest), generator=g).tolist()
            batches = [batches[longest]] + [rest[k] for k in perm]
        return batches

    def __iter__(self):
        for batch in self.global_batches():
            # strided share: every rank gets a similar spread of lengths from this global batch
            yield from batch[self.rank::self.num_replicas]
