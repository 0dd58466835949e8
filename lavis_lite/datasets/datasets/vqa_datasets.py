"""VQA data (COCO-VQA style records ``{"question_id", "question", "answer": str | [str], "image"}``).

Train samples: ``{"image", "text_input", "question_id", "answers", "weights"}`` with each distinct
answer weighted by its share of the annotators' answers. Eval samples keep ``question_id`` (answers
are scored against the annotation file) and carry the answers when the record has them.
"""
from __future__ import annotations

from collections import Counter

import torch

from lavis_lite.datasets.datasets.base_dataset import BaseDataset


def answer_weights(answers: list[str]) -> tuple[list[str], list[float]]:
    counts = Counter(answers)
    total = len(answers)
    distinct = list(counts)
    return distinct, [counts[a] / total for a in distinct]


class VQADataset(BaseDataset):
    require_answers = True

    def parse_record(self, record: dict) -> dict:
        image, question = record["image"], record["question"]
        if not isinstance(image, str) or not image:
            raise TypeError(f"'image' must be a non-empty string, got {image!r}")
        if not isinstance(question, str) or not question.strip():
            raise TypeError(f"'question' must be a non-empty string, got {question!r}")
        out = {"image": image, "question": question, "question_id": record.get("question_id")}
        if out["question_id"] is None:
            raise KeyError("'question_id'")
        if "answer" in record or self.require_answers:
            answers = record["answer"]
            answers = [answers] if isinstance(answers, str) else answers
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise TypeError(f"'answer' must be a string or a non-empty list of strings, got {answers!r}")
            out["answers"], out["weights"] = answer_weights(answers)
        if "instance_id" in record:
            out["instance_id"] = record["instance_id"]
        return out

    def load_sample(self, index: int) -> dict:
        ann = self.annotation[index]
        sample = {"image": self.read_image(ann["image"]), "text_input": self.process_text(ann["question"]),
                  "question_id": ann["question_id"], "instance_id": ann["instance_id"]}
        if "answers" in ann:
            sample["answers"], sample["weights"] = ann["answers"], ann["weights"]
        return sample

    def collater(self, samples: list[dict]) -> dict:
        batch = {"image": torch.stack([s["image"] for s in samples]),
                 "text_input": [s["text_input"] for s in samples],
                 "question_id": [s["question_id"] for s in samples],
                 "instance_id": [s["instance_id"] for s in samples]}
        if all("answers" in s for s in samples):
            # Flattened as in LAVIS: sample i owns the next n_answers[i] entries.
            batch["answers"] = [a for s in samples for a in s["answers"]]
            batch["weights"] = torch.tensor([w for s in samples for w in s["weights"]], dtype=torch.float)
            batch["n_answers"] = torch.tensor([len(s["answers"]) for s in samples], dtype=torch.long)
        return batch


class VQAEvalDataset(VQADataset):
    require_answers = False
