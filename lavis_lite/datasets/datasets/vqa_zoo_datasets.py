"""VQA variants of the LAVIS zoo: OK-VQA / GQA eval splits with their extra files, GQA, Visual Genome QA.

LAVIS lists an eval split's files as ``[records, answer_list, coco-format questions, coco-format
annotations]`` (the last three optional). ``EvalFilesMixin`` keeps that contract: only the first file
holds records (``dataset.ann_paths``); the others become ``answer_list`` (the candidate answers for
ranking-style inference, a JSON list of strings), ``coco_fmt_qust_file`` and ``coco_fmt_anno_file``
(the official VQA-format files, for scoring with per-type breakdowns).
"""
from __future__ import annotations

import json
import os

from lavis_lite.datasets.datasets.errors import DataError
from lavis_lite.datasets.datasets.vqa_datasets import VQADataset, VQAEvalDataset

AUX_FILES = ("answer_list_path", "coco_fmt_qust_file", "coco_fmt_anno_file")


def load_answer_list(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            answers = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the answer list ({err})") from None
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DataError(f"{path}: an answer list must be a JSON list of strings")
    return answers


class EvalFilesMixin:
    """First annotation file: the records; the rest: answer list, coco-format questions / annotations."""

    def __init__(self, vis_processor=None, text_processor=None, vis_root=None, ann_paths=(), **kwargs):
        paths = [str(p) for p in ann_paths]
        if len(paths) > 1 + len(AUX_FILES):
            raise DataError(f"{type(self).__name__}: expected at most {1 + len(AUX_FILES)} annotation files "
                            f"(records, {', '.join(AUX_FILES)}), got {len(paths)}: {paths}")
        for name, path in zip(AUX_FILES, paths[1:] + [None] * len(AUX_FILES)):
            setattr(self, name, path)
        # As LAVIS: a listed answer list that is not on disk means "no ranking candidates".
        has_list = self.answer_list_path is not None and os.path.isfile(self.answer_list_path)
        self.answer_list = load_answer_list(self.answer_list_path) if has_list else None
        super().__init__(vis_processor, text_processor, vis_root, paths[:1], **kwargs)


class VQAEvalFilesDataset(EvalFilesMixin, VQAEvalDataset):
    """OK-VQA eval (``vqa_val_eval.json`` + answer list + the official coco-format files)."""


class GQAEvalDataset(EvalFilesMixin, VQAEvalDataset):
    """GQA eval: one answer string per question; samples also carry it as ``answer`` (as LAVIS)."""

    def load_sample(self, index: int) -> dict:
        sample = super().load_sample(index)
        answers = self.annotation[index].get("answers")
        sample["answer"] = answers[0] if answers else None
        return sample

    def collater(self, samples):
        batch = super().collater(samples)
        batch["answer"] = [s["answer"] for s in samples]
        return batch


class VGVQADataset(VQADataset):
    """Visual Genome QA (``vg_qa.json``: ``{"image", "question", "answer", "dataset"}``); records have
    no ``question_id``, so one is made from the record's position (``vg_<n>``)."""

    def parse_record(self, record: dict) -> dict:
        if "question_id" not in record:
            record = {**record, "question_id": f"vg_{self.policy.load_total - 1}"}
        return super().parse_record(record)
