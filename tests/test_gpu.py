"""CUDA-only checks (run by ``bash benchmarks/gpu_check.sh``): bf16 autocast training, DeepSpeed ZeRO-2/3
on NCCL in one process, the flash / memory-efficient SDPA kernels against the math kernel, and packing
with varlen attention. Every test is marked ``gpu`` and skips without CUDA (the only skips CI allows).

``LAVIS_LITE_GPU_TESTS_ON_CPU=1`` runs them on the CPU instead (bf16 autocast on CPU, gloo instead of
NCCL, the CPU flash kernel; CUDA-only kernels skip): that checks the tests' own logic on a machine
without a GPU, not the CUDA kernels.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toy_components as toy  # noqa: E402

pytestmark = pytest.mark.gpu
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON_CPU = os.environ.get("LAVIS_LITE_GPU_TESTS_ON_CPU") == "1"


@pytest.fixture
def device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if ON_CPU:
        return "cpu"
    pytest.skip("needs a CUDA device")


def _conversations(n):
    qa = [("What colour is the shape?", "red"), ("Describe the image.", "A blue square in the center."),
          ("How many shapes are there?", "three"), ("Where is the shape?", "at the top left")]
    return [[{"from": "human", "value": "<ImageHere> " + q}, {"from": "gpt", "value": a}] for q, a in qa[:n]]


# ---- bf16 autocast training step -----------------------------------------------------------------
def test_bf16_autocast_training_step_matches_fp32_and_learns(device):
    """MiniGPT4-Qwen (tiny, fp32 weights) under bf16 autocast: the LLM's matrix products run in bf16, the
    loss and the llm_proj gradient agree with fp32, and a few AdamW steps lower the loss."""
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen

    torch.manual_seed(0)
    model = Minigpt4Qwen.from_pretrained("tiny", llm_dtype="fp32", vit_precision="fp32").to(device).train()
    g = torch.Generator().manual_seed(1)
    samples = {"image": torch.randn(4, 3, 32, 32, generator=g).to(device), "n_images": [1] * 4,
               "conversations": _conversations(4)}
    proj = model.llm_proj
    linear = next(m for m in model.llm_model.modules() if isinstance(m, torch.nn.Linear))
    seen = []
    hook = linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))

    def loss_and_grad(amp):
        model.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            loss = model(samples)["loss"]
        loss.backward()
        return loss.detach().float(), proj.weight.grad.detach().float().clone()

    ref_loss, ref_grad = loss_and_grad(False)
    fp32_dtypes, seen[:] = set(seen), []
    loss, grad = loss_and_grad(True)
    hook.remove()
    assert fp32_dtypes == {torch.float32} and set(seen) == {torch.bfloat16}  # autocast switched the LLM to bf16
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert abs(loss.item() - ref_loss.item()) <= 0.02 * abs(ref_loss.item()), (loss.item(), ref_loss.item())
    cos = torch.nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0)
    assert cos > 0.98, float(cos)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            out = model(samples)["loss"]
        out.backward()
        optimizer.step()
        losses.append(out.item())
    assert losses[-1] < losses[0], losses


# ---- SDPA kernels --------------------------------------------------------------------------------
def _sdpa_with(backend, q, k, v, **kw):
    from torch.nn.attention import sdpa_kernel
    with sdpa_kernel([backend]):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_sdpa_kernels_are_usable_and_match_math(device, dtype, causal):
    """The flash or the memory-efficient SDPA kernel (what the LLM and ViT run on an H100) takes our shapes
    (heads 32 x 128, ViT-G's 16 x 88) and gives the math kernel's output and gradients."""
    from torch.nn.attention import SDPBackend

    if device == "cpu" and dtype == torch.float16:
        pytest.skip("CPU run: fp16 SDPA is a CUDA case")
    backends = [SDPBackend.FLASH_ATTENTION] + ([SDPBackend.EFFICIENT_ATTENTION] if device == "cuda" else [])
    usable = []
    for heads, dim, length in ((32, 128, 160), (16, 88, 257)):
        g = torch.Generator().manual_seed(heads)
        q, k, v = (torch.randn(2, heads, length, dim, generator=g).to(device, dtype).requires_grad_()
                   for _ in range(3))
        ref = _sdpa_with(SDPBackend.MATH, q.float(), k.float(), v.float(), is_causal=causal)
        ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
        for backend in backends:
            try:
                out = _sdpa_with(backend, q, k, v, is_causal=causal)
            except RuntimeError as err:  # "No available kernel": this kernel does not take these inputs
                if "kernel" not in str(err).lower():
                    raise
                continue
            usable.append((backend, heads))
            grads = torch.autograd.grad(out.float().sum(), (q, k, v))
            torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
            for got, want in zip(grads, ref_grads):
                torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-2)
    assert any(h == 32 for _, h in usable), f"no fused SDPA kernel took the LLM's shape; usable: {usable}"


# ---- packing ---------------------------------------------------------------------------------------
def _tiny_qwen2(attn, device, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      attn_implementation=attn)
    return Qwen2ForCausalLM(cfg).to(device, dtype).eval()


def _packed_vs_unpacked(attn, mode, device, dtype):
    from test_packing import make_samples, unpacked_loss

    from lavis_lite.models.packing import pack_sequences
    reference = _tiny_qwen2("sdpa", device, dtype)
    model = _tiny_qwen2(attn, device, dtype)
    model.load_state_dict(reference.state_dict())
    embeds, labels = make_samples(reference.cpu(), [37, 12, 50, 9, 23, 61, 15])
    reference.to(device)
    embeds, labels = [e.to(device) for e in embeds], [y.to(device) for y in labels]
    with torch.no_grad():
        ref = unpacked_loss(reference, embeds, labels)
        packed = pack_sequences(embeds, labels, max_len=64, attention=mode, attn_implementation=attn)
        assert any(len(r) > 1 for r in packed.rows)  # something was actually packed
        out = model(**packed.model_kwargs(), labels=packed.labels)
    assert torch.isfinite(out.loss)
    return out.loss.float().item(), ref.float().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_packing_block_mask_on_device_equals_padding(device, dtype):
    """Packed rows with the 4-D block-diagonal mask through SDPA give the padded batch's loss."""
    got, want = _packed_vs_unpacked("sdpa", "mask", device, dtype)
    assert got == pytest.approx(want, rel=1e-2 if dtype == torch.bfloat16 else 1e-4), (got, want)


def test_packing_with_flash_attention_varlen_equals_padding(device):
    """Packed rows without a mask: position_ids restart per conversation, which transformers turns into
    flash-attention varlen calls (cu_seqlens); the loss equals the padded batch's."""
    if device != "cuda":
        pytest.skip("flash-attention varlen is CUDA only")
    if importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed (pip install flash-attn): varlen packing not checked")
    got, want = _packed_vs_unpacked("flash_attention_2", "position_ids", device, torch.bfloat16)
    assert got == pytest.approx(want, rel=1e-2), (got, want)


# ---- DeepSpeed ZeRO-2 / ZeRO-3 on NCCL, one process ---------------------------------------------------
DEEPSPEED_SCRIPT = r"""
import contextlib, json, os, sys, torch
import deepspeed
import torch.distributed as dist
sys.path.insert(0, {tests!r})
import toy_components
from lavis_lite.runners.launch import build_job
cfg, task, runner = build_job(["--cfg-path", {cfg!r}, "--job-id", "zero"])
stage = runner.model.zero_optimization_stage()  # the engine exists from here on


def snapshot():  # full tensors of the trainable parameters (ZeRO-3 holds partitions: gather them)
    named = [(n, p) for n, p in runner.unwrapped_model.named_parameters() if p.requires_grad]
    gather = deepspeed.zero.GatheredParameters([p for _, p in named]) if stage == 3 else contextlib.nullcontext()
    with gather:
        return {{n: p.detach().float().cpu().clone() for n, p in named}}


start = snapshot()
runner.train()
end = snapshot()
json.dump({{"backend": dist.get_backend(), "world_size": dist.get_world_size(), "stage": stage,
           "bf16": runner.model.bfloat16_enabled(), "device": str(next(runner.model.parameters()).device),
           "changed": sorted(n for n in start if not torch.equal(start[n], end[n])),
           "finite": all(bool(torch.isfinite(t).all()) for t in end.values()),
           "full_size": all(start[n].numel() > 0 and start[n].shape == end[n].shape for n in start),
           "trainable": sorted(start)}}, open({out!r}, "w"))
"""


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_nccl_one_process(tmp_path, device, stage):
    """torchrun with one process: DeepSpeed ZeRO-2 / ZeRO-3 (bf16) trains the toy model on the GPU over
    NCCL; every trainable tensor moves and stays finite."""
    from test_runners import free_port

    cfg = toy.write_run_yaml(str(tmp_path / "run.yaml"), runner="deepspeed_runner", max_epoch=1, device=device,
                             deepspeed_config={"zero_optimization": {"stage": stage}, "bf16": {"enabled": True}})
    script, out = tmp_path / "job.py", tmp_path / "result.json"
    script.write_text(DEEPSPEED_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)), cfg=cfg, out=str(out)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
                           f"--master_port={free_port()}", str(script)], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["backend"] == ("nccl" if device == "cuda" else "gloo") and result["world_size"] == 1
    assert result["stage"] == stage and result["bf16"] is True
    assert result["device"].startswith(device)
    assert result["finite"] and result["full_size"] and result["trainable"]
    assert result["changed"] == result["trainable"], result
