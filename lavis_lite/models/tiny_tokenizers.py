"""Small tokenizers per LLM family for the ``tiny`` model types (tests, CPU demo).

Each is the shipped byte-level BPE (``assets/tiny_qwen_tokenizer``) plus the family's control tokens
as special tokens and its bos / eos / unk settings, so every family's chat template tokenises the
way the real tokenizer's would lay it out (control tokens single ids, text byte-level BPE).
"""
from __future__ import annotations

import functools

FAMILY_TOKENS = {
    "qwen2": {"special": [], "added": [], "roles": {}},
    "qwen3": {"special": [], "added": ["<think>", "</think>"], "roles": {}},
    "llama2": {"special": ["<unk>", "<s>", "</s>"], "added": [],
               "roles": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None}},
    "vicuna": {"special": ["<unk>", "<s>", "</s>"], "added": [],
               "roles": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None}},
    "llama3": {"special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>", "<|reserved_special_token_0|>"], "added": [],
               "roles": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": None}},
}


@functools.lru_cache(maxsize=None)
def _tiny(family: str):
    from transformers import AutoTokenizer

    from lavis_lite.models.llm import TINY_TOKENIZER_DIR

    if family not in FAMILY_TOKENS:
        raise ValueError(f"no tiny tokenizer for llm_family {family!r}; families with one: {sorted(FAMILY_TOKENS)}")
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    spec = FAMILY_TOKENS[family]
    if spec["special"]:
        tok.add_special_tokens({"additional_special_tokens": spec["special"]}, replace_extra_special_tokens=False)
    if spec["added"]:
        tok.add_tokens(spec["added"])
    for role, token in spec["roles"].items():
        setattr(tok, role, token)
    return tok


def tiny_tokenizer(family: str = "qwen2"):
    """A fresh copy (callers may add tokens to it) of the family's tiny tokenizer."""
    import copy

    return copy.deepcopy(_tiny(family))
