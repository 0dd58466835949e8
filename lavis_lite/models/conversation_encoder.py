"""Conversations -> token ids and labels, for any chat template (chat_templates.py).

One sample is laid out as ``prefix, system, (user, assistant)*`` of its template. Labels are -100
everywhere except each assistant reply and its end-of-turn text (``eot``). Each ``<ImageHere>`` in a
user turn (the first ``n_images`` of them) becomes the template's image wrapper around
``num_query_token`` image ids; later marks stay text. Template text and message text between two
control tokens / image runs are tokenised together, as the family's own ``apply_chat_template`` +
tokenizer do, with special tokens *split*: control strings typed by a user stay text. All text
pieces of a batch are tokenised in one call.

Truncation to ``max_txt_len`` keeps whole rounds while they fit. When even the first round does not,
its start is kept (with the supervised part of its reply that fits), cut before an image's
placeholder run, never inside one. Every truncation is reported in :class:`Encoded` (``cut_tokens``
= supervised tokens lost), so the data side can count and log it per epoch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from lavis_lite.models.chat_templates import CONTENT, ChatTemplate, get_template

logger = logging.getLogger(__name__)

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
    tiktoken_enc = getattr(tokenizer, "tokenizer", None)
    if type(tokenizer).__name__ == "QWenTokenizer" and hasattr(tiktoken_enc, "encode"):
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


@dataclass
class Encoded:
    """One encoded sample."""
    ids: np.ndarray          # int32 [L]
    labels: np.ndarray       # int32 [L], IGNORE_INDEX where not supervised
    n_images_used: int       # images whose placeholder runs survived truncation
    cut_tokens: int = 0      # supervised tokens lost to truncation
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.ids.shape[0])


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


# An item of a rendered turn: (kind, value, supervised); kind "id" (control token), "text" or "image".
Item = tuple


class ConversationEncoder:
    def __init__(self, tokenizer, template, image_token: str, num_query_token: int, max_txt_len: int = 512,
                 system_message: str | None = None, pad_token_id: int | None = None, cache_size: int = 100_000,
                 fast_tokenize: bool = True):
        self.tokenizer = tokenizer
        self.template: ChatTemplate = get_template(template)
        self.num_query_token, self.max_txt_len = int(num_query_token), int(max_txt_len)
        self.system_message = self.template.default_system if system_message is None else system_message
        self.fast_tokenize = bool(fast_tokenize)
        # Encoded samples by content (+ image count, mode, max_txt_len): a record seen again (next epoch)
        # skips tokenisation. Keyed by the text itself, so a random text processor only lowers the hit rate.
        self.cache_size, self._cache = int(cache_size), {}
        self.control_ids = {}
        for tok in self.template.control:
            try:
                self.control_ids[tok] = token_id(tokenizer, tok)
            except KeyError:
                raise KeyError(f"chat template {self.template.name!r} needs the control token {tok!r}, which "
                               f"{type(tokenizer).__name__} lacks; pick the template of this tokenizer's family") from None
        self.image_token_id = token_id(tokenizer, image_token)
        self.eot_id = self.control_ids.get(self.template.eot)
        if pad_token_id is None:
            pad_token_id = tokenizer.pad_token_id
        if pad_token_id is None:
            pad_token_id = self.eot_id if self.eot_id is not None else tokenizer.eos_token_id
        self.pad_token_id = int(pad_token_id)

    # ---- rendering -------------------------------------------------------------------
    def _literal(self, text: str, supervised: bool = False) -> list[Item]:
        """Template text -> items, control strings as ids."""
        items: list[Item] = []
        rest = text
        while rest:
            hits = [(rest.find(c), c) for c in self.control_ids if c in rest]
            if not hits:
                items.append(("text", rest, supervised))
                break
            at, tok = min(hits)
            if at:
                items.append(("text", rest[:at], supervised))
            items.append(("id", self.control_ids[tok], supervised))
            rest = rest[at + len(tok):]
        return items

    def _user_content(self, text: str, images_left: int) -> tuple[list[Item], int]:
        pieces = text.split(IMAGE_MARK, images_left) if images_left > 0 else [text]
        before, after = self.template.image.split("{image}", 1)
        items: list[Item] = [("text", pieces[0], False)]
        for piece in pieces[1:]:
            items += self._literal(before) + [("image", None, False)] + self._literal(after)
            items.append(("text", piece, False))
        return items, len(pieces) - 1

    def _render(self, system: str | None, turns, n_images: int, generation: bool, sample) -> tuple[list, list]:
        """(head items, [(turn items, images in turn)]) for one conversation."""
        tpl = self.template
        system = self.system_message if system is None else system
        strip = (lambda s: s.strip()) if tpl.strip else (lambda s: s)
        head = self._literal(tpl.prefix)
        if system and tpl.system:
            head += self._literal(tpl.system.replace("{system}", system))
        blocks, left = [], n_images
        # the reply after the last user turn (none in a generation prompt) gets last_reply_header
        last_reply = len(turns) - 1 if turns and turns[-1][0] == "assistant" else -1
        for t, (role, text) in enumerate(turns):
            if role == "user":
                if t == 0 and system and tpl.system_in_first_user:
                    text = tpl.system_in_first_user.replace("{system}", system) + text
                content, used = self._user_content(strip(text), left)
                left -= used
                pre, post = tpl.user.split(CONTENT, 1)
                blocks.append((self._literal(pre) + content + self._literal(post), used))
            else:
                header = tpl.assistant_header + (tpl.last_reply_header if t == last_reply else "")
                tail_sup, tail_rest = tpl.reply_tail()
                items = self._literal(header) + [("text", strip(text), True)]
                items += self._literal(tail_sup, supervised=True) + self._literal(tail_rest)
                blocks.append((items, 0))
        if left:
            raise ConversationError(f"sample {sample} has {n_images} image(s) but only {n_images - left} "
                                    f"{IMAGE_MARK} mark(s) in its user turns")
        if generation:
            blocks.append((self._literal(tpl.generation_prompt), 0))
        return head, blocks

    @staticmethod
    def _merge(items: list[Item]) -> list[Item]:
        """Join adjacent text items of equal supervision: they are tokenised as one piece, as the
        family's template renders them into one string. A reply right after header text becomes one
        ``split`` item: tokenised together with the header text (``' red'`` stays one token where the
        template writes ``' ' + reply``), supervised from the first token the header alone lacks."""
        out: list[Item] = []
        for kind, value, sup in items:
            if kind == "text" and not value:
                continue
            if kind == "text" and out and out[-1][0] == "text" and out[-1][2] == sup:
                out[-1] = ("text", out[-1][1] + value, sup)
            else:
                out.append((kind, value, sup))
        for k in range(len(out) - 1, 0, -1):
            if out[k][0] == "text" and out[k][2] and out[k - 1][0] == "text" and not out[k - 1][2]:
                out[k - 1:k + 1] = [("split", (out[k - 1][1], out[k][1]), True)]
        return out

    @staticmethod
    def _texts(items: list[Item]):
        for kind, value, _ in items:
            if kind == "text":
                yield value
            elif kind == "split":
                yield value[0] + value[1]
                yield value[0]

    # ---- encoding -----------------------------------------------------------------------
    def encode(self, conversations, n_images=None, add_generation_prompt: bool = False) -> list[Encoded]:
        """Encode a list of conversations (``add_generation_prompt``: the last turn is a user turn and
        the prompt ends with the assistant header; no truncation)."""
        n_images = list(n_images) if n_images is not None else [1] * len(conversations)
        if len(n_images) != len(conversations):
            raise ConversationError(f"n_images has {len(n_images)} entries for {len(conversations)} conversations")
        out: list[Encoded | None] = [None] * len(conversations)
        plans, texts, keys = {}, [], {}
        for s, conv in enumerate(conversations):
            key = self._cache_key(conv, n_images[s], add_generation_prompt)
            if key is not None and key in self._cache:
                out[s] = self._cache[key]
                continue
            keys[s] = key
            system, turns = normalise_turns(conv, s)
            if add_generation_prompt and (not turns or turns[-1][0] != "user"):
                raise ConversationError(f"sample {s}: for generation the last turn must be a user turn")
            head, blocks = self._render(system, turns, n_images[s], add_generation_prompt, s)
            parts = [self._merge(head)] + [self._merge(items) for items, _ in blocks]
            for items in parts:
                texts.extend(self._texts(items))
            plans[s] = (parts, [u for _, u in blocks])
        encoded = iter(encode_plain(self.tokenizer, texts, fast=self.fast_tokenize))
        run = [self.image_token_id] * self.num_query_token
        for s, (parts, used) in plans.items():
            pieces = []  # per part: (ids, labels, image run starts)
            for items in parts:
                ids, labels, runs = [], [], []
                for kind, value, sup in items:
                    if kind == "split":  # header text + reply, supervised where the header alone ends
                        toks, head = next(encoded), next(encoded)
                        n = 0
                        while n < min(len(head), len(toks)) and head[n] == toks[n]:
                            n += 1
                        ids += toks
                        labels += [IGNORE_INDEX] * n + toks[n:]
                        continue
                    if kind == "image":
                        runs.append(len(ids))
                        toks = run
                        sup = False
                    else:
                        toks = [value] if kind == "id" else next(encoded)
                    ids += toks
                    labels += toks if sup else [IGNORE_INDEX] * len(toks)
                pieces.append((ids, labels, runs))
            sample = self._assemble(pieces, used, truncate=not add_generation_prompt)
            if self.cache_size and keys[s] is not None and len(self._cache) < self.cache_size:
                self._cache[keys[s]] = sample
            out[s] = sample
        return out

    def _assemble(self, pieces, used: list[int], truncate: bool) -> Encoded:
        head, blocks = pieces[0], pieces[1:]
        ids, labels = list(head[0]), list(head[1])
        total_sup = sum(sum(1 for x in b[1] if x != IGNORE_INDEX) for b in blocks)
        if not truncate or len(ids) + sum(len(b[0]) for b in blocks) <= self.max_txt_len:
            for b in blocks:
                ids += b[0]
                labels += b[1]
            return Encoded(np.asarray(ids, np.int32), np.asarray(labels, np.int32), sum(used))
        # whole rounds (user + reply) while they fit
        kept, n_used, r = 0, 0, 0
        while r < len(blocks):
            round_blocks = blocks[r:r + 2]
            size = sum(len(b[0]) for b in round_blocks)
            if len(ids) + size > self.max_txt_len:
                break
            for b in round_blocks:
                ids += b[0]
                labels += b[1]
            n_used += sum(used[r:r + 2])
            kept, r = kept + len(round_blocks), r + 2
        if kept == 0 and blocks:
            # not even the first round fits: keep its start, cut before an image run, never inside one
            first = blocks[:2]
            cat_ids = [t for b in first for t in b[0]]
            cat_labels = [t for b in first for t in b[1]]
            starts, offset = [], 0
            for b in first:
                starts += [offset + st for st in b[2]]
                offset += len(b[0])
            room = self.max_txt_len - len(ids)
            cut = max(room, 0)
            for st in starts:
                if st < cut < st + self.num_query_token:
                    cut = st
            ids += cat_ids[:cut]
            labels += cat_labels[:cut]
            n_used = sum(1 for st in starts if st + self.num_query_token <= cut)
        kept_sup = sum(1 for x in labels if x != IGNORE_INDEX)
        return Encoded(np.asarray(ids, np.int32), np.asarray(labels, np.int32), n_used,
                       cut_tokens=total_sup - kept_sup, truncated=True)

    def _cache_key(self, conv, n_images: int, add_generation_prompt: bool):
        if not self.cache_size or not isinstance(conv, (list, tuple)):
            return None
        try:
            return (tuple((t["from"], t["value"]) for t in conv), n_images, add_generation_prompt, self.max_txt_len,
                    self.system_message)
        except (TypeError, KeyError):
            return None  # malformed: normalise_turns raises its clear error

    # ---- batching ---------------------------------------------------------------------
    def pad(self, samples: list[Encoded], padding_side: str = "right", pad_to: int | None = None) -> ChatBatch:
        lengths = [len(x) for x in samples]
        width = max(max(lengths), pad_to or 0)
        batch = len(samples)
        input_ids = np.full((batch, width), self.pad_token_id, dtype=np.int64)
        labels = np.full((batch, width), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        for i, enc in enumerate(samples):
            span = slice(0, len(enc)) if padding_side == "right" else slice(width - len(enc), width)
            input_ids[i, span] = enc.ids
            labels[i, span] = enc.labels
            mask[i, span] = 1
        return ChatBatch(torch.from_numpy(input_ids), torch.from_numpy(labels), torch.from_numpy(mask), lengths,
                         [x.n_images_used for x in samples])

    def __call__(self, conversations, n_images=None, add_generation_prompt: bool = False,
                 padding_side: str = "right") -> ChatBatch:
        encoded = self.encode(conversations, n_images, add_generation_prompt)
        for s, enc in enumerate(encoded):
            if enc.truncated:
                logger.debug("sample %d: truncated to max_txt_len=%d, %d supervised token(s) cut", s,
                             self.max_txt_len, enc.cut_tokens)
            if not add_generation_prompt and not (enc.labels != IGNORE_INDEX).any():
                logger.warning("sample %d has no supervised token (max_txt_len=%d)", s, self.max_txt_len)
        return self.pad(encoded, padding_side)

    def stop_token_ids(self) -> list[int]:
        """End-of-turn (and the template's extra stop tokens) for generation."""
        ids = [self.eot_id] if self.eot_id is not None else []
        ids += [token_id(self.tokenizer, t) for t in self.template.stop]
        if self.tokenizer.eos_token_id is not None:
            ids.append(int(self.tokenizer.eos_token_id))
        return list(dict.fromkeys(ids))
