"""LoRA merge: the merged HF LLM gives the unmerged model's logits and reloads with transformers."""
import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from lavis_lite.inference_utils import load_model_from_cfg
from lavis_lite.tools.export import export_model
from lavis_lite.tools.merge_lora import main as merge_main

LORA_YAML = "model:\n  arch: minigpt4qwen\n  model_type: tiny\n  get_lora: True\n  lora_include_mlp: True\n"
# fp32; merging only re-associates W x + s B(A x) into (W + s B A) x: rounding differences only
# (logits of these random weights reach |9|; measured max differences 1.6e-5 to 3.5e-5)
ATOL, RTOL = 1e-4, 1e-5


def _randomise(params, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in params:
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    cfg = root / "lora.yaml"
    cfg.write_text(LORA_YAML)
    model, _, model_cfg = load_model_from_cfg(str(cfg))
    # peft starts lora_B at zero (a no-op adapter): randomise everything so the merge has work to do
    _randomise(model.parameters(), seed=0)
    base = root / "base"
    export_model(model, model_cfg, str(base))  # the "pretrained" model incl. adapters
    # then "train" the adapters: new LoRA weights, saved as a trainable-weights checkpoint
    _randomise([p for n, p in model.named_parameters() if "lora_" in n], seed=1)
    ckpt = root / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in model.trainable_state_dict().items()}, str(ckpt))
    assert any("lora_B" in k for k in model.trainable_state_dict())
    return root, base, ckpt, model


def test_merged_llm_matches_unmerged_logits_and_reloads(lora_setup, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, base, ckpt, model = lora_setup
    out, full = root / "merged_llm", root / "full"
    assert merge_main(["--cfg-path", str(base), "--checkpoint", str(ckpt), "--out", str(out),
                       "--full-export", str(full)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "model.safetensors" in report["files"] and "config.json" in report["files"]

    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert not any("lora" in k for k in hf.state_dict())
    ids = torch.randint(0, hf.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    with torch.no_grad():
        want = model.llm_model(input_ids=ids, attention_mask=mask).logits
        got = hf(input_ids=ids, attention_mask=mask).logits
        with model.llm_model.disable_adapter():
            without_lora = model.llm_model(input_ids=ids, attention_mask=mask).logits
    assert (want - without_lora).abs().max() > 1e-2, "the adapters do not change the logits; vacuous test"
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.get_vocab() == model.tokenizer.get_vocab()
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.image_token_id

    # the whole merged multimodal model: get_lora off, same training loss as the unmerged one
    saved = OmegaConf.load(full / "config.yaml").model
    assert saved.get_lora is False
    merged_model = load_model_from_cfg(str(full))[0]
    assert not any("lora" in k for k in merged_model.state_dict())
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    conv = [[{"from": "human", "value": "<ImageHere>\nWhat is it?"}, {"from": "gpt", "value": "a blue circle"}]]
    with torch.no_grad():
        want_loss = model({"image": image, "n_images": [1], "conversations": conv})["loss"]
        got_loss = merged_model({"image": image, "n_images": [1], "conversations": conv})["loss"]
    torch.testing.assert_close(got_loss, want_loss, atol=ATOL, rtol=RTOL)


def test_merge_refuses_model_without_lora(tmp_path, capsys):
    cfg = tmp_path / "plain.yaml"
    cfg.write_text("model:\n  arch: minigpt4qwen\n  model_type: tiny\n")
    assert merge_main(["--cfg-path", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert "no LoRA adapters" in capsys.readouterr().err
