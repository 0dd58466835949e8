"""BERT WordPiece tokenizer for the Q-Former's text side, read from a local vocab file.

As LAVIS's Blip2Base.init_tokenizer: bert-base-uncased's WordPiece with ``[DEC]`` added as the
bos token (the decoder start token of image-grounded text generation). Nothing is downloaded:
``vocab`` is "tiny" (the vocab shipped in lavis_lite/assets), a vocab.txt path, a directory holding
vocab.txt (e.g. the user's local bert-base-uncased), or a Hugging Face model id such as
"bert-base-uncased" that is already in the local Hugging Face cache (looked up offline only).
"""
from __future__ import annotations

import os

TINY_VOCAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                          "tiny_bert_vocab.txt")


def resolve_vocab_path(vocab: str | None) -> str:
    if vocab in (None, "", "tiny"):
        return TINY_VOCAB
    path = os.path.expanduser(str(vocab))
    if os.path.isdir(path):
        path = os.path.join(path, "vocab.txt")
    if not os.path.isfile(path) and _looks_like_hub_id(str(vocab)):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(vocab), "vocab.txt")  # the local cache only, never the network
        if isinstance(cached, str) and os.path.isfile(cached):
            return cached
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"BERT vocab {vocab!r}: no such file, and not in the local Hugging Face cache. Set the model "
            f"config key 'tokenizer_vocab' to a local bert-base-uncased vocab.txt (or the folder holding it); "
            f"lavis_lite never downloads it."
        )
    return path


def _looks_like_hub_id(name: str) -> bool:
    return not name.endswith(".txt") and not name.startswith((".", "/", "~")) and name.count("/") <= 1


def init_bert_tokenizer(vocab: str | None = "tiny", truncation_side: str = "right"):
    """A BertTokenizerFast over ``vocab`` with ``[DEC]`` as bos token (len grows by one)."""
    from transformers import BertTokenizerFast

    path = resolve_vocab_path(vocab)
    tokenizer = BertTokenizerFast(vocab=path, do_lower_case=True, truncation_side=truncation_side)
    if tokenizer.convert_tokens_to_ids("[PAD]") != 0 or tokenizer.pad_token_id is None:
        raise ValueError(f"BERT vocab {path!r} must start with [PAD] (id 0) as bert-base-uncased does")
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


class TextIdsMemo:
    """Batch BERT encoding with each distinct text tokenised once (``encode``): caption data sets repeat
    their texts every epoch (the CPU demo's stage 1: ~100 distinct captions; a batch of 32: 0.51 -> 0.20 ms).
    Same ``input_ids`` / ``token_type_ids`` / ``attention_mask`` as ``tokenizer(texts, padding=...,
    truncation=True, max_length=...)`` (tests/test_blip2_qformer.py); at most ``max_entries`` texts are kept."""

    def __init__(self, tokenizer, max_length: int, max_entries: int = 200_000):
        self.tokenizer, self.max_length, self.max_entries = tokenizer, int(max_length), int(max_entries)
        self.ids: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        ids = self.ids.get(text)
        if ids is None:
            ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
            if len(self.ids) < self.max_entries:
                self.ids[text] = ids
        return ids

    def encode(self, texts: list[str], padding: str = "longest"):
        import torch
        from transformers import BatchEncoding

        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        rows = [self._ids(t) for t in texts]
        width = self.max_length if padding == "max_length" else max((len(r) for r in rows), default=0)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for i, r in enumerate(rows):
            cols = slice(width - len(r), width) if left else slice(0, len(r))
            input_ids[i, cols] = torch.tensor(r, dtype=torch.long)
            mask[i, cols] = 1
        return BatchEncoding({"input_ids": input_ids, "token_type_ids": torch.zeros_like(input_ids),
                              "attention_mask": mask})
