"""The ``chat_template`` text processor: the one place that turns conversations into token ids.

Training (DataLoader workers, via ``ChatCollator``), evaluation, ``generate({"image", "prompt"})``,
``chat``, the web demo and batch prediction all go through it, so where an image placeholder goes and
how a prompt is built is decided here and in the template (models/chat_templates.py) only.

Built by a model from its own settings (``model.chat_processor``) or from a config::

    text_processor: {name: chat_template, template: qwen2, tokenizer: /path/to/tokenizer,
                     llm_family: qwen2, num_query_token: 32, max_txt_len: 512}
"""
from __future__ import annotations

from lavis_lite.common.registry import registry
from lavis_lite.models.conversation_encoder import (IGNORE_INDEX, IMAGE_MARK, ChatBatch, ConversationEncoder,
                                                    Encoded, normalise_turns)
from lavis_lite.processors.base_processor import BaseProcessor, cfg_get


def place_new_images(history: list[dict], question: str, n_images: int) -> str:
    """Chat: images of the conversation not yet marked by ``<ImageHere>`` get their marks in front
    of the new question (the user placed none for them)."""
    marked = sum(t["value"].count(IMAGE_MARK) for t in history or [] if t.get("from") in ("human", "user"))
    missing = n_images - marked - question.count(IMAGE_MARK)
    return IMAGE_MARK * missing + "\n" + question if missing > 0 else question


def prompt_conversations(prompts, n_images: list[int]) -> list[list[dict]]:
    """``generate({"prompt"})``: one user turn per prompt; images without a mark go first."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(n_images):
        raise ValueError(f"{len(prompts)} prompt(s) for {len(n_images)} sample(s)")
    return [[{"from": "human", "value": place_new_images([], text, n)}] for text, n in zip(prompts, n_images)]


@registry.register_processor("chat_template")
class ChatTemplateProcessor(BaseProcessor):
    def __init__(self, tokenizer, template: str = "qwen2", image_token: str = "<|image_pad|>",
                 num_query_token: int = 32, max_txt_len: int = 512, system_message: str | None = None,
                 pad_token_id: int | None = None, cache_size: int = 100_000, fast_tokenize: bool = True):
        super().__init__()
        self.encoder = ConversationEncoder(tokenizer, template, image_token, num_query_token, max_txt_len,
                                           system_message, pad_token_id, cache_size, fast_tokenize)

    # ---- what models and datasets read -----------------------------------------------------
    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def template(self):
        return self.encoder.template

    @property
    def image_token_id(self) -> int:
        return self.encoder.image_token_id

    @property
    def pad_token_id(self) -> int:
        return self.encoder.pad_token_id

    @property
    def num_query_token(self) -> int:
        return self.encoder.num_query_token

    @property
    def max_txt_len(self) -> int:
        return self.encoder.max_txt_len

    @max_txt_len.setter
    def max_txt_len(self, value: int) -> None:
        self.encoder.max_txt_len = int(value)

    def stop_token_ids(self) -> list[int]:
        return self.encoder.stop_token_ids()

    # ---- one sample (dataset workers) and batches -------------------------------------------
    def __call__(self, conversation, n_images: int = 0) -> Encoded:
        """One training conversation -> :class:`Encoded` (ids, labels, images kept, truncation)."""
        return self.encoder.encode([conversation], [n_images])[0]

    def encode(self, conversations, n_images=None, add_generation_prompt: bool = False) -> list[Encoded]:
        return self.encoder.encode(conversations, n_images, add_generation_prompt)

    def length(self, conversation, n_images: int) -> int:
        """True token length of a record (length-grouped batches)."""
        return len(self(conversation, n_images))

    def generation_batch(self, conversations, n_images: list[int]) -> ChatBatch:
        """Left-padded prompts ending with the assistant header (generation, chat, prediction)."""
        encoded = self.encoder.encode(conversations, n_images, add_generation_prompt=True)
        return self.encoder.pad(encoded, padding_side="left")

    def validate(self, conversation, n_images: int) -> None:
        normalise_turns(conversation)
        self(conversation, n_images)

    @classmethod
    def from_config(cls, cfg=None):
        from lavis_lite.models import llm as llm_utils

        family = cfg_get(cfg, "llm_family", "qwen2")
        info = llm_utils.family_info(family)
        tokenizer = llm_utils.load_tokenizer(cfg_get(cfg, "tokenizer", None), family)
        image_token = cfg_get(cfg, "image_token", info["image_token"])
        llm_utils.ensure_image_token(tokenizer, image_token, family)
        return cls(tokenizer, cfg_get(cfg, "template", info["template"]), image_token,
                   int(cfg_get(cfg, "num_query_token", 32)), int(cfg_get(cfg, "max_txt_len", 512)),
                   cfg_get(cfg, "system_message", None), llm_utils.pad_token_id(tokenizer, family))


__all__ = ["ChatTemplateProcessor", "place_new_images", "prompt_conversations", "IGNORE_INDEX"]
