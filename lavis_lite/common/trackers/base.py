"""The tracker interface and its registry.

A tracker receives two kinds of records from the runner (rank 0 only):

- ``{"kind": "train", "step", "epoch", "loss", "lr", "samples_per_s", "n_tokens", ...}`` every
  ``run.log_freq`` optimizer steps (values averaged over the steps since the previous record) and at
  the end of each epoch;
- ``{"kind": "eval", "split", "step", "epoch", <the task's metrics>}`` after each validation / test.

``step`` counts optimizer steps completed (1-based), the same number checkpoints store, so a resumed
job knows which records a crashed run wrote after its last checkpoint.
"""
from __future__ import annotations

import importlib.util
import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from lavis_lite.common.config import ConfigError

TRACKERS: dict[str, type["Tracker"]] = {}


@dataclass
class TrackerKeys:
    """The ``run:`` keys of the trackers (declared as RunnerBase's ``run_schema``; checked in hub.py)."""
    loggers: Any = None   # a list of names (a single name also works); jsonl is always on
    wandb: Any = None     # options of the wandb logger (WandbTracker.option_keys)
    mlflow: Any = None    # options of the mlflow logger (MlflowTracker.option_keys)


def register_tracker(name: str):
    """Class decorator: make a tracker available as ``run.loggers: [name]``."""
    def wrap(cls):
        if not issubclass(cls, Tracker):
            raise TypeError(f"{cls.__name__} must subclass Tracker to be registered as a tracker")
        if name in TRACKERS and TRACKERS[name] is not cls:
            raise KeyError(f"tracker {name!r} is already registered by {TRACKERS[name].__name__}")
        cls.name = name
        TRACKERS[name] = cls
        return cls
    return wrap


class TrackerUnavailable(ConfigError):
    """A configured logger whose package is not installed (raised before training starts)."""


class Tracker(ABC):
    name: ClassVar[str] = ""
    package: ClassVar[str | None] = None   # the module it needs, checked before training
    extra: ClassVar[str] = "track"         # the lavis-lite extra that installs it
    option_keys: ClassVar[frozenset] = frozenset()  # allowed keys of run.<name>
    can_purge: ClassVar[bool] = False      # True: start() hides records after the resumed step itself

    def __init__(self, job_dir: str, job_id: str, options: dict, run_config: dict):
        self.job_dir, self.job_id, self.options, self.run_config = job_dir, job_id, dict(options), run_config

    @classmethod
    def check_available(cls) -> None:
        if cls.package and importlib.util.find_spec(cls.package) is None:
            raise TrackerUnavailable(
                f"run.loggers has {cls.name!r} but the {cls.package!r} package is not installed: "
                f"pip install 'lavis-lite[{cls.extra}]' (or pip install {cls.package})")

    @classmethod
    def check_options(cls, options: dict, where: str) -> None:
        unknown = sorted(set(options) - set(cls.option_keys))
        if unknown:
            raise ConfigError(f"run.{cls.name} has unknown keys {unknown} in {where}; "
                              f"allowed: {sorted(cls.option_keys)}")

    @abstractmethod
    def start(self, resume_step: int | None, state: dict) -> dict:
        """Open (or, with ``state`` from an earlier start in this job folder, continue) the run.

        ``resume_step``: the step of the checkpoint training resumed from, None for a fresh start.
        Returns what a later resume needs (e.g. the run id); it is kept in ``<job>/trackers.json``."""

    def log_record(self, record: dict) -> None:
        scalars = scalar_items(record)
        if scalars:
            self.log_scalars(scalars, int(record["step"]))

    @abstractmethod
    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        """Log ``{"train/loss": ..., "val/agg_metrics": ...}`` at ``step``."""

    def finish(self, failed: bool = False) -> None:  # noqa: B027 (optional hook)
        pass


SKIP_KEYS = {"kind", "split", "step", "epoch", "steps"}


def scalar_items(record: dict) -> dict[str, float]:
    """``{"<split>/<name>": value}`` for the finite numbers of a record (train records: split "train")."""
    prefix = record.get("split", "train")
    out = {}
    for k, v in record.items():
        if k in SKIP_KEYS:
            continue
        items = v.items() if isinstance(v, dict) else [(None, v)]  # one level of nesting: per-type metrics
        for sub, value in items:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
                continue
            out[f"{prefix}/{k}" + (f"/{sub}" if sub is not None else "")] = float(value)
    return out
