"""Frozen ``nn.Linear`` layers through oneDNN's matrix product on the CPU (model key ``cpu_onednn_linear``).

torch's fp32 ``F.linear`` on the CPU calls MKL's sgemm. On AMD processors MKL picks a slower code path
(measured on this project's AMD EPYC with AVX-512: ~110 GFLOP/s per core) while oneDNN (bundled with
torch, the library behind its CPU convolutions) runs the same products at ~230 GFLOP/s. With the ViT,
the Q-Former and the LLM frozen, their Linear layers need no weight gradient, so a product through
``torch.ops.mkldnn._linear_pointwise`` (forward) and the transposed weight (input gradient) is all
training needs. Same values up to fp32 rounding (a different summation order; tests/test_onednn_linear.py).

The layers keep their class's parameters and names (checkpoints and state dicts are unchanged): only
their ``__class__`` is swapped to :class:`OneDNNFrozenLinear`, whose forward falls back to ``F.linear``
whenever the fast path does not apply (a weight or bias that trains, not fp32, not CPU, under autocast).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _FrozenLinearFunction(torch.autograd.Function):
    """y = x W^T + b with W, b constants: the backward gives the input gradient only (dy W)."""

    @staticmethod
    def forward(ctx, x, weight, bias, weight_t):
        ctx.save_for_backward(weight_t)
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (weight_t,) = ctx.saved_tensors
        return _onednn_linear(grad.contiguous(), weight_t, None), None, None, None


class OneDNNFrozenLinear(nn.Linear):
    """``nn.Linear`` whose product runs through oneDNN when its weight (and bias) are frozen fp32 CPU tensors."""

    def fast_path(self, x: torch.Tensor) -> bool:
        w, b = self.weight, self.bias
        return (not w.requires_grad and (b is None or not b.requires_grad) and w.device.type == "cpu"
                and w.dtype == torch.float32 and x.dtype == torch.float32 and x.device.type == "cpu"
                and (b is None or b.dtype == torch.float32) and not torch.is_autocast_enabled("cpu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast_path(x):
            return F.linear(x, self.weight, self.bias)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return _onednn_linear(x, self.weight, self.bias)
        return _FrozenLinearFunction.apply(x, self.weight, self.bias, self._weight_t())

    def _weight_t(self) -> torch.Tensor:
        """W^T, contiguous, recomputed whenever the weight tensor or its contents change. Kept between
        steps (else every step would copy every weight once more), so such a layer's weight is held
        twice: docs/performance.md says what that means for large models."""
        key = (self.weight.data_ptr(), self.weight._version)
        if getattr(self, "_weight_t_key", None) != key:
            self._weight_t_cache = self.weight.detach().t().contiguous()
            self._weight_t_key = key
        return self._weight_t_cache


def use_onednn_linear(module: nn.Module, enabled: bool = True) -> int:
    """Swap every plain ``nn.Linear`` under ``module`` to :class:`OneDNNFrozenLinear` (``enabled``) or
    back. Returns how many layers were changed. Subclasses of nn.Linear (e.g. quantised or LoRA layers)
    are left alone; a LoRA layer's frozen ``base_layer`` is a plain Linear and is swapped. Enabling it on
    a torch built without oneDNN is an error here, not at the first forward."""
    if enabled and not onednn_available():
        raise RuntimeError("model.cpu_onednn_linear needs torch's oneDNN (torch.backends.mkldnn), which this "
                           "torch build lacks; set model.cpu_onednn_linear: False")
    changed = 0
    for sub in module.modules():
        if enabled and type(sub) is nn.Linear:
            sub.__class__ = OneDNNFrozenLinear
            changed += 1
        elif not enabled and type(sub) is OneDNNFrozenLinear:
            sub.__class__ = nn.Linear
            for attr in ("_weight_t_cache", "_weight_t_key"):
                sub.__dict__.pop(attr, None)
            changed += 1
    return changed


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
