"""VQA evaluation: generate a short answer per question, score with the official VQAv2 accuracy.

The human answers are read from the split's annotation files (``dataset.ann_paths``: records with
``question_id`` and ``answer`` — a string or the annotators' list —, optional ``answer_type`` /
``question_type``), since the eval samples only carry de-duplicated answers. Metrics are
percentages: ``overall`` (= ``agg_metrics``), ``per_answer_type`` / ``per_question_type`` when the
annotations carry the types. A split without answers (a test-dev submission) is only saved.

Run options: ``prompt`` with ``{}`` for the question (default below), ``vqa_always_normalize``
(default false: the official script normalises only when annotators disagree), ``clean_answers``
(default true: first line of the generation, lower-cased, trailing period dropped),
``vqa_annotation_files`` (``{split: path | [paths]}``, e.g. the official ``v2_mscoco_val2014_annotations.json``
for per-answer-type figures; otherwise the split's own annotation files).
"""
from __future__ import annotations

import logging

from lavis_lite.common.registry import registry
from lavis_lite.common.run_schema import VQAKeys
from lavis_lite.tasks.generative_eval import GenerativeEvalTask, leaf_datasets, run_option
from lavis_lite.tasks.metrics.vqa_eval import vqa_score

logger = logging.getLogger(__name__)


def clean_answer(text: str) -> str:
    """A chat model's reply -> a VQA-style answer: first line, lower case, no trailing period."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    first = lines[0].strip() if lines else ""
    return first.lower().rstrip(".").strip()


def load_vqa_annotations(paths) -> dict:
    """``{question_id: {"answers": [...], "answer_type"?, "question_type"?}}`` from annotation files."""
    from lavis_lite.datasets.datasets.base_dataset import read_annotation_file
    from lavis_lite.datasets.datasets.errors import ErrorPolicy
    annotations = {}
    for path in paths:
        for index, rec in read_annotation_file(path, ErrorPolicy("raise")):
            if not isinstance(rec, dict) or "question_id" not in rec:
                raise KeyError(f"{path}: record #{index} has no 'question_id'")
            if "answer" not in rec and "answers" not in rec:
                continue
            answers = rec.get("answer", rec.get("answers"))
            answers = [answers] if isinstance(answers, (str, dict)) else list(answers)
            entry = {"answers": answers}
            for key in ("answer_type", "question_type"):
                if rec.get(key) is not None:
                    entry[key] = rec[key]
            annotations[rec["question_id"]] = entry
    return annotations


@registry.register_task("vqa")
class VQATask(GenerativeEvalTask):
    run_schema = VQAKeys  # declared run: keys (lavis_lite/common/run_schema.py)
    id_key = "question_id"
    result_name = "vqa_result"
    default_prompt = "{}\nAnswer the question using a single word or phrase."
    default_max_new_tokens = 10

    def __init__(self, cfg=None, **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        if "{}" not in self.prompt:
            raise ValueError(f"vqa: run.prompt must contain '{{}}' where the question goes, got {self.prompt!r}")
        self.always_normalize = bool(run_option(cfg, "vqa_always_normalize", False))
        self.clean_answers = bool(run_option(cfg, "clean_answers", True))
        self.annotation_files = dict(run_option(cfg, "vqa_annotation_files", {}) or {})
        self.dataset_ann_paths: list[str] = []

    def prepare_references(self, dataset) -> None:
        self.dataset_ann_paths = [p for part in leaf_datasets(dataset) for p in getattr(part, "ann_paths", [])]

    def references(self, split_name: str) -> dict:
        """The human answers, read on rank 0 only when scoring."""
        path = self.annotation_files.get(split_name)
        paths = ([path] if isinstance(path, str) else list(path)) if path else self.dataset_ann_paths
        return load_vqa_annotations(paths)

    def valid_step(self, model, samples) -> list[dict]:
        questions = samples["text_input"]
        answers = self.generate(model, samples, [self.prompt.replace("{}", q) for q in questions])
        if self.clean_answers:
            answers = [clean_answer(a) for a in answers]
        inst = samples.get("instance_id", [None] * len(questions))
        return [{"question_id": q, "answer": a, "instance_id": k}
                for q, a, k in zip(samples["question_id"], answers, inst)]

    def compute_metrics(self, records: list[dict], split_name: str) -> dict:
        annotations = self.references(split_name)
        if not annotations:
            logger.warning("vqa: split %r has no human answers; %d predictions saved for submission, not scored",
                           split_name, len(records))
            return {"agg_metrics": 0.0, "n": len(records), "scored": False}
        scores = vqa_score(records, annotations, always_normalize=self.always_normalize)
        scores.pop("per_question")
        missing = len(annotations) - scores["n"]
        if missing > 0:
            logger.warning("vqa: %d of %d annotated questions of %r have no prediction",
                           missing, len(annotations), split_name)
        return {**scores, "agg_metrics": scores["overall"]}
