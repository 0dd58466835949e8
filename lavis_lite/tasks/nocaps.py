"""NoCaps captioning evaluation (``nocaps``): the caption metrics per domain and overall.

Generation is the ``captioning`` task's; scoring reads the official COCO-format ground truth with
each image's ``domain`` (``nocaps_val_4500_captions.json``; ``run.caption_gt_files.<split>``, relative paths under
cache_root, or the split's ``gt`` storage) and reports ``{metric}`` (overall, as LAVIS's captioning task) plus
``in-domain`` / ``near-domain`` / ``out-domain`` / ``overall`` tables (tasks/metrics/nocaps_eval.py).
``agg_metrics`` = overall CIDEr. The test split's references are held by the evaluation server:
without a ground-truth file the captions are saved for submission and not scored.
"""
from __future__ import annotations

import logging

from lavis_lite.common.registry import registry
from lavis_lite.datasets.builders.base_dataset_builder import resolve_storage
from lavis_lite.tasks.captioning import CaptionTask, _as_list
from lavis_lite.tasks.metrics.nocaps_eval import nocaps_scores

logger = logging.getLogger(__name__)


@registry.register_task("nocaps")
class NoCapsTask(CaptionTask):
    result_name = "nocaps_result"

    def __init__(self, cfg=None, **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        # relative ground-truth paths live under cache_root, like the datasets' storage
        self.gt_files = {split: [resolve_storage(p) for p in _as_list(v)] for split, v in self.gt_files.items()}

    def compute_metrics(self, records, split_name):
        gt = _as_list(self.gt_files.get(split_name)) or self._dataset_gt
        if not gt:
            logger.warning("nocaps: no ground truth for split %r; %d captions saved for the evaluation server, "
                           "not scored", split_name, len(records))
            return {"agg_metrics": 0.0, "n": len(records), "scored": False}
        if len(gt) != 1:
            raise ValueError(f"nocaps: expected one ground-truth file for split {split_name!r}, got {gt}")
        scores = nocaps_scores(gt[0], [{"image_id": r["image_id"], "caption": r["caption"]} for r in records],
                               metrics=self.metrics)
        return {**scores["overall"], "per_domain": {k: v for k, v in scores.items() if k != "n_images"},
                "n_images": scores["n_images"], "agg_metrics": scores["overall"].get("CIDEr", 0.0)}
