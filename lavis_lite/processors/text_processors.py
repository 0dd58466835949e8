"""Text processors: BLIP caption / question clean-up and the instruction clean-up."""
from __future__ import annotations

import re

from lavis_lite.common.registry import registry
from lavis_lite.processors.base_processor import BaseProcessor, cfg_get


def _check_text(item, who: str) -> str:
    if not isinstance(item, str):
        raise TypeError(f"{who} expects a string, got {type(item).__name__}")
    return item


def truncate_words(text: str, max_words: int | None) -> str:
    words = text.split(" ")
    if max_words is not None and max_words > 0 and len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


@registry.register_processor("blip_caption")
class BlipCaptionProcessor(BaseProcessor):
    """``prompt`` + lower-cased caption without BLIP's punctuation set, whitespace collapsed."""

    def __init__(self, prompt: str = "", max_words: int = 50):
        super().__init__()
        self.prompt, self.max_words = prompt, int(max_words)

    def __call__(self, item):
        return self.prompt + self.pre_caption(_check_text(item, "blip_caption"))

    def pre_caption(self, caption: str) -> str:
        caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
        caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
        return truncate_words(caption, self.max_words)

    @classmethod
    def from_config(cls, cfg=None):
        return cls(prompt=cfg_get(cfg, "prompt", ""), max_words=cfg_get(cfg, "max_words", 50))


@registry.register_processor("blip_question")
class BlipQuestionProcessor(BaseProcessor):
    """Lower-case, drop BLIP's punctuation set (the "?" stays), collapse whitespace, max_words."""

    def __init__(self, max_words: int = 50):
        super().__init__()
        self.max_words = int(max_words)

    def __call__(self, item):
        question = re.sub(r"([.!\"()*#:;~])", "", _check_text(item, "blip_question").lower())
        question = re.sub(r"\s{2,}", " ", question).rstrip("\n").strip(" ")
        return truncate_words(question, self.max_words)

    @classmethod
    def from_config(cls, cfg=None):
        return cls(max_words=cfg_get(cfg, "max_words", 50))


@registry.register_processor("base_instruction")
class BaseInstructionProcessor(BaseProcessor):
    """Whitespace clean-up and a real ``max_words`` cut; case and ``<ImageHere>`` are kept."""

    def __init__(self, max_words: int = 256, lower: bool = False):
        super().__init__()
        self.max_words, self.lower = int(max_words), bool(lower)

    def __call__(self, item):
        text = _check_text(item, "base_instruction")
        text = text.lower() if self.lower else text
        # Newlines carry meaning in chat prompts: collapse runs of spaces/tabs per line only.
        lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.strip().split("\n")]
        text = "\n".join(line for line in lines if line)
        return self._truncate(text)

    def _truncate(self, text: str) -> str:
        if self.max_words <= 0:
            return text
        # Count words over the whole text, newlines included.
        tokens = re.split(r"( |\n)", text)
        out, n = [], 0
        for tok in tokens:
            if tok not in (" ", "\n") and tok:
                n += 1
                if n > self.max_words:
                    break
            out.append(tok)
        return "".join(out).rstrip()

    @classmethod
    def from_config(cls, cfg=None):
        return cls(max_words=cfg_get(cfg, "max_words", 256), lower=cfg_get(cfg, "lower", False))
