"""key_rename: the shared rule loop of the HF <-> LAVIS key converters."""
from lavis_lite.models.key_rename import DROP, UNMATCHED, rename_key, rename_keys

RULES = [(r"vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
         (r"vision_model\.post_layernorm\.", "ln_vision."),
         (r"query_tokens$", "query_tokens")]


def test_first_rule_matching_at_the_start_renames_the_matched_part_only():
    assert rename_key("vision_model.encoder.layers.12.mlp.fc1.weight", RULES) == \
        "visual_encoder.blocks.12.mlp.fc1.weight"
    assert rename_key("vision_model.post_layernorm.bias", RULES) == "ln_vision.bias"
    assert rename_key("x.vision_model.post_layernorm.bias", RULES) is None  # only at the start
    assert rename_key("query_tokens_extra", RULES) is None  # "$" anchors the whole key
    assert rename_key("vision_model.post_layernorm.bias", [(r"vision_model\.", "a."), (r"vision_model\.post", "b")]) \
        == "a.post_layernorm.bias"  # rule order decides


def test_special_hook_consumes_splits_drops_or_rejects_keys_in_order():
    state = {"a.qkv": 1, "vision_model.post_layernorm.weight": 2, "a.v": 3, "lm.head": 4, "other": 5}

    def special(key, value):
        if key == "a.qkv":
            return [("a.q", value * 10), ("a.k", value * 20)]
        if key == "a.v":
            return DROP
        if key.startswith("lm."):
            return UNMATCHED
        return None

    out, unmatched = rename_keys(state, RULES, special)
    assert list(out.items()) == [("a.q", 10), ("a.k", 20), ("ln_vision.weight", 2)]
    assert unmatched == ["lm.head", "other"]
    assert rename_keys(state, RULES)[1] == ["a.qkv", "a.v", "lm.head", "other"]
