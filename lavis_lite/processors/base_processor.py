"""Processor contract: one sample in -> one tensor or string out, built from config."""
from __future__ import annotations

from omegaconf import OmegaConf


class BaseProcessor:
    """Subclasses set ``self.transform`` (or override ``__call__``) and ``from_config``."""

    def __init__(self):
        self.transform = lambda x: x

    def __call__(self, item):
        return self.transform(item)

    @classmethod
    def from_config(cls, cfg=None):
        return cls()

    def build(self, **kwargs):
        return self.from_config(OmegaConf.create(kwargs))


def cfg_get(cfg, key, default):
    """``cfg.get(key, default)`` for a DictConfig, a dict or None."""
    if cfg is None:
        return default
    value = cfg.get(key, default)
    return default if value is None else value
