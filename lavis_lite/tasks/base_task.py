"""BaseTask: what a training step and an evaluation mean.

(Foundation skeleton: the training work adds train_step / train_epoch / evaluation.)
"""
from __future__ import annotations

from lavis_lite.common.registry import registry


class BaseTask:
    def __init__(self, **kwargs):
        self.inst_id_key = "instance_id"

    @classmethod
    def setup_task(cls, cfg=None, **kwargs):
        return cls()

    def build_model(self, cfg):
        model_cfg = cfg.model_cfg
        return registry.get_model_class(model_cfg.arch).from_config(model_cfg)

    def build_datasets(self, cfg):
        datasets = {}
        for name, ds_cfg in cfg.datasets_cfg.items():
            builder = registry.get_builder_class(ds_cfg.get("builder", name))(ds_cfg)
            datasets[name] = builder.build_datasets()
        return datasets
