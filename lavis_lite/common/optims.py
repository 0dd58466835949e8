"""Learning-rate schedulers driven by ``step(cur_epoch, cur_step)`` as in LAVIS.

``cur_step`` counts optimizer steps (not micro-batches) within the epoch; for
iteration-based training pass ``cur_epoch=0`` and the global optimizer step.
Warm-up is counted in optimizer steps over the whole run.
"""
from __future__ import annotations

import math

from lavis_lite.common.registry import registry


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class _Scheduler:
    def __init__(self, optimizer, max_epoch: int = 1, iters_per_epoch: int = 1, init_lr: float = 1e-4,
                 min_lr: float = 0.0, warmup_start_lr: float = -1, warmup_steps: int = 0, **kwargs):
        self.optimizer = optimizer
        self.max_epoch = max(int(max_epoch), 1)
        self.iters_per_epoch = max(int(iters_per_epoch), 1)
        self.init_lr = float(init_lr)
        self.min_lr = float(min_lr)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_lr = float(warmup_start_lr) if warmup_start_lr >= 0 else self.init_lr
        self.last_lr = self.warmup_start_lr if self.warmup_steps > 0 else self.init_lr

    def global_step(self, cur_epoch: int, cur_step: int) -> int:
        return cur_epoch * self.iters_per_epoch + cur_step

    def lr_at(self, cur_epoch: int, cur_step: int) -> float:
        step = self.global_step(cur_epoch, cur_step)
        if step < self.warmup_steps:
            return warmup_lr(step, self.warmup_steps, self.warmup_start_lr, self.init_lr)
        return self.decayed_lr(cur_epoch, cur_step)

    def decayed_lr(self, cur_epoch: int, cur_step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, cur_epoch: int, cur_step: int) -> float:
        self.last_lr = self.lr_at(cur_epoch, cur_step)
        _set_lr(self.optimizer, self.last_lr)
        return self.last_lr

    def state_dict(self) -> dict:
        return {"last_lr": self.last_lr}

    def load_state_dict(self, state: dict) -> None:
        self.last_lr = state["last_lr"]


def warmup_lr(step: int, warmup_steps: int, start_lr: float, target_lr: float) -> float:
    """Linear from ``start_lr`` at step 0 to ``target_lr`` at step ``warmup_steps``."""
    return start_lr + (target_lr - start_lr) * step / max(warmup_steps, 1)


@registry.register_lr_scheduler("linear_warmup_cosine_lr")
class LinearWarmupCosineLRScheduler(_Scheduler):
    """Cosine decay from init_lr to min_lr over the steps after warm-up."""

    def decayed_lr(self, cur_epoch: int, cur_step: int) -> float:
        total = self.max_epoch * self.iters_per_epoch - self.warmup_steps
        progress = (self.global_step(cur_epoch, cur_step) - self.warmup_steps) / max(total, 1)
        progress = min(max(progress, 0.0), 1.0)
        return self.min_lr + 0.5 * (self.init_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


@registry.register_lr_scheduler("linear_warmup_step_lr")
class LinearWarmupStepLRScheduler(_Scheduler):
    """lr = max(min_lr, init_lr * decay_rate ** epoch) after warm-up."""

    def __init__(self, optimizer, decay_rate: float = 0.9, **kwargs):
        super().__init__(optimizer, **kwargs)
        self.decay_rate = float(decay_rate)

    def decayed_lr(self, cur_epoch: int, cur_step: int) -> float:
        return max(self.min_lr, self.init_lr * self.decay_rate ** cur_epoch)


@registry.register_lr_scheduler("constant_lr")
class ConstantLRScheduler(_Scheduler):
    """init_lr after an optional linear warm-up."""

    def decayed_lr(self, cur_epoch: int, cur_step: int) -> float:
        return self.init_lr
