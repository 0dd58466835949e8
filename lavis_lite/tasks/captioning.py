"""Captioning evaluation: generate one caption per image, score against COCO-format ground truth.

Metrics (pycocoevalcap, fractions as it reports them): Bleu_1..4, METEOR, ROUGE_L, CIDEr, SPICE
(METEOR/SPICE skipped with one warning when Java or SPICE's jars are missing);
``agg_metrics = CIDEr + Bleu_4`` as in LAVIS.

Run options: ``prompt`` (default below), ``caption_metrics`` (default all), ``caption_gt_files``
(``{split: path}``; otherwise the dataset's ``gt_path``, otherwise ``<annotation>_gt.json`` next to
the split's annotation file — the demo's and LAVIS's Karpathy naming).
"""
from __future__ import annotations

import os

from lavis_lite.common.registry import registry
from lavis_lite.common.run_schema import CaptionKeys
from lavis_lite.tasks.generative_eval import GenerativeEvalTask, leaf_datasets, run_option
from lavis_lite.tasks.metrics.caption_eval import coco_caption_eval


def _as_list(value) -> list[str]:
    return [] if not value else [value] if isinstance(value, str) else list(value)


@registry.register_task("captioning")
class CaptionTask(GenerativeEvalTask):
    run_schema = CaptionKeys  # declared run: keys (lavis_lite/common/run_schema.py)
    id_key = "image_id"
    result_name = "caption_result"
    default_prompt = "Describe this image in one short sentence."

    def __init__(self, cfg=None, **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        metrics = run_option(cfg, "caption_metrics", None)
        self.metrics = list(metrics) if metrics is not None else None
        self.gt_files = dict(run_option(cfg, "caption_gt_files", {}) or {})
        self._dataset_gt: list[str] = []

    def prepare_references(self, dataset) -> None:
        files = []
        for part in leaf_datasets(dataset):
            gt = getattr(part, "gt_path", None)
            if not gt:
                guesses = [os.path.splitext(p)[0] + "_gt.json" for p in getattr(part, "ann_paths", [])]
                gt = next((g for g in guesses if os.path.isfile(g)), None)
            if gt and gt not in files:
                files.append(gt)
        # Fail before hours of generation, not after.
        for gt in files + [p for v in self.gt_files.values() for p in _as_list(v)]:
            if not os.path.isfile(gt):
                raise FileNotFoundError(f"captioning: ground-truth file {gt} does not exist (COCO caption format; "
                                        "for COCO Karpathy it is coco_karpathy_<split>_gt.json)")
        self._dataset_gt = files

    def ground_truth_files(self, split_name: str) -> list[str]:
        gt = _as_list(self.gt_files.get(split_name)) or self._dataset_gt
        if not gt:
            raise FileNotFoundError(f"captioning: no ground-truth file for split {split_name!r}; set "
                                    f"run.caption_gt_files.{split_name} or give the dataset a gt_path")
        return gt

    def valid_step(self, model, samples) -> list[dict]:
        n = len(samples["image_id"])
        captions = self.generate(model, samples, [self.prompt] * n)
        ids = samples["image_id"]
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        inst = samples.get("instance_id", [None] * n)
        return [{"image_id": i, "caption": c, "instance_id": k} for i, c, k in zip(ids, captions, inst)]

    def compute_metrics(self, records: list[dict], split_name: str) -> dict:
        scores = coco_caption_eval(self.ground_truth_files(split_name),
                                   [{"image_id": r["image_id"], "caption": r["caption"]} for r in records],
                                   metrics=self.metrics)
        agg = scores.get("CIDEr", 0.0) + scores.get("Bleu_4", 0.0)
        return {**scores, "agg_metrics": agg}
