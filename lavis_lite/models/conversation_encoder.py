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
        self._compile()

    # ---- rendering -------------------------------------------------------------------
    def _literal(self, text: str, supervised: bool = False) -> list[Item]:
        """Template text -> merged items, control strings as ids (memoised: templates repeat)."""
        key = (text, supervised)
        hit = self._literals.get(key)
        if hit is not None:
            return hit
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
        self._literals[key] = items
        self._const_texts.update(v for k, v, _ in items if k == "text")
        return items

    @staticmethod
    def _join(out: list[Item], items) -> None:
        """Append merged ``items`` to merged ``out``; text of equal supervision meeting at the seam is
        joined: it is one piece of the string the family's template renders."""
        for item in items:
            if item[0] == "text":
                if not item[1]:
                    continue
                if out and out[-1][0] == "text" and out[-1][2] == item[2]:
                    out[-1] = ("text", out[-1][1] + item[1], item[2])
                    continue
            out.append(item)

    def _freeze(self, items: list[Item]) -> list[Item]:
        """Template-only items -> ("const", (ids, labels)) items, tokenised once here; image items stay."""
        out: list[Item] = []
        for kind, value, sup in items:
            if kind == "image":
                out.append((kind, value, sup))
                continue
            ids = [value] if kind == "id" else (encode_plain(self.tokenizer, [value], fast=self.fast_tokenize)[0]
                                                if value else [])
            labels = list(ids) if sup else [IGNORE_INDEX] * len(ids)
            if out and out[-1][0] == "const":
                prev = out[-1][1]
                out[-1] = ("const", (prev[0] + ids, prev[1] + labels), False)
            elif ids:
                out.append(("const", (ids, labels), False))
        return out

    def _compile(self) -> None:
        tpl = self.template
        self._literals: dict = {}
        self._const_texts: set[str] = set()   # texts made of template text only
        self._const_ids: dict[str, list[int]] = {}
        self._user_pre, self._user_post = (self._literal(x) for x in tpl.user.split(CONTENT, 1))
        before, after = tpl.image.split("{image}", 1)
        self._image_items = self._literal(before) + [("image", None, False)] + self._literal(after)
        tail_sup, tail_rest = tpl.reply_tail()
        self._reply_tail = self._literal(tail_sup, supervised=True) + self._literal(tail_rest)
        self._headers = {last: self._literal(tpl.assistant_header + (tpl.last_reply_header if last else ""))
                         for last in (False, True)}
        self._reply_parts = {}
        for last, header in self._headers.items():
            header, header_tail = self._edges(header, at_end=True)
            tail_items = self._reply_tail
            tail_head = tail_items[0][1] if tail_items and tail_items[0][0] == "text" else ""
            self._reply_parts[last] = (header, header_tail, tail_head, tail_items[1:] if tail_head else list(tail_items))
        self._reply_parts = {last: (self._freeze(h), ht, th, self._freeze(t))
                             for last, (h, ht, th, t) in self._reply_parts.items()}
        self._heads: dict = {}
        pre, pre_tail = self._edges(self._user_pre, at_end=True)
        self._user_pre_edge = (self._freeze(pre), pre_tail)
        middle, img_after = self._edges(self._image_items, at_end=True)
        middle, img_before = self._edges(middle, at_end=False)
        self._image_edges = (img_before, self._freeze(middle), img_after)
        post, post_head = self._edges(self._user_post, at_end=False)
        self._user_post_edge = (post_head, self._freeze(post))
        self._generation = self._freeze(self._literal(self.template.generation_prompt))

    @staticmethod
    def _edges(items: list[Item], at_end: bool) -> tuple[list[Item], str]:
        """(items without the text at one edge, that text or "")."""
        k = -1 if at_end else 0
        if items and items[k][0] == "text" and not items[k][2]:
            return (items[:-1], items[-1][1]) if at_end else (items[1:], items[0][1])
        return list(items), ""

    def _user_fast(self, text: str) -> list[Item]:
        """A user turn without images: template text and the message as one text piece."""
        pre, pre_tail = self._user_pre_edge
        post_head, post = self._user_post_edge
        return pre + [("text", pre_tail + text + post_head, False)] + post

    def _user_with_images(self, pieces: list[str]) -> list[Item]:
        """A user turn whose text is split at its image marks: text runs between image wrappers."""
        items, cur = list(self._user_pre_edge[0]), self._user_pre_edge[1]
        img_before, img_items, img_after = self._image_edges
        for i, piece in enumerate(pieces):
            if i:
                cur += img_before
                if cur:
                    items.append(("text", cur, False))
                items += img_items
                cur = img_after
            cur += piece
        cur += self._user_post_edge[0]
        if cur:
            items.append(("text", cur, False))
        items += self._user_post_edge[1]
        return items

    def _reply(self, text: str, last: bool) -> list[Item]:
        """Assistant turn. The reply is tokenised together with the header text before it (one
        ``split`` item: ``' red'`` stays one token where the template writes ``' ' + reply``) and is
        supervised from the first token the header text alone lacks."""
        header, header_tail, tail_head, tail = self._reply_parts[last]
        text += tail_head
        if header_tail and text:
            return header + [("split", (header_tail, text), True)] + tail
        return header + ([("text", header_tail, False)] if header_tail else []) + [("text", text, True)] + tail

    def _render(self, system: str | None, turns, n_images: int, generation: bool, sample) -> tuple[list, list]:
        """(head items, [(turn items, images in turn)]) for one conversation."""
        tpl = self.template
        system = self.system_message if system is None else system
        head = self._heads.get(system)
        if head is None:
            head = list(self._literal(tpl.prefix))
            if system and tpl.system:
                self._join(head, self._literal(tpl.system.replace("{system}", system)))
            head = self._freeze(head)
            if len(self._heads) < 64:
                self._heads[system] = head
        blocks, left = [], n_images
        # the reply after the last user turn (none in a generation prompt) gets last_reply_header
        last_reply = len(turns) - 1 if turns and turns[-1][0] == "assistant" else -1
        for t, (role, text) in enumerate(turns):
            if role == "user" and t == 0 and system and tpl.system_in_first_user:
                text = tpl.system_in_first_user.replace("{system}", system) + text
            if tpl.strip:
                text = text.strip()
            if role == "user":
                if left == 0 or IMAGE_MARK not in text:
                    blocks.append((self._user_fast(text), 0))
                    continue
                pieces = text.split(IMAGE_MARK, left)
                left -= len(pieces) - 1
                blocks.append((self._user_with_images(pieces), len(pieces) - 1))
            else:
                blocks.append((self._reply(text, t == last_reply), 0))
        if left:
            raise ConversationError(f"sample {sample} has {n_images} image(s) but only {n_images - left} "
                                    f"{IMAGE_MARK} mark(s) in its user turns")
        if generation:
            blocks.append((self._generation, 0))
        return head, blocks

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
            parts = [head] + [items for items, _ in blocks]
            for items in parts:
                for kind, value, _ in items:
                    if kind == "text":
                        texts.append(value)
                    elif kind == "split":
                        texts.append(value[0] + value[1])
                        texts.append(value[0])
            plans[s] = (parts, [u for _, u in blocks])
        encoded = iter(self._tokenise(texts))
        run = [self.image_token_id] * self.num_query_token
        for s, (parts, used) in plans.items():
            pieces = []  # per part: (ids, labels, image run starts)
            for items in parts:
                ids, labels, runs = [], [], []
                for kind, value, sup in items:
                    if kind == "const":
                        ids += value[0]
                        labels += value[1]
                        continue
                    if kind == "text":
                        toks = next(encoded)  # (an empty text encodes to no ids)
                        ids += toks
                        labels += toks if sup else [IGNORE_INDEX] * len(toks)
                        continue
                    if kind == "id":
                        ids.append(value)
                        labels.append(value if sup else IGNORE_INDEX)
                        continue
                    if kind == "split":  # header text + reply, supervised where the header alone ends
                        toks, head = next(encoded), next(encoded)
                        n = len(head)
                        if toks[:n] != head:
                            n, m = 0, min(len(head), len(toks))
                            while n < m and head[n] == toks[n]:
                                n += 1
                        ids += toks
                        labels += [IGNORE_INDEX] * n
                        labels += toks[n:]
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

    def _tokenise(self, texts: list[str]) -> list[list[int]]:
        """Ids of ``texts``; template-only text (no message content in it) is tokenised once per encoder."""
        const = self._const_ids
        todo = list(dict.fromkeys(t for t in texts if t not in const)) if const else texts
        fresh = encode_plain(self.tokenizer, todo, fast=self.fast_tokenize)
        if not const and len(todo) == len(texts) and not self._const_texts.intersection(todo):
            return fresh
        new = dict(zip(todo, fresh))
        for text, ids in new.items():
            if text in self._const_texts:
                const[text] = ids
        return [const[t] if t in const else new[t] for t in texts]

    def _assemble(self, pieces, used: list[int], truncate: bool) -> Encoded:
        head, blocks = pieces[0], pieces[1:]
        ids, labels = list(head[0]), list(head[1])
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
        total_sup = sum(sum(1 for x in b[1] if x != IGNORE_INDEX) for b in blocks)
        kept_sup = sum(1 for x in labels if x != IGNORE_INDEX)
        if not kept_sup:
            logger.warning("a sample has no supervised token left after truncation to max_txt_len=%d",
                           self.max_txt_len)
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
            if enc.truncated:  # counted per epoch by the data side (datasets/chat_encoding.py)
                logger.debug("sample %d: truncated to max_txt_len=%d, %d supervised token(s) cut", s,
                             self.max_txt_len, enc.cut_tokens)
        return self.pad(encoded, padding_side)

    def stop_token_ids(self) -> list[int]:
        """End-of-turn (and the template's extra stop tokens) for generation."""
        ids = [self.eot_id] if self.eot_id is not None else []
        ids += [token_id(self.tokenizer, t) for t in self.template.stop]
        if self.tokenizer.eos_token_id is not None:
            ids.append(int(self.tokenizer.eos_token_id))
        return list(dict.fromkeys(ids))
