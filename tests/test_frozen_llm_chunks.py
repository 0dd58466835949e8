"""``model.frozen_llm.causal_chunk``: causal attention run per query chunk over only the keys the chunk can
see gives the one-call loss and llm_proj gradient (fp32 rounding), with and without the shared prefix,
left-padded rows and every chunk size; the layer-0 image-column attention's output, log-sum-exp and
gradients match the unchunked kernel; bad values are named."""
import pytest
import torch

from lavis_lite.models import frozen_llm as fl
from lavis_lite.models.frozen_attention import ImageColumnAttention, causal_chunks
from test_frozen_llm import _assert_same, _loss_and_grad, _model, _samples


def test_causal_chunks_cover_every_query_once():
    assert causal_chunks(10, 0, 3) == [(0, 10, 13)]
    assert causal_chunks(10, 20, 0) == [(0, 10, 10)]
    assert causal_chunks(10, 4, 3) == [(0, 4, 7), (4, 8, 11), (8, 10, 13)]


@pytest.mark.parametrize("share_prefix", [True, False])
def test_chunked_attention_gives_the_plain_loss_and_gradient(monkeypatch, share_prefix):
    model = _model(share_prefix=share_prefix)
    samples = _samples()
    ref = _loss_and_grad(model, samples, enabled=False)  # transformers' forward
    one_call = _loss_and_grad(model, samples, causal_chunk=0)
    _assert_same(ref, one_call)
    import lavis_lite.models.frozen_attention as fa
    calls = []
    real = fa._flash_forward
    monkeypatch.setattr(fa, "_flash_forward", lambda *a: calls.append(len(a[-1])) or real(*a))
    for chunk in (1, 7, 32, 10_000):
        calls.clear()
        got = _loss_and_grad(model, samples, causal_chunk=chunk)
        _assert_same(ref, got)
        _assert_same(one_call, got)
        assert len(calls) == 1 and (calls[0] > 1) == (chunk <= 32)  # layer 0's forward, cut into chunks


def test_left_padded_rows_with_chunks():
    torch.manual_seed(0)
    model = _model()
    decoder = model.llm_model.get_decoder()
    embeds = torch.randn(2, 12, model.llm_model.config.hidden_size)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    labels = torch.full((2, 12), -100)
    labels[:, 6:10] = 5
    ref, _ = fl.supervised_hidden(decoder, embeds, mask, labels, opts=fl.FrozenLLMOptions(causal_chunk=0))
    got, _ = fl.supervised_hidden(decoder, embeds, mask, labels, opts=fl.FrozenLLMOptions(causal_chunk=2))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prefix", [0, 5])
def test_image_column_attention_chunked_matches_one_call(prefix):
    g = torch.Generator().manual_seed(0)
    steps, heads, kv_heads, dim = 23, 4, 2, 8
    q = torch.randn(2, heads, steps, dim, generator=g)
    k = torch.randn(2, kv_heads, prefix + steps, dim, generator=g)
    v = torch.randn(2, kv_heads, prefix + steps, dim, generator=g)
    mask = None if prefix == 0 else \
        (torch.arange(prefix + steps) <= (torch.arange(steps) + prefix)[:, None])[None, None]
    span = (3, 9)
    results = []
    for chunk in (0, 4, 100):
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        out = ImageColumnAttention.apply(qq, kk, vv, mask, dim ** -0.5, span, prefix, chunk)
        (out * torch.linspace(-1, 1, dim)).sum().backward()
        results.append((out.detach(), qq.grad, kk.grad, vv.grad))
    for got in results[1:]:
        for a, b in zip(results[0], got):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    assert results[0][1][:, :, span[1]:].abs().max() == 0  # only the span's rows get a query gradient


def test_bad_chunk_is_named():
    for bad in (-1, 2.5, True, "32"):
        with pytest.raises(ValueError, match="causal_chunk"):
            fl.FrozenLLMOptions.from_config({"causal_chunk": bad})
    assert fl.FrozenLLMOptions.from_config({"causal_chunk": 0}).causal_chunk == 0
