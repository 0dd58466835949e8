"""What one training / validation step returned, and how much its micro-batch weighs.

A micro-batch's weight is, in this order: the supervised tokens of the batch's ``labels``
(``(labels != -100).sum()``); the ``n_tokens`` the model returned next to its loss; else 1, so
micro-batches weigh equally (LAVIS's behaviour for a model that returns only ``{"loss"}``).
Used by the runners' steppers (training) and ``BaseTask.valid_step`` (loss-based evaluation).
"""
from __future__ import annotations

import torch

TOKENS, BATCHES = "tokens", "micro-batches"


def split_train_output(output):
    """What ``task.train_step`` returned, as ``(loss, extras)``: a dict with ``"loss"`` (ours and
    LAVIS's model output), a ``(loss, loss_dict)`` pair (LAVIS's ``BaseTask.train_step``) or a bare loss."""
    if isinstance(output, dict):
        if "loss" not in output:
            raise TypeError(f"train_step returned a dict without 'loss' (keys {sorted(output)})")
        return output["loss"], output
    if isinstance(output, (tuple, list)) and len(output) == 2 and isinstance(output[1], dict):
        return output[0], output[1]
    if isinstance(output, torch.Tensor):
        return output, {}
    raise TypeError(f"train_step must return a loss tensor, (loss, loss_dict) or a dict with 'loss'; "
                    f"got {type(output).__name__}")


def micro_batch_weight(samples, extras=None):
    """``(weight, kind)`` of one micro-batch by the rule in the module docstring."""
    labels = samples.get("labels", None) if isinstance(samples, dict) else None
    if isinstance(labels, torch.Tensor):
        return (labels != -100).sum(), TOKENS
    if extras and extras.get("n_tokens", None) is not None:
        return extras["n_tokens"], TOKENS
    return 1, BATCHES
