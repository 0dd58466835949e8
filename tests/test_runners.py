"""Runners on CPU with the toy model: learning, token-weighted accumulation, exact resume, 2 processes."""
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toy_components as toy  # noqa: E402

from lavis_lite.common.config import Config  # noqa: E402
from lavis_lite.common.registry import registry  # noqa: E402
from lavis_lite.runners.stepper import Stepper  # noqa: E402
from lavis_lite.tasks.base_task import BaseTask  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RecordingTask(BaseTask):
    """Records every micro-batch loss so runs can be compared step by step."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.losses = []

    def train_step(self, model, samples):
        out = super().train_step(model, samples)
        self.losses.append(float(out["loss"].detach()))
        return out


class Stop(Exception):
    pass


def make_runner(tmp_path, runner="runner_base", job_id="job", stop_after_step=None, **run):
    os.makedirs(tmp_path, exist_ok=True)
    path = toy.write_run_yaml(str(tmp_path / f"{job_id}.yaml"), runner=runner, **run)
    cfg = Config.from_file(path)
    task = RecordingTask(cfg=cfg)
    datasets = task.build_datasets(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg)
    r = registry.get_runner_class(runner)(cfg=cfg, task=task, model=model, datasets=datasets, job_id=job_id)
    if stop_after_step is not None:  # simulate a job killed right after a checkpoint
        save = r.save_checkpoint

        def save_then_stop(name):
            out = save(name)
            if name.endswith(f"{stop_after_step:07d}"):
                raise Stop()
            return out
        r.save_checkpoint = save_then_stop
    return r


def fixed_batch_loss(model):
    ds = toy.ToyDataset(32, seed=123)
    batch = ds.collater([ds[i] for i in range(32)])
    model.eval()
    with torch.no_grad():
        return float(model(batch)["loss"])


RUNNERS = [
    ("runner_base", {"max_epoch": 3}, 16),
    ("runner_iter", {"iters": 20, "iters_per_inner_epoch": 6}, 12),  # stops mid data-epoch
    ("deepspeed_runner", {"max_epoch": 2, "deepspeed_config": {"zero_optimization": {"stage": 2}}}, 8),
]


@pytest.mark.parametrize("runner,run,stop", RUNNERS, ids=[r[0] for r in RUNNERS])
def test_runner_learns_and_resumes_exactly(tmp_path, runner, run, stop):
    """Train uninterrupted (the loss falls, the job dir is complete); then train, stop after a checkpoint,
    resume with resume_ckpt_path=auto: the resumed losses and final weights equal the uninterrupted run's."""
    full = make_runner(tmp_path / "full", runner, valid_splits=["val"], **run)
    before = fixed_batch_loss(full.unwrapped_model)
    full.train()
    assert fixed_batch_loss(full.unwrapped_model) < 0.8 * before
    job = tmp_path / "full" / "out" / "job"
    assert (job / "config.yaml").is_file() and (job / "result").is_dir()
    assert OmegaConf.load(job / "config.yaml").run.runner == runner
    assert (job / "checkpoint_best" / "COMPLETE").is_file() and "Train:" in (job / "log.txt").read_text()

    first = make_runner(tmp_path / "cut", runner, valid_splits=["val"], stop_after_step=stop, **run)
    with pytest.raises(Stop):
        first.train()
    n_done = len(first.task.losses)
    resumed = make_runner(tmp_path / "cut", runner, valid_splits=["val"], resume_ckpt_path="auto", **run)
    resumed.train()
    assert n_done > 0 and len(resumed.task.losses) == len(full.task.losses) - n_done
    assert resumed.task.losses == pytest.approx(full.task.losses[n_done:], rel=1e-6, abs=1e-7)
    for name, p in full.unwrapped_model.named_parameters():
        torch.testing.assert_close(p, dict(resumed.unwrapped_model.named_parameters())[name])
    assert resumed.best_epoch == full.best_epoch


