"""Builder ``avsd_dialogue``: lavis_lite's BaseDatasetBuilder plus a synthetic-data step.

Everything generic comes from the base: annotation files per split from
``build_info.annotations.<split>.storage`` (relative paths under cache_root, optional ``url``
and ``md5``), processors from the ``vis_processor`` / ``text_processor`` sections, the
feature root from ``build_info.features.storage`` (``data_type: features``) and the
train / eval dataset classes by split. The only addition: with a ``build_info.synthetic``
section, the synthetic AVSD-format data set is written to ``synthetic.storage`` when it is
missing or was written with other settings, so a fresh clone trains without a download.
"""
from __future__ import annotations

import json
import logging
import os

from omegaconf import OmegaConf

from lavis_lite.common import dist_utils
from lavis_lite.common.registry import registry
from lavis_lite.datasets.builders.base_dataset_builder import BaseDatasetBuilder, resolve_storage

from .datasets import DialogueDataset, DialogueEvalDataset
from .synthetic import write_synthetic_avsd

logger = logging.getLogger(__name__)

SYNTHETIC_MARKER = "synthetic.json"


@registry.register_builder("avsd_dialogue")
class AVSDDialogueBuilder(BaseDatasetBuilder):
    name = "avsd_dialogue"
    train_dataset_cls = DialogueDataset
    eval_dataset_cls = DialogueEvalDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/avsd_dialogue.yaml"}

    def fetch_annotations(self) -> None:
        self.write_synthetic_data()
        super().fetch_annotations()

    def write_synthetic_data(self) -> str | None:
        """Write the synthetic data set if configured and not there yet (main process; others wait)."""
        synthetic = self.config.build_info.get("synthetic", None)
        if synthetic is None:
            return None
        settings = OmegaConf.to_container(synthetic, resolve=True)
        root = resolve_storage(settings.pop("storage"))
        marker = os.path.join(root, SYNTHETIC_MARKER)
        if dist_utils.is_main_process():
            current = None
            if os.path.isfile(marker):
                with open(marker) as f:
                    current = json.load(f)
            if current != settings:
                logger.info("writing the synthetic AVSD-format data set to %s (%s)", root, settings)
                write_synthetic_avsd(root, **settings)
                with open(marker, "w") as f:
                    json.dump(settings, f)
        dist_utils.barrier()
        return root
