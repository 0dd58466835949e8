"""MiniGPT-4: frozen EVA-ViT-G -> BLIP-2 Q-Former -> ``llama_proj`` -> Vicuna / Llama-2-chat.

The same pieces as MiniGPT4-Qwen (vision_llm.py); what differs is declared here: the projection is named
``llama_proj`` as in MiniGPT-4's released ``prerained_minigpt4_7b.pth`` / ``pretrained_minigpt4_llama2_7b.pth``
(which hold only that layer), and the prompt is MiniGPT-4's (``###Human: <Img><ImageHere></Img> ...
###Assistant: `` with end symbol ``###`` on Vicuna v0, ``[INST] ... [/INST] `` with ``</s>`` on Llama-2;
models/chat_templates.py). Stage 1 trains ``llama_proj`` on captions, stage 2 on the aligned
instruction set (projects/minigpt4/).
"""
from __future__ import annotations

from lavis_lite.common.registry import registry
from lavis_lite.models.vision_llm import VisionLLMBase


@registry.register_model("minigpt4")
class MiniGPT4(VisionLLMBase):
    PROJ_NAME = "llama_proj"
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_vicuna0": "configs/models/minigpt4/minigpt4_vicuna0.yaml",
        "vicuna7b": "configs/models/minigpt4/minigpt4_vicuna0.yaml",
        "pretrain_llama2": "configs/models/minigpt4/minigpt4_llama2_7b_chat.yaml",
        "llama2_7b_chat": "configs/models/minigpt4/minigpt4_llama2_7b_chat.yaml",
        "tiny": "configs/models/minigpt4/minigpt4_tiny.yaml",
        "tiny_llama2": "configs/models/minigpt4/minigpt4_tiny_llama2.yaml",
    }
    DEFAULT_MODEL_TYPE = "vicuna7b"
