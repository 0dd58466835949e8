"""SNLI-VE visual entailment (LAVIS's ``ve_{train,dev,test}.json``).

A record ``{"image": "<Flickr30k id>", "sentence", "label": "entailment" | "neutral" |
"contradiction"}``; the image file is ``<vis_root>/<id>.jpg``. Samples: ``{"image", "text_input",
"label": int, "image_id", "instance_id"}`` with LAVIS's label order (contradiction 0, neutral 1,
entailment 2); ``dataset.classnames`` lists the names in that order.
"""
from __future__ import annotations

import torch

from lavis_lite.datasets.datasets.base_dataset import BaseDataset

CLASS_LABELS = {"contradiction": 0, "neutral": 1, "entailment": 2}


class SNLIVisualEntailmentDataset(BaseDataset):
    def __init__(self, *args, **kwargs):
        self.class_labels = dict(CLASS_LABELS)
        self.classnames = list(self.class_labels)
        super().__init__(*args, **kwargs)

    def parse_record(self, record: dict) -> dict:
        image, sentence, label = record["image"], record["sentence"], record["label"]
        if not isinstance(image, (str, int)) or isinstance(image, bool) or str(image) == "":
            raise TypeError(f"'image' must be a Flickr30k image id, got {image!r}")
        if not isinstance(sentence, str) or not sentence.strip():
            raise TypeError(f"'sentence' must be a non-empty string, got {sentence!r}")
        if label not in self.class_labels:
            raise ValueError(f"'label' must be one of {self.classnames}, got {label!r}")
        out = {"image": str(image), "sentence": sentence, "label": self.class_labels[label]}
        if "instance_id" in record:
            out["instance_id"] = record["instance_id"]
        return out

    def load_sample(self, index: int) -> dict:
        ann = self.annotation[index]
        return {"image": self.read_image(f"{ann['image']}.jpg"), "text_input": self.process_text(ann["sentence"]),
                "label": ann["label"], "image_id": ann["image"], "instance_id": ann["instance_id"]}

    def collater(self, samples):
        return {"image": torch.stack([s["image"] for s in samples]),
                "text_input": [s["text_input"] for s in samples],
                "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
                "image_id": [s["image_id"] for s in samples],
                "instance_id": [s["instance_id"] for s in samples]}


SNLIVisualEntialmentDataset = SNLIVisualEntailmentDataset  # LAVIS's spelling, for code that imports it
