"""One job folder, one run: the rules a training run follows before it writes into ``output_dir/<job_id>``.

- A folder that already holds checkpoints belongs to an earlier run. A new run stops with a clear
  message unless it resumes (``--resume`` / ``run.resume_ckpt_path``) or ``--overwrite``
  (``run.overwrite``) is given; ``--overwrite`` moves the old folder aside to
  ``<job_id>.replaced-<time>`` (it never merges two runs).
- ``job.lock`` (owner pid and host) makes a second run into the same folder fail at start while the
  first is alive; a lock left by a dead process on this host is taken over (with a warning).
- On resume, the per-epoch records that a killed attempt wrote after its last checkpoint are
  removed from ``log.txt`` / ``evaluate.txt`` / ``metrics.jsonl``, so each epoch is recorded once.
Rank 0 decides; every rank gets the same answer (and the same error).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time

from lavis_lite.common import dist_utils

logger = logging.getLogger(__name__)

LOCK_NAME = "job.lock"
RECORD_FILES = ("log.txt", "evaluate.txt", "metrics.jsonl")


class JobFolderError(RuntimeError):
    """The job folder holds another run, or is in use."""


def previous_run_entries(job_dir: str) -> list[str]:
    """Checkpoint entries (complete or not) an earlier run left in ``job_dir``."""
    if not os.path.isdir(job_dir):
        return []
    return sorted(n for n in os.listdir(job_dir) if n.startswith("checkpoint_"))


def _check_fresh(job_dir: str, resume: bool, overwrite: bool) -> str | None:
    """Rank 0: make ``job_dir`` ready for a new run; returns an error message or None."""
    found = previous_run_entries(job_dir)
    if not found or resume:
        return None
    if overwrite:
        aside = f"{job_dir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        while os.path.exists(aside):
            aside += "_"
        os.replace(job_dir, aside)
        logger.warning("--overwrite: the earlier run in %s was moved to %s", job_dir, aside)
        return None
    return (f"Job folder {job_dir} already holds a run ({', '.join(found[:4])}{' ...' if len(found) > 4 else ''}). "
            f"A new run would mix with it. Continue it with --resume auto, start over with --overwrite "
            f"(moves the old run aside to {os.path.basename(job_dir)}.replaced-<time>), or choose another --job-id.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _owner_message(job_dir: str, path: str, owner: dict) -> str:
    return (f"Job folder {job_dir} is in use by another run (pid {owner.get('pid', '?')} on host "
            f"{owner.get('host', '?')}, started {owner.get('started', '?')}; lock file {path}). Wait for it, "
            f"choose another --job-id, or delete the lock file if that run is gone.")


def _live_owner(job_dir: str) -> str | None:
    """An error message when ``job.lock`` names another process that is (or may be) alive."""
    path = os.path.join(job_dir, LOCK_NAME)
    if not os.path.exists(path):
        return None
    owner = _read_lock(path)
    pid, host = int(owner.get("pid", -1)), owner.get("host", "?")
    if host == socket.gethostname() and (pid == os.getpid() or not _pid_alive(pid)):
        return None
    return _owner_message(job_dir, path, owner)


def _acquire_lock(job_dir: str) -> str | None:
    """Rank 0: create ``job.lock``; returns an error message when another live run holds it."""
    path = os.path.join(job_dir, LOCK_NAME)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(path)
            pid, host = int(owner.get("pid", -1)), owner.get("host", "?")
            if host == me["host"] and (pid == me["pid"] or not _pid_alive(pid)):
                if pid != me["pid"]:
                    logger.warning("taking over the lock of dead process %d in %s", pid, path)
                os.remove(path)
                continue
            return _owner_message(job_dir, path, owner)
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        atexit.register(release_lock, job_dir)
        return None
    return f"Could not take the lock {path}"


def release_lock(job_dir: str) -> None:
    """Remove ``job.lock`` if this process owns it (rank 0)."""
    path = os.path.join(job_dir, LOCK_NAME)
    owner = _read_lock(path)
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        try:
            os.remove(path)
        except OSError:
            pass


def claim_job_folder(job_dir: str, resume: bool, overwrite: bool) -> None:
    """Before a training run writes anything into ``job_dir``: the fresh-folder rule, then the lock."""
    error = None
    if dist_utils.is_main_process():
        # A live run in the folder is the first thing to report (also when resuming or overwriting).
        error = _live_owner(job_dir) or _check_fresh(job_dir, resume, overwrite)
        if error is None:
            os.makedirs(job_dir, exist_ok=True)
            error = _acquire_lock(job_dir)
    error = dist_utils.broadcast_object(error)
    if error:
        raise JobFolderError(error)


def drop_records_from(job_dir: str, epoch: int) -> int:
    """Rank 0, on resume at ``epoch``: remove the JSON records with an integer ``epoch >= epoch`` (what a
    killed attempt logged after its last checkpoint) from the job's record files; other lines stay.
    Rewrites in place, so open append-mode log handlers keep writing to the same file. Returns the count."""
    if not dist_utils.is_main_process():
        return 0
    dropped = 0
    for name in RECORD_FILES:
        path = os.path.join(job_dir, name)
        if not os.path.isfile(path):
            continue
        with open(path, "r+") as f:
            lines = f.readlines()
            kept = []
            for line in lines:
                record = None
                if line.startswith("{"):
                    try:
                        record = json.loads(line)
                    except ValueError:
                        record = None
                ep = record.get("epoch") if isinstance(record, dict) else None
                if isinstance(ep, int) and not isinstance(ep, bool) and ep >= epoch:
                    dropped += 1
                    continue
                kept.append(line)
            if len(kept) != len(lines):
                f.seek(0)
                f.writelines(kept)
                f.truncate()
    if dropped:
        logger.info("resume at epoch %d: removed %d records of a killed attempt from the job's logs", epoch, dropped)
    return dropped
