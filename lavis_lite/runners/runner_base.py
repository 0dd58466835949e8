"""RunnerBase: devices, wrapping, loop schedule, checkpoints, logging.

(Foundation skeleton: the training work fills in the loops and checkpointing.)
"""
from __future__ import annotations


class RunnerBase:
    def __init__(self, cfg, task, model, datasets, job_id):
        self.config, self.task, self._model, self.datasets, self.job_id = cfg, task, model, datasets, job_id
