"""runner_iter: iteration-based training (``iters`` optimizer steps in inner epochs of
``iters_per_inner_epoch``), for streaming (IterableDataset) data and long runs with regular
validation and checkpoints. Everything else is RunnerBase."""
from __future__ import annotations

from lavis_lite.common.registry import registry
from lavis_lite.runners.runner_base import RunnerBase


@registry.register_runner("runner_iter")
class RunnerIter(RunnerBase):
    iteration_based = True
