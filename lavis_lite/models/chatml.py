"""ChatML (Qwen) preprocessing: the conversation encoder with Qwen's template.

Kept as the name older code imports; the encoder itself (any template) is conversation_encoder.py and
the templates are chat_templates.py. Layout of one sample::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{text with each <ImageHere> -> num_query_token image ids}<|im_end|>\\n
    <|im_start|>assistant\\n{reply}<|im_end|>\\n          (repeated per round)
"""
from __future__ import annotations

from lavis_lite.models.conversation_encoder import (  # noqa: F401 - re-exported names
    ASSISTANT_ROLES, HUMAN_ROLES, IGNORE_INDEX, IMAGE_MARK, ChatBatch, ConversationEncoder, ConversationError,
    encode_plain, token_id)

DEFAULT_SYSTEM = "You are a helpful assistant."


class ChatMLPreprocessor(ConversationEncoder):
    def __init__(self, tokenizer, image_token: str, num_query_token: int, max_txt_len: int = 512,
                 system_message: str = DEFAULT_SYSTEM, pad_token_id: int | None = None,
                 cache_size: int = 100_000, fast_tokenize: bool = True, template: str = "qwen2"):
        super().__init__(tokenizer, template, image_token, num_query_token, max_txt_len, system_message,
                         pad_token_id, cache_size, fast_tokenize)
        self.im_start = self.control_ids["<|im_start|>"]
        self.im_end = self.control_ids["<|im_end|>"]
