"""Streaming webdataset shards -> an IterableDataset of instruction or image-text samples.

A shard sample is ``<key>.json`` plus its images: ``<key>.png`` / ``.jpg`` for one image or
``<key>.0.png``, ``<key>.1.png``, ... for several (in order). The json holds an instruction record
(MiniGPT4-Qwen ``instruction`` / ``output`` or LLaVA ``conversations``) and/or a ``caption``; a
``<key>.txt`` may hold the caption instead (image-text shards may also hold a json list of captions,
as LAVIS's CapFilt LAION shards do: one of the first two is drawn per sample).

Shards are split by node, then by DataLoader worker (each shard read by one worker), and samples
go through a shuffle buffer. ``resample: True`` draws shards with replacement forever (for
iteration-based training). The stream keeps no position: on resume it starts again from a fresh
shard order, so some samples repeat and others come later than they would have.
"""
from __future__ import annotations

import io
import json
import logging
import random
import zlib

import torch

from lavis_lite.datasets.chat_encoding import ChatEncodingMixin
from lavis_lite.datasets.datasets.base_dataset import decode_image
from lavis_lite.datasets.datasets.errors import DataError, ErrorPolicy
from lavis_lite.datasets.datasets.instruction_datasets import (
    check_conversation,
    collate_instruction,
    parse_llava_record,
    parse_minigpt4_record,
)

logger = logging.getLogger(__name__)
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp")


def _image_keys(sample: dict) -> list[str]:
    """``png`` alone, or ``0.png``, ``1.png``, ... in numeric order."""
    keys = [k for k in sample if k.rsplit(".", 1)[-1].lower() in IMAGE_EXTS]
    def order(k):
        head = k.split(".")[0]
        return int(head) if head.isdigit() else -1
    return sorted(keys, key=order)


class WebDatasetStream(ChatEncodingMixin, torch.utils.data.IterableDataset):
    """Instruction streams tokenise their conversations in the DataLoader workers once the model's chat
    processor is attached (``model_wiring``), as map-style instruction datasets do."""

    def __init__(self, urls, vis_processor=None, text_processor=None, sample_format: str = "instruction",
                 shuffle_buffer: int = 1000, resample: bool = False, seed: int = 0,
                 on_error: str = "raise", max_skip_fraction: float = 0.05):
        super().__init__()
        if sample_format not in ("instruction", "image_text"):
            raise ValueError(f"sample_format must be 'instruction' or 'image_text', got {sample_format!r}")
        self.urls = urls
        self.vis_processor, self.text_processor = vis_processor, text_processor
        self.sample_format = sample_format
        self.shuffle_buffer, self.resample, self.seed = int(shuffle_buffer), bool(resample), int(seed)
        self.policy = ErrorPolicy(on_error, max_skip_fraction)
        self._epoch = 0

    # ---- pipeline ----------------------------------------------------------------------
    def _handler(self, exn: Exception) -> bool:
        """webdataset error handler: raise (naming the shard) or count and continue."""
        err = exn if isinstance(exn, DataError) else DataError(f"{type(exn).__name__}: {exn}")
        self.policy.on_bad_sample(err, dataset_len=10**9)
        return True

    def pipeline(self):
        import webdataset as wds  # optional at import time of lavis_lite
        if self.resample:
            stages = [wds.ResampledShards(self.urls, seed=self.seed)]
        else:
            stages = [wds.SimpleShardList(self.urls), wds.split_by_node, wds.split_by_worker]
        stages.append(wds.tarfile_to_samples(handler=self._handler))
        if self.shuffle_buffer > 1:
            # DataLoader workers get a fresh torch seed per epoch (drawn from the main process RNG),
            # so the order changes each epoch and stays reproducible under torch.manual_seed;
            # _epoch varies it when there are no workers.
            self._epoch += 1
            seed = hash((self.seed, torch.initial_seed(), self._epoch, _worker_id())) % (2**63)
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), seed=seed))
        stages.append(wds.map(self._to_sample_checked, handler=self._handler))
        return wds.DataPipeline(*stages)

    def __iter__(self):
        return iter(self.pipeline())

    # ---- one sample ---------------------------------------------------------------------
    def _to_sample_checked(self, raw: dict) -> dict:
        where = f"{raw.get('__url__', '?')} sample {raw.get('__key__', '?')}"
        try:
            sample = self.to_sample(raw)
        except Exception as err:  # noqa: BLE001 - name the shard and the key
            raise DataError(f"{where}: {type(err).__name__}: {err}") from err
        self.policy.on_sample_ok(10**9)
        return sample

    def _images(self, raw: dict) -> list:
        images = []
        for key in _image_keys(raw):
            img = decode_image(io.BytesIO(raw[key]), self.vis_processor)
            images.append(self.vis_processor(img) if self.vis_processor is not None else img)
        return images

    def to_sample(self, raw: dict) -> dict:
        meta = json.loads(raw["json"]) if "json" in raw else {}
        if self.sample_format == "image_text" and isinstance(meta, list):
            # LAVIS's CapFilt LAION shards: the json is a list of captions; LAVIS draws one of the first two.
            if not meta or not all(isinstance(c, str) for c in meta):
                raise TypeError("a json caption list must be a non-empty list of strings")
            meta = {"caption": random.choice(meta[:2])}
        if not isinstance(meta, dict):
            raise TypeError(f"json must be an object, got {type(meta).__name__}")
        images = self._images(raw)
        if self.sample_format == "image_text":
            caption = meta.get("caption", raw["txt"].decode() if "txt" in raw else None)
            if not isinstance(caption, str) or not caption.strip():
                raise KeyError("'caption' (in json) or a .txt member")
            if not images:
                raise ValueError("sample has no image")
            image_id = meta.get("image_id", zlib.crc32(raw["__key__"].encode()))
            text = self.text_processor(caption) if self.text_processor is not None else caption
            return {"image": images[0], "text_input": text, "image_id": int(image_id)}
        conv = parse_llava_record(meta) if "conversations" in meta else parse_minigpt4_record(meta)
        conv = check_conversation(conv, len(images))
        if self.text_processor is not None:
            conv = [{"from": t["from"], "value": self.text_processor(t["value"]) if t["from"] == "human" else t["value"]}
                    for t in conv]
        sample = {"image": torch.stack(images) if images else None, "n_images": len(images),
                  "conversations": conv, "instance_id": str(meta.get("id", raw["__key__"]))}
        if "question_type" in meta:
            sample["question_type"] = meta["question_type"]
        return sample

    def wants_chat(self) -> bool:
        return self.sample_format == "instruction"

    def sample_lengths(self):
        return None  # a stream has no record lengths to group by

    def record_id(self, index) -> str:
        return str(index)

    def collater(self, samples: list[dict]) -> dict:
        if self.sample_format == "instruction" and self.chat_collator is not None:
            return self.collate_chat(samples)
        if self.sample_format == "instruction":
            return collate_instruction(samples, image_size=getattr(self.vis_processor, "image_size", 224))
        return {"image": torch.stack([s["image"] for s in samples]),
                "text_input": [s["text_input"] for s in samples],
                "image_id": torch.tensor([s["image_id"] for s in samples], dtype=torch.long)}

    def skip_report(self, reset: bool = True) -> dict:
        out = self.policy.report(reset)
        if self.chat_collator is not None:  # streams keep no record index: counts without ids
            out.update(self.truncation.report(self.record_id, self.chat_processor.max_txt_len, reset))
        return out


def _worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else info.id
