"""Frozen-LLM training path (models/frozen_llm.py): every switch gives the loss and the llm_proj gradient of
transformers' plain forward (fp32 tolerance), for Qwen2, Qwen3 and Llama decoders; used only where valid."""
import pytest
import torch

from lavis_lite.models import frozen_llm as fl
from lavis_lite.models.minigpt4qwen import Minigpt4Qwen
from tiny_helpers import mixed_conversations

SWITCHES = ("trim_trailing", "last_layer_supervised_only", "const_text_qkv", "image_grad_attention")


def _model(model_type="tiny", **overrides):
    torch.manual_seed(0)
    return Minigpt4Qwen.from_pretrained(model_type, max_txt_len=160, **overrides).train()


def _samples(n_images=(1, 1, 2, 0)):
    g = torch.Generator().manual_seed(2)
    return {"image": torch.randn(sum(n_images), 3, 32, 32, generator=g), "n_images": list(n_images),
            "conversations": mixed_conversations(2)}


def _loss_and_grad(model, samples, **options):
    model.frozen_llm = fl.FrozenLLMOptions(**options)
    model.zero_grad(set_to_none=True)
    out = model(dict(samples))
    out["loss"].backward()
    return out, model.llm_proj.weight.grad.clone(), model.llm_proj.bias.grad.clone()


def _spy(monkeypatch):
    calls = []
    real = fl.supervised_hidden

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    import lavis_lite.models.vision_llm as vl
    monkeypatch.setattr(vl, "supervised_hidden", spy)
    return calls


def _assert_same(ref, got):
    (out_r, w_r, b_r), (out_g, w_g, b_g) = ref, got
    assert out_g["n_tokens"] == out_r["n_tokens"] and out_g["n_correct"] == out_r["n_correct"]
    torch.testing.assert_close(out_g["loss"], out_r["loss"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w_g, w_r, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(b_g, b_r, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("model_type", ["tiny", "tiny_qwen3", "tiny_llama3"])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_each_switch_gives_the_plain_loss_and_gradient(monkeypatch, model_type, share_prefix):
    calls = _spy(monkeypatch)
    model = _model(model_type, share_prefix=share_prefix)
    samples = _samples()
    ref = _loss_and_grad(model, samples, enabled=False)
    assert calls == []
    assert float(ref[1].abs().max()) > 0  # the gradient reaches llm_proj through the image positions
    combos = [{}, {"attention": "math"}] + [{s: False for s in SWITCHES}] + \
        [{s: False for s in SWITCHES if s != on} for on in SWITCHES]
    for combo in combos:
        _assert_same(ref, _loss_and_grad(model, samples, **combo))
    assert len(calls) == len(combos)


def test_pad_to_max_and_rows_without_supervision():
    """The published layout (rows padded to max_txt_len) and a row whose reply was cut away entirely."""
    model = _model(pad_to_max_txt_len=True)
    samples = _samples()
    ref = _loss_and_grad(model, samples, enabled=False)
    _assert_same(ref, _loss_and_grad(model, samples))
    batch = model.collate_conversations(dict(samples))
    batch["labels"][1] = -100  # nothing scored in row 1
    model.frozen_llm = fl.FrozenLLMOptions(enabled=False)
    plain = model(dict(batch))["loss"]
    model.frozen_llm = fl.FrozenLLMOptions()
    torch.testing.assert_close(model(dict(batch))["loss"], plain, atol=1e-5, rtol=1e-5)


def test_float64_agrees_to_rounding():
    """fp64: far tighter than fp32 (transformers' RMSNorm still rounds through fp32, so not 1e-15)."""
    model = _model(llm_dtype="fp32").double()
    samples = _samples()
    samples["image"] = samples["image"].double()
    ref = _loss_and_grad(model, samples, enabled=False)
    got = _loss_and_grad(model, samples)
    assert abs(float(got[0]["loss"].detach() - ref[0]["loss"].detach())) < 1e-9
    torch.testing.assert_close(got[1], ref[1], atol=1e-8, rtol=1e-5)


def test_left_padded_rows_use_the_key_mask():
    """supervised_hidden on left-padded rows equals transformers' decoder with the same mask."""
    torch.manual_seed(0)
    model = _model()
    decoder, head = model.llm_model.get_decoder(), model.llm_model.get_output_embeddings()
    embeds = torch.randn(2, 12, model.llm_model.config.hidden_size, requires_grad=True)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    labels = torch.full((2, 12), -100)
    labels[:, 6:10] = 5
    plain = decoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # positions 0..L-1, as here
    ref = plain[:, :-1][labels[:, 1:] != -100]
    got, targets = fl.supervised_hidden(decoder, embeds, mask, labels)
    assert targets.tolist() == [5] * 8
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert head(got).shape[0] == 8


def test_not_used_where_invalid(monkeypatch):
    calls = _spy(monkeypatch)
    model = _model(get_lora=True)  # LoRA weights train: transformers' path
    assert fl.unsupported_reason(model.llm_model, model._decoder()) == "an LLM weight trains"
    model(_samples())
    model = _model(llm_grad_checkpoint=True)
    assert "checkpointing" in fl.unsupported_reason(model.llm_model, model._decoder())
    model(_samples())
    model = _model(packing=True)
    model(_samples())
    assert calls == []


def test_config_keys_are_checked():
    with pytest.raises(KeyError, match="trim_trailng"):
        fl.FrozenLLMOptions.from_config({"trim_trailng": True})
    with pytest.raises(ValueError, match="attention"):
        fl.FrozenLLMOptions.from_config({"attention": "flash"})
    assert fl.FrozenLLMOptions.from_config(False).enabled is False
    model = _model(frozen_llm={"last_layer_supervised_only": False})
    assert model.frozen_llm.enabled and not model.frozen_llm.last_layer_supervised_only


def test_random_mixed_batches_property():
    """Random batches (text-only rows, images before / after the question, several images, two rounds,
    rows whose replies start alike): the frozen path equals transformers' forward every time."""
    import random

    from test_shared_prefix import _random_batch
    model = _model()
    rng = random.Random(11)
    for _ in range(12):
        samples = _random_batch(rng)
        if not sum(samples["n_images"]):
            model.frozen_llm = fl.FrozenLLMOptions(enabled=False)
            plain = model(dict(samples))
            model.frozen_llm = fl.FrozenLLMOptions()
            fast = model(dict(samples))
            assert fast["n_tokens"] == plain["n_tokens"]
            torch.testing.assert_close(fast["loss"], plain["loss"], atol=1e-5, rtol=1e-5)
            continue
        _assert_same(_loss_and_grad(model, samples, enabled=False), _loss_and_grad(model, samples))
