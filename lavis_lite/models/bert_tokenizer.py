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
