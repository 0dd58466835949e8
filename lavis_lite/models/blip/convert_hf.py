"""transformers' BLIP state dicts (``BlipForConditionalGeneration``, ``BlipForQuestionAnswering``,
``BlipForImageTextRetrieval``, ``BlipModel``; e.g. the Salesforce/blip-* safetensors) -> LAVIS's names.

The text side already carries LAVIS's names (``text_encoder.*``, ``text_decoder.*``; BlipModel's
``text_model`` becomes ``text_encoder``); the ViT is renamed module by module. BlipModel's
``logit_scale`` has no LAVIS counterpart and is reported back, not loaded.
"""
from __future__ import annotations

from lavis_lite.models.key_rename import HF_VIT_RULES, UNMATCHED, rename_keys

_RULES = HF_VIT_RULES + [  # (HF pattern, LAVIS replacement), matched at the key's start
    (r"vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"visual_encoder.blocks.\1.attn.qkv."),
    (r"vision_model\.post_layernorm\.", "visual_encoder.norm."),
    (r"text_model\.", "text_encoder."),
    (r"visual_projection\.", "vision_proj."),
    (r"text_projection\.", "text_proj."),
    (r"(?!vision_model\.)", ""),  # any other key outside the ViT is LAVIS-named already: kept as is
]
_UNMAPPED = ("logit_scale",)


def is_hf_blip_state_dict(state: dict) -> bool:
    return any(k.startswith("vision_model.") for k in state)


def hf_to_lavis(state: dict) -> tuple[dict, list[str]]:
    """(renamed state dict, HF keys with no LAVIS counterpart). A key matching no rule and not already
    LAVIS-named raises, naming it."""
    out, unmatched = rename_keys(state, _RULES, lambda key, value: UNMATCHED if key in _UNMAPPED else None)
    unknown = [k for k in unmatched if k not in _UNMAPPED]
    if unknown:
        raise KeyError(f"transformers BLIP key {unknown[0]!r} has no LAVIS name")
    return out, unmatched
