"""Instruction data: MiniGPT4-Qwen records and LLaVA conversations -> one conversation format.

MiniGPT4-Qwen: ``{"image": path | [paths], "instruction": str | [str], "output": str | [str]}``
LLaVA:         ``{"image": path | [paths] (optional), "conversations": [{"from": "human"|"gpt", "value"}]}``

Both become ``conversations`` alternating human / gpt, ``<ImageHere>`` where the text places an
image (LLaVA's ``<image>`` is renamed); when no tag is given, one per image is prepended to the
first human turn.
"""
from __future__ import annotations

import torch

from lavis_lite.datasets.chat_encoding import ChatEncodingMixin
from lavis_lite.datasets.datasets.base_dataset import BaseDataset
from lavis_lite.models.conversation_encoder import validate_conversation

IMAGE_TAG = "<ImageHere>"
LLAVA_IMAGE_TAG = "<image>"
_ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


def _as_list(value, key: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"'{key}' must be a string or a list of strings, got {type(item).__name__}")
    return items


def _image_list(record: dict) -> list[str]:
    image = record.get("image")
    if image is None:
        return []
    images = _as_list(image, "image")
    if any(not p for p in images):
        raise ValueError("'image' holds an empty path")
    return images


def parse_minigpt4_record(record: dict) -> list[dict]:
    instructions = _as_list(record["instruction"], "instruction")
    outputs = _as_list(record["output"], "output")
    if len(instructions) != len(outputs):
        raise ValueError(f"{len(instructions)} instructions but {len(outputs)} outputs")
    if not outputs or not any(o.strip() for o in outputs):
        raise ValueError("conversation has no assistant turn (empty 'output')")
    conv = []
    for q, a in zip(instructions, outputs):
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return conv


def parse_llava_record(record: dict) -> list[dict]:
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise TypeError(f"'conversations' must be a list, got {type(turns).__name__}")
    conv = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise TypeError(f"conversation turn {t} must be an object with a string 'value'")
        role = _ROLE_ALIASES.get(turn.get("from"))
        if role is None:
            raise ValueError(f"conversation turn {t} has 'from' = {turn.get('from')!r}; expected 'human' or 'gpt'")
        conv.append({"from": role, "value": turn["value"].replace(LLAVA_IMAGE_TAG, IMAGE_TAG)})
    if not any(t["from"] == "gpt" for t in conv):
        raise ValueError("conversation has no assistant turn")
    return conv


def check_conversation(conv: list[dict], n_images: int) -> list[dict]:
    """Alternation human/gpt ending with gpt; ``<ImageHere>`` count equals the number of images."""
    for t, turn in enumerate(conv):
        want = "human" if t % 2 == 0 else "gpt"
        if turn["from"] != want:
            raise ValueError(f"conversation turn {t} is from {turn['from']!r}, expected {want!r} (turns must alternate, human first)")
    if conv[-1]["from"] != "gpt":
        raise ValueError("conversation ends with a human turn that has no assistant answer")
    n_tags = sum(turn["value"].count(IMAGE_TAG) for turn in conv if turn["from"] == "human")
    if any(IMAGE_TAG in turn["value"] for turn in conv if turn["from"] == "gpt"):
        raise ValueError(f"{IMAGE_TAG} appears in an assistant turn")
    if n_tags == 0 and n_images:
        conv[0] = {"from": "human", "value": IMAGE_TAG * n_images + "\n" + conv[0]["value"]}
    elif n_tags != n_images:
        raise ValueError(f"the text has {n_tags} {IMAGE_TAG} tags but the record has {n_images} images")
    return conv


class InstructionDataset(ChatEncodingMixin, BaseDataset):
    """Reads both formats (chosen per record by its keys). Samples:
    ``{"image": Tensor[k,3,H,W] | None, "n_images": k, "conversations", "instance_id", "question_type"?}``
    plus ``"encoded"`` (ids / labels) once the model's chat processor is attached (chat_encoding.py)."""

    def parse_record(self, record: dict) -> dict:
        images = _image_list(record)
        if "conversations" in record:
            conv = parse_llava_record(record)
        elif "instruction" in record or "output" in record:
            conv = parse_minigpt4_record(record)
        else:
            raise KeyError("'instruction'/'output' (MiniGPT4-Qwen format) or 'conversations' (LLaVA format)")
        parsed = {"images": images, "conversations": check_conversation(conv, len(images))}
        for key in ("instance_id", "question_type", "id"):
            if key in record:
                parsed[key] = record[key]
        if "instance_id" not in parsed and "id" in record:
            parsed["instance_id"] = str(record["id"])
        return parsed

    def conversation_of(self, index: int) -> tuple[list[dict], int]:
        """(the record's conversation after the text processor, its number of images)."""
        ann = self.annotation[index]
        conversations = [
            {"from": t["from"], "value": self.process_text(t["value"]) if t["from"] == "human" else t["value"].strip()}
            for t in ann["conversations"]
        ]
        return conversations, len(ann["images"])

    def record_id(self, index: int) -> str:
        return str(self.annotation[index].get("instance_id", index))

    def load_sample(self, index: int) -> dict:
        ann = self.annotation[index]
        conversations, n_images = self.conversation_of(index)
        # After the text processor (which may rewrite marks): a bad conversation is this record's error.
        validate_conversation(conversations, n_images)
        images = [self.read_image(p) for p in ann["images"]]
        sample = {
            "image": torch.stack(images) if images else None,
            "n_images": n_images,
            "conversations": conversations,
            "instance_id": ann["instance_id"],
        }
        if "question_type" in ann:
            sample["question_type"] = ann["question_type"]
        return self.encode_sample(sample, index)

    def collater(self, samples: list[dict]) -> dict:
        if self.chat_collator is not None:
            return self.collate_chat(samples)
        return collate_instruction(samples, image_size=getattr(self.vis_processor, "image_size", 224))


def collate_instruction(samples: list[dict], image_size: int = 224) -> dict:
    """Concatenate every image of the batch in order; images-per-sample in ``n_images``."""
    images = [s["image"] for s in samples if s.get("n_images", 0) > 0]
    if images:
        image = torch.cat(images, dim=0)
    else:
        image = torch.zeros(0, 3, image_size, image_size)
    batch = {
        "image": image,
        "n_images": [int(s.get("n_images", 0)) for s in samples],
        "conversations": [s["conversations"] for s in samples],
        "instance_id": [s.get("instance_id") for s in samples],
    }
    if any("question_type" in s for s in samples):
        batch["question_type"] = [s.get("question_type") for s in samples]
    return batch
