"""LAVIS's BLIP-2 LLM models built at full size on the meta device have LAVIS's key -> shape maps (the
frozen LLM excluded, as in the maps), its frozen set and dtypes; released-file layouts load with no
unexpected keys."""
import inspect
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from lavis_lite.common.registry import registry

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "lavis_keys")
# (arch, type) -> (LLM prefix, an LLM config of the released LLM's width: only its hidden size reaches the map)
CASES = {
    ("blip2_opt", "pretrain_opt2.7b"): ("opt_model.", {"hidden_size": 2560, "word_embed_proj_dim": 2560,
                                                        "ffn_dim": 64, "num_hidden_layers": 1, "num_attention_heads": 32}),
    ("blip2_t5", "pretrain_flant5xl"): ("t5_model.", {"d_model": 2048, "d_kv": 64, "d_ff": 64, "num_layers": 1,
                                                       "num_heads": 32}),
    ("blip2_t5_instruct", "flant5xl"): ("t5_model.", {"d_model": 2048, "d_kv": 64, "d_ff": 64, "num_layers": 1,
                                                       "num_heads": 32}),
    ("blip2_vicuna_instruct", "vicuna7b"): ("llm_model.", {"hidden_size": 4096, "intermediate_size": 64,
                                                            "num_hidden_layers": 1, "num_attention_heads": 32}),
}


def _meta_model(arch, model_type, llm_config):
    cls = registry.get_model_class(arch)
    overrides = {"llm_config": llm_config}
    if "tokenizer_vocab" in inspect.signature(cls.__init__).parameters:
        overrides["tokenizer_vocab"] = "tiny"  # bert-base-uncased's vocab is not shipped; the size stays 30523
    with torch.device("meta"):
        return cls.from_pretrained(model_type, **overrides)


@pytest.mark.parametrize("arch,model_type", sorted(CASES))
def test_full_size_key_map_matches_lavis(arch, model_type):
    prefix, llm_config = CASES[(arch, model_type)]
    model = _meta_model(arch, model_type, llm_config)
    name = f"{arch}__{model_type}"
    want = json.load(open(os.path.join(FIXTURES, f"{name}.json")))
    info = json.load(open(os.path.join(FIXTURES, f"_info_{name}.json")))
    got = {k: list(v.shape) for k, v in model.state_dict().items() if not k.startswith(prefix)}
    assert sorted(set(want) - set(got)) == []
    assert sorted(set(got) - set(want)) == []
    assert {k: got[k] for k in want} == want
    assert info["excluded_prefixes"] == [prefix]
    # LAVIS freezes exactly the ViT (besides the LLM); its weights are fp16
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and not n.startswith(prefix)]
    assert len(frozen) == info["n_frozen_param_keys"] and all(n.startswith("visual_encoder.") for n in frozen)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith(prefix))
    assert model.visual_encoder.blocks[0].attn.qkv.weight.dtype == torch.float16
    assert model.ln_vision.weight.dtype == torch.float32 and model.ln_vision.eps == 1e-5


@pytest.mark.parametrize("arch", ["blip2_opt", "blip2_t5", "blip2_vicuna_instruct", "blip2_t5_instruct"])
def test_released_file_layout_loads_without_unexpected_keys(arch, tmp_path):
    """LAVIS's released files hold checkpoint["model"] without visual_encoder.* and without the LLM."""
    from lavis_lite.models import load_model

    source = load_model(arch, "tiny")
    llm_prefix = next(p for p in ("opt_model.", "t5_model.", "llm_model.") if hasattr(source, p[:-1]))
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    released = {k: v.clone() for k, v in source.state_dict().items()
                if not k.startswith(("visual_encoder.", llm_prefix))}
    assert not any("Qformer.cls." in k for k in released)
    path = tmp_path / "released.pth"
    torch.save({"model": released, "config": {}}, path)
    target = load_model(arch, "tiny", checkpoint=str(path))
    state = target.state_dict()
    assert all(torch.equal(state[k], v) for k, v in released.items())
    report = target.load_checkpoint(str(path))
    assert report["unexpected_keys"] == [] and report["shape_mismatch"] == []
    assert all(k.startswith(("visual_encoder.", llm_prefix)) for k in report["missing_keys"])
    released["Qformer.cls.predictions.bias"] = torch.zeros(3)  # a key the model has no place for
    torch.save({"model": released}, path)
    with pytest.raises(Exception, match="unexpected keys"):
        target.load_checkpoint(str(path))


@pytest.mark.parametrize("arch", ["blip2_opt", "blip2_t5", "blip2_vicuna_instruct", "blip2_t5_instruct"])
def test_every_shipped_type_yaml_holds_only_known_keys(arch):
    cls = registry.get_model_class(arch)
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"} | cls.CONFIG_META_KEYS
    assert "tiny" in cls.PRETRAINED_MODEL_CONFIG_DICT
    for model_type in cls.PRETRAINED_MODEL_CONFIG_DICT:
        cfg = OmegaConf.load(cls.default_config_path(model_type)).model
        assert cfg.model_type == model_type and cfg.arch == arch
        assert set(cfg) <= allowed, (model_type, set(cfg) - allowed)
        for key in ("vit_checkpoint", "q_former_model", "checkpoint"):
            assert key in cfg and cfg[key] is None, (model_type, key)


def test_lavis_pretrained_key_loads_a_released_stage2_file(tmp_path):
    """LAVIS's YAML keys (``load_pretrained`` + ``pretrained``) work as in LAVIS."""
    from lavis_lite.models import load_model

    source = load_model("blip2_opt", "tiny")
    with torch.no_grad():
        source.opt_proj.weight.add_(1.0)
    released = {k: v for k, v in source.state_dict().items() if not k.startswith(("visual_encoder.", "opt_model."))}
    torch.save({"model": released}, tmp_path / "blip2_pretrained_opt.pth")
    cls = registry.get_model_class("blip2_opt")
    model = cls.from_pretrained("tiny", load_pretrained=True, pretrained=str(tmp_path / "blip2_pretrained_opt.pth"))
    assert torch.equal(model.opt_proj.weight, source.opt_proj.weight)
