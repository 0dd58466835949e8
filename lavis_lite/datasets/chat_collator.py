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

from lavis_lite.models.conversation_encoder import IGNORE_INDEX, joined
from lavis_lite.models.packing import plan_rows

PASS_THROUGH = ("conversations", "instance_id", "question_type")


class ChatCollator:
    def __init__(self, pad_token_id: int, max_txt_len: int, packing: bool = False, pad_to_max: bool = False,
                 pad_to_multiple_of: int = 1, image_size: int = 224, all_images: bool = False):
        if packing and pad_to_max:
            raise ValueError("packing and pad_to_max_txt_len exclude each other; switch one off")
        if packing and all_images:
            raise ValueError("all_images (evaluation batches) needs one conversation per row; switch packing off")
        # all_images (evaluation splits): ``image`` keeps every image of every sample in sample order (as
        # the raw-conversation batch had them, for generation), ``images_per_row`` says which runs are in
        # the ids, and the batch carries ``all_images: True`` so the model's forward selects those.
        self.all_images = bool(all_images)
        self.pad_token_id, self.max_txt_len = int(pad_token_id), int(max_txt_len)
        self.packing, self.pad_to_max = bool(packing), bool(pad_to_max)
        self.pad_to_multiple_of, self.image_size = int(pad_to_multiple_of), int(image_size)
        self._cols: dict[int, np.ndarray] = {}  # column indices per row width

    @classmethod
    def for_model(cls, model, image_size: int = 224, evaluation: bool = False) -> "ChatCollator":
        """The model's layout; ``evaluation``: one conversation per row and every image kept (instruction
        evaluation splits batches per sample and generates from the same images)."""
        layout = dict(model.batch_layout())
        if evaluation:
            layout.update(packing=False, all_images=True)
        return cls(model.chat_processor.pad_token_id, model.chat_processor.max_txt_len, image_size=image_size,
                   **layout)

    def rows(self, lengths: list[int]) -> list[list[int]]:
        return plan_rows(lengths, self.max_txt_len) if self.packing else [[i] for i in range(len(lengths))]

    def _width(self, longest: int) -> int:
        width = max(longest, self.max_txt_len) if self.pad_to_max else longest
        return -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of

    def _one_per_row(self, encoded, lengths):
        """Rows = samples, padded on the right: one boolean-mask scatter per field."""
        lens = np.asarray(lengths, dtype=np.int64)[:, None]
        width = self._width(max(lengths))
        cols = self._cols.get(width)
        if cols is None:
            cols = self._cols[width] = np.arange(width, dtype=np.int64)[None, :]
            cols.flags.writeable = False
        mask = cols < lens
        ids = np.full(mask.shape, self.pad_token_id, dtype=np.int64)
        labels = np.full(mask.shape, IGNORE_INDEX, dtype=np.int64)
        ids[mask], labels[mask] = joined(encoded)
        if labels.shape[1]:
            labels[:, 0] = IGNORE_INDEX  # the first token is never a target
        positions = np.subtract(cols, lens)  # padding: its own run of positions from 0
        np.copyto(positions, cols, where=mask)
        return ids, labels, mask.astype(np.int64), positions, None

    def _packed(self, encoded, lengths, rows):
        """Several conversations per row: flat destination of every token, one scatter per field."""
        order, row_of, start_of, seg_of, row_end = [], [], [], [], []
        for r, row in enumerate(rows):
            start = 0
            for seg, i in enumerate(row):
                order.append(i)
                row_of.append(r)
                start_of.append(start)
                seg_of.append(seg)
                start += lengths[i]
            row_end.append(start)
        width = self._width(max(row_end))
        lens = np.asarray([lengths[i] for i in order], dtype=np.int64)
        base = np.asarray(row_of, dtype=np.int64) * width + np.asarray(start_of, dtype=np.int64)
        within = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
        dest = np.repeat(base, lens) + within
        shape = (len(rows), width)
        ids = np.full(shape, self.pad_token_id, dtype=np.int64)
        labels = np.full(shape, IGNORE_INDEX, dtype=np.int64)
        segments = np.full(shape, -1, dtype=np.int64)
        ids.flat[dest], labels.flat[dest] = joined([encoded[i] for i in order])
        segments.flat[dest] = np.repeat(np.asarray(seg_of, dtype=np.int64), lens)
        labels.flat[base[lens > 0]] = IGNORE_INDEX  # never a target across a conversation boundary
        positions = np.arange(width, dtype=np.int64)[None, :] - np.asarray(row_end, dtype=np.int64)[:, None]
        positions.flat[dest] = within  # padding keeps its own run of positions from 0
        return ids, labels, (segments >= 0).astype(np.int64), positions, segments

    def __call__(self, samples: list[dict]) -> dict:
        encoded = [s["encoded"] for s in samples]
        lengths = [len(e) for e in encoded]
        used = [e.n_images_used for e in encoded]
        if self.packing:
            rows = self.rows(lengths)
            order = [i for row in rows for i in row]  # row-major: the images follow it
            ids, labels, mask, positions, segments = self._packed(encoded, lengths, rows)
            per_row = [sum(used[i] for i in row) for row in rows]
        else:
            order = range(len(samples))
            ids, labels, mask, positions, segments = self._one_per_row(encoded, lengths)
            per_row = used
        batch = {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
                 "attention_mask": torch.from_numpy(mask), "position_ids": torch.from_numpy(positions),
                 "n_images": [int(s.get("n_images", 0)) for s in samples], "images_per_row": list(per_row)}
        if self.packing:
            batch["segment_ids"] = torch.from_numpy(segments)
        keys = set().union(*samples)
        key = ("image_features" if "image_features" in keys and any(s.get("image_features") is not None
                                                                     for s in samples) else "image")
        if self.all_images:
            used = [int(s.get("n_images", 0)) for s in samples]
            batch["all_images"] = True
        kept = [x if x.shape[0] == n else x[:n] for i in order for n, x in [(used[i], samples[i][key])] if n]
        if kept:
            batch[key] = torch.cat(kept, 0)
        elif key == "image_features":
            batch[key] = torch.zeros(0, 0, 0)
        else:
            batch[key] = torch.zeros(0, 3, self.image_size, self.image_size)
        cut = [i for i, e in enumerate(encoded) if e.truncated]
        batch["truncation"] = {"samples": len(cut), "cut_tokens": sum(encoded[i].cut_tokens for i in cut),
                               "ids": [samples[i].get("instance_id") for i in cut]}
        for k in PASS_THROUGH:
            if k in keys:
                batch[k] = [s.get(k) for s in samples]
        return batch
