"""ChatCollator: encoded conversations + images -> the training batch (docs/contracts.md).

Runs in DataLoader workers. Each sample holds ``encoded`` (from the ``chat_template`` processor, run
in the dataset's ``load_sample``) and its images (``image`` [k,3,H,W] or cached ``image_features``).
The batch::

    input_ids [R, L]   labels [R, L] (-100 unsupervised)   attention_mask [R, L] (1 = real token)
    position_ids [R, L]  image / image_features [N, ...]  n_images [B]  images_per_row [R]

``image`` holds exactly the images whose placeholder runs are in ``input_ids``, in the order the runs
appear (row-major), so the model splices them without any bookkeeping. Rows are samples padded to the
longest (``pad_to_max``: to ``max_txt_len``) or, with ``packing``, several conversations per row with
positions restarting at 0 and ``segment_ids`` (-1 on padding) for the block-diagonal mask. The first
token of every row / conversation is never a target, so ``(labels != -100).sum()`` is the number of
supervised next-token targets (what the stepper weights by).
"""
from __future__ import annotations

import numpy as np
import torch

from lavis_lite.models.conversation_encoder import IGNORE_INDEX
from lavis_lite.models.packing import plan_rows

PASS_THROUGH = ("conversations", "instance_id", "question_type")


class ChatCollator:
    def __init__(self, pad_token_id: int, max_txt_len: int, packing: bool = False, pad_to_max: bool = False,
                 pad_to_multiple_of: int = 1, image_size: int = 224):
        if packing and pad_to_max:
            raise ValueError("packing and pad_to_max_txt_len exclude each other; switch one off")
        self.pad_token_id, self.max_txt_len = int(pad_token_id), int(max_txt_len)
        self.packing, self.pad_to_max = bool(packing), bool(pad_to_max)
        self.pad_to_multiple_of, self.image_size = int(pad_to_multiple_of), int(image_size)

    @classmethod
    def for_model(cls, model, image_size: int = 224) -> "ChatCollator":
        layout = model.batch_layout()
        return cls(model.chat_processor.pad_token_id, model.chat_processor.max_txt_len, image_size=image_size,
                   **layout)

    def rows(self, lengths: list[int]) -> list[list[int]]:
        return plan_rows(lengths, self.max_txt_len) if self.packing else [[i] for i in range(len(lengths))]

    def __call__(self, samples: list[dict]) -> dict:
        encoded = [s["encoded"] for s in samples]
        lengths = [len(e) for e in encoded]
        rows = self.rows(lengths)
        width = max(sum(lengths[i] for i in row) for row in rows)
        if self.pad_to_max:
            width = max(width, self.max_txt_len)
        width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        positions = np.zeros((len(rows), width), dtype=np.int64)
        segments = np.full((len(rows), width), -1, dtype=np.int64)
        order = []  # sample indices in row-major order: their images follow it
        for r, row in enumerate(rows):
            start = 0
            for seg, i in enumerate(row):
                n = lengths[i]
                ids[r, start:start + n] = encoded[i].ids
                labels[r, start:start + n] = encoded[i].labels
                labels[r, start] = IGNORE_INDEX  # never a target across a conversation boundary
                positions[r, start:start + n] = np.arange(n)
                segments[r, start:start + n] = seg
                start += n
                order.append(i)
            positions[r, start:] = np.arange(width - start)  # padding: its own run of positions
        batch = {
            "input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy((segments >= 0).astype(np.int64)),
            "position_ids": torch.from_numpy(positions),
            "n_images": [int(s.get("n_images", 0)) for s in samples],
            "images_per_row": [sum(encoded[i].n_images_used for i in row) for row in rows],
        }
        if self.packing:
            batch["segment_ids"] = torch.from_numpy(segments)
        key = "image_features" if any(s.get("image_features") is not None for s in samples) else "image"
        kept = [s[key][:encoded[i].n_images_used] for i in order for s in [samples[i]] if encoded[i].n_images_used]
        if kept:
            batch[key] = torch.cat(kept, 0)
        elif key == "image_features":
            batch[key] = torch.zeros(0, 0, 0)
        else:
            batch[key] = torch.zeros(0, 3, self.image_size, self.image_size)
        batch["truncation"] = {"samples": sum(e.truncated for e in encoded),
                               "cut_tokens": sum(e.cut_tokens for e in encoded),
                               "ids": [samples[i].get("instance_id") for i, e in enumerate(encoded) if e.truncated]}
        for k in PASS_THROUGH:
            if any(k in s for s in samples):
                batch[k] = [s.get(k) for s in samples]
        return batch
