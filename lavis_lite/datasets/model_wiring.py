"""Datasets meet the built model (``launch.build_job``, ``tools/cache_features``).

* Conversation datasets (map-style and WebDataset instruction streams) tokenise with the model's
  ``chat_template`` processor inside DataLoader workers (chat_encoding.py): training splits lay out rows
  with the model's ``ChatCollator`` settings, evaluation splits one conversation per row.
* ``run.feature_cache``: splits read cached frozen-stage features (feature_cache_run.py).
* ``run.image_memory_cache``: splits keep their processed images in memory (image_cache.py).
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def attach_chat_processors(model, datasets: dict, train_splits=("train",)) -> int:
    """Give every conversation dataset the model's processor and a collator; returns how many.
    ``train_splits`` get the model's training layout (packing, padding); every other split (validation,
    test) one conversation per row with all its images, so evaluation loss / token accuracy and
    generation take the same tensors the in-process path built from raw conversations."""
    from lavis_lite.datasets.chat_collator import ChatCollator

    processor = getattr(model, "chat_processor", None)
    if processor is None:
        return 0
    attached = 0
    for name, by_split in datasets.items():
        for split, dataset in by_split.items():
            if not hasattr(dataset, "attach_chat") or not dataset.wants_chat():
                continue
            size = getattr(getattr(dataset, "vis_processor", None), "image_size", 224)
            evaluation = split not in train_splits
            dataset.attach_chat(processor, ChatCollator.for_model(model, image_size=size, evaluation=evaluation))
            attached += 1
            logger.info("%s/%s: conversations are tokenised in the data loader (%s template, %s layout)", name,
                        split, processor.template.name, "evaluation" if evaluation else "training")
    return attached


def wire_datasets(cfg, model, datasets: dict) -> dict:
    run = cfg.run_cfg if hasattr(cfg, "run_cfg") else cfg.get("run", {})
    attach_chat_processors(model, datasets, tuple(run.get("train_splits", None) or ("train",)))
    from lavis_lite.datasets.feature_cache_run import prepare_feature_cache
    from lavis_lite.datasets.image_cache import attach_memory_caches
    datasets = prepare_feature_cache(cfg, model, datasets)
    attach_memory_caches(run, datasets)
    return datasets
