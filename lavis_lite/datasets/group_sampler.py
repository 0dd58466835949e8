"""Group-keeping batches: records that share a group key land in the same training batch.

Contrastive objectives (BLIP-2's ITC) learn only the differences their in-batch negatives show. A
random batch rarely holds two images that differ in one detail alone (the same shape at another
position), so that detail is barely learnt. A data set can mark such contrast sets with a group key
(``run.batch_group_key`` names the record field); this sampler then keeps every group inside one
batch: each epoch it shuffles the groups, spreads them over the batches (a group never straddles two)
and fills the remaining places with the ungrouped records. Records without the key are singletons.

As the other samplers, every rank computes the same global batches from ``seed + epoch`` and takes
its own contiguous slice of each global batch (so a group stays on one rank when it fits one).
``drop_last`` semantics: an epoch has ``len(records) // global_batch`` batches; the records that do not
fit change from epoch to epoch.
"""
from __future__ import annotations

import logging

import torch
from torch.utils.data import Sampler

from lavis_lite.common.dist_utils import get_rank, get_world_size

logger = logging.getLogger(__name__)


def groups_of(keys: list) -> list[list[int]]:
    """Indices grouped by key, in first-seen order; ``None`` keys are singletons."""
    groups: dict = {}
    out: list[list[int]] = []
    for i, key in enumerate(keys):
        if key is None:
            out.append([i])
        elif key in groups:
            groups[key].append(i)
        else:
            groups[key] = [i]
            out.append(groups[key])
    return out


class GroupedBatchSampler(Sampler[int]):
    def __init__(self, keys: list, batch_size: int, num_replicas: int | None = None, rank: int | None = None,
                 seed: int = 0):
        self.num_replicas = get_world_size() if num_replicas is None else int(num_replicas)
        self.rank = get_rank() if rank is None else int(rank)
        self.batch_size, self.seed, self.epoch = int(batch_size), int(seed), 0
        self.split_groups = 0  # groups that fit no batch whole in the last epoch drawn (rank_batches)
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.groups = groups_of(list(keys))
        largest = max((len(g) for g in self.groups), default=0)
        if largest > self.batch_size:
            big = next(g for g in self.groups if len(g) == largest)
            raise ValueError(f"batch group of record {big[0]} ({keys[big[0]]!r}) has {largest} records, more than "
                             f"one batch of {self.batch_size} per rank can hold")
        self.num_global_batches = len(keys) // (self.batch_size * self.num_replicas)
        if self.num_global_batches == 0:
            raise ValueError(f"{len(keys)} records are fewer than one global batch of "
                             f"{self.batch_size} x {self.num_replicas} ranks")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_global_batches * self.batch_size

    def rank_batches(self) -> list[list[list[int]]]:
        """``[global batch][rank] -> indices`` of this epoch (identical on every rank)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = [self.groups[k] for k in torch.randperm(len(self.groups), generator=g).tolist()]
        n_slots = self.num_global_batches * self.num_replicas
        slots: list[list[int]] = [[] for _ in range(n_slots)]
        multi = [grp for grp in order if len(grp) > 1]
        singles = [grp[0] for grp in order if len(grp) == 1]
        # Groups first, dealt round-robin over the slots (each slot gets an even share), skipping a slot
        # the group does not fit; a group that fits nowhere waits.
        s, waiting, n_waiting = 0, [], 0
        for grp in multi:
            for tried in range(n_slots):
                slot = slots[(s + tried) % n_slots]
                if len(slot) + len(grp) <= self.batch_size:
                    slot.extend(grp)
                    s = (s + tried + 1) % n_slots
                    break
            else:
                waiting.extend(grp)
                n_waiting += 1
        # The ungrouped records fill the rest; only when they run out do waiting groups' records (split).
        # Counted and logged: a split group is a contrast set the objective does not see whole.
        self.split_groups = n_waiting
        if self.split_groups:
            logger.warning("batch groups: %d of %d groups fit no batch whole in epoch %d (batch %d); their "
                           "records fill batches one by one", self.split_groups, len(multi), self.epoch,
                           self.batch_size)
        it = iter(singles + waiting)
        for slot in slots:
            slot.extend(next(it) for _ in range(self.batch_size - len(slot)))
        perm = torch.randperm(len(slots) // self.num_replicas, generator=g).tolist()
        return [[torch.tensor(slots[p * self.num_replicas + r])[torch.randperm(self.batch_size, generator=g)].tolist()
                 for r in range(self.num_replicas)] for p in perm]

    def __iter__(self):
        for global_batch in self.rank_batches():
            yield from global_batch[self.rank]
