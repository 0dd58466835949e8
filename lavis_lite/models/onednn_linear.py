"""``nn.Linear`` layers through oneDNN's matrix product on the CPU (model key ``cpu_onednn_linear``).

torch's fp32 ``F.linear`` on the CPU calls MKL's sgemm. On AMD processors MKL picks a slower code path
(measured on this project's AMD EPYC with AVX-512: ~110 GFLOP/s per core) while oneDNN (bundled with
torch, the library behind its CPU convolutions) runs the same products at ~230 GFLOP/s. Every product a
Linear layer's training needs runs through ``torch.ops.mkldnn._linear_pointwise`` (``a @ b^T + bias``):

* forward ``y = x W^T + b``;
* input gradient ``dx = dy W``: the product with ``W^T`` (a frozen weight keeps a cached contiguous
  copy; a weight that trains changes every step, so its transposed view is handed to oneDNN as is);
* weight gradient ``dW = dy^T x`` (only when the weight trains): the product of the transposed views
  of ``dy`` and ``x``; measured faster than MKL's ``dy^T @ x`` for every LLM shape of the demo
  (``[2190 × 256]^T [2190 × 128]``: 0.77 vs 1.34 ms; 128 × 128: 0.39 vs 0.70 ms; one core);
* bias gradient: the sum of ``dy`` over the rows.

Same values up to fp32 rounding (a different summation order; tests/test_onednn_linear.py).

The layers keep their class's parameters and names (checkpoints and state dicts are unchanged): only
their ``__class__`` is swapped to :class:`OneDNNLinear`, whose forward falls back to ``F.linear``
whenever the fast path does not apply (not fp32, not CPU, under autocast).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T + b; each gradient (input, weight, bias) only when autograd asks for it.
    ``weight_t``: a cached contiguous W^T for a frozen weight, or None (the transposed view is used)."""

    @staticmethod
    def forward(ctx, x, weight, bias, weight_t):
        needs_x, needs_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(x if needs_w else None, weight if needs_x and weight_t is None else None,
                              weight_t if needs_x else None)
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight, weight_t = ctx.saved_tensors
        needs_x, needs_w, needs_b = ctx.needs_input_grad[:3]
        out_features = grad.shape[-1]
        g2 = grad.reshape(-1, out_features).contiguous()  # rows x out
        grad_x = grad_w = grad_b = None
        if needs_x:
            w_t = weight_t if weight_t is not None else weight.t()
            grad_x = _onednn_linear(g2, w_t, None).reshape(*grad.shape[:-1], w_t.shape[0])
        if needs_w:
            x2 = x.reshape(-1, x.shape[-1]).contiguous()
            grad_w = (_onednn_linear(g2.t(), x2.t(), None) if g2.shape[0]
                      else g2.new_zeros(out_features, x2.shape[1]))  # no rows: oneDNN refuses an empty product
        if needs_b:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, None


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose products (forward and every gradient) run through oneDNN for fp32 CPU tensors."""

    def fast_path(self, x: torch.Tensor) -> bool:
        w, b = self.weight, self.bias
        return (w.device.type == "cpu" and w.dtype == torch.float32 and x.dtype == torch.float32
                and x.device.type == "cpu" and (b is None or b.dtype == torch.float32)
                and not torch.is_autocast_enabled("cpu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast_path(x):
            return F.linear(x, self.weight, self.bias)
        w, b = self.weight, self.bias
        trains = w.requires_grad or (b is not None and b.requires_grad)
        if not (torch.is_grad_enabled() and (x.requires_grad or trains)):
            return _onednn_linear(x, w, b)
        # A frozen weight's W^T is cached (input gradient); a trained one changes every step: no copy.
        weight_t = self._weight_t() if not w.requires_grad and x.requires_grad else None
        return _OneDNNLinearFunction.apply(x, w, b, weight_t)

    def _weight_t(self) -> torch.Tensor:
        """W^T of a frozen weight, contiguous, recomputed whenever the weight tensor or its contents change.
        Kept between steps (else every step would copy every weight once more), so such a layer's weight is
        held twice: docs/performance.md says what that means for large models."""
        key = (self.weight.data_ptr(), self.weight._version)
        if getattr(self, "_weight_t_key", None) != key:
            self._weight_t_cache = self.weight.detach().t().contiguous()
            self._weight_t_key = key
        return self._weight_t_cache


def use_onednn_linear(module: nn.Module, enabled: bool = True) -> int:
    """Swap every plain ``nn.Linear`` under ``module`` to :class:`OneDNNLinear` (``enabled``) or
    back. Returns how many layers were changed. Subclasses of nn.Linear (e.g. quantised or LoRA layers)
    are left alone; a LoRA layer's ``base_layer`` and its ``lora_A`` / ``lora_B`` are plain Linear layers
    and are swapped. Enabling it on a torch built without oneDNN is an error here, not at the first forward."""
    if enabled and not onednn_available():
        raise RuntimeError("model.cpu_onednn_linear needs torch's oneDNN (torch.backends.mkldnn), which this "
                           "torch build lacks; set model.cpu_onednn_linear: False")
    changed = 0
    for sub in module.modules():
        if enabled and type(sub) is nn.Linear:
            sub.__class__ = OneDNNLinear
            changed += 1
        elif not enabled and type(sub) is OneDNNLinear:
            sub.__class__ = nn.Linear
            for attr in ("_weight_t_cache", "_weight_t_key"):
                sub.__dict__.pop(attr, None)
            changed += 1
    return changed


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
