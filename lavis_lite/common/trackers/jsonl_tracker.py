"""``metrics.jsonl``: the one machine-readable log every training job writes (always on)."""
from __future__ import annotations

import json
import os

from lavis_lite.common.checkpoint import atomic_write
from lavis_lite.common.trackers.base import Tracker, register_tracker

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a job folder or the file itself); a broken line is an error."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {n} is not JSON: {err}") from err
    return records


@register_tracker("jsonl")
class JsonlTracker(Tracker):
    can_purge = True

    @property
    def path(self) -> str:
        return os.path.join(self.job_dir, METRICS_FILE)

    def start(self, resume_step, state):
        if resume_step is not None and os.path.exists(self.path):
            # A crashed run may have logged past its last checkpoint: keep what the resumed run will not redo.
            kept = [r for r in _readable(self.path) if int(r.get("step", 0)) <= resume_step]
            atomic_write(self.path, lambda tmp: _write_lines(tmp, kept))
        # No state: a new run (training from scratch) starts a new file; otherwise append.
        self._file = open(self.path, "a" if (state or resume_step is not None) else "w")
        return {"file": METRICS_FILE}

    def log_record(self, record):
        self._file.write(json.dumps(record, default=float) + "\n")
        self._file.flush()

    def log_scalars(self, scalars, step):
        raise AssertionError("JsonlTracker writes whole records (log_record)")

    def finish(self, failed=False):
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None


def _readable(path):
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut short by the crash
    return out


def _write_lines(tmp, records):
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
