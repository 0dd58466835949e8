"""The frozen-feature cache meets a model and a run: which stage to cache, filling it, and the
``run.feature_cache`` switch that makes training splits read it (called by ``model_wiring.wire_datasets`` and
``python -m lavis_lite.tools.cache_features``). The cache itself is in feature_cache.py."""
from __future__ import annotations

import logging

import torch

from lavis_lite.common.feature_cache import (FeatureCache, FeatureCacheError, attach_feature_cache,
                                             copy_with_processor, dataset_image_paths, describe_transform,
                                             is_deterministic_transform, modules_fingerprint)

logger = logging.getLogger(__name__)


# ---- a model's frozen stages ---------------------------------------------------------------------
def stage_modules(model, stage: str) -> dict:
    """The modules / parameters (released names) whose weights determine ``stage``'s output, as the
    model declares them (``model.feature_stage_modules()``): the cache knows no model's layout."""
    declared = getattr(model, "feature_stage_modules", None)
    if declared is None:
        raise TypeError(f"{type(model).__name__} declares no feature stages (feature_stage_modules()); "
                        "it cannot use the feature cache")
    stages = declared()
    if stage not in stages:
        raise ValueError(f"{type(model).__name__} has no feature stage {stage!r}; it declares {sorted(stages)}")
    return {name: getattr(model, name) for name in stages[stage]}


def sync_frozen_stages_from_rank0(model, stage: str) -> bool:
    """Make every rank hold rank 0's weights of the frozen stages (what DDP / DeepSpeed do anyway when
    they wrap the model), but only when the ranks' fingerprints differ — e.g. a random-init model
    built with per-rank seeds. Returns True when weights were copied. Needed before fingerprinting:
    cached features must come from the weights training will use."""
    import torch.distributed as dist

    from lavis_lite.common import dist_utils

    if dist_utils.get_world_size() < 2:
        return False
    modules = stage_modules(model, stage)
    fingerprints = [None] * dist_utils.get_world_size()
    dist.all_gather_object(fingerprints, modules_fingerprint(modules))
    if len(set(fingerprints)) == 1:
        return False
    on_gpu = dist.get_backend() == "nccl"
    with torch.no_grad():
        for module in modules.values():
            tensors = [module] if isinstance(module, torch.Tensor) else list(module.state_dict().values())
            for t in tensors:
                buf = t.detach().to(torch.device("cuda", torch.cuda.current_device())) if on_gpu else t.detach()
                dist.broadcast(buf, src=0)
                if buf is not t:
                    t.detach().copy_(buf)
    logger.info("feature cache: frozen %s weights differed across ranks; copied rank 0's", stage)
    return True


def cache_for_model(model, transform, root: str, dtype: str = "fp32", stage: str | None = None) -> FeatureCache:
    """The cache of ``model``'s highest frozen stage (``model.frozen_feature_stage()``) under ``root``.

    Refuses a random transform: its output differs per epoch, so cached features would be wrong.
    """
    stage = stage or model.frozen_feature_stage()
    if stage is None:
        raise ValueError(f"{type(model).__name__} has no frozen image stage (freeze_vit is off or pos_embed "
                         "trains): there is nothing to cache")
    if not is_deterministic_transform(transform):
        raise ValueError(f"the image transform is random ({describe_transform(transform)}); the feature cache "
                         "needs a deterministic (eval) transform")
    modules = stage_modules(model, stage)
    return FeatureCache(root, stage, describe_transform(transform), modules_fingerprint(modules), dtype)


