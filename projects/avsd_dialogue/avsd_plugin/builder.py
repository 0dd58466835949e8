"""Builder ``avsd_dialogue``: build_info -> annotation and feature files -> {split: dataset}.

``build_info.storage`` is the data directory (relative paths live under lavis_lite's
cache_root). With a ``build_info.synthetic`` section the builder writes the synthetic
data set there when it is missing or was written with other settings, so a fresh
clone trains without any download.
"""
from __future__ import annotations

import json
import logging
import os

from omegaconf import OmegaConf

from lavis_lite.common import dist_utils
from lavis_lite.common.registry import registry
from lavis_lite.datasets.builders.base_dataset_builder import BaseDatasetBuilder

from .datasets import DialogueDataset, DialogueEvalDataset
from .synthetic import write_synthetic_avsd

logger = logging.getLogger(__name__)

SYNTHETIC_MARKER = "synthetic.json"


@registry.register_builder("avsd_dialogue")
class AVSDDialogueBuilder(BaseDatasetBuilder):
    train_dataset_cls = DialogueDataset
    eval_dataset_cls = DialogueEvalDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/avsd_dialogue.yaml"}

    def storage_dir(self) -> str:
        info = self._build_info()
        storage = info.get("storage", None)
        if not storage:
            raise KeyError("datasets.<name>.build_info.storage is not set for builder 'avsd_dialogue'")
        storage = os.path.expanduser(str(storage))
        return storage if os.path.isabs(storage) else dist_utils.get_cache_path(storage)

    def _build_info(self):
        info = self.config.get("build_info", None)
        if info is None:
            raise KeyError("builder 'avsd_dialogue' needs a 'build_info' section (storage, annotations, features)")
        return info

    def prepare_data(self) -> str:
        """Write the synthetic data when configured and not there yet (main process only)."""
        root = self.storage_dir()
        synthetic = self._build_info().get("synthetic", None)
        if synthetic is not None:
            settings = OmegaConf.to_container(synthetic, resolve=True)
            marker = os.path.join(root, SYNTHETIC_MARKER)
            current = None
            if os.path.isfile(marker):
                with open(marker) as f:
                    current = json.load(f)
            if current != settings and dist_utils.is_main_process():
                logger.info("writing the synthetic AVSD-format data set to %s (%s)", root, settings)
                write_synthetic_avsd(root, **settings)
                with open(marker, "w") as f:
                    json.dump(settings, f)
            dist_utils.barrier()
        return root

    def build_processors(self) -> dict:
        """{"vis": {"train", "eval"}, "text": {"train", "eval"}} from the vis_/text_processor sections."""
        procs = {}
        for kind in ("vis", "text"):
            section = self.config.get(f"{kind}_processor", None)
            if section is None:
                raise KeyError(f"builder 'avsd_dialogue' needs a '{kind}_processor' section with 'train'/'eval'")
            procs[kind] = {}
            for split in ("train", "eval"):
                cfg = section.get(split, None) or section.get("train", None)
                if cfg is None or "name" not in cfg:
                    raise KeyError(f"'{kind}_processor.{split}' of builder 'avsd_dialogue' needs a 'name'")
                procs[kind][split] = registry.get_processor_class(cfg.name).from_config(cfg)
        return procs

    def build_datasets(self) -> dict:
        root = self.prepare_data()
        info = self._build_info()
        features = os.path.join(root, info.get("features", "features"))
        procs = self.build_processors()
        datasets = {}
        for split, rel_paths in info.annotations.items():
            rel_paths = [rel_paths] if isinstance(rel_paths, str) else list(rel_paths)
            paths = [p if os.path.isabs(p) else os.path.join(root, p) for p in rel_paths]
            is_train = split == "train"
            cls = self.train_dataset_cls if is_train else self.eval_dataset_cls
            stage = "train" if is_train else "eval"
            datasets[split] = cls(procs["vis"][stage], procs["text"][stage], features, paths)
        return datasets
