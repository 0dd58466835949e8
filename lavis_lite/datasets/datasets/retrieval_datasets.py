"""Image-text retrieval data (COCO / Flickr30k Karpathy files as LAVIS distributes them).

Train records ``{"image", "caption", "image_id"}`` (one per caption) -> ``{"image", "text_input",
"image_id", "instance_id"}``; ``image_id`` is an int per distinct image (ITC treats captions of one
image as positives). Eval records ``{"image", "caption": [...]}`` (one per image) -> ``{"image",
"index", "image_id", "instance_id"}``, and the dataset carries LAVIS's ground-truth maps: ``text``
(every caption, text-processed, in file order), ``image`` (paths), ``txt2img`` {caption index:
image index} and ``img2txt`` {image index: [caption indices]}.
"""
from __future__ import annotations

import torch

from lavis_lite.datasets.datasets.caption_datasets import (
    CaptionDataset,
    CaptionEvalDataset,
)


class RetrievalDataset(CaptionDataset):
    def load_sample(self, index: int) -> dict:
        sample = super().load_sample(index)
        sample["instance_id"] = self.annotation[index]["instance_id"]
        return sample

    def collater(self, samples):
        batch = super().collater(samples)
        batch["instance_id"] = [s["instance_id"] for s in samples]
        return batch


class RetrievalEvalDataset(CaptionEvalDataset):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.text: list[str] = []
        self.image: list[str] = []
        self.txt2img: dict[int, int] = {}
        self.img2txt: dict[int, list[int]] = {}
        for img_index, ann in enumerate(self.annotation):
            self.image.append(ann["image"])
            self.img2txt[img_index] = []
            for caption in ann["caption"]:
                self.img2txt[img_index].append(len(self.text))
                self.txt2img[len(self.text)] = img_index
                self.text.append(self.process_text(caption))

    def parse_record(self, record: dict) -> dict:
        out = super().parse_record(record)
        if not out.get("caption"):
            raise KeyError("'caption' (a retrieval eval record needs its list of captions)")
        return out

    def load_sample(self, index: int) -> dict:
        sample = super().load_sample(index)
        sample["index"] = index
        return sample

    def collater(self, samples):
        batch = super().collater(samples)
        batch["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.long)
        return batch
