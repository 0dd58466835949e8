"""Shared-prefix forward (models/shared_prefix.py): same loss and gradients as the plain forward,
used only where it is valid (frozen LLM, no packing, no LLM gradient checkpointing, rows start alike)."""
import pytest
import torch

from lavis_lite.models import shared_prefix as sp
from lavis_lite.models.minigpt4qwen import Minigpt4Qwen
from tiny_helpers import mixed_conversations


def _conversations():
    return mixed_conversations(2)


def _samples():
    g = torch.Generator().manual_seed(2)
    return {"image": torch.randn(4, 3, 32, 32, generator=g), "n_images": [1, 1, 2, 0],
            "conversations": _conversations()}


def _model(**overrides):
    torch.manual_seed(0)
    return Minigpt4Qwen.from_pretrained("tiny", max_txt_len=160, **overrides).train()


def _spy(monkeypatch):
    calls = []
    real = sp.forward_with_shared_prefix

    def spy(decoder, embeds, mask, prefix_len):
        calls.append(prefix_len)
        return real(decoder, embeds, mask, prefix_len)

    import lavis_lite.models.minigpt4qwen as mq
    monkeypatch.setattr(mq, "forward_with_shared_prefix", spy)
    return calls


def _loss_and_grad(model, samples):
    model.zero_grad(set_to_none=True)
    out = model(samples)
    out["loss"].backward()
    return out, model.llm_proj.weight.grad.clone()


@pytest.mark.parametrize("pad_to_max", [False, True])
def test_shared_prefix_gives_the_same_loss_and_grads(monkeypatch, pad_to_max):
    """Tolerance: 1e-5 on the float32 loss, 1e-6 / 1e-4 (abs / rel) on llm_proj gradients."""
    calls = _spy(monkeypatch)
    model = _model(pad_to_max_txt_len=pad_to_max)
    samples = _samples()
    model.share_prefix = False
    plain, g_plain = _loss_and_grad(model, samples)
    assert calls == []
    model.share_prefix = True
    shared, g_shared = _loss_and_grad(model, samples)
    # the system block + "<|im_start|>user\n": every sample starts with it, the 4th has no image
    chat = model.chatml
    assert calls == [len(chat.system_block) + len(chat.header["user"])]
    assert shared["n_tokens"] == plain["n_tokens"] > 0 and shared["n_correct"] == plain["n_correct"]
    assert abs(shared["loss"].item() - plain["loss"].item()) <= 1e-5
    torch.testing.assert_close(g_shared, g_plain, atol=1e-6, rtol=1e-4)


def test_not_used_when_the_llm_trains_packs_or_recomputes(monkeypatch):
    calls = _spy(monkeypatch)
    samples = _samples()
    lora = _model(get_lora=True, lora_r=4)        # LoRA weights train: the prefix needs gradients
    lora(samples)["loss"].backward()
    packed = _model(packing=True)                 # rows hold several conversations
    packed(samples)
    ckpt = _model(llm_grad_checkpoint=True)       # transformers drops the KV cache under checkpointing
    ckpt(samples)
    full = _model(freeze_llm=False)
    full(samples)
    assert calls == []
    off = _model(share_prefix=False)
    off(samples)
    assert calls == []
    _model()(samples)                              # and the default does use it
    assert len(calls) == 1


def test_prefix_length_rules():
    ids = torch.tensor([[1, 5, 6, 9, 9, 7], [1, 5, 6, 9, 9, 8], [1, 5, 6, 9, 9, 7]])
    mask = torch.ones_like(ids)
    assert sp.shared_prefix_length(ids, mask, stop_id=9) == 3          # stops at the image token
    assert sp.shared_prefix_length(ids, mask, stop_id=99) == 5         # else at the first difference
    ids2 = ids.clone()
    ids2[1, 1] = 4
    assert sp.shared_prefix_length(ids2, mask, stop_id=99) == 1
    assert sp.shared_prefix_length(ids[:1], mask[:1], stop_id=99) == 0  # one row: nothing to share
    short = mask.clone()
    short[2, 2:] = 0                                                   # padding never counts
    assert sp.shared_prefix_length(ids, short, stop_id=99) == 2


def test_forward_with_shared_prefix_matches_plain_hidden_states():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2,
                                       attn_implementation="sdpa")).eval()
    for p in llm.parameters():
        p.requires_grad_(False)
    decoder = llm.get_decoder()
    assert sp.can_share_prefix(llm, decoder)
    ids = torch.randint(0, 50, (3, 12))
    ids[:, :5] = ids[0, :5]
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0                                                     # right padding
    embeds = llm.get_input_embeddings()(ids)
    plain = decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    shared = sp.forward_with_shared_prefix(decoder, embeds, mask, 5)
    assert shared.shape == (3, 7, 32)
    real = mask[:, 5:].bool()
    torch.testing.assert_close(shared[real], plain[:, 5:][real], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="prefix_len"):
        sp.forward_with_shared_prefix(decoder, embeds, mask, 12)
    llm.lm_head.weight.requires_grad_(True)
    assert not sp.can_share_prefix(llm, decoder)
