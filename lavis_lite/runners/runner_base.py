"""RunnerBase: devices, wrapping, the loops' schedule, validation, checkpoints and logging.

Everything built lazily on first use: ``model`` (wrapped), ``optimizer``, ``scaler``,
``lr_scheduler``, ``train_stream``, ``eval_loaders``, ``stepper``. Epoch-based by default
(``max_epoch``); iteration-based (``iters`` + ``iters_per_inner_epoch``) when ``run.iters`` is set
or in ``runner_iter``. The inner loop lives in the task (``train_epoch`` / ``train_iters``).

A subclass provides (and only these differ between plain/DDP and DeepSpeed):
- ``wrap_model(model)``      -> the model that training calls (here: on device, DDP when distributed);
- ``build_stepper()``        -> a ``Stepper`` taking token-weighted optimizer steps;
- ``write_state(tmp_dir, state)`` / ``read_state(ckpt_dir) -> state``: weights + optimizer etc.;
- ``load_model_weights(ckpt_dir)``: trained weights only (for testing with the best checkpoint).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from lavis_lite.common import checkpoint as ckpt
from lavis_lite.common import dist_utils
from lavis_lite.common.config import ConfigError
from lavis_lite.common.logger import setup_logger
from lavis_lite.common.registry import registry
from lavis_lite.common.trackers import TrackerKeys, check_loggers, start_trackers
from lavis_lite.runners.checkpointing import CheckpointingMixin
from lavis_lite.runners.job_folder import absolute_paths, claim_job_folder, drop_records_from, release_lock
from lavis_lite.runners.data import BatchSource, TrainStream, build_eval_loader, concat_eval_datasets
from lavis_lite.runners.stepper import Stepper
from lavis_lite.tasks.base_task import move_to_device

logger = logging.getLogger(__name__)


def setup_seeds(run_cfg, per_rank: bool = True) -> None:
    """Per-rank seeds (seed + rank); ``deterministic: True`` asks torch for deterministic kernels.

    ``per_rank=False`` seeds every rank alike: used while building the model, so random-init
    weights that no checkpoint overwrites are the same on every rank."""
    seed = int(run_cfg.get("seed", 42)) + (dist_utils.get_rank() if per_rank else 0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if run_cfg.get("deterministic", False):
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "for_loop")


def adamw_implementation(choice: str, device: torch.device) -> dict:
    """``run.optimizer_impl``: AdamW keyword arguments. ``auto``: one fused kernel for all parameters on
    CUDA, multi-tensor (foreach) updates elsewhere; ``for_loop``: one parameter at a time (the
    published recipes' default before torch 2)."""
    if choice not in OPTIMIZER_IMPLS:
        raise ValueError(f"run.optimizer_impl must be one of {OPTIMIZER_IMPLS}, got {choice!r}")
    if choice == "auto":
        choice = "fused" if device.type == "cuda" else "foreach"
    return {"fused": {"fused": True}, "foreach": {"foreach": True},
            "for_loop": {"foreach": False, "fused": False}}[choice]


class RunnerBase(CheckpointingMixin):
    run_schema = TrackerKeys  # run.loggers / run.wandb / run.mlflow (lavis_lite/common/trackers)
    iteration_based: bool | None = None  # None: decided by whether run.iters is set

    def __init__(self, cfg, task, model, datasets, job_id):
        self.config, self.task, self._model, self.datasets, self.job_id = cfg, task, model, datasets, str(job_id)
        self._wrapped = self._optimizer = self._scaler = self._scheduler = None
        self._stream = self._eval_loaders = self._stepper = None
        self.start_epoch, self.best_agg_metric, self.best_epoch = 0, -math.inf, None
        self.trackers = None  # run.loggers (common/trackers): started by train() / evaluate()
        self.iteration_based = self.is_iteration_based(self.run_cfg)
        self.validate_config(cfg)
        self.setup_output_dir()

    # ---- configuration ------------------------------------------------------------
    @property
    def run_cfg(self):
        return self.config.run_cfg

    @classmethod
    def is_iteration_based(cls, run_cfg) -> bool:
        return cls.iteration_based if cls.iteration_based is not None else run_cfg.get("iters", None) is not None

    @classmethod
    def validate_config(cls, cfg) -> None:
        """Check the run section before anything is built; errors name the key and the file."""
        run, where = cfg.run_cfg, getattr(cfg, "cfg_path", "the run config")
        check_loggers(run, where)  # a logger whose package is missing fails here, before any model is built
        if run.get("evaluate", False):
            return
        missing = [k for k in ("init_lr", "batch_size_train", "train_splits") if run.get(k, None) in (None, [], "")]
        if missing:
            raise ConfigError(f"{cls.__name__} needs run.{', run.'.join(missing)} in {where}")
        if cls.is_iteration_based(run):
            if not run.get("iters", None) or not run.get("iters_per_inner_epoch", None):
                raise ConfigError(f"{cls.__name__} needs run.iters and run.iters_per_inner_epoch in {where}")
        elif int(run.get("max_epoch", 0) or 0) <= 0:
            raise ConfigError(f"run.max_epoch (or run.iters for iteration-based training) must be set in {where}")
        if int(run.get("accum_grad_iters", 1)) < 1:
            raise ConfigError(f"run.accum_grad_iters must be >= 1 in {where}")

    @property
    def device(self) -> torch.device:
        want = str(self.run_cfg.get("device", "cuda"))
        if want.startswith("cuda") and not torch.cuda.is_available():
            return torch.device("cpu")
        if want.startswith("cuda"):
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device(want)

    @property
    def use_distributed(self) -> bool:
        return dist_utils.is_dist_avail_and_initialized() and dist_utils.get_world_size() > 1

    @property
    def evaluate_only(self) -> bool:
        return bool(self.run_cfg.get("evaluate", False))

    @property
    def accum_grad_iters(self) -> int:
        return int(self.run_cfg.get("accum_grad_iters", 1))

    @property
    def amp_dtype(self):
        """``amp``: false (fp32) | true (bf16 where supported, else fp16; GPU only) | "bf16" | "fp16"."""
        amp = self.run_cfg.get("amp", False)
        if amp in (False, None, "fp32", "no"):
            return None
        if amp is True:
            if self.device.type != "cuda":
                return None  # fp32 on CPU unless a dtype is asked for
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
        if amp not in dtypes:
            raise ValueError(f"run.amp must be false, true, 'bf16' or 'fp16'; got {amp!r}")
        return dtypes[amp]

    def split_names(self, key: str) -> list[str]:
        return list(self.run_cfg.get(key, []) or [])

    # ---- output ---------------------------------------------------------------------
    def setup_output_dir(self):
        out_root = os.path.abspath(os.path.expanduser(str(self.run_cfg.get("output_dir", "output"))))
        self.output_dir = os.path.join(out_root, self.job_id)
        self.result_dir = os.path.join(self.output_dir, "result")
        if not self.evaluate_only:  # one run per job folder (runners/job_folder.py), before anything is written
            resume = self.run_cfg.get("resume_ckpt_path", None) not in (None, "", False)
            claim_job_folder(self.output_dir, resume=resume, overwrite=bool(self.run_cfg.get("overwrite", False)))
        if dist_utils.is_main_process():
            os.makedirs(self.result_dir, exist_ok=True)
        dist_utils.barrier()
        registry.register_path("output_dir", self.output_dir)
        registry.register_path("result_dir", self.result_dir)
        setup_logger(os.path.join(self.output_dir, "log.txt"))

    @dist_utils.main_process
    def dump_config(self):
        path = os.path.join(self.output_dir, "config.yaml")
        raw = self.config.config if hasattr(self.config, "config") else self.config
        # absolute weight / data paths: the job folder's config works from any working directory
        text = OmegaConf.to_yaml(OmegaConf.create(absolute_paths(OmegaConf.to_container(raw, resolve=True))))
        ckpt.atomic_write(path, lambda tmp: open(tmp, "w").write(text))

    @dist_utils.main_process
    def log_stats(self, stats: dict, split: str, epoch) -> None:
        record = {"split": split, "epoch": epoch, **{k: v for k, v in stats.items() if _jsonable(v)}}
        with open(os.path.join(self.output_dir, "log.txt"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.log_stats(stats, split, epoch)

    # ---- lazily built pieces -----------------------------------------------------------
    @property
    def unwrapped_model(self):
        return self._model

    @property
    def model(self):
        if self._wrapped is None:
            self._wrapped = self.wrap_model(self._model)
        return self._wrapped

    def wrap_model(self, model):
        model = model.to(self.device)
        if self.use_distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=bool(self.run_cfg.get("find_unused_parameters", False)))
        return model

    def optimizer_param_groups(self) -> list[dict]:
        """The model's ``get_optimizer_params(weight_decay, lr_scale)`` if it has one, else
        decay / no-decay groups (no decay for biases, norms and other 1-d parameters)."""
        model, wd = self._model, float(self.run_cfg.get("weight_decay", 0.05))
        if hasattr(model, "get_optimizer_params"):
            return model.get_optimizer_params(wd, float(self.run_cfg.get("lr_layer_decay", 1.0)))
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "bias" in name or "norm" in name.lower() else decay).append(p)
        if not decay and not no_decay:
            raise ValueError(f"{type(model).__name__} has no trainable parameters")
        return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]

    @property
    def optimizer(self):
        if self._optimizer is None:
            self.model  # the model is on its device before the optimizer sees its parameters
            if self._optimizer is None:  # a subclass's wrap_model may have built it
                self._optimizer = self.build_optimizer()
        return self._optimizer

    def build_optimizer(self):
        beta2 = float(self.run_cfg.get("beta2", 0.999))
        groups = [g for g in self.optimizer_param_groups() if g["params"]]
        impl = adamw_implementation(self.run_cfg.get("optimizer_impl", "auto"), self.device)
        return torch.optim.AdamW(groups, lr=float(self.run_cfg.init_lr), betas=(0.9, beta2), **impl)

    @property
    def scaler(self):
        if self._scaler is None and self.amp_dtype == torch.float16 and self.device.type == "cuda":
            self._scaler = torch.amp.GradScaler("cuda")
        return self._scaler

    @property
    def lr_scheduler(self):
        if self._scheduler is None:
            cls = registry.get_lr_scheduler_class(self.run_cfg.get("lr_sched", "linear_warmup_cosine_lr"))
            if self.iteration_based:
                max_epoch, per_epoch = 1, int(self.run_cfg.iters)
            else:
                max_epoch, per_epoch = int(self.run_cfg.max_epoch), self.steps_per_epoch
            r = self.run_cfg
            self._scheduler = cls(self.optimizer, max_epoch=max_epoch, iters_per_epoch=per_epoch,
                                  init_lr=float(r.init_lr), min_lr=float(r.get("min_lr", 0.0)),
                                  warmup_start_lr=float(r.get("warmup_lr", -1)),
                                  warmup_steps=int(r.get("warmup_steps", 0)),
                                  decay_rate=float(r.get("lr_decay_rate", 0.9) or 0.9))
        return self._scheduler

    def datasets_of_split(self, split: str) -> list:
        return [by_split[split] for by_split in self.datasets.values() if split in by_split]

    @property
    def train_stream(self) -> TrainStream:
        if self._stream is None:
            names = [n for n, by_split in self.datasets.items() for s in self.split_names("train_splits")
                     if s in by_split]
            if not names:
                raise ValueError(f"No dataset has a split in run.train_splits={self.split_names('train_splits')}")
            seed = int(self.run_cfg.get("seed", 42))
            sources, ratios = [], []
            for name in self.datasets:
                for split in self.split_names("train_splits"):
                    if split in self.datasets[name]:
                        sources.append(BatchSource(
                            self.datasets[name][split], self.run_cfg.batch_size_train,
                            int(self.run_cfg.get("num_workers", 0)), seed, self.device.type == "cuda", name=name,
                            lengths=self._sample_lengths(self.datasets[name][split]),
                            groups=self._batch_groups(self.datasets[name][split])))
                        ratios.append(self.config.datasets_cfg.get(name, {}).get("sample_ratio", None))
            given = [r is not None for r in ratios]
            if any(given) and not all(given):
                raise ValueError("sample_ratio must be set on every training dataset or on none; "
                                 f"set on {[n for n, g in zip(names, given) if g]}")
            self._stream = TrainStream(sources, [float(r) for r in ratios] if all(given) else None, seed)
        return self._stream

    def _batch_groups(self, dataset):
        """run.batch_group_key: that field of every training record; equal keys share a batch
        (datasets/group_sampler.py)."""
        key = self.run_cfg.get("batch_group_key", None)
        if not key:
            return None
        annotation = getattr(dataset, "annotation", None)
        if annotation is None:
            raise ValueError(f"run.batch_group_key={key!r} needs a dataset with records (annotation); "
                             f"{type(dataset).__name__} has none")
        keys = [rec.get(key) for rec in annotation]
        if all(k is None for k in keys):
            raise ValueError(f"run.batch_group_key={key!r}: no training record of {type(dataset).__name__} has "
                             "that field")
        return keys

    def _sample_lengths(self, dataset):
        """run.length_grouped_sampler: the records' true token lengths where the dataset tokenises them
        (datasets/chat_encoding.py), else estimated ones (datasets/samplers.py)."""
        if not self.run_cfg.get("length_grouped_sampler", False) or not hasattr(dataset, "annotation"):
            return None
        true_lengths = dataset.sample_lengths() if hasattr(dataset, "sample_lengths") else None
        if true_lengths is not None:
            return true_lengths
        from lavis_lite.datasets.samplers import estimate_lengths
        return estimate_lengths(dataset.annotation, int(self.config.model_cfg.get("num_query_token", 32)))

    @property
    def steps_per_epoch(self) -> int:
        steps = len(self.train_stream) // self.accum_grad_iters
        if steps == 0:
            raise ValueError(f"An epoch has {len(self.train_stream)} batches per rank, fewer than "
                             f"accum_grad_iters={self.accum_grad_iters}")
        return steps

    @property
    def eval_loaders(self) -> dict:
        if self._eval_loaders is None:
            self._eval_loaders = {}
            for split in self.split_names("valid_splits") + self.split_names("test_splits"):
                found = self.datasets_of_split(split)
                if not found:
                    raise ValueError(f"No dataset has the evaluation split {split!r}")
                dataset = concat_eval_datasets(found, split)
                batch = self.run_cfg.get("batch_size_eval", self.run_cfg.get("batch_size_train", 1))
                self._eval_loaders[split] = build_eval_loader(dataset, batch, int(self.run_cfg.get("num_workers", 0)),
                                                              self.device.type == "cuda")
        return self._eval_loaders

    @property
    def stepper(self) -> Stepper:
        if self._stepper is None:
            self._stepper = self.build_stepper()
            if self.trackers is not None:  # per-step records for metrics.jsonl and the loggers
                self._stepper = self.trackers.wrap_stepper(self._stepper, self.step_position)
        return self._stepper

    def build_stepper(self) -> Stepper:
        return Stepper(self.model, self.optimizer, self.lr_scheduler, self.accum_grad_iters,
                       self.run_cfg.get("max_grad_norm", None), self.scaler, self.amp_dtype, self.device)

    # ---- training -------------------------------------------------------------------------
    @property
    def n_epochs(self) -> int:
        if self.iteration_based:
            return math.ceil(int(self.run_cfg.iters) / int(self.run_cfg.iters_per_inner_epoch))
        return int(self.run_cfg.max_epoch)

    def train(self):
        try:
            return self._train()
        finally:
            if not self.evaluate_only and dist_utils.is_main_process():
                release_lock(self.output_dir)

    def _train(self):
        start = time.time()
        self.dump_config()
        self.maybe_resume()
        self.trackers = self.trackers or start_trackers(self)
        if not self.evaluate_only:
            drop_records_from(self.output_dir, self.start_epoch)  # what a killed attempt logged past its checkpoint
            logger.info("training %s from epoch %d: %s", type(self._model).__name__, self.start_epoch,
                        getattr(self._model, "show_n_params", lambda: "")())
            for epoch in range(self.start_epoch, self.n_epochs):
                stats = self.train_one_epoch(epoch)
                self.report_skipped(epoch)
                self.log_stats(stats, "train", epoch)
                self.start_epoch = epoch + 1  # what a checkpoint written from here on resumes at
                self.validate(epoch)
                self.save_checkpoint(ckpt.step_dir_name(self.global_step(epoch + 1)))
                ckpt.prune_step_checkpoints(self.output_dir, int(self.run_cfg.get("keep_checkpoints", 2)))
                dist_utils.barrier()
        test_logs = self.evaluate(self.split_names("test_splits"), cur_epoch="best") \
            if self.split_names("test_splits") else {}
        logger.info("training time %.1fs", time.time() - start)
        self.trackers.finish()
        return test_logs

    def report_skipped(self, epoch: int) -> dict:
        """Per-epoch counts of training samples skipped under ``on_error: skip`` (datasets keep them)."""
        report = {}
        for name, by_split in self.datasets.items():
            for split in self.split_names("train_splits"):
                dataset = by_split.get(split) if hasattr(by_split, "get") else None
                if hasattr(dataset, "skip_report"):
                    counts = dataset.skip_report(reset=True)
                    if counts.get("skipped") or counts.get("skipped_at_load"):
                        report[f"{name}/{split}"] = counts
        if report:
            logger.warning("epoch %d: bad samples skipped: %s", epoch, report)
        return report

    def step_position(self, sched_epoch: int, step: int) -> tuple[int, int]:
        """(epoch, optimizer steps done before this one) of the inner loop's ``begin_window`` arguments."""
        if self.iteration_based:
            return step // int(self.run_cfg.iters_per_inner_epoch), step
        return sched_epoch, self.global_step(sched_epoch) + step

    def global_step(self, epoch: int) -> int:
        """Optimizer steps taken before ``epoch`` starts."""
        if self.iteration_based:
            return min(epoch * int(self.run_cfg.iters_per_inner_epoch), int(self.run_cfg.iters))
        return epoch * self.steps_per_epoch

    def train_one_epoch(self, epoch: int) -> dict:
        progress = bool(self.run_cfg.get("progress_bar", True))
        log_freq = int(self.run_cfg.get("log_freq", 50))
        if self.iteration_based:
            start = self.global_step(epoch)
            n = self.global_step(epoch + 1) - start
            return self.task.train_iters(epoch, start, n, self.model, self.train_stream, self.stepper,
                                         log_freq=log_freq, progress=progress)
        self.train_stream.set_epoch(epoch)
        return self.task.train_epoch(epoch, self.model, self.train_stream, self.stepper,
                                     iters_per_epoch=self.steps_per_epoch, log_freq=log_freq, progress=progress)

    def validate(self, epoch: int) -> None:
        splits = self.split_names("valid_splits")
        every = int(self.run_cfg.get("valid_every", 1))
        if not splits or ((epoch + 1) % every and epoch + 1 != self.n_epochs):
            return
        for split in splits:
            metrics = self.eval_epoch(split, epoch) or {}
            self.log_stats(metrics, split, epoch)
            # Metrics may exist on rank 0 only; rank 0 decides and tells the others.
            agg = metrics.get("agg_metrics") if dist_utils.is_main_process() else None
            is_best = [agg is not None and agg > self.best_agg_metric]
            if self.use_distributed:
                dist.broadcast_object_list(is_best, src=0)
            if is_best[0]:
                self.best_agg_metric, self.best_epoch = (agg if agg is not None else self.best_agg_metric), epoch
                self.save_checkpoint("checkpoint_best")

    @torch.no_grad()
    def eval_epoch(self, split: str, cur_epoch) -> dict:
        loader = self.eval_loaders[split]
        model = self._model
        model.to(self.device)
        self.task.before_evaluation(model=model, dataset=loader.dataset)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else _nullcontext()
        with autocast:
            results = self.task.evaluation(model, _OnDevice(loader, self.device))
        model.train()
        return self.task.after_evaluation(val_result=results, split_name=split, epoch=cur_epoch)

    def evaluate(self, split_names=None, cur_epoch="best", skip_reload=False) -> dict:
        """Evaluate ``split_names`` (default: test splits); ``cur_epoch="best"`` first loads the best
        checkpoint of this job when there is one."""
        started_here = self.trackers is None  # evaluate.py: this call owns the trackers
        self.trackers = self.trackers or start_trackers(self)
        best = os.path.join(self.output_dir, "checkpoint_best")
        if cur_epoch == "best" and not skip_reload and ckpt.is_complete(best):
            self.load_model_weights(best)
        logs = {}
        for split in split_names or self.split_names("test_splits"):
            logs[split] = self.eval_epoch(split, cur_epoch)
            self.log_stats(logs[split] or {}, split, cur_epoch)
        if started_here:
            self.trackers.finish()
            self.trackers = None
        return logs


# Registered after the class exists (the registry imports this module to check subclasses).
registry.register_runner("runner_base")(RunnerBase)


class _OnDevice:
    """A loader whose batches arrive on ``device``; keeps ``dataset`` and ``len``."""

    def __init__(self, loader, device):
        self.loader, self.device, self.dataset = loader, device, loader.dataset

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield move_to_device(batch, self.device)


def _nullcontext():
    import contextlib
    return contextlib.nullcontext()


def _jsonable(v) -> bool:
    return isinstance(v, (int, float, str, bool, list, dict)) or v is None
