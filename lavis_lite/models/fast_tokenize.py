"""Exact pre-token memo in front of a byte-level BPE tokenizer (``chatml.encode_plain``'s fast path).

A byte-level BPE tokenizer normalises a text, splits it into pre-tokens with a regex, maps each pre-token's
UTF-8 bytes to printable characters and runs BPE on each pre-token alone, so
``ids(text) == sum(ids(piece) for piece in pretokens(text))``. Here the split runs in Python (``regex``
module), ``piece -> ids`` is memoised, and only unseen pieces reach the Rust model. Per text this skips
the Rust tokenizer's fixed costs (added-token scan, Encoding objects), most of a first epoch's time.

Exactness, piece by piece:

* configs: only normalizer None/NFC, pre-tokenizer ``ByteLevel(use_regex)`` (GPT-2's pattern) or
  ``Sequence[Split(Regex, Isolated), ByteLevel(use_regex=False)]`` (Qwen2's layout, pattern read from the
  tokenizer), a deterministic BPE without byte fallback or ``ignore_merges``; anything else: no fast path;
* regex: the pattern may use only constructs that Oniguruma (the Rust side) and ``regex`` read alike
  (``_pattern_atoms``); each character class atom (``\\p{L}``, ``\\s``, ...) is checked, per character
  met, against Oniguruma itself, so Unicode-version differences send that text the slow way;
* normalisation: ASCII text is its own NFC; other text goes through the Rust normalizer;
* BPE: a miss is encoded by the tokenizer's own ``model.tokenize`` on the byte-mapped piece;
* added tokens: a text containing any added token's content (special or not) goes the slow way whole;
* a probe set is encoded both ways when the fast path is built; a mismatch disables it.
"""
from __future__ import annotations

import itertools
import json
import logging
import random
import re
import weakref

import regex

logger = logging.getLogger(__name__)

enabled = True  # benchmarks flip this to compare with the plain Rust call
MEMO_SIZE = 200_000  # memoised pieces per tokenizer (oldest half dropped when full)
MAX_MEMO_PIECE = 64  # longer pieces (long runs of spaces, base64 ...) are encoded but not kept

# The pattern of tokenizers' ByteLevel pre-tokenizer with use_regex=true (GPT-2's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

PROBES = [
    "", "hello world", "Hello, World!", "I'M here, you'll see; it's we've they'd I'd YOU'RE 'S 'sx",
    "don't  stop   now", "a\tb\t\tc", "line1\nline2\n\n\nline3\n", "crlf\r\nnext\r\n\r\n", "   ",
    "  leading and trailing  ", "\n", " \n ", "x \n y", "12345 3.14 1,000 007", "abc123def 4x4",
    "!!! ??? ... --- ***", "(a) [b] {c} <d> @e #f $g %h ^i &j", "\x0b\x0c\x1c\x1d\x1e\x1f\x7f\x00",
    "日本語のテキストです。", "中文，标点！", "한국어 텍스트", "emoji 🙂👍🏽 👩\u200d💻 🇫🇷", "café naïve résumé",
    "e\u0301 A\u030a \u212b \u1e9b\u0323", "ſ 'ſ 'K \u212a ß 'ß ﬁ", "\u00a0nbsp\u2028ls\u2029ps\u3000ideo",
    "\u0663\u0664 ² Ⅻ ½", "Ελληνικά Кириллица עברית العربية", "mixed日本abc123中文!?", "tab\t \t end",
    "a" * 80, " " * 70 + "x", "word " * 40,
]


def _ascii_samples(n: int = 400) -> list[str]:
    """Seeded random ASCII strings (biased to letters, spaces, quotes) plus the ASCII probes."""
    rng = random.Random(0)
    alphabet = "aAsStTdDmMlLrRvVeE'   \n\r\t019.,!?-_<>|" + "".join(map(chr, range(128)))
    return [p for p in PROBES if p.isascii()] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table (what ByteLevel maps each UTF-8 byte to)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


BYTE_CHARS = byte_chars()

_ESCAPE = regex.compile(r"\\(?:[pP]\{[A-Za-z_]+\}|.)", regex.S)
_LITERAL_ESCAPES = {"\\" + c for c in "rnt\\.-[](){}|?*+/"}
_GROUPS = regex.compile(r"\(\?(?!:|i:|!|=|<=|<!)")
_CASELESS = regex.compile(r"\(\?i:([^()]*)\)")