def _stepper_run(batches, accum):
    torch.manual_seed(0)
    model = toy.ToyLM(dropout=0.0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    sched = registry.get_lr_scheduler_class("constant_lr")(opt, init_lr=0.5)
    stepper = Stepper(model, opt, sched, accum_grad_iters=accum, max_grad_norm=1e9)
    task = BaseTask()
    stats = task._train_loop(0, 0, 1, model, iter(batches), stepper, sched_epoch=0, log_freq=1,
                             progress=False, header="t")
    return model, stats


def test_accumulating_two_batches_equals_one_double_batch():
    ds = toy.ToyDataset(8, seed=3)
    items = [ds[i] for i in range(8)]
    halves = [ds.collater(items[:4]), ds.collater(items[4:])]
    n0, n1 = [int((b["y"] != -100).sum()) for b in halves]
    assert n0 != n1  # unequal supervised tokens: plain averaging of the two means would differ
    accumulated, stats_acc = _stepper_run(halves, accum=2)
    single, stats_one = _stepper_run([ds.collater(items)], accum=1)
    for (name, a), (_, b) in zip(accumulated.named_parameters(), single.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert stats_acc["loss"] == pytest.approx(stats_one["loss"], rel=1e-5)  # logged = true mean loss


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="iters_per_inner_epoch"):
        make_runner(tmp_path, "runner_iter", iters=10)
    with pytest.raises(ValueError, match="max_epoch"):
        make_runner(tmp_path, "runner_base", max_epoch=0)


def test_sample_ratio_mixes_two_datasets(tmp_path):
    from lavis_lite.runners.data import BatchSource, TrainStream
    a, b = toy.ToyDataset(40, seed=1), toy.ToyDataset(40, seed=2)
    stream = TrainStream([BatchSource(a, 4, name="a"), BatchSource(b, 4, name="b")], ratios=[3.0, 1.0], seed=0)
    origin = []
    for _ in range(200):
        batch = next(stream)
        origin.append(bool(torch.equal(batch["x"][0], a.x[batch["instance_id"][0]])))
    assert 0.65 < sum(origin) / len(origin) < 0.85


TORCHRUN_SCRIPT = r"""
import contextlib, os, sys, torch
sys.path.insert(0, {tests!r})
import toy_components
from lavis_lite.runners.launch import build_job
cfg, task, runner = build_job(["--cfg-path", {cfg!r}, "--job-id", "ddp"])
runner.train()
rank = int(os.environ["RANK"])
named = [(n, p) for n, p in runner.unwrapped_model.named_parameters() if p.requires_grad]
gather = contextlib.nullcontext()
if getattr(runner.model, "zero_optimization_stage", lambda: 0)() == 3:  # partitioned: gather full tensors
    import deepspeed
    gather = deepspeed.zero.GatheredParameters([p for _, p in named])
with gather:
    state = {{n: p.detach().clone() for n, p in named}}
torch.save(state, os.path.join({out!r}, f"rank{{rank}}.pt"))
"""


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(tmp_path, runner, **run):
    cfg = toy.write_run_yaml(str(tmp_path / "run.yaml"), runner=runner, **run)
    script = tmp_path / "job.py"
    script.write_text(TORCHRUN_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)), cfg=cfg,
                                             out=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", str(script)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert tuple(ranks[0]["head.weight"].shape) == (16, 32)  # full tensors, not partitions
    for name in ranks[0]:
        torch.testing.assert_close(ranks[0][name], ranks[1][name], msg=name)
    return proc


@pytest.mark.slow
def test_torchrun_two_processes_runner_base(tmp_path):
    run_torchrun(tmp_path, "runner_base", max_epoch=1, accum_grad_iters=2, valid_splits=["val"])
    assert (tmp_path / "out" / "ddp" / "checkpoint_best" / "model.safetensors").is_file()


def test_skipped_samples_are_reported_per_epoch(tmp_path):
    """Under on_error: skip the runner logs each epoch's skipped-sample counts and resets them."""
    from lavis_lite.datasets.datasets.errors import ErrorPolicy

    r = make_runner(tmp_path, "runner_base", max_epoch=2)
    policy = ErrorPolicy("skip")
    train_sets = [by_split["train"] for by_split in r.datasets.values() if "train" in by_split]
    assert train_sets
    train_sets[0].skip_report = policy.report
    policy.counts[0] = torch.tensor([40, 3])  # what workers would have counted during epoch 0
    (counts,) = r.report_skipped(0).values()
    assert counts["seen"] == 40 and counts["skipped"] == 3
    assert r.report_skipped(1) == {}  # counts were reset for the next epoch


def _adamw_reference(params, grads, group, steps):
    """AdamW written out (decoupled weight decay, bias correction), independent of torch.optim."""
    lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    out = []
    for p, g in zip(params, grads):
        p, m, v = p.detach().double().clone(), torch.zeros_like(p, dtype=torch.float64), \
            torch.zeros_like(p, dtype=torch.float64)
        for t in range(1, steps + 1):
            p.mul_(1 - lr * wd)
            m = b1 * m + (1 - b1) * g.double()
            v = b2 * v + (1 - b2) * g.double() ** 2
            p -= lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        out.append(p)
    return out


