"""Weights & Biases through ``wandb`` (extra ``[track]``), offline unless configured otherwise.

``run.wandb``: ``project`` (default ``lavis_lite``), ``entity``, ``name`` (default: the job id), ``tags``,
``group``, ``notes``, ``mode`` (``offline`` | ``online`` | ``disabled``; default: ``$WANDB_MODE``, else
``offline``). Run files go to ``<job>/wandb`` (``wandb sync <job>/wandb/offline-run-*`` uploads them).
The run id is kept in ``<job>/trackers.json``: a resumed job continues the same run."""
from __future__ import annotations

import os
import uuid

from lavis_lite.common.trackers.base import Tracker, register_tracker


@register_tracker("wandb")
class WandbTracker(Tracker):
    package = "wandb"
    option_keys = frozenset({"project", "entity", "name", "tags", "group", "notes", "mode"})

    def start(self, resume_step, state):
        import wandb

        mode = self.options.get("mode") or os.environ.get("WANDB_MODE") or "offline"
        run_id = state.get("run_id") or uuid.uuid4().hex[:12]
        self.run = wandb.init(
            project=self.options.get("project", "lavis_lite"), entity=self.options.get("entity"),
            name=self.options.get("name", self.job_id), tags=list(self.options.get("tags") or []) or None,
            group=self.options.get("group"), notes=self.options.get("notes"),
            id=run_id, resume="allow", dir=self.job_dir, mode=mode, config=self.run_config,
            reinit="create_new")
        return {"run_id": run_id, "mode": mode}

    def log_scalars(self, scalars, step):
        self.run.log(scalars, step=step)

    def finish(self, failed=False):
        if getattr(self, "run", None) is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
