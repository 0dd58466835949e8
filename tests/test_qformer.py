"""Q-Former: released parameter names, masks, query/text routing, cache, LM loss."""
import json
import os

import pytest
import torch
from torch import nn

from lavis_lite.models.qformer import QformerConfig, QformerLMHeadModel, extended_attention_mask

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "minigpt4qwen_qwen7b_keys.json")
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=50,
            max_position_embeddings=40, encoder_width=24, cross_attention_freq=2, query_length=4,
            hidden_dropout=0.0, attention_dropout=0.0)


def tiny(text_input=True, **kw):
    torch.manual_seed(0)
    return QformerLMHeadModel({**TINY, "text_input": text_input, **kw}).eval()


def test_full_size_keys_match_released_checkpoint_on_meta():
    with torch.device("meta"):
        qformer = QformerLMHeadModel(dict(encoder_width=1408, text_input=False))
    wrapper = nn.Module()
    wrapper.Qformer = qformer
    got = {k: list(v.shape) for k, v in wrapper.state_dict().items()}
    want = {k: v for k, v in json.load(open(FIXTURE)).items() if k.startswith("Qformer.")}
    assert got == want


def test_text_side_names_present_with_text_input():
    keys = set(tiny(text_input=True).state_dict())
    for name in ["bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                 "bert.encoder.layer.1.intermediate.dense.weight", "bert.encoder.layer.1.output.LayerNorm.bias",
                 "cls.predictions.transform.dense.weight", "cls.predictions.transform.LayerNorm.weight",
                 "cls.predictions.decoder.weight", "cls.predictions.bias"]:
        assert name in keys, name
    assert "bert.encoder.layer.0.crossattention.self.key.weight" in keys
    assert "bert.encoder.layer.1.crossattention.self.key.weight" not in keys  # freq 2
    assert tiny(True).state_dict()["bert.encoder.layer.0.crossattention.self.key.weight"].shape == (32, 24)


def test_unknown_config_key_is_named():
    with pytest.raises(KeyError, match="hiden_size"):
        QformerConfig.from_dict({"hiden_size": 3})


def test_decoder_mask_structure():
    mask = torch.ones(1, 3 + 4)
    mask[0, -1] = 0  # padded last text token
    ext = extended_attention_mask(mask, query_length=3, text_length=4, is_decoder=True, dtype=torch.float32)
    allowed = (ext[0, 0] == 0)
    # queries see queries only
    assert allowed[:3, :3].all() and not allowed[:3, 3:].any()
    # text sees all queries and causal text, never the padded column
    for i in range(4):
        assert allowed[3 + i, :3].all()
        for j in range(4):
            assert allowed[3 + i, 3 + j].item() == (j <= i and j != 3)


def test_queries_never_see_text_and_text_is_causal():
    model = tiny()
    q = torch.randn(2, 4, 32)
    img = torch.randn(2, 5, 24)
    ids = torch.randint(0, 50, (2, 6))
    out1 = model.bert(ids, q, torch.ones(2, 10), img, is_decoder=True).last_hidden_state
    ids2 = ids.clone()
    ids2[:, 3:] = (ids2[:, 3:] + 1) % 50
    out2 = model.bert(ids2, q, torch.ones(2, 10), img, is_decoder=True).last_hidden_state
    assert torch.allclose(out1[:, :4 + 3], out2[:, :4 + 3], atol=1e-5)  # queries + earlier text unchanged
    assert not torch.allclose(out1[:, 7:], out2[:, 7:])
    # bidirectional mode: queries now see text
    b1 = model.bert(ids, q, torch.ones(2, 10), img).last_hidden_state
    b2 = model.bert(ids2, q, torch.ones(2, 10), img).last_hidden_state
    assert not torch.allclose(b1[:, :4], b2[:, :4])


def test_query_only_forward_uses_image_and_padding_mask():
    model = tiny(text_input=False)
    q = torch.randn(1, 4, 32).expand(2, -1, -1)
    img = torch.randn(1, 5, 24).expand(2, -1, -1).clone()
    img[1, 3:] = 100.0  # garbage in the masked image positions of sample 1
    enc_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    out = model.bert(query_embeds=q, encoder_hidden_states=img, encoder_attention_mask=enc_mask).last_hidden_state
    assert out.shape == (2, 4, 32)
    assert torch.allclose(out[0], out[1], atol=1e-5)
    other = model.bert(query_embeds=q, encoder_hidden_states=torch.randn(2, 5, 24)).last_hidden_state
    assert not torch.allclose(out, other)
    with pytest.raises(ValueError, match="without text input"):
        model.bert(input_ids=torch.zeros(1, 2, dtype=torch.long), query_embeds=q[:1], encoder_hidden_states=img[:1])


def test_cached_queries_then_text_equals_joint_pass():
    model = tiny()
    q = torch.randn(2, 4, 32)
    img = torch.randn(2, 5, 24)
    ids = torch.randint(0, 50, (2, 6))
    joint = model(ids, torch.ones(2, 10), query_embeds=q, encoder_hidden_states=img).logits
    cache = model.bert(query_embeds=q, encoder_hidden_states=img, use_cache=True).past_key_values
    assert len(cache) == 2 and cache[0][0].shape == (2, 4, 4, 8)
    cont = model(ids, torch.ones(2, 10), past_key_values=cache).logits
    assert torch.allclose(joint, cont, atol=1e-5)


def test_lm_loss_matches_manual_and_reductions():
    model = tiny(label_smoothing=0.0)
    q = torch.randn(2, 4, 32)
    img = torch.randn(2, 5, 24)
    ids = torch.randint(0, 50, (2, 6))
    labels = ids.clone()
    labels[1, 4:] = -100
    out = model(ids, torch.ones(2, 10), query_embeds=q, encoder_hidden_states=img, labels=labels)
    assert out.logits.shape == (2, 6, 50)
    logp = out.logits[:, :-1].log_softmax(-1)
    tgt = labels[:, 1:]
    valid = tgt != -100
    nll = -logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
    assert torch.allclose(out.loss, nll[valid].mean(), atol=1e-5)
    per = model(ids, torch.ones(2, 10), query_embeds=q, encoder_hidden_states=img, labels=labels,
                reduction="none").loss
    assert torch.allclose(per, (nll * valid).sum(1), atol=1e-5)


def test_released_decoder_bias_alias_loads():
    model = tiny()
    state = model.state_dict()
    state["cls.predictions.decoder.bias"] = torch.full((50,), 0.5)
    del state["cls.predictions.bias"]
    model.load_state_dict(state, strict=True)
    assert torch.all(model.cls.predictions.bias == 0.5)


def test_gradients_reach_queries_and_cross_attention():
    model = tiny(text_input=False).train()
    q = torch.randn(2, 4, 32, requires_grad=True)
    out = model.bert(query_embeds=q, encoder_hidden_states=torch.randn(2, 5, 24)).last_hidden_state
    out.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert model.bert.encoder.layer[0].crossattention.self.key.weight.grad.abs().sum() > 0
