"""What train.py and evaluate.py share: arguments, config, distributed setup, building the job.

Works as ``python train.py ...`` (one process) and under ``torchrun`` (env://, one or more nodes).
A configuration error is raised before any dataset or model is built.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os

from lavis_lite.common import dist_utils
from lavis_lite.common.checkpoint import find_latest_checkpoint
from lavis_lite.common.config import Config, ConfigError
from lavis_lite.common.logger import setup_logger
from lavis_lite.common.registry import registry

logger = logging.getLogger(__name__)


def parse_args(argv=None, description: str = "") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg-path", required=True, help="run YAML (projects/...)")
    parser.add_argument("--options", nargs="+", default=[],
                        help="override config entries: run.init_lr=1e-4 model.freeze_vit=False ...")
    parser.add_argument("--job-id", default=None, help="output sub-directory name (default: a timestamp)")
    parser.add_argument("--resume", default=None,
                        help="a checkpoint directory, or 'auto' = the latest complete checkpoint of the job")
    parser.add_argument("--overwrite", action="store_true",
                        help="the job folder holds an earlier run: move it aside to <job>.replaced-<time> and start over")
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        help="plugin module or .py file registering extra components (repeatable)")
    return parser.parse_args(argv)


def _auto_job_id(output_dir: str) -> str | None:
    """For ``--resume auto`` without ``--job-id``: the most recent job with a complete checkpoint."""
    if not os.path.isdir(output_dir):
        return None
    jobs = [j for j in os.listdir(output_dir)
            if ".replaced-" not in j and find_latest_checkpoint(os.path.join(output_dir, j))]  # not --overwrite's
    return max(jobs, key=lambda j: os.path.getmtime(os.path.join(output_dir, j))) if jobs else None


def load_config(args, evaluate_only: bool = False) -> Config:
    if args.imports:
        from lavis_lite.common.plugins import import_plugins
        import_plugins(args.imports)
    options = list(args.options)
    if args.resume:
        options.append(f"run.resume_ckpt_path={args.resume}")
    if getattr(args, "overwrite", False):
        if args.resume:
            raise ConfigError("--overwrite and --resume contradict each other: resume a run or replace it")
        options.append("run.overwrite=True")
    if evaluate_only:
        options.append("run.evaluate=True")
    args.options = options
    cfg = Config(args)
    run = cfg.run_cfg
    runner_cls = registry.get_runner_class(run.get("runner", "runner_base"))
    registry.get_task_class(run.task)
    runner_cls.validate_config(cfg)
    return cfg


def job_id_for(args, cfg) -> str:
    job_id = args.job_id or cfg.run_cfg.get("job_id", None)
    if job_id is None and str(args.resume) == "auto":
        out = os.path.abspath(os.path.expanduser(str(cfg.run_cfg.get("output_dir", "output"))))
        job_id = _auto_job_id(out)
    if job_id is None:
        job_id = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    return str(dist_utils.broadcast_object(job_id))  # every rank writes into the same job directory


def build_job(argv=None, evaluate_only: bool = False, description: str = ""):
    """Parse, configure, initialise processes and build (task, datasets, model, runner)."""
    args = parse_args(argv, description)
    try:
        cfg = load_config(args, evaluate_only)
    except (ConfigError, KeyError, ValueError) as err:
        raise SystemExit(f"Configuration error: {err}") from err
    dist_utils.init_distributed_mode(cfg.run_cfg)
    from lavis_lite.runners.runner_base import setup_seeds
    setup_seeds(cfg.run_cfg, per_rank=False)  # identical random init of the model on every rank
    setup_logger()
    job_id = job_id_for(args, cfg)
    cfg.pretty_print()
    task = registry.get_task_class(cfg.run_cfg.task).setup_task(cfg=cfg)  # LAVIS: setup_task(cfg=cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    setup_seeds(cfg.run_cfg)  # per-rank streams from here on (data order, dropout)
    # the data side meets the model: conversations tokenised in DataLoader workers with the model's chat
    # processor; run.feature_cache.enabled: training splits read cached frozen-stage features
    from lavis_lite.datasets.model_wiring import wire_datasets
    datasets = wire_datasets(cfg, model, datasets)
    runner_cls = registry.get_runner_class(cfg.run_cfg.get("runner", "runner_base"))
    from lavis_lite.runners.job_folder import JobFolderError
    try:
        runner = runner_cls(cfg=cfg, task=task, model=model, datasets=datasets, job_id=job_id)
    except JobFolderError as err:
        raise SystemExit(f"Job folder error: {err}") from err
    return cfg, task, runner
