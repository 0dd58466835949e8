"""Conversation basics shared by the encoder, the processor and the datasets: roles, tokenizer-free
checks (the dataset runs them per record), plain-text tokenisation, and the encoded-sample types."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100
IMAGE_MARK = "<ImageHere>"
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
SYSTEM_ROLES = ("system",)


class ConversationError(ValueError):
    """A conversation that cannot become a training sample (names the sample and turn)."""


def token_id(tokenizer, token: str) -> int:
    """Id of a token the tokenizer must know as one piece (control or image token)."""
    idx = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if idx is None or (unk is not None and idx == unk and token != getattr(tokenizer, "unk_token", None)):
        raise KeyError(f"Tokenizer {type(tokenizer).__name__} has no token {token!r}")
    return int(idx)


def encode_plain(tokenizer, texts: list[str], fast: bool = True) -> list[list[int]]:
    """Tokenise text with special tokens neutralised (typed as plain text).
    ``fast``: use the exact pre-token memo (fast_tokenize.py) where the tokenizer allows it."""
    if not texts:
        return []
    if type(tokenizer).__name__ == "QWenTokenizer" and hasattr(getattr(tokenizer, "tokenizer", None), "encode"):
        tiktoken_enc = tokenizer.tokenizer
        # Qwen-1's remote tokenizer wraps tiktoken: disallowed_special=() encodes specials as text.
        return [tiktoken_enc.encode(t, allowed_special=set(), disallowed_special=()) for t in texts]
    from lavis_lite.models.fast_tokenize import fast_tokenizer, rust_encode  # lazy: keeps `regex` off import

    memo = fast_tokenizer(tokenizer) if fast else None
    if memo is not None:
        return memo.encode(texts)  # byte-level BPE: pre-token memo, exact; Rust only for unseen pieces
    backend = getattr(tokenizer, "_tokenizer", None)  # a fast tokenizer's Rust tokenizer
    if (backend is not None and hasattr(backend, "encode_batch_fast") and hasattr(backend, "encode_special_tokens")
            and backend.truncation is None and backend.padding is None):
        # What tokenizer(..., split_special_tokens=True) does, without its per-text Python wrapping.
        return rust_encode(backend, texts)
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


# ---- tokenizer-free checks (the dataset runs them per record) --------------------------
def normalise_turns(conv, sample="") -> tuple[str | None, list[tuple[str, str]]]:
    """(system message or None, [(role, text)]) with roles user/assistant alternating, user first.
    A leading assistant turn is dropped (nothing to answer, as Qwen's finetune.py does)."""
    where = f"sample {sample}: " if sample != "" else ""
    if not isinstance(conv, (list, tuple)):
        raise ConversationError(f"{where}a conversation must be a list of turns, got {type(conv).__name__}")
    system, turns = None, []
    for t, turn in enumerate(conv):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ConversationError(f"{where}turn {t}: expected {{'from', 'value'}}, got {turn!r}")
        role = turn["from"]
        if role in SYSTEM_ROLES and t == 0:
            system = str(turn["value"])
        elif role in HUMAN_ROLES:
            turns.append(("user", str(turn["value"])))
        elif role in ASSISTANT_ROLES:
            turns.append(("assistant", str(turn["value"])))
        else:
            raise ConversationError(f"{where}turn {t}: unknown role {role!r}; expected one of "
                                    f"{HUMAN_ROLES + ASSISTANT_ROLES} (or 'system' first)")
    if turns and turns[0][0] == "assistant":
        turns = turns[1:]
    for t, (role, _) in enumerate(turns):
        if role != ("user" if t % 2 == 0 else "assistant"):
            raise ConversationError(f"{where}roles must alternate user/assistant; turn {t} "
                                    f"(after dropping a leading assistant turn) is {role!r}")
    return system, turns


def count_marks(turns: list[tuple[str, str]]) -> int:
    return sum(text.count(IMAGE_MARK) for role, text in turns if role == "user")


def validate_conversation(conv, n_images: int, for_training: bool = True) -> None:
    """Role order, an assistant reply to train on, and enough ``<ImageHere>`` marks for the images."""
    _, turns = normalise_turns(conv)
    if for_training and not any(role == "assistant" for role, _ in turns):
        raise ConversationError("conversation has no assistant reply to train on")
    marks = count_marks(turns)
    if marks < n_images:
        raise ConversationError(f"{n_images} image(s) but only {marks} {IMAGE_MARK} mark(s) in the user turns")


class Encoded:
    """One encoded sample: ``ids`` / ``labels`` (int32 [L], labels IGNORE_INDEX where not supervised),
    ``n_images_used`` (images whose placeholder runs survived truncation), ``cut_tokens`` (supervised
    tokens lost to truncation), ``truncated``. Samples encoded together are slices of one batch array
    (``in_batch``), made on first access: the collator lays out such a batch without re-joining them."""
    __slots__ = ("_ids", "_labels", "_batch", "_start", "_n", "n_images_used", "cut_tokens", "truncated")

    def __init__(self, ids, labels, n_images_used: int, cut_tokens: int = 0, truncated: bool = False):
        self._ids, self._labels, self._batch, self._start, self._n = ids, labels, None, 0, int(ids.shape[0])
        self.n_images_used, self.cut_tokens, self.truncated = n_images_used, cut_tokens, truncated

    @classmethod
    def in_batch(cls, batch: tuple, start: int, n: int, n_images_used: int, cut_tokens: int = 0,
                 truncated: bool = False) -> "Encoded":
        """Tokens ``start:start + n`` of ``batch = (ids, labels)`` (read-only arrays shared by the batch)."""
        self = cls.__new__(cls)
        self._ids = self._labels = None
        self._batch, self._start, self._n = batch, start, n
        self.n_images_used, self.cut_tokens, self.truncated = n_images_used, cut_tokens, truncated
        return self

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = self._batch[0][self._start:self._start + self._n]
        return self._ids

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = self._batch[1][self._start:self._start + self._n]
        return self._labels

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (f"Encoded(ids={self.ids!r}, labels={self.labels!r}, n_images_used={self.n_images_used}, "
                f"cut_tokens={self.cut_tokens}, truncated={self.truncated})")


def joined(samples: list[Encoded]) -> tuple[np.ndarray, np.ndarray]:
    """The samples' ids and labels one after the other: a slice of their batch arrays when they are
    consecutive parts of one (the first pass of a collater), else concatenated."""
    first = samples[0]._batch if samples else None
    if first is not None:
        at = samples[0]._start
        for s in samples:
            if s._batch is not first or s._start != at:
                break
            at += s._n
        else:
            start = samples[0]._start
            return first[0][start:at], first[1][start:at]
    return np.concatenate([s.ids for s in samples]), np.concatenate([s.labels for s in samples])


@dataclass
class ChatBatch:
    input_ids: torch.Tensor          # [B, L]
    labels: torch.Tensor             # [B, L]
    attention_mask: torch.Tensor     # [B, L]
    lengths: list[int]
    n_images_used: list[int]

    def to(self, device) -> "ChatBatch":
        return ChatBatch(self.input_ids.to(device), self.labels.to(device), self.attention_mask.to(device),
                         self.lengths, self.n_images_used)
