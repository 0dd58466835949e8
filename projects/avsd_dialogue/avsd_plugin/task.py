"""Task ``dialogue``: train on answer tokens; validate by loss and by generated answers.

Validation runs the model once for the loss (as BaseTask does) and once with beam search
for the answer to the last question of each dialogue; answers are saved per rank, merged,
and scored against the reference answers with BLEU-1..4 and CIDEr through lavis_lite's
captioning metrics. ``agg_metrics`` is CIDEr (``run.agg_metric`` picks another).
"""
from __future__ import annotations

import json
import logging

from lavis_lite.common.registry import registry
from lavis_lite.tasks.base_task import BaseTask, _unwrap

logger = logging.getLogger(__name__)


@registry.register_task("dialogue")
class DialogueTask(BaseTask):
    def __init__(self, cfg=None, num_beams: int = 3, max_len: int = 20, min_len: int = 1,
                 generate: bool = True, metrics=("bleu", "cider"), agg_metric: str = "CIDEr", **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        self.num_beams, self.max_len, self.min_len = num_beams, max_len, min_len
        self.generate, self.metrics, self.agg_metric = generate, list(metrics), agg_metric

    @classmethod
    def setup_task(cls, cfg=None, **kwargs):
        run = cfg.run_cfg if cfg is not None else {}
        return cls(cfg=cfg, num_beams=run.get("num_beams", 3), max_len=run.get("max_len", 20),
                   min_len=run.get("min_len", 1), generate=run.get("generate", True),
                   metrics=run.get("metrics", ["bleu", "cider"]), agg_metric=run.get("agg_metric", "CIDEr"))

    def valid_step(self, model, samples) -> list[dict]:
        records = super().valid_step(model, samples)  # {"loss_sum", "n_tokens", "n_correct"}
        if self.generate:
            answers = _unwrap(model).generate(samples, num_beams=self.num_beams, max_new_tokens=self.max_len,
                                              min_length=self.min_len)
            records += [{"instance_id": i, "image_id": v, "answer": a, "gt_answer": g}
                        for i, v, a, g in zip(samples["instance_id"], samples["image_id"], answers,
                                              samples["answer"])]
        return records

    def after_evaluation(self, val_result, split_name, epoch, **kwargs) -> dict:
        loss_records = [r for r in val_result if "loss_sum" in r]
        answers = [r for r in val_result if "answer" in r]
        metrics = super().after_evaluation(loss_records, split_name, epoch)
        if not self.generate:
            return metrics
        answers = self._gather(answers, split_name, epoch)
        scores = self.score(answers)
        metrics.update(scores)
        if self.agg_metric not in scores:
            raise KeyError(f"run.agg_metric {self.agg_metric!r} is not among the computed metrics {sorted(scores)}")
        metrics["agg_metrics"] = scores[self.agg_metric]
        logger.info("%s epoch %s: %s", split_name, epoch, {k: round(v, 4) for k, v in scores.items()})
        self._write_metrics(metrics, split_name, epoch)
        return metrics

    def _gather(self, answers: list[dict], split_name, epoch) -> list[dict]:
        """All ranks' answers (through the result files when a run has a result_dir)."""
        try:
            result_dir = registry.get_path("result_dir")
        except KeyError:
            return answers  # used outside a runner: one process
        path = self.save_result(answers, result_dir, f"{split_name}_epoch{epoch}", remove_duplicate="instance_id")
        with open(path) as f:
            return json.load(f)

    def score(self, answers: list[dict]) -> dict:
        from lavis_lite.tasks.metrics.caption_eval import score_captions

        if not answers:
            raise ValueError("dialogue evaluation produced no answers to score")
        refs = {str(r["instance_id"]): [r["gt_answer"]] for r in answers}
        cands = {str(r["instance_id"]): r["answer"] for r in answers}
        return score_captions(refs, cands, metrics=self.metrics)
