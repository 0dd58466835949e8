"""NoCaps caption evaluation (LAVIS's ``nocaps_{val,test}.json``).

A record ``{"image": "val/0013ea2087020901.jpg", "img_id": 0}`` (``image_id`` is accepted too; an
optional ``domain``: "in-domain" | "near-domain" | "out-domain", as in the official
``nocaps_val_4500_captions.json``, is kept for per-domain scores). Samples ``{"image", "image_id",
"instance_id"}`` with ``image_id`` the record's ``img_id`` (the id the official ground truth uses).
The val split's ``gt_path`` is the official ``nocaps_val_4500_captions.json`` (fetched by the builder).
"""
from __future__ import annotations

import json
import os

from lavis_lite.datasets.datasets.caption_datasets import CaptionEvalDataset
from lavis_lite.datasets.datasets.errors import DataError

DOMAINS = ("in-domain", "near-domain", "out-domain")


class NoCapsEvalDataset(CaptionEvalDataset):
    def parse_record(self, record: dict) -> dict:
        if "img_id" not in record and "image_id" not in record:
            raise KeyError("'img_id'")
        record = {**record, "image_id": record.get("img_id", record.get("image_id"))}
        out = super().parse_record(record)
        domain = record.get("domain")
        if domain is not None:
            if domain not in DOMAINS:
                raise ValueError(f"'domain' must be one of {list(DOMAINS)}, got {domain!r}")
            out["domain"] = domain
        return out

    def domains(self) -> dict:
        """``{image_id: domain}``: from the records that name one, else from the official references
        (``gt_path``, COCO format, whose ``images`` carry ``id`` and ``domain``)."""
        found = {ann["image_id"]: ann["domain"] for ann in self.annotation if "domain" in ann}
        if found or not self.gt_path or not os.path.isfile(self.gt_path):
            return found
        try:
            with open(self.gt_path, encoding="utf-8") as f:
                images = json.load(f)["images"]
            return {img["id"]: img["domain"] for img in images if "domain" in img}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{self.gt_path}: cannot read the image domains ({type(err).__name__}: {err})") from None
