"""Instruction tuning on conversations (MiniGPT4-Qwen stage 2).

Training is the base loop over conversation batches. Validation reports the loss and the
token accuracy on held-out conversations (only the assistant turns are supervised), and
``agg_metrics`` is that token accuracy, so the best checkpoint is the one that answers best.
"""
from __future__ import annotations

from lavis_lite.common.registry import registry
from lavis_lite.tasks.base_task import BaseTask


@registry.register_task("instruction_tuning")
class InstructionTuningTask(BaseTask):
    def valid_step(self, model, samples) -> list[dict]:
        records = super().valid_step(model, samples)
        if "n_correct" not in records[0]:
            raise KeyError(f"instruction_tuning validation needs 'n_correct' from "
                           f"{type(getattr(model, 'module', model)).__name__}.forward (token accuracy)")
        return records