@pytest.mark.parametrize("impl,foreach", [("auto", True), ("foreach", True), ("for_loop", False)])
def test_optimizer_impl_switch_and_same_update(tmp_path, impl, foreach):
    """run.optimizer_impl picks AdamW's implementation; every choice gives AdamW's update, parameter by
    parameter (checked against AdamW written out, not against another torch implementation)."""
    r = make_runner(tmp_path / impl, optimizer_impl=impl, weight_decay=0.1)
    opt = r.optimizer
    assert isinstance(opt, torch.optim.AdamW) and bool(opt.defaults["foreach"]) == foreach
    assert not opt.defaults.get("fused")  # CPU: never the fused CUDA kernel
    torch.manual_seed(0)
    for group in opt.param_groups:
        params = list(group["params"])
        start = [p.detach().clone() for p in params]
        grads = [torch.randn_like(p) for p in params]
        want = _adamw_reference(start, grads, group, steps=3)
        group["_check"] = (params, grads, want)
    for _ in range(3):
        for group in opt.param_groups:
            for p, g in zip(group["_check"][0], group["_check"][1]):
                p.grad = g.clone()
        opt.step()
    n_checked = 0
    for group in opt.param_groups:
        params, _, want = group.pop("_check")
        for p, w in zip(params, want):
            torch.testing.assert_close(p.detach().double(), w, rtol=1e-5, atol=1e-6)
            n_checked += 1
    assert n_checked == sum(1 for p in r.unwrapped_model.parameters() if p.requires_grad)
    assert any(g["weight_decay"] > 0 for g in opt.param_groups)  # decay is exercised too


def test_unknown_optimizer_impl_is_named(tmp_path):
    r = make_runner(tmp_path, optimizer_impl="adamw8bit")
    with pytest.raises(ValueError, match="run.optimizer_impl.*'adamw8bit'"):
        r.optimizer


DP_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
import toy_components as toy
from lavis_lite.common.registry import registry
from lavis_lite.runners.stepper import Stepper
from lavis_lite.tasks.base_task import BaseTask
dist.init_process_group("gloo")
rank = dist.get_rank()
model, ddp, batches = toy_model_and_batches = None, None, None
torch.manual_seed(0)
model = toy.ToyLM(dropout=0.0)
mode = {mode!r}
if mode == "labels":  # the rule's first source: the batch's labels (the model reports no n_tokens)
    inner_forward = model.forward
    model.forward = lambda samples: {{"loss": inner_forward(samples)["loss"]}}
ddp = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
sched = registry.get_lr_scheduler_class("constant_lr")(opt, init_lr=0.5)
ds = toy.ToyDataset(8, seed=3)
mine = [ds[i] for i in range(rank * 4, rank * 4 + 4)]
batches = [ds.collater(mine[:2]), ds.collater(mine[2:])]  # 2 micro-batches per rank, accumulated
if mode == "labels":
    for b in batches:
        b["labels"] = b["y"]
stepper = Stepper(ddp, opt, sched, accum_grad_iters=2, max_grad_norm=1e9)
stats = BaseTask()._train_loop(0, 0, 1, ddp, iter(batches), stepper, sched_epoch=0, log_freq=1, progress=False,
                               header="t")
if rank == 0:
    torch.save({{"params": {{n: p.detach() for n, p in model.named_parameters()}}, "loss": stats["loss"]}}, {out!r})
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["n_tokens", "labels"])
def test_token_weighted_data_parallel_equals_one_process_on_the_whole_batch(tmp_path, mode):
    """2 gloo ranks x 2 accumulated micro-batches of 2 samples == 1 process on all 8 samples at once
    (unequal supervised tokens per rank, so averaging the ranks' mean losses would differ)."""
    ds = toy.ToyDataset(8, seed=3)
    items = [ds[i] for i in range(8)]
    per_rank = [int((ds.collater(items[r * 4:r * 4 + 4])["y"] != -100).sum()) for r in (0, 1)]
    assert per_rank[0] != per_rank[1]
    script = tmp_path / "dp.py"
    out = str(tmp_path / "rank0.pt")
    script.write_text(DP_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)), mode=mode, out=out))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", str(script)], cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    dp = torch.load(out, weights_only=True)
    single, stats = _stepper_run([ds.collater(items)], accum=1)
    assert dp["loss"] == pytest.approx(stats["loss"], rel=1e-5)
    for name, p in single.named_parameters():
        torch.testing.assert_close(dp["params"][name], p.detach(), rtol=1e-5, atol=1e-6, msg=name)
    torch.manual_seed(0)
    start = toy.ToyLM(dropout=0.0)
    assert not torch.allclose(start.head.weight, single.head.weight)  # a real update happened
