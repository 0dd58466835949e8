"""run.batch_group_key: records that share a group key land in one training batch (datasets/group_sampler.py)."""
import random
from collections import Counter

import pytest
import torch

from lavis_lite.datasets.group_sampler import GroupedBatchSampler, groups_of
from lavis_lite.runners.data import BatchSource


def _keys(n_groups=10, size=4, n_single=90, seed=0):
    keys = [f"g{g}" for g in range(n_groups) for _ in range(size)] + [None] * n_single
    random.Random(seed).shuffle(keys)
    return keys


def test_groups_of_keeps_first_seen_order_and_singletons():
    assert groups_of(["a", None, "b", "a", None]) == [[0, 3], [1], [2], [4]]


@pytest.mark.parametrize("world", [1, 2])
def test_every_group_shares_one_batch_on_one_rank(world):
    keys = _keys()
    bs = 16
    per_epoch = []
    for epoch in range(3):
        samplers = [GroupedBatchSampler(keys, bs, world, r, seed=5) for r in range(world)]
        for s in samplers:
            s.set_epoch(epoch)
        order = [list(s) for s in samplers]
        assert all(len(o) == len(samplers[0]) == len(keys) // (bs * world) * bs for o in order)
        seen = []
        for r, o in enumerate(order):
            batches = [o[i:i + bs] for i in range(0, len(o), bs)]
            for b in batches:
                assert len(set(b)) == bs
                for key, n in Counter(keys[i] for i in b if keys[i] is not None).items():
                    assert n == 4, f"group {key} split over batches (epoch {epoch}, rank {r})"
            seen += o
        assert len(seen) == len(set(seen))  # ranks take disjoint records
        per_epoch.append(seen)
    assert per_epoch[0] != per_epoch[1]  # a new order every epoch
    # groups are spread: no batch holds more than its share + 1 groups
    o = list(GroupedBatchSampler(keys, bs, 1, 0, seed=5))
    n_groups = [len({keys[i] for i in o[s:s + bs] if keys[i] is not None}) for s in range(0, len(o), bs)]
    assert max(n_groups) - min(n_groups) <= 1


def test_same_seed_same_order_and_all_groups_seen():
    keys = _keys()
    a, b = GroupedBatchSampler(keys, 16, seed=1), GroupedBatchSampler(keys, 16, seed=1)
    assert list(a) == list(b)
    assert {keys[i] for i in a} >= {f"g{g}" for g in range(10)}


def test_only_groups_still_fill_every_batch():
    keys = [f"g{i // 3}" for i in range(30)]  # 10 groups of 3, batch 8: groups must split to fill
    sampler = GroupedBatchSampler(keys, 8, 1, 0)
    order = list(sampler)
    assert len(order) == 24 and len(set(order)) == 24
    assert sampler.split_groups == 4  # 3 batches x 2 whole groups: the other 4 groups are counted as split
    roomy = GroupedBatchSampler(_keys(), 16, seed=1)
    assert list(roomy) and roomy.split_groups == 0


def test_bad_groups_are_errors():
    with pytest.raises(ValueError, match="group of record 0 .* 5 records"):
        GroupedBatchSampler(["a"] * 5 + [None] * 10, 4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GroupedBatchSampler([None] * 3, 4)


def test_batch_source_uses_groups():
    keys = _keys()
    data = torch.arange(len(keys))
    src = BatchSource(torch.utils.data.TensorDataset(data), batch_size=16, groups=keys)
    for _ in range(len(src)):
        (batch,) = src.next_batch()
        counts = Counter(keys[i] for i in batch.tolist() if keys[i] is not None)
        assert set(counts.values()) <= {4}
    with pytest.raises(ValueError, match="cannot both"):
        BatchSource(torch.utils.data.TensorDataset(data), batch_size=16, groups=keys, lengths=[1] * len(keys))


def test_runner_reads_the_group_key_of_every_record():
    from types import SimpleNamespace

    from lavis_lite.runners.runner_base import RunnerBase
    ds = SimpleNamespace(annotation=[{"batch_group": "a"}, {}, {"batch_group": "a"}])
    runner = SimpleNamespace(run_cfg={"batch_group_key": "batch_group"})
    assert RunnerBase._batch_groups(runner, ds) == ["a", None, "a"]
    assert RunnerBase._batch_groups(SimpleNamespace(run_cfg={}), ds) is None
    with pytest.raises(ValueError, match="no training record .* has that field"):
        RunnerBase._batch_groups(SimpleNamespace(run_cfg={"batch_group_key": "group"}), ds)
    with pytest.raises(ValueError, match="needs a dataset with records"):
        RunnerBase._batch_groups(runner, object())
