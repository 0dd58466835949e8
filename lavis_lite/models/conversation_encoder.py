"""Conversations -> token ids and labels, for any chat template (chat_templates.py).

One sample is laid out as ``prefix, system, (user, assistant)*`` of its template. Labels are -100
everywhere except each assistant reply and its end-of-turn text (``eot``). Each ``<ImageHere>`` in a
user turn (the first ``n_images`` of them) becomes the template's image wrapper around
``num_query_token`` image ids; later marks stay text. Template text that touches a message is
tokenised with it, as the family's own ``apply_chat_template`` + tokenizer do (a turn's text runs
between control tokens / image runs; where turns meet without a control token, as in Vicuna, the
template's ``space_joins_next`` moves the separator space so the pieces give the whole string's ids),
with special tokens *split*: control strings typed by a user stay text. All text pieces of a batch are
tokenised in one call; the template is compiled once into ops per conversation shape (see _compile).

Truncation to ``max_txt_len`` keeps whole rounds while they fit. When even the first round does not,
its start is kept (with the supervised part of its reply that fits), cut before an image's
placeholder run, never inside one. Every truncation is reported in :class:`Encoded` (``cut_tokens``
= supervised tokens lost), so the data side can count and log it per epoch.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from lavis_lite.models.chat_templates import CONTENT, ChatTemplate, get_template
from lavis_lite.models.conversation_basics import (  # noqa: F401 (also re-exported: the encoder's public names)
    ASSISTANT_ROLES, HUMAN_ROLES, IGNORE_INDEX, IMAGE_MARK, SYSTEM_ROLES, ChatBatch, ConversationError, Encoded,
    count_marks, encode_plain, joined, normalise_turns, token_id, validate_conversation)

logger = logging.getLogger(__name__)


# An item of template text: (kind, value, supervised); kind "id" (control token), "text" or "image".
Item = tuple
# Ops of a compiled turn, run over the batch's token stream: CONST (fixed ids), TEXT (next text's ids),
# SPLIT (next text: header text + reply, supervised from the first token past the header), TAIL (fixed
# end-of-turn ids, the first ``n`` supervised), IMAGE (fixed ids, the placeholder run, fixed ids).
CONST, TEXT, SPLIT, TAIL, IMAGE = range(5)
TEXT_OP = (TEXT,)


def _pairs(conv):
    """``((from, value), ...)`` of a conversation (also its cache key), or None when malformed."""
    if not isinstance(conv, (list, tuple)):
        return None
    try:
        return tuple([(t["from"], t["value"]) for t in conv])
    except (TypeError, KeyError):
        return None


class _NotNormal(Exception):
    """Turns that need ``normalise_turns`` (a system turn, a leading reply, a role out of order ...)."""


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

    # ---- compiling the template (once per encoder) ----------------------------------------
    def _literal(self, text: str, supervised: bool = False) -> list[Item]:
        """Template text -> items, control strings as ids (memoised: templates repeat)."""
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
        return items

    @staticmethod
    def _join(out: list[Item], items) -> None:
        """Append ``items`` to ``out``; text of equal supervision meeting at the seam is joined: it is one
        piece of the string the family's template renders."""
        for item in items:
            if item[0] == "text":
                if not item[1]:
                    continue
                if out and out[-1][0] == "text" and out[-1][2] == item[2]:
                    out[-1] = ("text", out[-1][1] + item[1], item[2])
                    continue
            out.append(item)

    def _freeze(self, items: list[Item]) -> tuple[list[int], list[int]]:
        """Template-only items (no image) -> (ids, labels), each text tokenised alone."""
        ids, labels = [], []
        for kind, value, sup in items:
            if kind == "image":
                raise ValueError(f"template {self.template.name!r}: an image inside a fixed piece")
            toks = [value] if kind == "id" else (encode_plain(self.tokenizer, [value], fast=self.fast_tokenize)[0]
                                                 if value else [])
            ids += toks
            labels += toks if sup else [IGNORE_INDEX] * len(toks)
        return ids, labels

    def _const(self, items: list[Item]) -> list[int]:
        """Ids of unsupervised template-only items."""
        return self._freeze(items)[0]

    @staticmethod
    def _edges(items: list[Item], at_end: bool) -> tuple[list[Item], str]:
        """(items without the unsupervised text at one edge, that text or "")."""
        k = -1 if at_end else 0
        if items and items[k][0] == "text" and not items[k][2]:
            return (items[:-1], items[-1][1]) if at_end else (items[1:], items[0][1])
        return list(items), ""

    def _compile(self) -> None:
        """Turn the template into ops (CONST / TEXT / SPLIT / TAIL / IMAGE) with every fixed piece
        tokenised once. Template text that touches a message (``user\\n`` before a ChatML user message)
        is tokenised together with it, as the family's own template + tokenizer do."""
        tpl = self.template
        self._literals: dict = {}
        user_pre, user_post = (self._literal(x) for x in tpl.user.split(CONTENT, 1))
        pre, self._pre_tail = self._edges(user_pre, at_end=True)
        post, self._post_head = self._edges(user_post, at_end=False)
        pre_ids, post_ids = self._const(pre), self._const(post)
        self._user_edges = ([(CONST, pre_ids)] if pre_ids else [], [(CONST, post_ids)] if post_ids else [])
        before, after = tpl.image.split("{image}", 1)
        middle, self._img_after = self._edges(self._literal(before) + [("image", None, False)] + self._literal(after),
                                              at_end=True)
        middle, self._img_before = self._edges(middle, at_end=False)
        at = [k for k, _, _ in middle].index("image")
        self._image_op = (IMAGE, self._const(middle[:at]), self._const(middle[at + 1:]))
        self._user_ops: dict[int, tuple] = {}
        tail_sup, tail_rest = tpl.reply_tail()
        tail = self._literal(tail_sup, supervised=True) + self._literal(tail_rest)
        # reply text + the eot text right after it are one supervised text piece
        tail_head = tail[0][1] if tail and tail[0][0] == "text" else ""
        tail_ids, tail_labels = self._freeze(tail[1:] if tail_head else tail)
        n_sup = sum(1 for x in tail_labels if x != IGNORE_INDEX)
        if tail_labels[:n_sup] != tail_ids[:n_sup] or any(x != IGNORE_INDEX for x in tail_labels[n_sup:]):
            raise ValueError(f"template {tpl.name!r}: the supervised end of turn must come first after a reply")
        # space_joins_next: the spaces ending a user turn start the reply / generation text instead
        self._post_carry = ""
        if tpl.space_joins_next:
            kept = self._post_head.rstrip(" ")
            self._post_carry, self._post_head = self._post_head[len(kept):], kept
            starts_with_text = [self._literal(tpl.assistant_header), self._literal(tpl.generation_prompt)]
            if self._post_carry and (post_ids or not all(x and x[0][0] == "text" for x in starts_with_text)):
                raise ValueError(f"template {tpl.name!r}: space_joins_next needs text between a user turn and "
                                 "the reply / generation prompt after it")
        self._reply_ops, self._reply_text = {}, {}
        for last in (False, True):
            header, header_tail = self._edges(self._literal(self._post_carry + tpl.assistant_header
                                                            + (tpl.last_reply_header if last else "")), at_end=True)
            header_ids = self._const(header)
            # the reply is tokenised with the header text before it (' red' stays one token where the
            # template writes ' ' + reply) and supervised from the first token the header text alone lacks
            head_ids = encode_plain(self.tokenizer, [header_tail], fast=self.fast_tokenize)[0] if header_tail else []
            self._reply_ops[last] = (([(CONST, header_ids)] if header_ids else [])
                                     + [(SPLIT, head_ids), (TAIL, tail_ids, n_sup)])
            self._reply_text[last] = (header_tail, tail_head)
        self._generation = [(CONST, self._const(self._literal(self._post_carry + tpl.generation_prompt)))]
        self._heads: dict = {}
        self._shapes: dict = {}
        self._image_run = [self.image_token_id] * self.num_query_token

    def _head(self, system: str) -> tuple[list, list, str]:
        """(ops, ops with the trailing spaces kept, those spaces) of the prefix + system block. With
        ``space_joins_next`` the spaces move to the first user turn's text (when it starts with text)."""
        head = self._heads.get(system)
        if head is None:
            items = list(self._literal(self.template.prefix))
            if system and self.template.system:
                self._join(items, self._literal(self.template.system.replace("{system}", system)))
            whole, carry = [(CONST, self._const(items))], ""
            if (self.template.space_joins_next and items and items[-1][0] == "text" and not self._user_edges[0]
                    and items[-1][1].endswith(" ")):
                kept = items[-1][1].rstrip(" ")
                carry = items[-1][1][len(kept):]
                items[-1] = ("text", kept, items[-1][2])
            head = ([(CONST, self._const(items))] if carry else whole, whole, carry)
            if len(self._heads) < 64:
                self._heads[system] = head
        return head

    def _user(self, k: int) -> tuple:
        """Ops of a user turn with ``k`` images: text runs between image wrappers."""
        ops = self._user_ops.get(k)
        if ops is None:
            pre, post = self._user_edges
            ops = self._user_ops[k] = tuple(pre + [TEXT_OP] + [self._image_op, TEXT_OP] * k + post)
        return ops

    # ---- rendering one conversation: its shape's ops + the texts to tokenise ------------------
    def _plan(self, system, turns, n_images: int, generation: bool, sample, texts: list) -> tuple:
        """Append the conversation's texts to ``texts`` (in the order its ops consume them) and return
        its shape: (merged ops, ops per block, images per block, images). Blocks are the head, each
        turn and the generation prompt; conversations of one shape (system message, images per user
        turn, number of turns) share it. ``turns``: (role, text) pairs, user first and alternating
        (raises ``_NotNormal`` otherwise: the caller normalises them and calls again)."""
        tpl = self.template
        system = self.system_message if system is None else system
        codes, left = [], n_images
        last_reply = len(turns) - 1 if turns and len(turns) % 2 == 0 else -1
        first_user = tpl.system_in_first_user.replace("{system}", system) if system and tpl.system_in_first_user else ""
        strip, pre_tail, post_head = tpl.strip, self._pre_tail, self._post_head
        head_carry = self._head(system)[2]
        last_user = len(turns) - 1 if not generation and len(turns) % 2 else -1  # no block after it
        (mid_tail, mid_head), (last_tail, last_head) = self._reply_text[False], self._reply_text[True]
        for t, (role, text) in enumerate(turns):
            if type(text) is not str:
                raise _NotNormal
            if t % 2 == 0:
                if role not in HUMAN_ROLES:
                    raise _NotNormal
                if t == 0 and first_user:
                    text = first_user + text
                if strip:
                    text = text.strip()
                start = head_carry + pre_tail if t == 0 else pre_tail
                end = post_head + self._post_carry if t == last_user else post_head
                if left and IMAGE_MARK in text:
                    pieces = text.split(IMAGE_MARK, left)
                    left -= len(pieces) - 1
                    codes.append(len(pieces) - 1)
                    texts.append(start + pieces[0] + self._img_before)
                    for piece in pieces[1:-1]:
                        texts.append(self._img_after + piece + self._img_before)
                    texts.append(self._img_after + pieces[-1] + end)
                else:
                    codes.append(0)
                    texts.append(start + text + end)
            else:
                if role not in ASSISTANT_ROLES:
                    raise _NotNormal
                if strip:
                    text = text.strip()
                if t == last_reply:
                    texts.append(last_tail + text + last_head)
                    codes.append(-2)
                else:
                    texts.append(mid_tail + text + mid_head)
                    codes.append(-1)
        if left:
            raise ConversationError(f"sample {sample} has {n_images} image(s) but only {n_images - left} "
                                    f"{IMAGE_MARK} mark(s) in its user turns")
        key = (system, generation, tuple(codes))
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shape(system, codes, generation)
            if len(self._shapes) < 4096:
                self._shapes[key] = shape
        return shape

    def _shape(self, system: str, codes: list[int], generation: bool) -> tuple:
        head, whole_head, _ = self._head(system)
        blocks = [head if codes else whole_head] + [self._user(c) if c >= 0 else self._reply_ops[c == -2] for c in codes]
        used = [0] + [max(c, 0) for c in codes]
        if generation:
            blocks.append(self._generation)
            used.append(0)
        merged: list = []  # fixed ids that meet (across turns, around image runs) become one op
        for block in blocks:
            for op in block:
                if op[0] == IMAGE:
                    op = (CONST, op[1] + self._image_run + op[2])
                if op[0] == CONST and merged and merged[-1][0] in (CONST, TAIL):
                    merged[-1] = merged[-1][:1] + (merged[-1][1] + op[1],) + merged[-1][2:]
                elif op[0] != CONST or op[1]:
                    merged.append(op)
        # hot-loop form: fixed ids as the list itself, a text as None, SPLIT / TAIL as tuples
        merged = [op[1] if op[0] == CONST else None if op[0] == TEXT else op for op in merged]
        return tuple(merged), blocks, used, sum(used)

    # ---- encoding -----------------------------------------------------------------------
    def encode(self, conversations, n_images=None, add_generation_prompt: bool = False) -> list[Encoded]:
        """Encode a list of conversations (``add_generation_prompt``: the last turn is a user turn and
        the prompt ends with the assistant header; no truncation)."""
        n_images = list(n_images) if n_images is not None else [1] * len(conversations)
        if len(n_images) != len(conversations):
            raise ConversationError(f"n_images has {len(n_images)} entries for {len(conversations)} conversations")
        out: list[Encoded | None] = [None] * len(conversations)
        plans, texts = [], []
        cache = self._cache if self.cache_size else None
        for s, conv in enumerate(conversations):
            pairs = _pairs(conv)
            key = None
            if cache is not None and pairs is not None:
                key = (pairs, n_images[s], add_generation_prompt, self.max_txt_len, self.system_message)
                try:
                    hit = cache.get(key)
                except TypeError:  # an unhashable value: no caching for this record
                    key = hit = None
                if hit is not None:
                    out[s] = hit
                    continue
            first_text, shape = len(texts), None
            if pairs is not None:  # the common case: no normalising needed
                system, turns = (pairs[0][1], pairs[1:]) if pairs and pairs[0][0] == "system" else (None, pairs)
                if (add_generation_prompt and len(turns) % 2 == 0) or not (system is None or type(system) is str):
                    turns = None  # normalise_turns + the check below give the error
                try:
                    shape = self._plan(system, turns, n_images[s], add_generation_prompt, s, texts) if turns else None
                except _NotNormal:
                    del texts[first_text:]
            if shape is None:
                system, turns = normalise_turns(conv, s)
                if add_generation_prompt and (not turns or turns[-1][0] != "user"):
                    raise ConversationError(f"sample {s}: for generation the last turn must be a user turn")
                shape = self._plan(system, turns, n_images[s], add_generation_prompt, s, texts)
            plans.append((s, key, shape, first_text))
        if plans:
            self._assemble(plans, encode_plain(self.tokenizer, texts, fast=self.fast_tokenize), out,
                           truncate=not add_generation_prompt)
        return out

    def _assemble(self, plans, tokenised, out, truncate: bool) -> None:
        """Ids of every planned sample into one flat list (one array conversion per batch); labels copy
        the ids on the supervised spans (each reply from its first own token through the end of turn)."""
        it = iter(tokenised)
        flat, spans, meta = [], [], []
        limit = self.max_txt_len
        for s, key, shape, first_text in plans:
            base, first_span, start = len(flat), len(spans), 0
            for op in shape[0]:
                if op is None:  # TEXT
                    flat += next(it)
                elif op.__class__ is list:  # CONST
                    flat += op
                elif op[0] == SPLIT:
                    toks, head = next(it), op[1]
                    n = len(head)
                    if n and toks[:n] != head:
                        n, m = 0, min(len(head), len(toks))
                        while n < m and head[n] == toks[n]:
                            n += 1
                    start = len(flat) + n
                    flat += toks
                else:  # TAIL
                    spans.append((start, len(flat) + op[2]))
                    flat += op[1]
            length = len(flat) - base
            if not truncate or length <= limit:
                meta.append((s, key, base, length, shape[3], 0, False))
                continue
            keep, n_used = self._truncation(shape, tokenised, first_text)
            end = base + keep
            del flat[end:]
            mine = spans[first_span:]
            kept = [(a, min(b, end)) for a, b in mine if a < end]
            spans[first_span:] = kept
            n_kept = sum(b - a for a, b in kept)
            meta.append((s, key, base, keep, n_used, sum(b - a for a, b in mine) - n_kept, True))
            if not n_kept:
                logger.warning("a sample has no supervised token left after truncation to max_txt_len=%d", limit)
        ids_arr = np.array(flat, dtype=np.int32)
        labels_arr = np.full_like(ids_arr, IGNORE_INDEX)
        for a, b in spans:
            labels_arr[a:b] = ids_arr[a:b]
        ids_arr.flags.writeable = labels_arr.flags.writeable = False  # cached samples share these views
        cache, arrays = self._cache, (ids_arr, labels_arr)
        for s, key, offset, n, n_used, cut, truncated in meta:
            sample = Encoded.in_batch(arrays, offset, n, n_used, cut, truncated)
            if key is not None and len(cache) < self.cache_size:
                cache[key] = sample
            out[s] = sample

    def _truncation(self, shape, tokenised, first_text: int) -> tuple[int, int]:
        """(kept length, images kept) of a sample longer than ``max_txt_len``: the head and whole rounds
        (user + reply) while they fit; when not even the first round does, its start, cut before an
        image's placeholder run, never inside one."""
        _, blocks, used, _ = shape
        texts = iter(tokenised[first_text:first_text + sum(op[0] in (TEXT, SPLIT) for b in blocks for op in b)])
        bounds, images, pos, q = [], [], 0, self.num_query_token
        for block in blocks:  # token offsets of the blocks and image runs
            bounds.append(pos)
            for op in block:
                if op[0] in (TEXT, SPLIT):
                    pos += len(next(texts))
                elif op[0] == IMAGE:
                    images.append(pos + len(op[1]))
                    pos += len(op[1]) + q + len(op[2])
                else:
                    pos += len(op[1])
        bounds.append(pos)
        head, limit = bounds[1], self.max_txt_len
        keep, n_used, r, n_blocks = head, 0, 1, len(bounds) - 1
        while r < n_blocks:
            end = bounds[min(r + 2, n_blocks)]
            if end > limit:
                break
            keep, n_used, r = end, n_used + sum(used[r:r + 2]), r + 2
        if r == 1 and n_blocks > 1:
            first_end = bounds[min(3, n_blocks)]
            starts = [st - head for st in images if st < first_end]
            cut = max(limit - head, 0)
            for st in starts:
                if st < cut < st + q:
                    cut = st
            keep, n_used = head + cut, sum(1 for st in starts if st + q <= cut)
        return keep, n_used

    # ---- batching ---------------------------------------------------------------------
    def pad(self, samples: list[Encoded], padding_side: str = "right", pad_to: int | None = None) -> ChatBatch:
        lengths = [len(x) for x in samples]
        width = max(max(lengths), pad_to or 0)
        lens = np.asarray(lengths)[:, None]
        cols = np.arange(width)[None, :]
        mask = cols < lens if padding_side == "right" else cols >= width - lens  # row-major = sample order
        input_ids = np.full(mask.shape, self.pad_token_id, dtype=np.int64)
        labels = np.full(mask.shape, IGNORE_INDEX, dtype=np.int64)
        input_ids[mask], labels[mask] = joined(samples)
        return ChatBatch(torch.from_numpy(input_ids), torch.from_numpy(labels), torch.from_numpy(mask.astype(np.int64)),
                         lengths, [x.n_images_used for x in samples])

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
