"""deepspeed_runner on CPU (gloo, torch AdamW): ZeRO 0-3, fp32/bf16, config derivation, token-weighted
accumulation, export of the engine's checkpoint, and 2 processes with ZeRO-2."""
import json
import os
import sys

import pytest
import torch
from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toy_components as toy  # noqa: E402
from test_runners import make_runner, run_torchrun  # noqa: E402

from lavis_lite.common.config import ConfigError  # noqa: E402
from lavis_lite.runners.deepspeed_runner import derive_deepspeed_config  # noqa: E402


def run_cfg(**kw):
    return OmegaConf.create({"batch_size_train": 4, "accum_grad_iters": 2, **kw})


def test_batch_sizes_come_from_the_run_config(tmp_path):
    ds = derive_deepspeed_config(run_cfg(max_grad_norm=1.0, deepspeed_config={"zero_optimization": {"stage": 2}}), 4)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (4, 2, 32)
    assert ds["gradient_clipping"] == 1.0 and ds["zero_optimization"]["stage"] == 2
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu"):
        derive_deepspeed_config(run_cfg(deepspeed_config={"train_micro_batch_size_per_gpu": 8}), 1)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": "auto", "bf16": {"enabled": True}}))
    ds = derive_deepspeed_config(run_cfg(deepspeed_config=str(path)), 2)
    assert ds["train_batch_size"] == 16 and ds["bf16"]["enabled"]
    assert derive_deepspeed_config(run_cfg(amp="bf16"), 1)["bf16"] == {"enabled": True}
    with pytest.raises(ConfigError, match="neither a mapping nor an existing JSON"):
        derive_deepspeed_config(run_cfg(deepspeed_config=str(tmp_path / "missing.json")), 1)


@pytest.mark.parametrize("stage,dtype,offload", [(0, "bf16", False), (1, "fp32", False), (2, "fp32", True),
                                                 (3, "bf16", False)])  # ZeRO-2 fp32 also in test_runners
def test_zero_stages_train(tmp_path, stage, dtype, offload):
    ds_cfg = {"zero_optimization": {"stage": stage}, "bf16": {"enabled": dtype == "bf16"}}
    if offload:  # optimizer states on the CPU, stepped by our torch AdamW
        ds_cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    r = make_runner(tmp_path, "deepspeed_runner", max_epoch=2, accum_grad_iters=2, max_grad_norm=1.0, init_lr=1e-2,
                    deepspeed_config=ds_cfg)
    r.train()
    assert r.model.zero_optimization_stage() == stage
    assert r.model.bfloat16_enabled() == (dtype == "bf16")
    assert not r.unwrapped_model.embed.weight.requires_grad  # the frozen part stays frozen
    losses = r.task.losses
    assert sum(losses[-8:]) / 8 < 0.85 * sum(losses[:8]) / 8, losses


def _accumulated_engine_params(tmp_path, batches, accum):
    r = make_runner(tmp_path, "deepspeed_runner", job_id=f"acc{accum}", max_epoch=1, accum_grad_iters=accum,
                    batch_size_train=len(batches[0]["x"]), deepspeed_config={"zero_optimization": {"stage": 2}})
    r.run_cfg.init_lr = 0.05
    r.run_cfg.warmup_steps = 0
    stats = r.task._train_loop(0, 0, 1, r.model, iter(batches), r.stepper, sched_epoch=0, log_freq=1,
                               progress=False, header="t")
    return {n: p.detach().clone() for n, p in r.unwrapped_model.named_parameters()}, stats


def test_deepspeed_accumulation_is_token_weighted(tmp_path):
    data = toy.ToyDataset(8, seed=3)
    items = [data[i] for i in range(8)]
    halves = [data.collater(items[:4]), data.collater(items[4:])]
    assert int((halves[0]["y"] != -100).sum()) != int((halves[1]["y"] != -100).sum())
    acc, stats_acc = _accumulated_engine_params(tmp_path, halves, 2)
    one, stats_one = _accumulated_engine_params(tmp_path, [data.collater(items)], 1)
    for name in acc:
        torch.testing.assert_close(acc[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    assert stats_acc["loss"] == pytest.approx(stats_one["loss"], rel=1e-5)


@pytest.mark.parametrize("stage", [0, 3])
def test_export_deepspeed_checkpoint_loads_into_load_model(tmp_path, stage):
    from lavis_lite.models import load_model
    from lavis_lite.tools.export_checkpoint import export_checkpoint
    r = make_runner(tmp_path, "deepspeed_runner", max_epoch=1, deepspeed_config={"zero_optimization": {"stage": stage}})
    r.train()
    out = str(tmp_path / "trained.safetensors")
    state = export_checkpoint(str(tmp_path / "out" / "job"), out)
    assert sorted(state) == sorted(n for n, p in r.unwrapped_model.named_parameters() if p.requires_grad)
    model = load_model("toy_lm", "default", checkpoint=out)
    engine_state = r.model.module.state_dict() if stage < 3 else None
    for name, tensor in state.items():
        torch.testing.assert_close(dict(model.named_parameters())[name], tensor)
        if engine_state is not None:
            torch.testing.assert_close(tensor, engine_state[name].float())
    assert tuple(state["head.weight"].shape) == (16, 32)  # full tensors, not ZeRO partitions


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])  # ZeRO-3 also partitions the frozen embedding
def test_torchrun_two_processes(tmp_path, stage):
    run_torchrun(tmp_path, "deepspeed_runner", max_epoch=1, accum_grad_iters=2, valid_splits=["val"],
                 deepspeed_config={"zero_optimization": {"stage": stage}})
    assert (tmp_path / "out" / "ddp" / "checkpoint_best" / "deepspeed").is_dir()
