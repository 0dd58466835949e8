"""BaseDatasetBuilder: build_info -> files on disk -> {split: Dataset} with processors.

(Foundation skeleton: the data-pipeline work completes download/storage handling.)
"""
from __future__ import annotations

from omegaconf import OmegaConf

from lavis_lite.common.config import resolve_config_path


class BaseDatasetBuilder:
    DATASET_CONFIG_DICT: dict[str, str] = {"default": None}
    train_dataset_cls = None
    eval_dataset_cls = None

    def __init__(self, cfg=None):
        if cfg is None:
            cfg = OmegaConf.load(self.default_config_path()).datasets
            cfg = next(iter(cfg.values()))
        self.config = cfg

    @classmethod
    def default_config_path(cls, type: str = "default") -> str:
        if type not in cls.DATASET_CONFIG_DICT or cls.DATASET_CONFIG_DICT[type] is None:
            raise KeyError(f"Unknown dataset type {type!r} for {cls.__name__}; "
                           f"available types: {sorted(k for k, v in cls.DATASET_CONFIG_DICT.items() if v)}")
        return resolve_config_path(cls, cls.DATASET_CONFIG_DICT[type])

    def build_datasets(self):  # pragma: no cover - completed by the data pipeline
        raise NotImplementedError
