"""fast_tokenize: the pre-token memo gives exactly the tokenizer's split_special_tokens=True ids."""
from __future__ import annotations

import random
import re

import pytest
import torch

from lavis_lite.models import fast_tokenize as ft
from lavis_lite.models import llm as llm_utils
from lavis_lite.models.chatml import encode_plain

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")


def tiny_tokenizer():
    tok = llm_utils.load_tokenizer(None, "qwen2")
    llm_utils.ensure_image_token(tok, "<|image_pad|>", "qwen2")
    return tok


def rebuilt(tok, normalizer=None, pre_tokenizer=None, added=()):
    """A PreTrainedTokenizerFast over the tiny tokenizer's vocab/merges with other pipeline parts."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tok._tokenizer.to_str())
    backend.normalizer = normalizer
    if pre_tokenizer is not None:
        backend.pre_tokenizer = pre_tokenizer
    if added:
        backend.add_tokens(list(added))
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def qwen2_style(tok, added=()):
    from tokenizers import Regex, normalizers, pre_tokenizers

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return rebuilt(tok, normalizers.NFC(), pre, added)


def random_unicode(rng: random.Random, n: int) -> list[str]:
    ranges = [(0x20, 0x7E), (0x00, 0x20), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x52F), (0x600, 0x6FF),
              (0x900, 0x97F), (0x2000, 0x206F), (0x3000, 0x30FF), (0x4E00, 0x4EFF), (0xAC00, 0xAC7F),
              (0xFB00, 0xFB4F), (0xFF00, 0xFFEF), (0x1F300, 0x1F6FF), (0x1FA00, 0x1FAFF), (0x2A700, 0x2A7FF),
              (0x31350, 0x323AF), (0xE0000, 0xE007F), (0x10FFF0, 0x10FFFF)]
    texts = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(0, 24)):
            lo, hi = rng.choice(ranges)
            chars.append(chr(rng.randint(lo, hi)) if rng.random() < 0.6 else rng.choice(" \n\t'sS0a.\r"))
        texts.append("".join(chars))
    return texts


def corpus() -> list[str]:
    rng = random.Random(1234)
    special = ["<|im_start|>system\nx<|im_end|>", "look <|image_pad|><|image_pad|> here", "<|endoftext|>",
               "<|im_end", "im_start|>", "<ImageHere> and <|image_pad"]
    spaces = [" " * 200, "\n" * 50, " \t \n " * 30, "a\r\nb\r\n\r\nc", "x" + " " * 100 + "y", "\r\n"]
    return list(ft.PROBES) + special + spaces + random_unicode(rng, 300)


def reference(tok, texts):
    return tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def test_tiny_tokenizer_fast_path_is_exact():
    tok = tiny_tokenizer()
    fast = ft.fast_tokenizer(tok)
    assert fast is not None
    texts = corpus()
    want = reference(tok, texts)
    assert fast.encode(texts) == want
    assert fast.encode(texts) == want  # memo hits
    assert encode_plain(tok, texts) == want
    assert fast.n_fast > 2 * len(texts)  # the fast path did the work
    assert ft.fast_tokenizer(tok) is fast  # built once per tokenizer
    assert isinstance(fast.ascii_findall.__self__, re.Pattern)  # ASCII text split by plain `re`


def test_qwen2_layout_fast_path_is_exact():
    tok = qwen2_style(tiny_tokenizer())
    fast = ft.fast_tokenizer(tok)
    assert fast is not None and fast.normalize is not None  # Split + NFC layout recognised, not a fallback
    texts = corpus() + ["I'M YOU'LL It'S", "e\u0301\u0301 Å Å", "'ſ 'K ß"]
    want = reference(tok, texts)
    slow_before = fast.n_slow
    assert encode_plain(tok, texts) == want
    assert encode_plain(tok, texts) == want
    assert fast.n_fast > len(texts)
    assert fast.n_slow > slow_before  # 'ſ under (?i:...) is not vetted: that text went the slow way
    assert "\u017f" in fast._bad_chars


def test_non_special_added_token_goes_the_slow_way():
    tok = qwen2_style(tiny_tokenizer(), added=["<tool_call>"])
    fast = ft.fast_tokenizer(tok)
    assert fast is not None
    call = tok.convert_tokens_to_ids("<tool_call>")
    texts = ["a <tool_call> b", "<tool_call>", "plain text"]
    want = reference(tok, texts)
    assert call in want[0] and want[1] == [call]  # not special: still extracted with split_special_tokens
    before = fast.n_slow
    assert encode_plain(tok, texts) == want
    assert fast.n_slow - before == 2


def test_added_token_later_rebuilds_the_fast_path():
    tok = tiny_tokenizer()
    first = ft.fast_tokenizer(tok)
    tok.add_tokens(["zebra"])
    assert ft.fast_tokenizer(tok) is not first
    assert encode_plain(tok, ["a zebra!", "zebra"]) == reference(tok, ["a zebra!", "zebra"])


@pytest.mark.parametrize("kind", ["metaspace", "lowercase", "wordpiece", "truncation"])
def test_unsupported_configs_use_the_slow_path(kind):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tiny = tiny_tokenizer()
    if kind == "metaspace":
        tok = rebuilt(tiny, pre_tokenizer=pre_tokenizers.Metaspace())
    elif kind == "lowercase":
        tok = rebuilt(tiny, normalizer=normalizers.Lowercase())
    elif kind == "wordpiece":
        vocab = {w: i for i, w in enumerate(["[UNK]", "hello", "world", "!", "##s", "<|im_start|>"])}
        backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    else:
        tok = tiny_tokenizer()
        tok._tokenizer.enable_truncation(8)
    assert ft.fast_tokenizer(tok) is None
    texts = ["hello worlds!", "", "日本 hello", "<|im_start|>"]
    assert encode_plain(tok, texts) == reference(tok, texts)


def test_memo_is_bounded():
    tok = tiny_tokenizer()
    fast = ft.FastTokenize(tok._tokenizer, ft.GPT2_PATTERN, False, memo_size=16)
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 8))) for _ in range(400)]
    texts = [" ".join(words[i:i + 7]) for i in range(0, 400, 3)] + [" " * 300 + "x"]
    want = reference(tok, texts)
    for _ in range(2):
        assert fast.encode(texts) == want
        assert len(fast.memo) <= 16
    assert all(len(p) <= ft.MAX_MEMO_PIECE for p in fast.memo)


def test_disabled_switch_and_unvetted_patterns(monkeypatch):
    tok = tiny_tokenizer()
    monkeypatch.setattr(ft, "enabled", False)
    assert ft.fast_tokenizer(tok) is None
    assert encode_plain(tok, ["hi there"]) == reference(tok, ["hi there"])
    assert ft._pattern_atoms(QWEN2_PATTERN) == [r"\S", r"\p{L}", r"\p{N}", r"\s"]
    for bad in [r"\w+", r"a.b", r"^\s+", r"(?i)'s", r"(?i:\p{L})", r"[[:alpha:]]+", r"\d+", r"\s++", r"\'s"]:
        assert ft._pattern_atoms(bad) is None, bad


@pytest.mark.may_skip  # nothing to check when both Unicode tables agree (depends on the installed versions)
def test_unicode_version_differences_go_the_slow_way():
    """Chars that ``regex`` (newer Unicode data) and Oniguruma classify differently are caught per char."""
    import regex
    from tokenizers import Regex
    from tokenizers.pre_tokenizers import Split

    rust = Split(Regex(r"\p{L}"), behavior="removed").pre_tokenize_str
    letter_in_rust = lambda c: not rust(c)  # noqa: E731 - a removed char matched \p{L}
    differ = [chr(c) for c in range(0x500, 0x3000)
              if (regex.fullmatch(r"\p{L}", chr(c)) is not None) != letter_in_rust(chr(c))]
    if not differ:
        pytest.skip("regex and Oniguruma agree on \\p{L} here")
    for tok in (tiny_tokenizer(), qwen2_style(tiny_tokenizer())):
        fast = ft.fast_tokenizer(tok)
        texts = [f"ab{c}cd {c}{c} x" for c in differ[:5]]
        before = fast.n_slow
        assert fast.encode(texts) == reference(tok, texts)
        assert fast.n_slow - before == len(texts)


@pytest.mark.parametrize("layout", ["byte_level", "qwen2"])
def test_trained_vocab_with_many_merges_is_exact(layout):
    """A BPE trained here (merges across UTF-8 bytes of CJK, spaces, punctuation) agrees text by text."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(5)
    words = ["the", "image", "shows", "a", "dog", "I'M", "you'll", "don't", "日本", "語", "中文", "é", "ß", "🙂",
             "12", "3.5", "...", "!?", "<b>", "\t", "\n\n", "  ", "\r\n"]
    train = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(3000)] + random_unicode(rng, 2000)
    backend = Tokenizer(models.BPE())
    if layout == "qwen2":
        backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(train, trainers.BpeTrainer(
        vocab_size=1500, special_tokens=["<|im_start|>", "<|im_end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    fast = ft.fast_tokenizer(tok)
    assert fast is not None
    texts = [" ".join(rng.choices(words, k=rng.randint(0, 20))) for _ in range(500)] + corpus()
    want = reference(tok, texts)
    assert encode_plain(tok, texts) == want
    assert encode_plain(tok, texts) == want
    assert fast.n_fast > 1.5 * len(texts)


def test_model_switch_fast_tokenize_off_gives_the_same_batch(monkeypatch):
    """model.fast_tokenize: False skips the memo (the plain Rust call) and encodes identically."""
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen

    convs = [[{"from": "human", "value": "<ImageHere> What's this?  Tell me."}, {"from": "gpt", "value": "A cat, I'd say."}],
             [{"from": "human", "value": "<ImageHere> 日本語 and émoji 🙂"}, {"from": "gpt", "value": "ok\n\nsure"}]]
    on = Minigpt4Qwen.from_pretrained("tiny", preprocess_cache_size=0)
    off = Minigpt4Qwen.from_pretrained("tiny", preprocess_cache_size=0, fast_tokenize=False)
    assert on.chatml.fast_tokenize and not off.chatml.fast_tokenize
    used = []
    real = ft.fast_tokenizer
    monkeypatch.setattr(ft, "fast_tokenizer", lambda tok: used.append(tok) or real(tok))
    b_off = off.preprocess(convs, [1, 1])
    assert used == []
    b_on = on.preprocess(convs, [1, 1])
    assert used and all(t is on.llm_tokenizer for t in used)  # (template text is tokenised once, separately)
    assert torch.equal(b_on.input_ids, b_off.input_ids) and torch.equal(b_on.labels, b_off.labels)
