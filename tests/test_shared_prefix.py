"""Shared-prefix forward (models/shared_prefix.py), frozen LLM: same loss and gradients as the plain forward,
used only where it is valid (no packing, no LLM gradient checkpointing, no active dropout, rows start alike).
Trained LLMs (full, LoRA): tests/test_shared_prefix_trained.py."""
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
    overrides.setdefault("frozen_llm", False)  # transformers' forward; the frozen-LLM path: test_frozen_llm.py
    return Minigpt4Qwen.from_pretrained("tiny", max_txt_len=160, **overrides).train()


def _spy(monkeypatch):
    calls = []
    real = sp.forward_with_shared_prefix

    def spy(decoder, embeds, mask, prefix_len):
        calls.append(prefix_len)
        return real(decoder, embeds, mask, prefix_len)

    import lavis_lite.models.vision_llm as mq
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
    first = chat([[{"from": "human", "value": "<ImageHere>"}]], [1], add_generation_prompt=True).input_ids[0].tolist()
    assert calls == [first.index(chat.image_token_id)]
    assert shared["n_tokens"] == plain["n_tokens"] > 0 and shared["n_correct"] == plain["n_correct"]
    assert abs(shared["loss"].item() - plain["loss"].item()) <= 1e-5
    torch.testing.assert_close(g_shared, g_plain, atol=1e-6, rtol=1e-4)


def test_not_used_when_it_would_change_the_result(monkeypatch):
    """Packing, LLM checkpointing and active dropout turn it off; a trained LLM (LoRA, full) keeps it
    (tests/test_shared_prefix_trained.py checks those gradients)."""
    calls = _spy(monkeypatch)
    samples = _samples()
    packed = _model(packing=True)                 # rows hold several conversations
    packed(samples)
    ckpt = _model(llm_grad_checkpoint=True)       # transformers drops the KV cache under checkpointing
    ckpt(samples)
    dropout = _model(get_lora=True, lora_r=4, lora_dropout=0.1)  # per-row dropout masks over the prefix
    dropout(samples)["loss"].backward()
    assert calls == []
    off = _model(share_prefix=False)
    off(samples)
    assert calls == []
    _model()(samples)                              # and the default does use it: frozen,
    _model(get_lora=True, lora_r=4)(samples)       # LoRA without dropout,
    _model(freeze_llm=False)(samples)              # full finetuning
    assert len(calls) == 3


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
    llm.train()  # training mode is fine without dropout, not with it
    assert sp.can_share_prefix(llm, decoder)
    llm.config.attention_dropout = 0.1
    assert sp.share_prefix_refusal(llm, decoder) == "dropout is active in the LLM"
    llm.eval()
    assert sp.can_share_prefix(llm, decoder)


def _random_batch(rng: "random.Random"):
    """A batch mixing text-only rows, rows sharing the first question and answer, images before or
    after the question, several images per row."""
    questions = ["What colour is it?", "Describe the image.", "Same shape?", "Hello there"]
    answers = ["red", "a red circle on a white background", "a red circle", "a red square", "yes",
               "yes, the same", "hi, how can I help"]  # shared starts: rows agree past a reply's start
    shared_q, shared_a = rng.choice(questions), rng.choice(answers)
    convs, n_images = [], []
    agree = rng.random() < 0.5  # every row: the same question, replies that start alike
    for _ in range(rng.randint(2, 3)):
        kind = rng.choice(["shared", "after"] if agree else ["text", "shared", "before", "after", "several"])
        k = {"text": 0, "shared": 0, "before": 1, "after": 1, "several": rng.randint(2, 3)}[kind]
        q = shared_q if agree or (kind in ("text", "shared") and rng.random() < 0.7) else rng.choice(questions)
        a = rng.choice(answers[1:4]) if agree else shared_a if kind == "shared" else rng.choice(answers)
        marks = "<ImageHere>" * k
        q = q + " " + marks if kind == "after" else marks + q
        conv = [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        if rng.random() < 0.3 and not agree:
            conv += [{"from": "human", "value": rng.choice(questions)}, {"from": "gpt", "value": rng.choice(answers)}]
        convs.append(conv)
        n_images.append(k)
    g = torch.Generator().manual_seed(rng.randint(0, 10_000))
    return {"image": torch.randn(sum(n_images), 3, 32, 32, generator=g), "n_images": n_images, "conversations": convs}


def test_shared_prefix_never_drops_a_supervised_token_property(monkeypatch):
    """Many random mixed batches: loss, n_tokens and llm_proj gradients equal with the switch on and off
    (the prefix ends before the first supervised token of any row)."""
    import random

    calls = _spy(monkeypatch)
    model = _model()
    rng = random.Random(7)
    used = 0
    for _ in range(16):
        samples = _random_batch(rng)
        run = _loss_and_grad if sum(samples["n_images"]) else (lambda m, s: (m(s), None))  # text only: no grad
        model.share_prefix = False
        plain, g_plain = run(model, samples)
        model.share_prefix = True
        before = len(calls)
        shared, g_shared = run(model, samples)
        used += len(calls) > before
        assert shared["n_tokens"] == plain["n_tokens"] > 0
        assert abs(shared["loss"].item() - plain["loss"].item()) <= 1e-5
        if g_plain is not None:
            torch.testing.assert_close(g_shared, g_plain, atol=1e-6, rtol=1e-4)
    assert used >= 8  # the shared path really ran on most batches


def test_identical_text_rows_keep_every_supervised_token():
    """Issue 15's example: two text-only rows with the same question and answer."""
    model = _model()
    q = {"from": "human", "value": "What is two plus two?"}
    convs = [[q, {"from": "gpt", "value": "four, of course"}], [q, {"from": "gpt", "value": "four, I think so"}]]
    samples = {"image": None, "n_images": [0, 0], "conversations": convs}
    model.share_prefix = False
    plain = model(samples)
    model.share_prefix = True
    shared = model(samples)
    assert shared["n_tokens"] == plain["n_tokens"] == model.count_supervised_tokens(samples)
    assert abs(shared["loss"].item() - plain["loss"].item()) <= 1e-5


def test_prefix_stops_before_the_first_supervised_token():
    ids = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 5, 6, 7, 8, 9]])
    labels = torch.full_like(ids, -100)
    labels[1, 4:] = ids[1, 4:]
    assert sp.shared_prefix_length(ids, torch.ones_like(ids), stop_id=99) == 6
    assert sp.shared_prefix_length(ids, torch.ones_like(ids), stop_id=99, labels=labels) == 3