def _pattern_atoms(pattern: str) -> list[str] | None:
    """The character-class escapes of ``pattern``, or None when it uses anything not vetted as read
    alike by Oniguruma and ``regex`` (\\w, \\d, \\b, '.', POSIX or nested classes, other group kinds ...)."""
    atoms = set()
    for m in _ESCAPE.finditer(pattern):
        e = m.group()
        if e[1] in "pP" or e in (r"\s", r"\S"):
            atoms.add(e)
        elif e not in _LITERAL_ESCAPES:
            return None
    rest = _ESCAPE.sub("E", pattern)
    if not rest.isascii() or "." in rest or "&&" in rest or _GROUPS.search(rest) or regex.search(r"[+*?}]\+", rest):
        return None
    # (?i:...) only around plain ASCII alternatives: case folding of classes differs between engines
    caseless = _CASELESS.findall(pattern)
    if pattern.count("(?i") != len(caseless) or not all(regex.fullmatch(r"[A-Za-z0-9'|]*", c) for c in caseless):
        return None
    depth = 0
    for i, ch in enumerate(rest):  # no '[' inside a class (POSIX [:alpha:], nesting), no leading ']'
        if ch in "^$" and not depth:
            return None  # line anchors: Oniguruma's ^/$ are per line, Python's are not
        if ch == "[":
            if depth:
                return None
            depth = 1
            if rest[i + 1:i + 2] == "]" or rest[i + 1:i + 3] == "^]":
                return None
        elif ch == "]":
            depth = 0
    return sorted(atoms)


def _ascii_class(members: list[str]) -> str:
    """``members`` (ASCII chars) as the body of a ``re`` character class, in ranges of \\xHH escapes."""
    codes, parts, i = sorted(map(ord, members)), [], 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        parts.append(f"\\x{codes[i]:02x}" + (f"-\\x{codes[j]:02x}" if j > i else ""))
        i = j + 1
    return "".join(parts)


def ascii_pattern(pattern: str, members: dict[str, list[str]]) -> str:
    """``pattern`` for ASCII-only text in plain ``re`` (about twice as fast as ``regex`` on \\p{..}):
    each class atom becomes the ASCII chars it matches (checked against Oniguruma, ``members``)."""
    out, in_class = [], False
    for m in regex.finditer(r"\\(?:[pP]\{[A-Za-z_]+\}|.)|.", pattern, regex.S):
        tok = m.group()
        if tok in members:
            body = _ascii_class(members[tok])
            out.append(body if in_class else (f"[{body}]" if body else "(?!)"))
            continue
        if tok == "[" and not in_class:
            in_class = True
        elif tok == "]" and in_class:
            in_class = False
        out.append(tok)
    return "".join(out)


# Post-processors that add nothing with add_special_tokens=False (encode_plain never asks for specials).
_POST_PROCESSORS = {"ByteLevel", "TemplateProcessing", "RobertaProcessing", "BertProcessing"}


def _state(component):
    return json.loads(component.__getstate__()) if component is not None else None


def supported_split(backend) -> tuple[str, bool] | str:
    """(split pattern, uses NFC) for a supported backend, else the reason it is not supported."""
    from tokenizers.models import BPE

    if backend.truncation is not None or backend.padding is not None:
        return "truncation or padding set"
    model = backend.model
    if not isinstance(model, BPE):
        return f"model {type(model).__name__}"
    if model.dropout or getattr(model, "byte_fallback", True) or getattr(model, "ignore_merges", True):
        return "BPE with dropout, byte_fallback or ignore_merges"
    post = _state(backend.post_processor) or {}
    posts = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    if any(p and p.get("type") not in _POST_PROCESSORS for p in posts):
        return f"post-processor {post.get('type')}"
    norm = _state(backend.normalizer)
    if norm is not None and norm != {"type": "NFC"}:
        return f"normalizer {norm.get('type')}"
    pre = _state(backend.pre_tokenizer) or {}
    pattern = None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        pattern = GPT2_PATTERN
    elif pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 2:
        split, byte_level = pre["pretokenizers"]
        if (split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert")
                and set(split.get("pattern", {})) == {"Regex"} and byte_level.get("type") == "ByteLevel"
                and byte_level.get("use_regex") is False and not byte_level.get("add_prefix_space")):
            pattern = split["pattern"]["Regex"]
    if pattern is None:
        return f"pre-tokenizer {pre.get('type')}"
    return pattern, norm is not None


