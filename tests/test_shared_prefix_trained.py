"""Shared prefix with an LLM that trains (models/shared_prefix.py): the prefix runs once with autograd and
the loss and every parameter's gradient equal the unshared forward's, for full finetuning and LoRA, with and
without the oneDNN Linear layers; the shared path really runs (fewer decoder positions)."""
import random

import pytest
import torch

from lavis_lite.models import shared_prefix as sp
from lavis_lite.models.minigpt4qwen import Minigpt4Qwen
from test_shared_prefix import _random_batch, _samples, _spy


def _model(**overrides):
    torch.manual_seed(0)
    return Minigpt4Qwen.from_pretrained("tiny", max_txt_len=160, **overrides).train()


def _count_positions(model):
    """Decoder positions computed per forward (every call of the LLM's decoder, batch x length summed)."""
    seen = []
    model._decoder().register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[:2].numel()), with_kwargs=True)
    return seen


def _loss_and_grads(model, samples, share: bool):
    model.share_prefix = share
    model.zero_grad(set_to_none=True)
    out = model(dict(samples))
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return out, grads


def _assert_same(plain, shared, trained_names):
    (out_p, g_p), (out_s, g_s) = plain, shared
    assert out_s["n_tokens"] == out_p["n_tokens"] > 0 and out_s["n_correct"] == out_p["n_correct"]
    assert abs(out_s["loss"].item() - out_p["loss"].item()) <= 1e-5
    assert set(g_s) == set(g_p) == trained_names  # every trained parameter got a gradient, on both paths
    for name in g_p:
        torch.testing.assert_close(g_s[name], g_p[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("variant", ["full", "lora", "full_onednn", "lora_onednn"])
def test_trained_llm_same_loss_and_every_gradient(monkeypatch, variant):
    kwargs = {"freeze_llm": False} if variant.startswith("full") else {"get_lora": True, "lora_r": 4,
                                                                       "lora_dropout": 0.0}
    if variant.endswith("onednn"):
        from lavis_lite.models.onednn_linear import onednn_available
        if not onednn_available():
            pytest.skip("torch built without oneDNN")
        kwargs["cpu_onednn_linear"] = True
    calls = _spy(monkeypatch)
    model = _model(**kwargs)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    llm_trained = {n for n in trained if n.startswith("llm_model.")}
    assert llm_trained and (variant.startswith("full") or all("lora_" in n for n in llm_trained))
    positions = _count_positions(model)
    samples = _samples()
    plain = _loss_and_grads(model, samples, share=False)
    assert calls == [] and len(positions) == 1
    shared = _loss_and_grads(model, samples, share=True)
    assert len(calls) == 1 and calls[0] > 0  # the shared path ran, with a real prefix
    batch = len(samples["conversations"])
    # two decoder calls: the prefix once (one row), the rest of every row
    assert positions[1:] == [calls[0], positions[0] - batch * calls[0]]
    _assert_same(plain, shared, trained)
    # the prefix's own weights got gradient through it: an LLM weight differs from zero on both paths
    assert any(shared[1][n].abs().sum() > 0 for n in llm_trained)


def test_trained_llm_random_batches_property(monkeypatch):
    """Random mixed batches (shared questions, replies that start alike, text-only rows, several images):
    loss and every gradient of a fully trained LLM equal with the switch on and off."""
    calls = _spy(monkeypatch)
    model = _model(freeze_llm=False)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    rng = random.Random(11)
    used = 0
    for _ in range(6):
        samples = _random_batch(rng)
        before = len(calls)
        plain = _loss_and_grads(model, samples, share=False)
        shared = _loss_and_grads(model, samples, share=True)
        used += len(calls) > before
        names = trained if sum(samples["n_images"]) else {n for n in trained if n.startswith("llm_model.")}
        _assert_same(plain, shared, names)
    assert used >= 3


def test_decoder_level_gradients_with_padding():
    """forward_with_shared_prefix on a trained Qwen2 decoder, right-padded rows: hidden states and every
    parameter gradient (embeddings included) as the plain forward's."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2,
                                       attn_implementation="sdpa")).train()
    decoder = llm.get_decoder()
    assert sp.can_share_prefix(llm, decoder) and not sp.llm_is_frozen(llm)
    ids = torch.randint(0, 50, (3, 12))
    ids[:, :5] = ids[0, :5]
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    weights = torch.randn(3, 7, 32)

    def run(share: bool):
        llm.zero_grad(set_to_none=True)
        embeds = llm.get_input_embeddings()(ids)
        hidden = sp.forward_with_shared_prefix(decoder, embeds, mask, 5) if share else \
            decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state[:, 5:]
        real = mask[:, 5:].bool()
        (hidden[real] * weights[real]).sum().backward()
        return hidden[real].detach(), {n: p.grad.clone() for n, p in llm.named_parameters() if p.grad is not None}

    (h_plain, g_plain), (h_shared, g_shared) = run(False), run(True)
    torch.testing.assert_close(h_shared, h_plain, atol=1e-5, rtol=1e-4)
    assert set(g_shared) == set(g_plain) == {"model." + n for n, _ in decoder.named_parameters()}
    for name in g_plain:
        torch.testing.assert_close(g_shared[name], g_plain[name], atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="prefix_len"):
        sp.forward_with_shared_prefix(decoder, llm.get_input_embeddings()(ids), mask, 0)


def test_refused_with_dropout_or_checkpointing_and_training_still_matches(monkeypatch):
    """Where sharing would not be exact it falls back to the plain forward (same loss as share_prefix False)."""
    calls = _spy(monkeypatch)
    samples = _samples()
    ckpt = _model(freeze_llm=False, llm_grad_checkpoint=True)
    assert sp.share_prefix_refusal(ckpt.llm_model, ckpt._decoder()) == "LLM gradient checkpointing is on"
    ckpt(samples)["loss"].backward()
    lora = _model(get_lora=True, lora_r=4, lora_dropout=0.2)
    assert sp.share_prefix_refusal(lora.llm_model, lora._decoder()) == "dropout is active in the LLM"
    torch.manual_seed(5)
    on = lora(dict(samples))["loss"]
    lora.share_prefix = False
    torch.manual_seed(5)
    off = lora(dict(samples))["loss"]
    assert torch.equal(on, off)  # same dropout draws: the very same (plain) forward ran
    assert calls == []
    lora.eval()  # no dropout in eval mode: shared again
    assert sp.can_share_prefix(lora.llm_model, lora._decoder())
    lora.share_prefix = True
    with torch.no_grad():
        lora(dict(samples))
    assert len(calls) == 1
