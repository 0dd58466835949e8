"""A full-size MiniGPT4-Qwen built on the meta device has the released checkpoint's key -> shape map."""
import json
import os

import torch

from lavis_lite.models.minigpt4qwen import Minigpt4Qwen

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "minigpt4qwen_qwen7b_keys.json")
# A Qwen2-architecture LLM of Qwen-7B's width stands in for the (remote-code) Qwen-7B: only its hidden
# size matters for llm_proj, and the LLM's own keys are not part of the released map.
QWEN7B_WIDTH = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 2,
                "num_attention_heads": 32, "num_key_value_heads": 32}


def test_full_size_key_map_matches_released_checkpoint():
    with torch.device("meta"):
        model = Minigpt4Qwen.from_pretrained("qwen2.5_7b_instruct", llm_config=QWEN7B_WIDTH)
    got = {k: list(v.shape) for k, v in model.state_dict().items() if not k.startswith("llm_model.")}
    want = json.load(open(FIXTURE))
    assert sorted(set(want) - set(got)) == []
    assert sorted(set(got) - set(want)) == []
    assert {k: got[k] for k in want} == want
    # the YAML defaults give the released structure: 39 ViT blocks, cross-attention every 2nd layer
    assert len(model.visual_encoder.blocks) == 39
    assert [hasattr(layer, "crossattention") for layer in model.Qformer.bert.encoder.layer] == [True, False] * 6
    assert model.visual_encoder.blocks[0].attn.qkv.weight.dtype == torch.float16  # vit_precision: fp16


def test_every_shipped_model_type_yaml_holds_only_known_keys():
    import inspect

    from omegaconf import OmegaConf

    from lavis_lite.models.minigpt4 import MiniGPT4

    for cls, arch in ((Minigpt4Qwen, "minigpt4qwen"), (MiniGPT4, "minigpt4")):
        _check_yamls(cls, arch, inspect, OmegaConf)


def _check_yamls(cls, arch, inspect, OmegaConf):
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"} | cls.CONFIG_META_KEYS
    aliases = {"vicuna7b": "pretrain_vicuna0", "llama2_7b_chat": "pretrain_llama2"}  # two names, one YAML
    for model_type in cls.PRETRAINED_MODEL_CONFIG_DICT:
        cfg = OmegaConf.load(cls.default_config_path(model_type)).model
        assert cfg.arch == arch and (cfg.model_type == model_type or aliases.get(cfg.model_type) == model_type)
        assert set(cfg) <= allowed, (model_type, set(cfg) - allowed)
        for key in ("vit_checkpoint", "q_former_model", "llm_model"):
            assert key in cfg and cfg[key] is None, (model_type, key)  # user-set paths, nothing by default
