"""A GPT-2-style byte-level tokenizer built locally (no download of 'gpt2').

The vocabulary is the 256 byte-level symbols plus the words of the synthetic world as
whole tokens (a Unigram model scores whole words far above byte pieces), plus the
dialogue special tokens. Any text encodes (unknown words fall back to bytes) and the
result is the same on every machine, so checkpoints and tokenizers always agree.
A real tokenizer directory (``save_pretrained`` output or ``tokenizer.json``) can be
used instead through ``tokenizer_path``; it must contain the special tokens.
"""
from __future__ import annotations

import functools
import os

from transformers import PreTrainedTokenizerFast

from .vocabulary import all_words

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
SPEAKER1, SPEAKER2, CAPTION, VIDEO = "<speaker1>", "<speaker2>", "<cap>", "<video>"
SPECIAL_TOKENS = [BOS, EOS, PAD, SPEAKER1, SPEAKER2, CAPTION, VIDEO]

_WORD_SCORE = -2.0   # log-probability of a whole word
_BYTE_SCORE = -12.0  # a byte piece: used only where no word fits


@functools.lru_cache(maxsize=None)
def build_dialogue_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_pieces = sorted(pre_tokenizers.ByteLevel.alphabet())
    space = "\u0120"  # how the byte-level pre-tokenizer writes a leading space
    words = [space + w for w in all_words()]
    pieces = [(p, _BYTE_SCORE) for p in byte_pieces] + [(w, _WORD_SCORE) for w in words if w not in byte_pieces]
    core = Tokenizer(models.Unigram(pieces, unk_id=None, byte_fallback=False))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[SPEAKER1, SPEAKER2, CAPTION, VIDEO],
        clean_up_tokenization_spaces=False,
    )
    return tokenizer


@functools.lru_cache(maxsize=None)
def _load_tokenizer(path: str) -> PreTrainedTokenizerFast:
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer_path {path!r} does not exist")
    if os.path.isfile(path):
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=path, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    else:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    tokenizer.add_special_tokens({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
                                  "additional_special_tokens": [SPEAKER1, SPEAKER2, CAPTION, VIDEO]})
    return tokenizer


def load_dialogue_tokenizer(path: str | None = None) -> PreTrainedTokenizerFast:
    """The built-in tokenizer, or the one at ``path`` with the dialogue special tokens added."""
    if path in (None, "", "builtin"):
        return build_dialogue_tokenizer()
    return _load_tokenizer(os.path.abspath(os.path.expanduser(str(path))))


def special_token_ids(tokenizer) -> dict[str, int]:
    """{token: id} for the dialogue special tokens; raises naming any that are missing."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"Tokenizer lacks the dialogue special tokens {missing}")
    return ids
