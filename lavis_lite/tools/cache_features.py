"""Precompute the frozen-feature cache of a run config's datasets.

    python -m lavis_lite.tools.cache_features --cfg-path projects/minigpt4qwen/demo.yaml \
        [--splits train val] [--root DIR] [--dtype fp16] [--batch-size 64] [--options ...]
    torchrun --nproc_per_node=N -m lavis_lite.tools.cache_features --cfg-path ...   (ranks share the work)

Builds the model and datasets the run would build, finds the model's highest frozen image stage
(ViT, Q-Former or projection), transforms every image with the dataset's eval transform and stores
the stage's output under ``run.feature_cache.root`` (keyed by image path + transform + weights
fingerprint; see lavis_lite/common/feature_cache.py). Training then reads it with
``run.feature_cache.enabled: True``. Entries already present are skipped, so it can be re-run.
"""
from __future__ import annotations

import argparse
import json
import logging
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cfg-path", required=True, help="run YAML")
    p.add_argument("--options", nargs="+", default=[], help="config overrides key=value")
    p.add_argument("--splits", nargs="+", default=None, help="dataset splits (default run.feature_cache.splits or train)")
    p.add_argument("--root", default=None, help="cache folder (default run.feature_cache.root or <cache_root>/features)")
    p.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"), help="storage dtype (default fp32)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--remove-stale", action="store_true", help="delete caches of older transforms / weights")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    import lavis_lite  # noqa: F401  (registers the built-in components)
    from lavis_lite.common import dist_utils
    from lavis_lite.common.config import Config, ConfigArgs
    from lavis_lite.datasets.feature_cache_run import prepare_feature_cache
    from lavis_lite.common.registry import registry

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = Config(ConfigArgs(cfg_path=args.cfg_path, options=list(args.options)))
    dist_utils.init_distributed_mode(cfg.run_cfg)
    from lavis_lite.runners.runner_base import setup_seeds
    setup_seeds(cfg.run_cfg, per_rank=False)  # as train.py: a random-init model gets the weights training will get
    # the command line wins over run.feature_cache; the switch is on for this tool
    from omegaconf import OmegaConf
    fc = OmegaConf.to_container(cfg.run_cfg.get("feature_cache", None) or {}, resolve=True)
    fc["enabled"] = True
    fc["build_missing"] = True
    for key, value in (("splits", args.splits), ("root", args.root), ("dtype", args.dtype),
                       ("batch_size", args.batch_size)):
        if value is not None:
            fc[key] = value
    OmegaConf.update(cfg.run_cfg, "feature_cache", fc, force_add=True)

    task = registry.get_task_class(cfg.run_cfg.task).setup_task(cfg=cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and dist_utils.is_dist_avail_and_initialized():
        device = f"cuda:{torch.cuda.current_device()}"
    model = model.to(device).eval()
    start = time.perf_counter()
    cached = prepare_feature_cache(cfg, model, datasets, progress=True)
    summary = {"seconds": round(time.perf_counter() - start, 2), "caches": {}}
    for name, by_split in cached.items():
        for split, ds in by_split.items():
            cache = getattr(ds, "feature_cache", None)
            if cache is not None:
                summary["caches"][f"{name}/{split}"] = {"dir": cache.dir, "stage": cache.stage, "entries": len(cache)}
                if args.remove_stale and dist_utils.is_main_process():
                    summary["caches"][f"{name}/{split}"]["removed_stale"] = cache.remove_stale()
    if dist_utils.is_main_process():
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
