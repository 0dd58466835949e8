"""MiniGPT4-Qwen: frozen EVA-ViT-G -> BLIP-2 Q-Former (learned queries) -> ``llm_proj`` -> a chat LLM.

The published model uses Qwen-7B-Chat (ChatML); the same pieces train on Qwen2.5, Qwen3 and
Llama-3-instruct (the model type picks the LLM family, its chat template and LoRA targets). Everything
but the model types lives in vision_llm.py, shared with MiniGPT-4 (minigpt4.py).
"""
from __future__ import annotations

from lavis_lite.common.registry import registry
from lavis_lite.models.chatml import DEFAULT_SYSTEM, IGNORE_INDEX, IMAGE_MARK  # noqa: F401 - older imports
from lavis_lite.models.vision_llm import STAGES, VisionLLMBase  # noqa: F401


@registry.register_model("minigpt4qwen")
class Minigpt4Qwen(VisionLLMBase):
    PROJ_NAME = "llm_proj"
    PRETRAINED_MODEL_CONFIG_DICT = {
        "qwen7b_chat": "configs/models/minigpt4qwen/minigpt4qwen_qwen7b_chat.yaml",
        "qwen14b_chat": "configs/models/minigpt4qwen/minigpt4qwen_qwen14b_chat.yaml",
        "qwen2.5_7b_instruct": "configs/models/minigpt4qwen/minigpt4qwen_qwen2.5_7b_instruct.yaml",
        "qwen3_8b": "configs/models/minigpt4qwen/minigpt4qwen_qwen3_8b.yaml",
        "llama3_8b_instruct": "configs/models/minigpt4qwen/minigpt4qwen_llama3_8b_instruct.yaml",
        "tiny": "configs/models/minigpt4qwen/minigpt4qwen_tiny.yaml",
        "tiny_qwen3": "configs/models/minigpt4qwen/minigpt4qwen_tiny_qwen3.yaml",
        "tiny_llama3": "configs/models/minigpt4qwen/minigpt4qwen_tiny_llama3.yaml",
    }
    DEFAULT_MODEL_TYPE = "qwen7b_chat"
