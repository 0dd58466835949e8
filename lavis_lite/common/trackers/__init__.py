"""Experiment trackers: ``run.loggers: [jsonl, tensorboard, wandb, mlflow]`` (``jsonl`` always on).

Add one with ``@register_tracker("name")`` on a ``Tracker`` subclass (see ``base.py``)."""
from lavis_lite.common.trackers.base import (TRACKERS, Tracker, TrackerKeys, TrackerUnavailable, register_tracker,
                                             scalar_items)
from lavis_lite.common.trackers.hub import StepReporter, Trackers, check_loggers, logger_names, start_trackers
from lavis_lite.common.trackers.jsonl_tracker import METRICS_FILE, read_metrics
# Each module registers its tracker; none imports its package before start().
from lavis_lite.common.trackers import tensorboard_tracker, wandb_tracker, mlflow_tracker  # noqa: F401,E402

__all__ = ["TRACKERS", "Tracker", "TrackerKeys", "TrackerUnavailable", "register_tracker", "scalar_items", "StepReporter",
           "Trackers", "check_loggers", "logger_names", "start_trackers", "METRICS_FILE", "read_metrics"]
