"""Scheduler values at chosen steps against hand-computed numbers."""
import math

import pytest
import torch

import lavis_lite  # noqa: F401
from lavis_lite.common.registry import registry


def _opt(scales=(1.0,)):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": s} for s in scales]
    return torch.optim.SGD(groups, lr=0.0)


def test_cosine_with_warmup_hand_values():
    opt = _opt()
    sched = registry.get_lr_scheduler_class("linear_warmup_cosine_lr")(
        opt, max_epoch=2, iters_per_epoch=10, init_lr=1e-3, min_lr=1e-5, warmup_start_lr=1e-6, warmup_steps=4)
    # warm-up: linear from 1e-6 to 1e-3 over 4 optimizer steps
    assert sched.step(0, 0) == pytest.approx(1e-6)
    assert sched.step(0, 2) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 2 / 4)
    # after warm-up: cosine over the remaining 16 steps
    assert sched.step(0, 4) == pytest.approx(1e-3)
    expected = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 8 / 16))
    assert sched.step(1, 2) == pytest.approx(expected)  # global step 12
    assert opt.param_groups[0]["lr"] == pytest.approx(expected)
    assert sched.step(1, 9) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 15 / 16)))


def test_step_lr_and_lr_scale():
    opt = _opt(scales=(1.0, 0.5))
    sched = registry.get_lr_scheduler_class("linear_warmup_step_lr")(
        opt, max_epoch=5, iters_per_epoch=10, init_lr=0.1, min_lr=0.02, decay_rate=0.5, warmup_steps=0)
    assert sched.step(0, 3) == pytest.approx(0.1)
    assert sched.step(1, 0) == pytest.approx(0.05)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.025)
    assert sched.step(3, 0) == pytest.approx(0.02)  # 0.0125 clipped at min_lr


def test_constant_with_warmup_counts_optimizer_steps():
    opt = _opt()
    sched = registry.get_lr_scheduler_class("constant_lr")(
        opt, max_epoch=1, iters_per_epoch=100, init_lr=2e-4, warmup_steps=10, warmup_start_lr=0.0)
    assert sched.step(0, 5) == pytest.approx(1e-4)
    assert sched.step(0, 10) == pytest.approx(2e-4)
    assert sched.step(0, 99) == pytest.approx(2e-4)
    state = sched.state_dict()
    other = registry.get_lr_scheduler_class("constant_lr")(opt, init_lr=2e-4)
    other.load_state_dict(state)
    assert other.last_lr == pytest.approx(2e-4)
