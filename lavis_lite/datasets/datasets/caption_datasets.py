"""COCO Karpathy-format caption data.

Train records ``{"image", "caption", "image_id"?}`` (one per caption) -> ``{"image", "text_input",
"image_id"}`` with ``image_id`` an int per distinct image (two captions of one image share it).
Eval records ``{"image", "image_id"?, "caption"?: [..]}`` (one per image) -> ``{"image", "image_id",
"instance_id"}``; the ground truth stays in the annotation / ``gt_path`` file (the parsed records in
``dataset.annotation`` keep their ``caption`` list for retrieval).
"""
from __future__ import annotations

import os
import re

import torch
from torch.utils.data.dataloader import default_collate

from lavis_lite.datasets.datasets.base_dataset import BaseDataset


def image_id_from_path(path: str):
    """COCO style: ``val2014/COCO_val2014_000000391895.jpg`` -> 391895; else the file stem."""
    stem = os.path.splitext(os.path.basename(path))[0]
    digits = re.findall(r"\d+", stem)
    return int(digits[-1]) if digits else stem


class CaptionDataset(BaseDataset):
    def __init__(self, *args, **kwargs):
        self.img_ids: dict = {}
        super().__init__(*args, **kwargs)

    def parse_record(self, record: dict) -> dict:
        image = record["image"]
        caption = record["caption"]
        if not isinstance(image, str) or not image:
            raise TypeError(f"'image' must be a non-empty string, got {image!r}")
        if isinstance(caption, list) and caption and all(isinstance(c, str) for c in caption):
            caption = caption[0]  # an eval-style record used for training: first caption
        if not isinstance(caption, str) or not caption.strip():
            raise TypeError(f"'caption' must be a non-empty string, got {caption!r}")
        key = record.get("image_id", image)
        if key not in self.img_ids:
            self.img_ids[key] = len(self.img_ids)
        kept = {k: record[k] for k in ("instance_id", "batch_group") if k in record}  # batch_group: group_sampler
        return {"image": image, "caption": caption, "image_id": self.img_ids[key], **kept}

    def load_sample(self, index: int) -> dict:
        ann = self.annotation[index]
        return {"image": self.read_image(ann["image"]), "text_input": self.process_text(ann["caption"]),
                "image_id": ann["image_id"]}

    def collater(self, samples):
        batch = default_collate(samples)
        batch["image_id"] = torch.as_tensor(batch["image_id"], dtype=torch.long)
        return batch


class CaptionEvalDataset(BaseDataset):
    def __init__(self, *args, gt_path: str | None = None, **kwargs):
        self.gt_path = gt_path  # COCO-format ground truth for pycocoevalcap, when the builder knows it
        super().__init__(*args, **kwargs)

    def parse_record(self, record: dict) -> dict:
        image = record["image"]
        if not isinstance(image, str) or not image:
            raise TypeError(f"'image' must be a non-empty string, got {image!r}")
        image_id = record.get("image_id", image_id_from_path(image))
        if not isinstance(image_id, (int, str)):
            raise TypeError(f"'image_id' must be an int or string, got {type(image_id).__name__}")
        out = {"image": image, "image_id": image_id}
        if "caption" in record:  # kept for tasks that need the texts (retrieval); not yielded per sample
            caps = record["caption"]
            caps = [caps] if isinstance(caps, str) else caps
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                raise TypeError(f"'caption' must be a string or a list of strings, got {record['caption']!r}")
            out["caption"] = caps
        if "instance_id" in record:
            out["instance_id"] = record["instance_id"]
        return out

    def load_sample(self, index: int) -> dict:
        ann = self.annotation[index]
        return {"image": self.read_image(ann["image"]), "image_id": ann["image_id"],
                "instance_id": ann["instance_id"]}

    def collater(self, samples):
        return {"image": torch.stack([s["image"] for s in samples]),
                "image_id": [s["image_id"] for s in samples],
                "instance_id": [s["instance_id"] for s in samples]}