def fill_cache(model, dataset, cache: FeatureCache, batch_size: int = 32, rank: int = 0, world_size: int = 1,
               progress: bool = False) -> int:
    """Compute and store the missing entries of ``dataset``'s images; returns how many were written.

    Rank ``r`` of ``world_size`` handles every ``world_size``-th image of the dataset (a split that does
    not depend on timing), skipping those already present, so several ranks fill one cache together
    (writes are atomic; overlapping work would only cost time).
    """
    from lavis_lite.datasets.datasets.base_dataset import decode_image

    paths = [p for p in dataset_image_paths(dataset)[rank::world_size] if not cache.has(p)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc=f"caching {cache.stage} features", unit="img")
    was_training = model.training
    model.eval()
    written = 0
    try:
        for s in range(0, len(paths), batch_size):
            chunk = paths[s:s + batch_size]
            pixels = [dataset.vis_processor(decode_image(p, dataset.vis_processor)) for p in chunk]
            with torch.no_grad():
                features, stage = model.extract_frozen_features(torch.stack(pixels).to(model.device))
            if stage != cache.stage:
                raise FeatureCacheError(f"the model's frozen stage is {stage!r} but the cache holds {cache.stage!r}")
            for p, f in zip(chunk, features):
                cache.put(p, f)
            written += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return written


# ---- run-config switch: training reads the cache ---------------------------------------------------
def _eval_processor(cfg, name: str):
    from lavis_lite.common.registry import registry

    ds_cfg = cfg.datasets_cfg.get(name, {}) or {}
    proc_cfg = (ds_cfg.get("vis_processor", {}) or {}).get("eval")
    if proc_cfg is None:
        raise ValueError(f"datasets.{name}.vis_processor.eval is not set: the feature cache needs the dataset's "
                         "deterministic eval transform")
    return registry.get_processor_class(proc_cfg.get("name")).from_config(proc_cfg)


def feature_cache_settings(run_cfg) -> dict | None:
    """``run.feature_cache`` ({enabled, root, dtype, splits, batch_size}) or None when off."""
    fc = run_cfg.get("feature_cache", None) if run_cfg is not None else None
    if not fc or not fc.get("enabled", False):
        return None
    from lavis_lite.datasets.builders.base_dataset_builder import resolve_storage

    return {"root": resolve_storage(fc.get("root", "features")), "dtype": str(fc.get("dtype", "fp32")),
            "splits": list(fc.get("splits", ["train"])), "batch_size": int(fc.get("batch_size", 32)),
            "build_missing": bool(fc.get("build_missing", True))}


def prepare_feature_cache(cfg, model, datasets: dict, progress: bool = True, force: bool = False) -> dict:
    """Make the configured splits read the frozen-feature cache (``run.feature_cache.enabled``).

    For each dataset split in ``run.feature_cache.splits`` (default ``[train]``): the images are
    transformed with the dataset's *eval* processor (the cache needs a deterministic transform, so
    random augmentation is off while the cache is used), missing entries are computed (all ranks share
    the work, then wait for each other), and the split is replaced by a copy that reads the cache.
    Returns the new ``{name: {split: dataset}}``; without the switch (and without ``force``) it is unchanged.
    """
    from lavis_lite.common import dist_utils

    settings = feature_cache_settings(cfg.run_cfg)
    if settings is None:
        if not force:
            return datasets
        settings = feature_cache_settings({"feature_cache": {"enabled": True}})
    splits = settings["splits"]
    if cfg.run_cfg.get("evaluate", False):  # evaluation-only job: no training split needs features
        splits = [s for s in splits if s != "train"]
    out = {}
    for name, by_split in datasets.items():
        out[name] = dict(by_split)
        for split in splits:
            if split not in by_split:
                continue
            dataset = by_split[split]
            if not hasattr(dataset, "image_path"):
                logger.info("feature cache: %s/%s is not an image dataset with paths; left as is", name, split)
                continue
            processor = _eval_processor(cfg, name)
            if model.frozen_feature_stage() is not None:
                sync_frozen_stages_from_rank0(model, model.frozen_feature_stage())
            cache = cache_for_model(model, processor, settings["root"], settings["dtype"])
            dataset = copy_with_processor(dataset, processor)
            if settings["build_missing"]:
                written = fill_cache(model, dataset, cache, settings["batch_size"], dist_utils.get_rank(),
                                     dist_utils.get_world_size(), progress and dist_utils.is_main_process())
                dist_utils.barrier()
                written += fill_cache(model, dataset, cache, settings["batch_size"])  # a rank that failed midway
                logger.info("feature cache %s: %s/%s, %d new entries", cache.dir, name, split, written)
            out[name][split] = attach_feature_cache(dataset, cache)
    return out
