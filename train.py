"""Train a lavis_lite job.

    python train.py --cfg-path projects/minigpt4qwen/demo.yaml [--options run.max_epoch=1 ...]
    torchrun --nproc_per_node=N train.py --cfg-path ...        (multi-node: torchrun --nnodes ... env://)
    python train.py --cfg-path ... --resume auto               (continue the latest checkpoint of the job)
"""
from __future__ import annotations

import lavis_lite  # noqa: F401  (registers the built-in components)
from lavis_lite.common import dist_utils
from lavis_lite.runners.launch import build_job


def main(argv=None):
    _, _, runner = build_job(argv, evaluate_only=False, description="Train a lavis_lite job")
    logs = runner.train()
    dist_utils.shutdown_distributed()
    return logs


if __name__ == "__main__":
    main()
