"""Datasets meet the built model (``launch.build_job``, ``tools/cache_features``).

* Conversation datasets' training splits tokenise with the model's ``chat_template`` processor and lay
  out rows with its ``ChatCollator`` settings, inside DataLoader workers (chat_encoding.py).
* ``run.feature_cache``: splits read cached frozen-stage features (feature_cache_run.py).
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def attach_chat_processors(model, datasets: dict, splits=("train",)) -> int:
    """Give every conversation dataset of ``splits`` the model's processor and collator; returns how many."""
    from lavis_lite.datasets.chat_collator import ChatCollator

    processor = getattr(model, "chat_processor", None)
    if processor is None:
        return 0
    attached = 0
    for name, by_split in datasets.items():
        for split, dataset in by_split.items():
            if split in splits and hasattr(dataset, "attach_chat"):
                size = getattr(getattr(dataset, "vis_processor", None), "image_size", 224)
                dataset.attach_chat(processor, ChatCollator.for_model(model, image_size=size))
                attached += 1
                logger.info("%s/%s: conversations are tokenised in the data loader (%s template)", name, split,
                            processor.template.name)
    return attached


def wire_datasets(cfg, model, datasets: dict) -> dict:
    attach_chat_processors(model, datasets)
    from lavis_lite.datasets.feature_cache_run import prepare_feature_cache
    return prepare_feature_cache(cfg, model, datasets)
