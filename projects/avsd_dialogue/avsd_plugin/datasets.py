"""Dialogue datasets over AVSD-format annotation files.

``DialogueDataset``: every turn of every dialogue is a sample, the earlier turns are its
history (training). ``DialogueEvalDataset``: one sample per dialogue, its last turn
(what AVSD scores). Both read ``{"dialogs": [{"image_id", "caption", "summary",
"dialog": [{"question", "answer"}]}]}`` and share one collater.
"""
from __future__ import annotations

import json
import os

import torch
from torch.utils.data import Dataset

from .processors import IGNORE_INDEX


def read_dialogs(path: str) -> list[dict]:
    """Load and check one annotation file; errors name the file and the record."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Annotation file {path!r} does not exist")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"Annotation file {path!r} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("dialogs"), list):
        raise ValueError(f"Annotation file {path!r} must hold an object with a 'dialogs' list")
    for i, dialog in enumerate(data["dialogs"]):
        where = f"{path!r} record {i}"
        if not isinstance(dialog, dict) or "image_id" not in dialog:
            raise ValueError(f"{where}: missing key 'image_id'")
        turns = dialog.get("dialog")
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"{where} (video {dialog['image_id']!r}): 'dialog' must be a non-empty list of turns")
        for j, turn in enumerate(turns):
            if not isinstance(turn, dict) or not isinstance(turn.get("question"), str) \
                    or not isinstance(turn.get("answer"), str):
                raise ValueError(f"{where} (video {dialog['image_id']!r}) turn {j}: needs string "
                                 f"'question' and 'answer'")
    return data["dialogs"]


class DialogueDataset(Dataset):
    """One sample per turn: ``{**dialog, "dialog": earlier turns, "question", "answer"}``."""

    def __init__(self, vis_processor, text_processor, feature_root: str, ann_paths: list[str]):
        self.vis_processor, self.text_processor = vis_processor, text_processor
        self.feature_root = feature_root
        self.annotation = []
        for path in ann_paths:
            for dialog in read_dialogs(path):
                self.annotation += self.expand(dialog)
        for i, ann in enumerate(self.annotation):
            ann["instance_id"] = str(i)

    @staticmethod
    def expand(dialog: dict) -> list[dict]:
        turns = dialog["dialog"]
        return [{**dialog, "dialog": turns[:k], "question": t["question"], "answer": t["answer"]}
                for k, t in enumerate(turns)]

    def __len__(self) -> int:
        return len(self.annotation)

    def __getitem__(self, index: int) -> dict:
        ann = self.annotation[index]
        video = self.vis_processor(self.feature_root, ann["image_id"])
        text = self.text_processor(ann)
        return {
            "video_fts": video["video_fts"],
            "video_token_type_ids": video["token_type_ids"],
            **text,
            "answer": ann["answer"],
            "image_id": ann["image_id"],
            "instance_id": ann["instance_id"],
        }

    def collater(self, samples: list[dict]) -> dict:
        """Batch for ``gpt_dialogue``: video (right-padded) + full text (right-padded), and the
        prompt without the answer (left-padded, so generation continues every row at its end)."""
        if not samples:
            raise ValueError("collater got an empty list of samples")
        tp, vp = self.text_processor, self.vis_processor
        video_fts, video_mask = vp.padding([s["video_fts"] for s in samples])
        video_types = tp.padding([s["video_token_type_ids"] for s in samples])
        lengths = [len(s["input_ids"]) for s in samples]
        prompts = [s["input_ids"][:s["prompt_length"]] for s in samples]
        prompt_types = [s["token_type_ids"][:s["prompt_length"]] for s in samples]
        return {
            "video_fts": video_fts,
            "video_mask": video_mask,
            "video_token_type_ids": video_types,
            "input_ids": tp.padding([s["input_ids"] for s in samples]),
            "token_type_ids": tp.padding([s["token_type_ids"] for s in samples]),
            "attention_mask": tp.get_attention_mask(lengths),
            "labels": tp.padding([s["labels"] for s in samples], IGNORE_INDEX),
            "prompt_ids": tp.padding(prompts, side="left"),
            "prompt_token_type_ids": tp.padding(prompt_types, side="left"),
            "prompt_mask": tp.get_attention_mask([len(p) for p in prompts], side="left"),
            "answer": [s["answer"] for s in samples],
            "image_id": [s["image_id"] for s in samples],
            "instance_id": [s["instance_id"] for s in samples],
        }


class DialogueEvalDataset(DialogueDataset):
    """One sample per dialogue: its last turn, with all earlier turns as history."""

    @staticmethod
    def expand(dialog: dict) -> list[dict]:
        return DialogueDataset.expand(dialog)[-1:]
