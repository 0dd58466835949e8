"""State-dict key renaming by ordered regex rules: the one loop behind the BLIP and BLIP-2 / InstructBLIP
converters between transformers' names and LAVIS's (``blip/convert_hf.py``, ``hf_blip2_convert.py``,
``hf_blip2_export.py``)."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable

# A ``special`` hook's answer for a key it consumed without producing anything and that is not
# counted as unmatched (e.g. the second half of a fused tensor).
DROP: tuple = ()
UNMATCHED = object()  # a ``special`` hook's answer for a key that has no counterpart

# transformers' BLIP / BLIP-2 ``vision_model`` -> LAVIS's ``visual_encoder`` (BLIP's ViT and EVA-ViT name
# their blocks alike); each converter adds its patch embedding, qkv and final-norm rules.
HF_VIT_RULES = [
    (r"vision_model\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
    (r"vision_model\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
    (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm([12])\.", r"visual_encoder.blocks.\1.norm\2."),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.", r"visual_encoder.blocks.\1.attn.proj."),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
]


def rename_key(key: str, rules: Iterable[tuple[str, str]]) -> str | None:
    """``key`` renamed by the first ``(pattern, replacement)`` rule whose pattern matches at its start
    (the matched part is replaced, the rest kept); None when no rule matches."""
    for pattern, repl in rules:
        m = re.match(pattern, key)
        if m:
            return m.expand(repl) + key[m.end():]
    return None


def rename_keys(state: dict, rules: Iterable[tuple[str, str]],
                special: Callable[[str, object], object] | None = None) -> tuple[dict, list[str]]:
    """(renamed state, keys no rule matched), in the state's order.

    ``special(key, value)`` sees each key first and returns None (use the rules), :data:`UNMATCHED`
    (list the key as unmatched) or the ``(new_key, value)`` pairs to store instead (``DROP``: none)."""
    rules = list(rules)
    out, unmatched = {}, []
    for key, value in state.items():
        handled = special(key, value) if special is not None else None
        if handled is UNMATCHED:
            unmatched.append(key)
            continue
        if handled is not None:
            out.update(handled)
            continue
        new = rename_key(key, rules)
        if new is None:
            unmatched.append(key)
        else:
            out[new] = value
    return out, unmatched
