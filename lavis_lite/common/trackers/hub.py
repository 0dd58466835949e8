"""What the runner calls: parse ``run.loggers``, start the trackers on rank 0, report steps and evaluations.

Hooks in the runner (all of them): ``check_loggers`` in ``validate_config`` (a missing package fails
before the model is built), ``start_trackers(runner)`` after resuming, ``trackers.wrap_stepper`` when
the stepper is built, ``trackers.log_stats`` from ``log_stats`` and ``trackers.finish()`` at the end.
"""
from __future__ import annotations

import atexit
import difflib
import json
import logging
import numbers
import os
import time

from omegaconf import DictConfig, ListConfig, OmegaConf

from lavis_lite.common import dist_utils
from lavis_lite.common.checkpoint import atomic_write
from lavis_lite.common.config import ConfigError
from lavis_lite.common.trackers.base import TRACKERS, Tracker

logger = logging.getLogger(__name__)

STATE_FILE = "trackers.json"


def logger_names(run_cfg, where: str = "the run config") -> list[str]:
    """``run.loggers`` as a list, ``jsonl`` first and always present; ``run.tensorboard: true`` (deprecated)
    maps to the ``tensorboard`` logger."""
    raw = run_cfg.get("loggers", None)
    if raw is None:
        names = []
    elif isinstance(raw, str):
        names = [raw]
    elif isinstance(raw, (list, tuple, ListConfig)):
        names = [str(n) for n in raw]
    else:
        raise ConfigError(f"run.loggers must be a list of names (e.g. [jsonl, tensorboard]) in {where}, got {raw!r}")
    legacy = run_cfg.get("tensorboard", None)
    if legacy is not None:
        if not isinstance(legacy, bool):
            raise ConfigError(f"run.tensorboard (deprecated) must be true or false in {where}; "
                              "use run.loggers: [tensorboard]")
        logger.warning("run.tensorboard is deprecated (%s): use run.loggers: [tensorboard]%s", where,
                       " — mapped to it" if legacy else "")
        if legacy:
            names.append("tensorboard")
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        close = {n: difflib.get_close_matches(n, TRACKERS, n=2) for n in unknown}
        raise ConfigError(f"run.loggers has unknown logger(s) {unknown} in {where}; known: {sorted(TRACKERS)}"
                          f"; closest: {close}")
    return list(dict.fromkeys(["jsonl", *names]))  # ordered, no duplicates


def tracker_options(run_cfg, name: str) -> dict:
    if name == "tensorboard":  # run.tensorboard is the deprecated boolean switch, not options
        return {}
    raw = run_cfg.get(name, None)
    if raw is None:
        return {}
    return OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else dict(raw)


def check_loggers(run_cfg, where: str = "the run config") -> list[str]:
    """Validate ``run.loggers`` and its option sections; a missing package raises naming the extra."""
    names = logger_names(run_cfg, where)
    for name in names:
        TRACKERS[name].check_available()
        TRACKERS[name].check_options(tracker_options(run_cfg, name), where)
    for name in TRACKERS:
        if name not in names and name != "tensorboard" and run_cfg.get(name, None) is not None:
            logger.warning("run.%s is set in %s but %r is not in run.loggers: it is not used", name, where, name)
    return names


class Trackers:
    """The trackers of one job (none on ranks other than 0) and the ``<job>/trackers.json`` they resume from."""

    def __init__(self, trackers: list[Tracker], job_dir: str | None, state: dict, skip_through: dict,
                 step: int, log_freq: int = 50):
        self.trackers, self.job_dir, self.state = trackers, job_dir, state
        self.skip_through, self.skipped = skip_through, {t.name: 0 for t in trackers}
        self.step, self.log_freq, self.reporter, self._finished = step, max(int(log_freq), 1), None, False
        if trackers:
            atexit.register(self._finish_at_exit)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.trackers]

    def log(self, record: dict) -> None:
        for tracker in self.trackers:
            if record["step"] <= self.skip_through.get(tracker.name, -1):
                self.skipped[tracker.name] += 1  # the interrupted run logged this step already
                continue
            tracker.log_record(record)
            entry = self.state.setdefault(tracker.name, {})
            entry["last_step"] = max(int(entry.get("last_step", 0)), int(record["step"]))
        if any(not t.can_purge for t in self.trackers):  # only their resume needs the last step logged
            self._save_state()

    def log_stats(self, stats: dict, split: str, epoch) -> None:
        """The runner's per-epoch stats: ``train`` closes the epoch's pending step record; any other split
        is an evaluation record at the current step."""
        if split == "train":
            if self.reporter is not None:
                self.reporter.flush()
            return
        record = {"kind": "eval", "split": split, "step": self.step, "epoch": epoch}
        record.update({k: v for k, v in stats.items() if k not in record and _jsonable(v)})
        self.log(record)

    def wrap_stepper(self, stepper, position):
        """``position(sched_epoch, step) -> (epoch, steps done before this step)``."""
        if not self.trackers:
            return stepper
        self.reporter = StepReporter(stepper, self, position, self.log_freq, dist_utils.get_world_size())
        return self.reporter

    def finish(self, failed: bool = False) -> None:
        if self._finished:
            return
        self._finished = True
        if self.reporter is not None and not failed:  # after a crash, no partial interval
            self.reporter.flush()
        for tracker in self.trackers:
            if self.skipped[tracker.name]:
                logger.info("%s: %d records at steps <= %d were logged by the interrupted run and not again",
                            tracker.name, self.skipped[tracker.name], self.skip_through[tracker.name])
            tracker.finish(failed=failed)
        if self.trackers:
            atexit.unregister(self._finish_at_exit)

    def _finish_at_exit(self):
        self.finish(failed=True)  # the process ends without train() returning (a crash)

    def _save_state(self):
        text = json.dumps(self.state, indent=1)
        atomic_write(os.path.join(self.job_dir, STATE_FILE), lambda tmp: open(tmp, "w").write(text))


