"""Steppers: how one optimizer step is taken from a window of micro-batches.

Weighting (``micro_batch_weight``): the model returns a per-micro-batch mean loss ``l_i``. Its
weight ``n_i`` is, in this order,
  1. the supervised tokens of the batch's ``labels`` (``(labels != -100).sum()``), when the batch has them;
  2. the ``n_tokens`` the model returned next to the loss (optional refinement of LAVIS's contract);
  3. 1: micro-batches weigh equally, as in LAVIS, for a model that returns only ``{"loss"}``.
The step's objective is ``sum_i l_i n_i / N`` with ``N`` the sum of the weights of the whole window
on all ranks, so with token weights accumulating 2 x B equals one batch of 2B and ranks with more
tokens count more. ``Stepper`` backpropagates ``l_i n_i`` and rescales the gradients once ``N``
is known (all-reduced) just before clipping; the logged loss is the true mean ``sum l_i n_i / N``.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from lavis_lite.common import dist_utils
from lavis_lite.tasks.base_task import move_to_device
from lavis_lite.tasks.step_output import BATCHES, TOKENS, micro_batch_weight, split_train_output  # noqa: F401


def _as_tensor(n_tokens, device) -> torch.Tensor:
    if isinstance(n_tokens, torch.Tensor):
        return n_tokens.detach().to(device=device, dtype=torch.float64).reshape(())
    return torch.tensor(float(n_tokens), dtype=torch.float64, device=device)


def window_totals(loss_sum: torch.Tensor, n_tokens: torch.Tensor) -> tuple[float, float]:
    """(loss_sum, n_tokens) summed over ranks."""
    t = torch.stack([loss_sum.double().cpu(), n_tokens.double().cpu()])
    if dist_utils.is_dist_avail_and_initialized():
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = t.to(backend_device)
        dist.all_reduce(t)
    return float(t[0]), float(t[1])


class Stepper:
    """Plain or DDP-wrapped model, torch optimizer, optional fp16 GradScaler."""

    def __init__(self, model, optimizer, scheduler, accum_grad_iters=1, max_grad_norm=None, scaler=None,
                 amp_dtype=None, device="cpu"):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.accum_grad_iters = max(int(accum_grad_iters), 1)
        self.max_grad_norm = float(max_grad_norm) if max_grad_norm else None
        self.scaler, self.amp_dtype, self.device = scaler, amp_dtype, torch.device(device)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.is_ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        self._reset_window()

    def _reset_window(self):
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.n_tokens = torch.zeros((), dtype=torch.float64)
        self.weight_kind = None

    def _note_kind(self, kind: str) -> None:
        """One window must weigh all its micro-batches the same way (tokens, or equally)."""
        if kind is None:
            return
        if self.weight_kind not in (None, kind):
            raise ValueError(f"a window mixes micro-batches weighted by {self.weight_kind} and by {kind}: "
                             "the model must return 'n_tokens' for every batch or for none")
        self.weight_kind = kind

    # ---- what the task's loop calls --------------------------------------------
    def prepare(self, samples):
        return move_to_device(samples, self.device)

    @contextlib.contextmanager
    def micro_batch(self, last: bool):
        sync = contextlib.nullcontext()
        if not last and self.is_ddp:
            sync = self.model.no_sync()  # DDP: all-reduce only on the window's last backward
        with sync, self.autocast():
            yield

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def begin_window(self, window, epoch: int, step: int) -> None:
        self._reset_window()
        self.scheduler.step(cur_epoch=epoch, cur_step=step)

    def backward(self, loss: torch.Tensor, n_tokens, kind: str | None = None) -> None:
        """``n_tokens``: the micro-batch's weight (see ``micro_batch_weight``; 1 = equal weighting)."""
        self._note_kind(kind)
        n = _as_tensor(n_tokens, loss.device)
        # A micro-batch without supervised tokens may report a NaN mean; it still joins the graph (DDP).
        weighted = torch.nan_to_num(loss.float()) * n.float() if float(n) > 0 else loss.float() * 0.0
        self.loss_sum += weighted.detach().double().cpu()
        self.n_tokens += n.cpu()
        self._backward(weighted)

    def _backward(self, weighted_loss: torch.Tensor) -> None:
        (self.scaler.scale(weighted_loss) if self.scaler is not None else weighted_loss).backward()

    def step(self) -> dict:
        loss_sum, n_tokens = window_totals(self.loss_sum, self.n_tokens)
        stats = {"loss": loss_sum / n_tokens if n_tokens > 0 else 0.0, "lr": self.lr}
        if self.weight_kind != BATCHES:
            stats["n_tokens"] = n_tokens
        if n_tokens == 0:  # nothing supervised in the window: no update
            self.optimizer.zero_grad(set_to_none=True)
            return stats
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # DDP averaged the per-rank gradients of sum(l_i n_i): undo the mean, divide by all tokens.
        factor = (dist_utils.get_world_size() if self.is_ddp else 1.0) / n_tokens
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, factor)
        if self.max_grad_norm:
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats

    @property
    def lr(self) -> float:
        groups = self.optimizer.param_groups
        return float(groups[0]["lr"] / groups[0].get("lr_scale", 1.0))
