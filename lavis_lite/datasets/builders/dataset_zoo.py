"""The dataset zoo: list registered data sets and load one with its default (or given) config.

    from lavis_lite.datasets.builders import dataset_zoo, load_dataset
    dataset_zoo.get_names()                      # ['caption', 'coco_caption', ...]
    load_dataset("coco_caption")                 # {"train": ..., "val": ..., "test": ...}
"""
from __future__ import annotations

from omegaconf import OmegaConf

from lavis_lite.common.config import ConfigError
from lavis_lite.common.registry import registry


def get_names() -> list[str]:
    return registry.list_datasets()


def load_dataset_config(name: str, cfg_path: str | None = None, data_type: str | None = None):
    """The builder's default config, or ``datasets.<name>`` of ``cfg_path`` merged over it."""
    builder_cls = registry.get_builder_class(name)
    cfg = builder_cls.default_config()
    if cfg_path is not None:
        datasets = OmegaConf.load(cfg_path).get("datasets", None) or {}
        section = datasets.get(name, None)
        if section is None and len(datasets) == 1:
            section = next(iter(datasets.values()))
        if section is None:
            raise ConfigError(f"{cfg_path} has no 'datasets.{name}' section")
        cfg = OmegaConf.merge(cfg, section)
    if data_type is not None:
        cfg.data_type = data_type
    return cfg


def load_dataset(name: str, cfg_path: str | None = None, vis_path: str | None = None,
                 data_type: str | None = None) -> dict:
    """Build the splits of ``name`` that exist. ``vis_path`` overrides where the images live
    (``build_info.<data_type>.storage``; data_type defaults to the config's, i.e. "images")."""
    cfg = load_dataset_config(name, cfg_path, data_type)
    if vis_path is not None:
        key = cfg.get("data_type", "images")
        OmegaConf.update(cfg, f"build_info.{key}.storage", vis_path, merge=True)
    return registry.get_builder_class(name)(cfg).build_datasets()

