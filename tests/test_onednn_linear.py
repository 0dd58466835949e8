"""``model.cpu_onednn_linear``: fp32 CPU Linear layers (frozen or trained) through oneDNN give F.linear's values
and gradients (fp32 rounding), train like nn.Linear under an optimizer, keep their parameter names, fall back
where the fast path does not apply, and leave the model's loss and gradients as they were."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lavis_lite.models.onednn_linear import OneDNNLinear, onednn_available, use_onednn_linear

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
    assert use_onednn_linear(layer) == 1 and type(layer) is OneDNNLinear and layer.fast_path(x)
    got = layer(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    (got * torch.arange(40.0)).sum().backward()
    torch.testing.assert_close(x.grad, ref_grad, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # no autograd: the plain product
        torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 24), (3, 5, 24), (24,), "strided", (0, 24)])
@pytest.mark.parametrize("needs_x", [True, False])
def test_trained_layer_values_and_every_gradient_match_f_linear(bias, shape, needs_x):
    """Weight (and bias) train: forward, input, weight and bias gradients as F.linear's (1e-5 relative)."""
    layer = _layer(bias, frozen=False)
    torch.manual_seed(1)
    x = torch.randn(5, 3, 48)[..., ::2] if shape == "strided" else torch.randn(*shape)
    x.requires_grad_(needs_x)
    weights = torch.randn(x.shape[:-1] + (40,))  # a loss that weighs every output differently

    def grads(out):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        (out * weights).sum().backward()
        got = [layer.weight.grad] + ([layer.bias.grad] if bias else []) + ([x.grad] if needs_x else [])
        return [g.clone() for g in got]

    ref = F.linear(x, layer.weight, layer.bias)
    ref_grads = grads(ref)
    use_onednn_linear(layer)
    assert layer.fast_path(x)
    got = layer(x)
    assert got.grad_fn is not None and "OneDNN" in type(got.grad_fn).__name__  # the oneDNN backward ran
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads(got), ref_grads, strict=True):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_trained_layers_follow_nn_linear_through_optimizer_steps():
    """A small MLP trained 5 AdamW steps with oneDNN layers ends where the nn.Linear copy does (rounding)."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(24, 64), nn.GELU(), nn.Linear(64, 64, bias=False), nn.GELU(), nn.Linear(64, 10))
    fast = copy.deepcopy(ref)
    initial = {name: p.detach().clone() for name, p in ref.named_parameters()}
    assert use_onednn_linear(fast) == 3
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (ref, fast)]
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        x, y = torch.randn(3, 17, 24, generator=g), torch.randint(0, 10, (3, 17), generator=g)
        for model, opt in zip((ref, fast), opts):
            opt.zero_grad()
            F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
            opt.step()
    for (name, p_ref), (name_fast, p_fast) in zip(ref.named_parameters(), fast.named_parameters(), strict=True):
        assert name == name_fast
        assert (p_ref - initial[name]).abs().max() > 1e-3  # the steps moved every parameter
        torch.testing.assert_close(p_fast, p_ref, atol=1e-5, rtol=1e-4)


def test_falls_back_to_f_linear_bit_exactly():
    x = torch.randn(6, 24)
    for frozen in (True, False):
        layer = _layer(frozen=frozen)
        use_onednn_linear(layer)
        assert not layer.fast_path(x.double()) and not layer.fast_path(x.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not layer.fast_path(x)
            assert layer(x).dtype == torch.bfloat16  # autocast still applies
        double = layer.double()
        xd = x.double().requires_grad_()
        out = double(xd)
        assert torch.equal(out, F.linear(xd, double.weight, double.bias))
        out.sum().backward()
        assert xd.grad is not None and (frozen or double.weight.grad is not None)


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
    assert type(fast.llm_proj) is OneDNNLinear and fast.llm_proj.fast_path(torch.zeros(1, 8))  # trains, fast too
    assert type(fast.llm_model.get_decoder().layers[0].mlp.up_proj) is OneDNNLinear
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
