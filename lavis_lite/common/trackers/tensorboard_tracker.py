"""TensorBoard through ``torch.utils.tensorboard`` (the ``tensorboard`` package, extra ``[track]``).

Events go to ``<job>/tensorboard``; a resumed job writes into the same folder with ``purge_step`` set
to the first step it redoes, so TensorBoard hides what the crashed run logged after its checkpoint."""
from __future__ import annotations

import os

from lavis_lite.common.trackers.base import Tracker, register_tracker

TB_DIR = "tensorboard"


@register_tracker("tensorboard")
class TensorBoardTracker(Tracker):
    package = "tensorboard"
    can_purge = True

    def start(self, resume_step, state):
        from torch.utils.tensorboard import SummaryWriter

        log_dir = os.path.join(self.job_dir, TB_DIR)
        if resume_step is not None:
            purge = resume_step + 1
        elif not state and os.path.isdir(log_dir) and os.listdir(log_dir):
            purge = 0  # training from scratch again in this job folder: hide the earlier run's events
        else:
            purge = None
        self.writer = SummaryWriter(log_dir=log_dir, purge_step=purge)
        return {"log_dir": TB_DIR}

    def log_scalars(self, scalars, step):
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # records survive a crash (one flush per logged step)

    def finish(self, failed=False):
        if getattr(self, "writer", None) is not None:
            self.writer.close()
            self.writer = None
