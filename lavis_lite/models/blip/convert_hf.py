"""transformers' BLIP state dicts (``BlipForConditionalGeneration``, ``BlipForQuestionAnswering``,
``BlipForImageTextRetrieval``, ``BlipModel``; e.g. the Salesforce/blip-* safetensors) -> LAVIS's names.

The text side already carries LAVIS's names (``text_encoder.*``, ``text_decoder.*``; BlipModel's
``text_model`` becomes ``text_encoder``); the ViT is renamed module by module. BlipModel's
``logit_scale`` has no LAVIS counterpart and is reported back, not loaded.
"""
from __future__ import annotations

import re

_VISION_RULES = [  # (HF pattern, LAVIS replacement), applied to keys under vision_model.
    (r"^vision_model\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.", r"visual_encoder.blocks.\1.norm1."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm2\.", r"visual_encoder.blocks.\1.norm2."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"visual_encoder.blocks.\1.attn.qkv."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.", r"visual_encoder.blocks.\1.attn.proj."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
    (r"^vision_model\.post_layernorm\.", "visual_encoder.norm."),
    (r"^text_model\.", "text_encoder."),
    (r"^visual_projection\.", "vision_proj."),
    (r"^text_projection\.", "text_proj."),
]
_UNMAPPED = ("logit_scale",)


def is_hf_blip_state_dict(state: dict) -> bool:
    return any(k.startswith("vision_model.") for k in state)


def hf_to_lavis(state: dict) -> tuple[dict, list[str]]:
    """(renamed state dict, HF keys with no LAVIS counterpart). A key matching no rule and not already
    LAVIS-named raises, naming it."""
    out, skipped = {}, []
    for key, value in state.items():
        if key in _UNMAPPED:
            skipped.append(key)
            continue
        new = key
        for pattern, repl in _VISION_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                break
        if new == key and key.startswith("vision_model."):
            raise KeyError(f"transformers BLIP key {key!r} has no LAVIS name")
        out[new] = value
    return out, skipped
