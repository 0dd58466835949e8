"""bf16 on CPU: ``run.amp: bf16`` gives torch.autocast on CPU in the runner's stepper, and the MiniGPT4-Qwen
training forward (frozen-LLM path included) runs under it: matrix products in bf16, an fp32 loss close to the
fp32 one, fp32 gradients for llm_proj."""
import torch

from lavis_lite.models.minigpt4qwen import Minigpt4Qwen
from lavis_lite.runners.stepper import Stepper
from tiny_helpers import mixed_conversations


def _stepper(model, amp_dtype):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return Stepper(model, opt, None, amp_dtype=amp_dtype, device="cpu")


def test_run_amp_bf16_is_cpu_autocast():
    from types import SimpleNamespace

    from lavis_lite.runners.runner_base import RunnerBase
    runner = RunnerBase.__new__(RunnerBase)  # only the config-reading properties are used
    runner.config = SimpleNamespace(run_cfg={"amp": "bf16", "device": "cpu"})
    assert runner.device.type == "cpu" and runner.amp_dtype == torch.bfloat16
    runner.config = SimpleNamespace(run_cfg={"amp": True, "device": "cpu"})
    assert runner.amp_dtype is None  # amp: true stays fp32 on CPU; bf16 must be asked for
    layer = torch.nn.Linear(4, 4)
    with _stepper(layer, torch.bfloat16).autocast():
        assert torch.is_autocast_enabled("cpu")
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with _stepper(layer, None).autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.float32


def test_minigpt4qwen_trains_under_cpu_bf16_autocast():
    torch.manual_seed(0)
    model = Minigpt4Qwen.from_pretrained("tiny", max_txt_len=160).train()
    g = torch.Generator().manual_seed(1)
    samples = {"image": torch.randn(4, 3, 32, 32, generator=g), "n_images": [1, 1, 2, 0],
               "conversations": mixed_conversations(2)}
    losses, grads = {}, {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model.zero_grad(set_to_none=True)
        with _stepper(model, dtype).autocast():
            out = model(dict(samples))
        out["loss"].backward()
        losses[name], grads[name] = out["loss"].detach(), model.llm_proj.weight.grad.clone()
    assert losses["bf16"].dtype == torch.float32 and grads["bf16"].dtype == torch.float32
    assert abs(float(losses["bf16"] - losses["fp32"])) < 0.05 * float(losses["fp32"])
    assert losses["bf16"] != losses["fp32"]  # bf16 matrix products really ran
    cos = torch.nn.functional.cosine_similarity(grads["bf16"].flatten(), grads["fp32"].flatten(), dim=0)
    assert cos > 0.95
