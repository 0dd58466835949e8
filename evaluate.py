"""Evaluate a lavis_lite job: the run YAML's test splits (``run.test_splits``) with the task's metrics.

    python evaluate.py --cfg-path projects/minigpt4qwen/eval_*.yaml [--options model.finetuned=ckpt.safetensors]
    torchrun --nproc_per_node=N evaluate.py --cfg-path ...
"""
from __future__ import annotations

import json

import lavis_lite  # noqa: F401  (registers the built-in components)
from lavis_lite.common import dist_utils
from lavis_lite.runners.launch import build_job


def main(argv=None):
    _, _, runner = build_job(argv, evaluate_only=True, description="Evaluate a lavis_lite job")
    splits = runner.split_names("test_splits") or runner.split_names("valid_splits")
    if not splits:
        raise SystemExit("Nothing to evaluate: set run.test_splits (or run.valid_splits) in the run YAML")
    metrics = runner.evaluate(splits, cur_epoch="eval", skip_reload=True)
    is_main = dist_utils.is_main_process()
    dist_utils.shutdown_distributed()
    if is_main:
        print(json.dumps(metrics, indent=2, default=str))
    return metrics


if __name__ == "__main__":
    main()
