"""Datasets that tokenise their own conversations (in DataLoader workers).

``ChatEncodingMixin`` gives a conversation dataset (``InstructionDataset``) the model's ``chat_template``
processor and ``ChatCollator`` (``attach_chat``, called by ``model_wiring.wire_datasets``): every
``load_sample`` validates its conversation (roles, images vs marks: a conversation error is that
record's error and follows ``on_error``), the collater tokenises the whole batch in one call and pads /
packs, and ``sample_lengths`` gives the true token lengths for
length-grouped batches. Truncation to ``max_txt_len`` is counted per epoch over all workers
(``TruncationTally``) and logged with the first few record ids by ``skip_report``, which the runner
calls once per epoch.
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

_ROWS = 65          # main process + 64 DataLoader workers (as errors.ErrorPolicy)
FIRST_IDS = 5       # record indices kept per worker for the log line


class TruncationTally:
    """Truncated samples and cut supervised tokens, counted in shared memory by every worker."""

    def __init__(self):
        self.counts = torch.zeros(_ROWS, 2, dtype=torch.int64).share_memory_()       # samples, cut tokens
        self.first = torch.full((_ROWS, FIRST_IDS), -1, dtype=torch.int64).share_memory_()  # record indices

    @staticmethod
    def _row() -> int:
        info = torch.utils.data.get_worker_info()
        return 0 if info is None else 1 + info.id % (_ROWS - 1)

    def add(self, index: int, cut_tokens: int) -> None:
        row = self._row()
        seen = int(self.counts[row, 0])
        if seen < FIRST_IDS:
            self.first[row, seen] = int(index)
        self.counts[row, 0] += 1
        self.counts[row, 1] += int(cut_tokens)

    def report(self, record_id=str, max_txt_len: int | None = None, reset: bool = True) -> dict:
        samples, cut = (int(x) for x in self.counts.sum(0))
        first = [int(i) for i in self.first.flatten() if i >= 0][:FIRST_IDS]
        out = {"truncated_samples": samples, "cut_supervised_tokens": cut, "first_truncated": [record_id(i) for i in first]}
        if samples:
            logger.warning("truncated %d sample(s) to max_txt_len=%s this epoch, cutting %d supervised token(s); "
                           "first: %s", samples, max_txt_len, cut, out["first_truncated"])
        if reset:
            self.counts.zero_()
            self.first.fill_(-1)
        return out


class ChatEncodingMixin:
    """Put before a BaseDataset subclass whose samples hold ``conversations`` and ``n_images``."""

    chat_processor = None
    chat_collator = None

    def wants_chat(self) -> bool:
        """Whether this dataset's samples are conversations (a stream of captions is not)."""
        return True

    def attach_chat(self, processor, collator) -> None:
        self.chat_processor, self.chat_collator = processor, collator
        self.truncation = TruncationTally()
        self._true_lengths = None
        self._eval_truncation_logged = False

    def encode_sample(self, sample: dict, index: int) -> dict:
        """Remember the record index (truncation log); the batch is tokenised in ``collater``."""
        if self.chat_processor is not None:
            sample["record_index"] = index
        return sample

    def collate_chat(self, samples: list[dict]) -> dict:
        """Tokenise the batch's conversations in one call (all text pieces at once: the fast path of the
        tokenizer), count truncation, then pad / pack with the ChatCollator."""
        encoded = self.chat_processor.encode([s["conversations"] for s in samples],
                                             [int(s.get("n_images", 0)) for s in samples])
        for sample, enc in zip(samples, encoded):
            sample["encoded"] = enc
            if enc.truncated:
                self.truncation.add(sample.get("record_index", -1), enc.cut_tokens)
        batch = self.chat_collator(samples)
        cut = batch["truncation"]
        if cut["samples"] and self.chat_collator.all_images:
            # evaluation splits have no per-epoch report: say it here (once per worker, then at debug level)
            log = logger.debug if self._eval_truncation_logged else logger.warning
            self._eval_truncation_logged = True
            log("evaluation batch: %d sample(s) truncated to max_txt_len=%d (%d supervised token(s) cut): %s",
                cut["samples"], self.chat_processor.max_txt_len, cut["cut_tokens"], cut["ids"])
        return batch

    def sample_lengths(self) -> list[int] | None:
        """True token lengths of the records (computed once), or None without a chat processor."""
        if self.chat_processor is None:
            return None
        if self._true_lengths is None:
            self._true_lengths = [len(self.chat_processor(*self.conversation_of(i))) for i in range(len(self))]
        return self._true_lengths

    def skip_report(self, reset: bool = True) -> dict:
        out = super().skip_report(reset)
        if self.chat_processor is not None:
            out.update(self.truncation.report(self.record_id, self.chat_processor.max_txt_len, reset))
        return out
