"""Dialogue datasets over AVSD-format annotation files.

``DialogueDataset``: every turn of every dialogue is a sample, the earlier turns are its
history (training). ``DialogueEvalDataset``: one sample per dialogue, its last turn
(what AVSD scores). Both read ``{"dialogs": [{"image_id", "caption", "summary",
"dialog": [{"question", "answer"}]}]}`` and share one collater.
"""
from __future__ import annotations

import json
import os


from lavis_lite.datasets.datasets.base_dataset import BaseDataset
from lavis_lite.datasets.datasets.errors import DataError, ErrorPolicy, record_error

from .processors import IGNORE_INDEX


def read_dialogs(path: str, policy: ErrorPolicy | None = None) -> list[tuple[int, dict]]:
    """Load and check one annotation file: (record index, dialogue) pairs. A bad record raises an
    error naming the file, the record and the video, or is skipped and counted under ``on_error: skip``."""
    policy = policy or ErrorPolicy("raise")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Annotation file {path!r} does not exist")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise DataError(f"Annotation file {path!r} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("dialogs"), list):
        raise DataError(f"Annotation file {path!r} must hold an object with a 'dialogs' list (AVSD format)")
    dialogs = []
    for i, dialog in enumerate(data["dialogs"]):
        policy.load_total += 1
        problem = _check_dialog(dialog)
        if problem:
            policy.on_bad_record(record_error(repr(path), i, problem))
        else:
            dialogs.append((i, dialog))
    policy.check_load(path)
    return dialogs


def _check_dialog(dialog) -> str | None:
    if not isinstance(dialog, dict) or "image_id" not in dialog:
        return "missing key 'image_id'"
    turns = dialog.get("dialog")
    if not isinstance(turns, list) or not turns:
        return f"(video {dialog['image_id']!r}) 'dialog' must be a non-empty list of turns"
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("question"), str) \
                or not isinstance(turn.get("answer"), str):
            return f"(video {dialog['image_id']!r}) turn {j}: needs string 'question' and 'answer'"
    return None


class DialogueDataset(BaseDataset):
    """One sample per turn: ``{**dialog, "dialog": earlier turns, "question", "answer"}``.

    The constructor matches what ``BaseDatasetBuilder.build`` passes: ``vis_root`` is the
    feature root (``<vis_root>/<feature name>/<video_id>.npy``). A dialogue expands into several
    samples, so records are read here instead of by ``BaseDataset.__init__``; the rest of the
    bad-input policy is BaseDataset's: a missing or corrupt feature file raises naming the file and
    record, or under ``on_error: skip`` the next good sample stands in and the skip is counted.
    """

    def __init__(self, vis_processor, text_processor, vis_root: str, ann_paths: list[str],
                 on_error: str = "raise", max_skip_fraction: float = 0.05):
        self.vis_root = self.feature_root = vis_root
        self.ann_paths = [str(p) for p in ann_paths]
        self.policy = ErrorPolicy(on_error, max_skip_fraction)
        self.annotation, self._sources = [], []
        for path in self.ann_paths:
            for index, dialog in read_dialogs(path, self.policy):
                samples = self.expand(dialog)
                self.annotation += samples
                self._sources += [(path, index)] * len(samples)
        if not self.annotation:
            raise DataError(f"empty split: {self.ann_paths} hold no usable dialogues")
        for i, ann in enumerate(self.annotation):
            ann["instance_id"] = str(i)
        self.set_processors(vis_processor, text_processor)

    @staticmethod
    def expand(dialog: dict) -> list[dict]:
        turns = dialog["dialog"]
        return [{**dialog, "dialog": turns[:k], "question": t["question"], "answer": t["answer"]}
                for k, t in enumerate(turns)]

    def load_sample(self, index: int) -> dict:
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
