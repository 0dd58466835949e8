"""ChatML preprocessing for MiniGPT4-Qwen: conversations -> input_ids, labels, attention_mask.

Layout of one sample (Qwen's fine-tuning format)::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{text with each <ImageHere> -> num_query_token image ids}<|im_end|>\\n
    <|im_start|>assistant\\n{reply}<|im_end|>\\n          (repeated per round)

Labels are -100 everywhere except each assistant reply and its closing ``<|im_end|>``.
Text typed by users is tokenised with special tokens *split*, so ``<|im_start|>``, ``<|im_end|>``, the
image token text, or an ``<ImageHere>`` beyond the sample's image count become ordinary text, never
control ids. Each text piece of the whole batch is tokenised once (one batched call) and ids/labels
are assembled with list operations.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
IMAGE_MARK = "<ImageHere>"
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
DEFAULT_SYSTEM = "You are a helpful assistant."


class ConversationError(ValueError):
    """A conversation that cannot be turned into a ChatML sample (names the sample and turn)."""


def token_id(tokenizer, token: str) -> int:
    """Id of a token the tokenizer must know as one piece (ChatML control or image token)."""
    idx = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if idx is None or (unk is not None and idx == unk and token != getattr(tokenizer, "unk_token", None)):
        raise KeyError(f"Tokenizer {type(tokenizer).__name__} has no token {token!r}")
    return int(idx)


def encode_plain(tokenizer, texts: list[str], fast: bool = True) -> list[list[int]]:
    """Tokenise user/assistant text with special tokens neutralised (typed as plain text).
    ``fast``: use the exact pre-token memo (fast_tokenize.py) where the tokenizer allows it."""
    if not texts:
        return []
    tiktoken_enc = getattr(tokenizer, "tokenizer", None)
    if type(tokenizer).__name__ == "QWenTokenizer" and hasattr(tiktoken_enc, "encode"):
        # Qwen-1's remote tokenizer wraps tiktoken: disallowed_special=() encodes specials as text.
        return [tiktoken_enc.encode(t, allowed_special=set(), disallowed_special=()) for t in texts]
    from lavis_lite.models.fast_tokenize import fast_tokenizer, rust_encode  # lazy: keeps `regex` off import

    memo = fast_tokenizer(tokenizer) if fast else None
    if memo is not None:
        # byte-level BPE: pre-token memo, exact (fast_tokenize.py); Rust only for unseen pieces
        return memo.encode(texts)
    backend = getattr(tokenizer, "_tokenizer", None)  # a fast tokenizer's Rust tokenizer
    if (backend is not None and hasattr(backend, "encode_batch_fast") and hasattr(backend, "encode_special_tokens")
            and backend.truncation is None and backend.padding is None):
        # What tokenizer(..., split_special_tokens=True) does, without its per-text Python wrapping
        # (half of the first-epoch preprocess time); ids only, no offsets.
        return rust_encode(backend, texts)
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def normalise_role(role: str, sample: int, turn: int) -> str:
    if role in HUMAN_ROLES:
        return "user"
    if role in ASSISTANT_ROLES:
        return "assistant"
    raise ConversationError(f"sample {sample} turn {turn}: unknown role {role!r}; expected one of "
                            f"{HUMAN_ROLES + ASSISTANT_ROLES}")


@dataclass
class ChatBatch:
    input_ids: torch.Tensor          # [B, L]
    labels: torch.Tensor             # [B, L], IGNORE_INDEX where not supervised
    attention_mask: torch.Tensor     # [B, L]
    lengths: list[int]
    n_images_used: list[int]         # images whose placeholders survived truncation, per sample

    def to(self, device) -> "ChatBatch":
        return ChatBatch(self.input_ids.to(device), self.labels.to(device), self.attention_mask.to(device),
                         self.lengths, self.n_images_used)


class ChatMLPreprocessor:
    def __init__(self, tokenizer, image_token: str, num_query_token: int, max_txt_len: int = 512,
                 system_message: str = DEFAULT_SYSTEM, pad_token_id: int | None = None,
                 cache_size: int = 100_000, fast_tokenize: bool = True):
        self.tokenizer = tokenizer
        # Encoded samples by conversation content (+ image count, mode): a record seen again (next
        # epoch) skips tokenisation and assembly. Keyed by the text itself, so a non-deterministic
        # text processor only lowers the hit rate, never returns stale ids. At most ``cache_size``
        # entries (~1 KB each as int32 arrays); 0 turns it off.
        self.cache_size = int(cache_size)
        self.fast_tokenize = bool(fast_tokenize)  # exact pre-token memo in front of the tokenizer
        self._cache: dict = {}
        self.num_query_token = int(num_query_token)
        self.max_txt_len = int(max_txt_len)
        self.system_message = system_message
        self.im_start = token_id(tokenizer, "<|im_start|>")
        self.im_end = token_id(tokenizer, "<|im_end|>")
        self.image_token_id = token_id(tokenizer, image_token)
        if pad_token_id is None:
            pad_token_id = tokenizer.pad_token_id
        if pad_token_id is None:
            pad_token_id = token_id(tokenizer, "<|endoftext|>")
        self.pad_token_id = int(pad_token_id)
        nl, system, user, assistant = encode_plain(tokenizer, ["\n", "system", "user", "assistant"])
        self.nl = nl
        self.header = {r: [self.im_start] + ids + nl for r, ids in
                       (("system", system), ("user", user), ("assistant", assistant))}
        self.tail = [self.im_end] + nl
        self.system_block = self.header["system"] + encode_plain(tokenizer, [system_message])[0] + self.tail

    # ---- conversation checks ------------------------------------------------
    def _turns(self, conv, sample: int) -> list[tuple[str, str]]:
        if not isinstance(conv, (list, tuple)):
            raise ConversationError(f"sample {sample}: a conversation must be a list of turns, got {type(conv)}")
        turns = []
        for t, turn in enumerate(conv):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                raise ConversationError(f"sample {sample} turn {t}: expected {{'from', 'value'}}, got {turn!r}")
            turns.append((normalise_role(turn["from"], sample, t), str(turn["value"])))
        if turns and turns[0][0] == "assistant":
            turns = turns[1:]  # a leading assistant turn has nothing to answer (as Qwen's finetune.py)
        for t, (role, _) in enumerate(turns):
            if role != ("user" if t % 2 == 0 else "assistant"):
                raise ConversationError(f"sample {sample}: roles must alternate user/assistant; turn {t} "
                                        f"(after dropping a leading assistant turn) is {role!r}")
        return turns

    def _split_images(self, text: str, images_left: int) -> tuple[list[str], int]:
        """Split at the first ``images_left`` image marks; later marks stay literal text."""
        pieces = text.split(IMAGE_MARK, images_left) if images_left > 0 else [text]
        return pieces, len(pieces) - 1

    # ---- main entry -----------------------------------------------------------
    def __call__(self, conversations, n_images=None, add_generation_prompt: bool = False,
                 padding_side: str = "right") -> ChatBatch:
        """Encode a batch. ``add_generation_prompt``: the last turn is a user turn and the sequence ends
        with the assistant header (for generation; no truncation of the question, labels unused)."""
        n_images = list(n_images) if n_images is not None else [1] * len(conversations)
        if len(n_images) != len(conversations):
            raise ConversationError(f"n_images has {len(n_images)} entries for {len(conversations)} conversations")
        # 1) collect every text piece of the batch (except cached samples), then tokenise them in one call
        plans, texts, keys, hits = [], [], [], {}
        for s, conv in enumerate(conversations):
            key = self._cache_key(conv, n_images[s], add_generation_prompt)
            keys.append(key)
            if key is not None and key in self._cache:
                hits[s] = self._cache[key]
                plans.append(None)
                continue
            turns = self._turns(conv, s)
            if add_generation_prompt and (not turns or turns[-1][0] != "user"):
                raise ConversationError(f"sample {s}: for generation the last turn must be a user turn")
            left, plan = n_images[s], []
            for role, text in turns:
                pieces, used = self._split_images(text, left) if role == "user" else ([text], 0)
                left -= used
                plan.append((role, len(texts), len(pieces)))
                texts.extend(pieces)
            if left:
                raise ConversationError(f"sample {s} has {n_images[s]} image(s) but only "
                                        f"{n_images[s] - left} {IMAGE_MARK} mark(s) in its user turns")
            plans.append(plan)
        encoded = encode_plain(self.tokenizer, texts, fast=self.fast_tokenize)
        image_run = [self.image_token_id] * self.num_query_token
        # 2) assemble per sample, one block per turn
        ids_out, labels_out, used_out = [], [], []
        for s, plan in enumerate(plans):
            if plan is None:
                ids, labels, used = hits[s]
                ids_out.append(ids)
                labels_out.append(labels)
                used_out.append(used)
                continue
            blocks = []  # (ids, labels, n_images, is_reply)
            for role, start, count in plan:
                body = encoded[start]
                for piece in encoded[start + 1:start + count]:
                    body = body + image_run + piece
                ids = self.header[role] + body + self.tail
                if role == "assistant":
                    head = len(self.header[role])
                    labels = [IGNORE_INDEX] * head + body + [self.im_end] + [IGNORE_INDEX] * len(self.nl)
                else:
                    labels = [IGNORE_INDEX] * len(ids)
                blocks.append((ids, labels, count - 1, role == "assistant"))
            if add_generation_prompt:
                blocks.append((self.header["assistant"], [IGNORE_INDEX] * len(self.header["assistant"]), 0, False))
            else:
                blocks = self._truncate(blocks, s)
            ids = list(self.system_block)
            labels = [IGNORE_INDEX] * len(ids)
            for block_ids, block_labels, _, _ in blocks:
                ids += block_ids
                labels += block_labels
            if not add_generation_prompt and not any(b[3] for b in blocks):
                logger.warning("sample %d has no supervised token (no assistant reply fits max_txt_len=%d)",
                               s, self.max_txt_len)
            ids, labels = np.asarray(ids, dtype=np.int32), np.asarray(labels, dtype=np.int32)
            ids_out.append(ids)
            labels_out.append(labels)
            used_out.append(sum(b[2] for b in blocks))
            if keys[s] is not None and len(self._cache) < self.cache_size:
                self._cache[keys[s]] = (ids, labels, used_out[-1])
        return self._pad(ids_out, labels_out, used_out, padding_side)

    def _cache_key(self, conv, n_images: int, add_generation_prompt: bool):
        if not self.cache_size or not isinstance(conv, (list, tuple)):
            return None
        try:
            # max_txt_len too: truncation depends on it, and callers may change it on a live preprocessor
            return (tuple((t["from"], t["value"]) for t in conv), n_images, add_generation_prompt, self.max_txt_len)
        except (TypeError, KeyError):
            return None  # malformed: let _turns raise its clear error

    def _truncate(self, blocks, sample: int):
        """Drop whole trailing rounds (user + reply) until the sample fits ``max_txt_len``."""
        total = len(self.system_block) + sum(len(b[0]) for b in blocks)
        if total <= self.max_txt_len:
            return blocks
        kept = list(blocks)
        while kept and total > self.max_txt_len:
            drop = 2 if len(kept) % 2 == 0 else 1  # a full round, or a dangling user turn
            for block in kept[-drop:]:
                total -= len(block[0])
            kept = kept[:-drop]
        logger.info("sample %d: dropped %d trailing turn(s) to fit max_txt_len=%d", sample,
                    len(blocks) - len(kept), self.max_txt_len)
        return kept

    def _pad(self, ids_list, labels_list, used, padding_side: str) -> ChatBatch:
        lengths = [len(x) for x in ids_list]
        width = max(lengths)
        batch = len(ids_list)
        # numpy rows, one tensor conversion per batch (a torch.tensor call per row costs more)
        input_ids = np.full((batch, width), self.pad_token_id, dtype=np.int64)
        labels = np.full((batch, width), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        for i, (ids, labs) in enumerate(zip(ids_list, labels_list)):
            span = slice(0, len(ids)) if padding_side == "right" else slice(width - len(ids), width)
            input_ids[i, span] = ids
            labels[i, span] = labs
            mask[i, span] = 1
        return ChatBatch(torch.from_numpy(input_ids), torch.from_numpy(labels), torch.from_numpy(mask), lengths, used)