class StepReporter:
    """Wraps the runner's stepper: counts samples per window and, every ``log_freq`` optimizer steps,
    hands the trackers one record averaged over those steps (loss weighted by supervised tokens)."""

    def __init__(self, stepper, trackers: Trackers, position, log_freq: int, world_size: int):
        self._stepper, self._trackers, self._position = stepper, trackers, position
        self._log_freq, self._world = log_freq, world_size
        self._where, self._extra = (0, 0), {}
        self._reset()

    def __getattr__(self, name):  # everything else is the stepper's
        return getattr(self._stepper, name)

    def _reset(self):
        self._loss_sum = self._tokens = self._samples = self._steps = 0
        self._since = time.time()

    def begin_window(self, window, epoch, step):
        from lavis_lite.tasks.base_task import batch_size
        self._stepper.begin_window(window, epoch, step)
        self._where = self._position(epoch, step)
        self._samples += sum(batch_size(samples) for samples in window) * self._world

    def step(self) -> dict:
        stats = self._stepper.step()
        n = float(stats.get("n_tokens", 0))
        self._loss_sum += float(stats["loss"]) * n
        self._tokens += n
        self._steps += 1
        self._lr = float(stats["lr"])
        self._extra = {k: float(v) for k, v in stats.items() if k not in ("loss", "n_tokens", "lr")
                       and isinstance(v, (int, float))}
        self._trackers.step = self._where[1] + 1
        if self._trackers.step % self._log_freq == 0:
            self.flush()
        return stats

    def flush(self) -> None:
        if not self._steps:
            return
        elapsed = max(time.time() - self._since, 1e-9)
        record = {"kind": "train", "step": self._trackers.step, "epoch": self._where[0],
                  "loss": self._loss_sum / self._tokens if self._tokens else 0.0, "lr": self._lr,
                  "samples_per_s": self._samples / elapsed, "n_tokens": int(self._tokens),
                  "steps": self._steps, **self._extra}
        self._reset()
        self._trackers.log(record)


def start_trackers(runner) -> Trackers:
    """Start the job's trackers on rank 0 (resuming their runs after ``--resume``); no-ops elsewhere."""
    run_cfg = runner.run_cfg
    where = getattr(runner.config, "cfg_path", "the run config")
    names = check_loggers(run_cfg, where)
    log_freq = int(run_cfg.get("log_freq", 50))
    resume_step = runner.global_step(runner.start_epoch) if runner.start_epoch > 0 else None
    if not dist_utils.is_main_process():
        return Trackers([], None, {}, {}, resume_step or 0, log_freq)
    job_dir = runner.output_dir
    saved = _load_state(os.path.join(job_dir, STATE_FILE))
    evaluate_only = bool(run_cfg.get("evaluate", False))
    if resume_step is None and not evaluate_only:
        saved = {}  # training from scratch: new runs
    config = _plain_config(runner.config)
    trackers, state, skip = [], {}, {}
    for name in names:
        cls = TRACKERS[name]
        tracker = cls(job_dir, runner.job_id, tracker_options(run_cfg, name), config)
        previous = saved.get(name, {})
        state[name] = dict(tracker.start(resume_step, previous), last_step=int(previous.get("last_step", 0)))
        if resume_step is not None and not cls.can_purge:
            skip[name] = int(previous.get("last_step", 0))
        trackers.append(tracker)
    step = resume_step if resume_step is not None else max([s["last_step"] for s in state.values()] or [0])
    hub = Trackers(trackers, job_dir, state, skip, step, log_freq)
    hub._save_state()
    logger.info("loggers: %s (records in %s)", ", ".join(names), os.path.join(job_dir, "metrics.jsonl"))
    return hub


def _load_state(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON ({err}); delete it to start new tracker runs") from err


def _plain_config(config) -> dict:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)


def _jsonable(v) -> bool:  # numpy scalars are numbers.Number; json.dumps(default=float) writes them
    return isinstance(v, (numbers.Number, str, bool, list, dict)) or v is None