def rust_encode(backend, texts: list[str]) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=False, split_special_tokens=True)`` ids, straight from Rust."""
    previous = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        return [enc.ids for enc in backend.encode_batch_fast(texts, add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = previous


def _signature(backend):
    """What the fast path depends on and a caller could still change on a live backend."""
    parts = (backend.normalizer, backend.pre_tokenizer, backend.post_processor)
    return (tuple(p.__getstate__() if p is not None else None for p in parts),
            len(backend.get_added_tokens_decoder()), backend.truncation is None and backend.padding is None)


class FastTokenize:
    """Exact ``rust_encode`` with a pre-token memo; build through :func:`fast_tokenizer`."""

    def __init__(self, backend, pattern: str, nfc: bool, memo_size: int = MEMO_SIZE):
        from tokenizers import Regex
        from tokenizers.pre_tokenizers import Split

        atoms = _pattern_atoms(pattern)
        if atoms is None:
            raise ValueError(f"split pattern {pattern!r} uses constructs not vetted for the fast path")
        self.backend, self.model = backend, backend.model
        self.findall = regex.compile(pattern).findall
        self.normalize = backend.normalizer.normalize_str if nfc else None
        self.added = sorted({t.content for t in backend.get_added_tokens_decoder().values() if t.content})
        self.added_first = sorted({t[0] for t in self.added})
        # one C-level scan for "could hold an added token" (most texts have none of their first chars)
        self._added_gate = (re.compile("[" + "".join(re.escape(c) for c in self.added_first) + "]").search
                            if self.added_first else None)
        # Per atom: regex's and Oniguruma's membership test for one character.
        self._atoms = [(regex.compile(a).fullmatch, Split(Regex(a), behavior="removed").pre_tokenize_str)
                       for a in atoms]
        self._case_insensitive = "(?i" in pattern
        self.memo: dict[str, list[int]] = {}
        self.memo_size = max(2, int(memo_size))
        self.n_fast = self.n_slow = 0
        self._good_chars: set[str] = set()
        self._bad_chars: set[str] = set()
        ascii_chars = [chr(c) for c in range(128)]
        if not self._check_chars(set(ascii_chars)):
            raise ValueError("the split pattern classifies ASCII differently in Python and Rust")
        self.ascii_findall = self.findall
        try:
            members = {a: [c for c in ascii_chars if regex.fullmatch(a, c)] for a in atoms}
            translated = re.compile(ascii_pattern(pattern, members)).findall
        except re.error:
            translated = None  # e.g. a variable-width lookbehind: keep ``regex`` for ASCII too
        if translated is not None and all(translated(t) == self.findall(t) for t in _ascii_samples()):
            self.ascii_findall = translated

    # ---- exactness guards -------------------------------------------------------------------------
    def _check_chars(self, chars: set[str]) -> bool:
        """True when every char in ``chars`` is classified alike by ``regex`` and Oniguruma (memoised)."""
        new = chars - self._good_chars
        if not new:
            return True
        if new & self._bad_chars:
            return False
        ok = True
        for c in new:
            good = not ("\ud800" <= c <= "\udfff")  # lone surrogates: let the tokenizer raise as usual
            if good and self._case_insensitive and not c.isascii():
                # (?i) in Oniguruma also folds e.g. 'ſ' -> 's', 'K' (Kelvin) -> 'k': not vetted
                good = not any(x.isascii() for x in c.lower() + c.upper() + c.casefold())
            if good:
                good = all((py(c) is not None) == (not rust(c)) for py, rust in self._atoms)
            (self._good_chars if good else self._bad_chars).add(c)
            ok = ok and good
        return ok

    def _has_added(self, text: str) -> bool:
        for first in self.added_first:
            if first in text:
                return any(a in text for a in self.added)
        return False

    def _unicode_pieces(self, text: str):
        """Pre-tokens of a non-ASCII ``text`` (normalised), or None when it must go the slow way."""
        if self._has_added(text):
            return None
        if self.normalize is not None:
            text = self.normalize(text)
            if self._has_added(text):  # added tokens with normalized=True match after NFC
                return None
        if not self._check_chars(set(text)):
            return None
        pieces = self.findall(text)
        return pieces if "".join(pieces) == text else None

    # ---- encoding ---------------------------------------------------------------------------------
    def _encode_piece(self, piece: str) -> list[int]:
        mapped = "".join([BYTE_CHARS[b] for b in piece.encode("utf-8")])
        return [t.id for t in self.model.tokenize(mapped)]

    def encode(self, texts: list[str]) -> list[list[int]]:
        memo = self.memo
        out: list = [None] * len(texts)
        slow, pending = [], []
        ascii_findall, gate = self.ascii_findall, self._added_gate
        for i, text in enumerate(texts):
            if text.isascii():  # ASCII is its own NFC
                pieces = None if gate is not None and gate(text) and self._has_added(text) else ascii_findall(text)
                # Rust keeps unmatched gaps as pieces and skips empty matches: only a clean tiling is exact
                if pieces is not None and ("".join(pieces) != text or "" in pieces):
                    pieces = None
            else:
                pieces = self._unicode_pieces(text)
                if pieces is not None and "" in pieces:
                    pieces = None
            if pieces is None:
                slow.append(i)
                continue
            ids: list[int] = []
            try:
                for p in pieces:
                    ids += memo[p]
            except KeyError:
                pending.append((i, pieces))
                continue
            out[i] = ids
        if pending:
            fresh = {}
            for _, pieces in pending:
                for p in pieces:
                    if p not in memo and p not in fresh:
                        fresh[p] = self._encode_piece(p)
            for i, pieces in pending:
                ids = []
                for p in pieces:
                    ids += fresh[p] if p in fresh else memo[p]
                out[i] = ids
            self._remember(fresh)
        if slow:
            for i, ids in zip(slow, rust_encode(self.backend, [texts[i] for i in slow])):
                out[i] = ids
        self.n_slow += len(slow)
        self.n_fast += len(texts) - len(slow)
        return out

    def _remember(self, fresh: dict) -> None:
        memo = self.memo
        keep = {p: ids for p, ids in fresh.items() if len(p) <= MAX_MEMO_PIECE}
        if len(memo) + len(keep) > self.memo_size:
            # drop the oldest half (dicts keep insertion order): bounded memory, recent pieces stay
            for p in list(itertools.islice(memo, max(len(memo) // 2, len(memo) + len(keep) - self.memo_size))):
                del memo[p]
            if len(keep) > self.memo_size:
                keep = dict(itertools.islice(keep.items(), self.memo_size))
        memo.update(keep)

    def self_check(self) -> str | None:
        """Encode the probe set both ways; the first mismatch (as text) or None."""
        want = rust_encode(self.backend, PROBES)
        for _ in range(2):  # second round: from the memo
            got = self.encode(PROBES)
            for text, a, b in zip(PROBES, got, want):
                if a != b:
                    return f"{text!r}: fast {a} != tokenizer {b}"
        return None


_built: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def fast_tokenizer(tokenizer) -> FastTokenize | None:
    """The checked fast path for a transformers fast tokenizer (built once per backend), or None."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if not enabled or backend is None or not hasattr(backend, "encode_batch_fast") \
            or not hasattr(backend, "encode_special_tokens"):
        return None
    signature = _signature(backend)
    try:
        built = _built.get(backend)
    except TypeError:
        return None  # not weak-referenceable: building per call would cost more than it saves
    if built is None or built[0] != signature:
        built = (signature, _build(backend))
        _built[backend] = built
    return built[1]


def _build(backend) -> FastTokenize | None:
    found = supported_split(backend)
    if isinstance(found, str):
        logger.info("fast tokenize off for this tokenizer: %s", found)
        return None
    try:
        fast = FastTokenize(backend, *found)
        problem = fast.self_check()
    except Exception as err:  # noqa: BLE001 - any failure to build (e.g. an Oniguruma-only \p{..}) means no fast path
        problem = f"{type(err).__name__}: {err}"
    if problem:
        logger.info("fast tokenize off for this tokenizer: %s", problem)
        return None
    fast.n_fast = fast.n_slow = 0
    return fast
