"""Processor contract: one sample in -> one tensor or string out, built from config."""
from __future__ import annotations

from omegaconf import OmegaConf


def identity(item):
    return item


class BaseProcessor:
    """Subclasses set ``self.transform`` (or override ``__call__``) and ``from_config``.
    Processors must pickle (spawned DataLoader workers receive them), hence no lambdas."""

    def __init__(self):
        self.transform = identity

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
