"""``model.cpu_onednn_linear``: frozen fp32 CPU Linear layers through oneDNN give F.linear's values and input
gradients (fp32 rounding), keep their parameter names, fall back where the fast path does not apply, and
leave the model's loss and llm_proj gradient as they were."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lavis_lite.models.onednn_linear import OneDNNFrozenLinear, onednn_available, use_onednn_linear

pytestmark = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


def _layer(bias=True, frozen=True):
    torch.manual_seed(0)
    layer = nn.Linear(24, 40, bias=bias)
    layer.requires_grad_(not frozen)
    return layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 24), (3, 5, 24)])
def test_values_and_input_gradient_match_f_linear(bias, shape):
    layer = _layer(bias)
    x = torch.randn(*shape, requires_grad=True)
    ref = F.linear(x, layer.weight, layer.bias)
    (ref * torch.arange(40.0)).sum().backward()
    ref_grad, x.grad = x.grad.clone(), None
    assert use_onednn_linear(layer) == 1 and type(layer) is OneDNNFrozenLinear and layer.fast_path(x)
    got = layer(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    (got * torch.arange(40.0)).sum().backward()
    torch.testing.assert_close(x.grad, ref_grad, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # no autograd: the plain product
        torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)


def test_falls_back_to_f_linear_bit_exactly():
    trained = _layer(frozen=False)
    use_onednn_linear(trained)
    x = torch.randn(6, 24)
    assert not trained.fast_path(x)  # a weight that trains gets its gradient from F.linear
    assert torch.equal(trained(x), F.linear(x, trained.weight, trained.bias))
    trained(x).sum().backward()
    assert trained.weight.grad is not None
    frozen = _layer()
    use_onednn_linear(frozen)
    assert not frozen.fast_path(x.double()) and not frozen.fast_path(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not frozen.fast_path(x)
        assert frozen(x).dtype == torch.bfloat16  # autocast still applies


def test_weight_changes_are_seen_and_names_kept():
    layer = _layer()
    names = [n for n, _ in layer.named_parameters()]
    use_onednn_linear(layer)
    assert [n for n, _ in layer.named_parameters()] == names and set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(4, 24, requires_grad=True)
    layer(x).sum().backward()
    with torch.no_grad():
        layer.weight.mul_(2.0)  # in place: the cached transpose must follow
    x.grad = None
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(4, -1), atol=1e-5, rtol=1e-5)  # the doubled W
    assert use_onednn_linear(layer, False) == 1 and type(layer) is nn.Linear and "_weight_t_cache" not in vars(layer)


def test_model_switch_keeps_loss_and_gradient():
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen
    from test_frozen_llm import _assert_same, _loss_and_grad, _samples

    torch.manual_seed(0)
    model = Minigpt4Qwen.from_pretrained("tiny", max_txt_len=160).train()
    samples = _samples()
    ref = _loss_and_grad(model, samples)
    torch.manual_seed(0)
    fast = Minigpt4Qwen.from_pretrained("tiny", max_txt_len=160, cpu_onednn_linear=True).train()
    assert type(fast.llm_proj) is OneDNNFrozenLinear and not fast.llm_proj.fast_path(torch.zeros(1, 8))  # trains
    assert type(fast.llm_model.get_decoder().layers[0].mlp.up_proj) is OneDNNFrozenLinear
    assert set(fast.state_dict()) == set(model.state_dict())
    _assert_same(ref, _loss_and_grad(fast, samples))
    _assert_same(_loss_and_grad(model, samples, enabled=False), _loss_and_grad(fast, samples, enabled=False))


def test_odd_inputs():
    layer = _layer()
    use_onednn_linear(layer)
    for x in (torch.randn(24, 7).t(), torch.randn(24), torch.randn(5, 3, 48)[..., ::2], torch.randn(0, 24)):
        assert layer.fast_path(x)
        got = layer(x)
        assert got.shape == x.shape[:-1] + (40,)
        torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_enabling_without_onednn_is_an_error_naming_the_key(monkeypatch):
    import lavis_lite.models.onednn_linear as onednn
    monkeypatch.setattr(onednn, "onednn_available", lambda: False)
    layer = nn.Linear(4, 4)
    with pytest.raises(RuntimeError, match="model.cpu_onednn_linear"):
        use_onednn_linear(layer)
    assert type(layer) is nn.Linear
    assert use_onednn_linear(layer, False) == 0  # switching off needs no oneDNN
