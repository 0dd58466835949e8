"""Data loading for runners: deterministic, resumable training streams and evaluation loaders.

Every training batch comes from one dataset (its own collater). Several training datasets are
mixed batch by batch: with ``sample_ratio`` in their config in that proportion, otherwise in
proportion to their sizes (a concatenation in expectation). The order of a data epoch depends
only on (seed, epoch, rank), and the stream's position is a small state dict, so a resumed
run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler

from lavis_lite.common import dist_utils

logger = logging.getLogger(__name__)


class _SkipSampler(Sampler):
    """The first ``skip`` indices of ``sampler`` are dropped (resuming mid-epoch without loading them)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        for i, idx in enumerate(self.sampler):
            if i >= self.skip:
                yield idx

    def __len__(self):
        return max(len(self.sampler) - self.skip, 0)


def collate_fn_of(dataset):
    return getattr(dataset, "collater", None)


class BatchSource:
    """One training dataset as an endless batch stream with position ``(epoch, offset)``."""

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int = 0, seed: int = 42,
                 pin_memory: bool = False, name: str = "train", lengths: list[int] | None = None,
                 groups: list | None = None):
        self.dataset, self.batch_size, self.num_workers = dataset, int(batch_size), int(num_workers)
        self.lengths = lengths  # given: batches of similar length (run.length_grouped_sampler)
        self.groups = groups  # given: a group key per record, kept in one batch (run.batch_group_key)
        if lengths is not None and groups is not None:
            raise ValueError("run.length_grouped_sampler and run.batch_group_key cannot both order the batches")
        self.seed, self.pin_memory, self.name = int(seed), pin_memory, name
        self.iterable = isinstance(dataset, IterableDataset)
        self.epoch, self.offset, self._it = 0, 0, None
        if not self.iterable and len(self) == 0:
            raise ValueError(f"Training dataset {name!r} has {len(dataset)} samples: fewer than one batch of "
                             f"{self.batch_size} per rank x {dist_utils.get_world_size()} ranks")

    def __len__(self) -> int:
        """Batches per data epoch on this rank (map-style datasets)."""
        if self.iterable:
            raise TypeError(f"Dataset {self.name!r} is an IterableDataset: use iteration-based training (run.iters)")
        per_rank = len(self.dataset) // dist_utils.get_world_size()
        return per_rank // self.batch_size

    def _loader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed + 1000 * self.epoch + dist_utils.get_rank())
        kwargs = dict(batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory,
                      collate_fn=collate_fn_of(self.dataset), generator=gen, drop_last=True)
        if self.iterable:
            return DataLoader(self.dataset, **kwargs)
        if self.groups is not None:
            from lavis_lite.datasets.group_sampler import GroupedBatchSampler
            sampler = GroupedBatchSampler(self.groups, self.batch_size, dist_utils.get_world_size(),
                                          dist_utils.get_rank(), seed=self.seed)
        elif self.lengths is not None:
            from lavis_lite.datasets.samplers import LengthGroupedSampler
            sampler = LengthGroupedSampler(self.lengths, self.batch_size, dist_utils.get_world_size(),
                                           dist_utils.get_rank(), shuffle=True, seed=self.seed, drop_last=True)
        else:
            sampler = DistributedSampler(self.dataset, num_replicas=dist_utils.get_world_size(),
                                         rank=dist_utils.get_rank(), shuffle=True, seed=self.seed, drop_last=True)
        sampler.set_epoch(self.epoch)
        skip = self.offset * self.batch_size
        return DataLoader(self.dataset, sampler=_SkipSampler(sampler, skip) if skip else sampler, **kwargs)

    def set_position(self, epoch: int, offset: int = 0) -> None:
        self.epoch, self.offset, self._it = int(epoch), int(offset), None

    def next_batch(self):
        for _ in range(2):
            if self._it is None:
                self._it = iter(self._loader())
                if self.iterable and self.offset:  # no index to skip to: replay the stream
                    for _ in range(self.offset):
                        next(self._it)
            try:
                batch = next(self._it)
                self.offset += 1
                return batch
            except StopIteration:
                self.set_position(self.epoch + 1, 0)
        raise RuntimeError(f"Training dataset {self.name!r} yields no batch of size {self.batch_size}")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.set_position(state["epoch"], state["offset"])


class TrainStream:
    """Endless iterator over batches of one or more sources; ``len`` = batches per epoch."""

    def __init__(self, sources: list[BatchSource], ratios: list[float] | None = None, seed: int = 42):
        self.sources = sources
        if ratios is None:
            ratios = [len(s) if not s.iterable else 1 for s in sources]
        if len(ratios) != len(sources) or any(r <= 0 for r in ratios):
            raise ValueError(f"sample_ratio must be positive, one per training dataset; got {ratios}")
        self.weights = torch.tensor(ratios, dtype=torch.float64)
        self.seed = int(seed)
        self.chooser = torch.Generator()
        self.set_epoch(0)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __iter__(self):
        return self

    def __next__(self):
        if len(self.sources) == 1:
            return self.sources[0].next_batch()
        i = int(torch.multinomial(self.weights, 1, generator=self.chooser))
        return self.sources[i].next_batch()

    def set_epoch(self, epoch: int) -> None:
        """Restart every source at data epoch ``epoch`` (epoch-based training)."""
        for s in self.sources:
            s.set_position(epoch, 0)
        self.chooser.manual_seed(self.seed * 7919 + epoch + 1000 * dist_utils.get_rank())

    def state_dict(self) -> dict:
        return {"sources": [s.state_dict() for s in self.sources], "chooser": self.chooser.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if len(state["sources"]) != len(self.sources):
            raise ValueError(f"Checkpoint has {len(state['sources'])} training sources, run has {len(self.sources)}")
        for s, st in zip(self.sources, state["sources"]):
            s.load_state_dict(st)
        self.chooser.set_state(state["chooser"])


def build_eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False):
    """In-order loader; under DDP each rank takes every world_size-th sample (results merged later)."""
    kwargs = dict(batch_size=int(batch_size), num_workers=int(num_workers), pin_memory=pin_memory,
                  collate_fn=collate_fn_of(dataset), drop_last=False)
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, **kwargs)
    sampler = None
    if dist_utils.get_world_size() > 1:
        sampler = DistributedSampler(dataset, shuffle=False, drop_last=False)
    return DataLoader(dataset, sampler=sampler, shuffle=False, **kwargs)


def concat_eval_datasets(datasets: list[Dataset], split: str):
    """One dataset per evaluation split; several are concatenated when they share a collater."""
    if len(datasets) == 1:
        return datasets[0]
    kinds = {type(d).__name__ for d in datasets}
    if len(kinds) > 1:
        raise ValueError(f"Split {split!r} has datasets of different kinds {sorted(kinds)}; "
                         "evaluate them in separate runs")
    concat = torch.utils.data.ConcatDataset(datasets)
    concat.collater = collate_fn_of(datasets[0])
    return concat
