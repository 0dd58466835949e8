"""A-OKVQA (``aokvqa_v1p0_{train,val,test}.json`` as LAVIS distributes them).

A record: ``{"question_id", "question", "image": "val2017/000000....jpg", "image_id", "choices": [4
strings], "correct_choice_idx": int, "direct_answers": [10 strings], "rationales": [...],
"difficult_direct_answer": bool}``; the test split has no ``correct_choice_idx`` / ``direct_answers``.

Train samples are VQA samples whose answers are the direct answers weighted by their share (as
LAVIS). Eval samples add the multiple-choice fields ``choices``, ``correct_choice_idx`` and
``direct_answers`` (``None`` where the split has none), collated as lists.
"""
from __future__ import annotations

from lavis_lite.datasets.datasets.vqa_datasets import VQADataset
from lavis_lite.datasets.datasets.vqa_zoo_datasets import EvalFilesMixin

MC_FIELDS = ("choices", "correct_choice_idx", "direct_answers")


class AOKVQADataset(VQADataset):
    def parse_record(self, record: dict) -> dict:
        direct = record.get("direct_answers")
        if self.require_answers and direct is None:
            raise KeyError("'direct_answers'")
        vqa_record = {k: v for k, v in record.items() if k != "answer"}
        if direct is not None:
            vqa_record["answer"] = direct
        out = super().parse_record(vqa_record)
        choices = record["choices"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise TypeError(f"'choices' must be a list of at least two strings, got {choices!r}")
        correct = record.get("correct_choice_idx")
        if correct is not None and (isinstance(correct, bool) or not isinstance(correct, int)
                                    or not 0 <= correct < len(choices)):
            raise ValueError(f"'correct_choice_idx' must index 'choices' (0..{len(choices) - 1}), got {correct!r}")
        out.update(choices=choices, correct_choice_idx=correct, direct_answers=direct)
        for key in ("rationales", "difficult_direct_answer"):
            if key in record:
                out[key] = record[key]
        return out


class AOKVQAEvalDataset(EvalFilesMixin, AOKVQADataset):
    require_answers = False

    def load_sample(self, index: int) -> dict:
        sample = super().load_sample(index)
        ann = self.annotation[index]
        sample.update({key: ann[key] for key in MC_FIELDS})
        return sample

    def collater(self, samples):
        batch = super().collater(samples)
        batch.update({key: [s[key] for s in samples] for key in MC_FIELDS})
        return batch
