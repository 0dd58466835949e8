"""Checkpointing for runners: save (atomic), resume (exact), and the subclass hooks.

Mixed into ``RunnerBase``; it relies on the runner's ``output_dir``, ``train_stream``,
``lr_scheduler``, ``optimizer``, ``scaler``, ``model`` and ``global_step``. Subclasses override
``write_state`` / ``read_state`` / ``load_model_weights`` (DeepSpeed saves through its engine).
"""
from __future__ import annotations

import logging
import math
import os

from lavis_lite.common import checkpoint as ckpt
from lavis_lite.common import dist_utils

logger = logging.getLogger(__name__)


class CheckpointingMixin:
    def training_state(self) -> dict:
        return {"epoch": self.start_epoch, "global_step": self.global_step(self.start_epoch),
                "stream": self.train_stream.state_dict() if not self.evaluate_only else None,
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "best_agg_metric": self.best_agg_metric, "best_epoch": self.best_epoch}

    def save_checkpoint(self, name: str) -> str:
        final = os.path.join(self.output_dir, name)
        tmp = ckpt.begin_save(final)
        self.write_state(tmp, self.training_state())
        ckpt.write_rank_rng(tmp)
        ckpt.finish_save(tmp, final)
        logger.info("saved checkpoint %s", final)
        return final

    def write_state(self, tmp_dir: str, state: dict) -> None:
        if dist_utils.is_main_process():
            ckpt.save_tensors(ckpt.trainable_state(self._model), os.path.join(tmp_dir, ckpt.WEIGHTS_NAME))
            state = dict(state, optimizer=self.optimizer.state_dict(),
                         scaler=self.scaler.state_dict() if self.scaler is not None else None)
            ckpt.save_torch(state, os.path.join(tmp_dir, ckpt.STATE_NAME))

    def read_state(self, ckpt_dir: str) -> dict:
        ckpt.load_trainable_weights(self._model, os.path.join(ckpt_dir, ckpt.WEIGHTS_NAME))
        state = ckpt.load_torch(os.path.join(ckpt_dir, ckpt.STATE_NAME))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        return state

    def load_model_weights(self, ckpt_dir: str) -> None:
        ckpt.load_trainable_weights(self._model, os.path.join(ckpt_dir, ckpt.WEIGHTS_NAME))

    def resume_path(self) -> str | None:
        path = self.run_cfg.get("resume_ckpt_path", None)
        if path in (None, "", False):
            return None
        if str(path) == "auto":
            return ckpt.find_latest_checkpoint(self.output_dir)  # a fresh job starts from scratch
        path = os.path.expanduser(str(path))
        if os.path.isfile(path):
            path = os.path.dirname(path)
        if not ckpt.is_complete(path):
            raise ckpt.CheckpointError(f"resume_ckpt_path {path!r} is not a complete checkpoint directory")
        return path

    def maybe_resume(self) -> None:
        path = self.resume_path()
        if path is None:
            return
        self.model  # wrap (and, for DeepSpeed, build the engine) before loading into it
        state = self.read_state(path)
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if state.get("stream") is not None:
            self.train_stream.load_state_dict(state["stream"])
        self.start_epoch = int(state["epoch"])
        self.best_agg_metric = float(state.get("best_agg_metric", -math.inf))
        self.best_epoch = state.get("best_epoch")
        ckpt.restore_rank_rng(path)
        logger.info("resumed from %s at epoch %d (step %d)", path, self.start_epoch, int(state["global_step"]))
