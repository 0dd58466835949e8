"""Two "nodes" on 127.0.0.1 (one process each, gloo, through run_scripts/multinode/torchrun.sh) train
exactly as one node with two processes: the same losses step by step and the same final weights."""
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toy_components as toy  # noqa: E402

from lavis_lite.common.trackers import read_metrics  # noqa: E402
from test_runners import free_port  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "run_scripts", "multinode", "torchrun.sh")


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable, **extra)
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    return env


def _train_args(cfg, job):
    return ["train.py", "--cfg-path", cfg, "--job-id", job]


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    """The reference: one node, two processes (torchrun.sh, NNODES=1)."""
    tmp = tmp_path_factory.mktemp("multinode")
    cfg = toy.write_run_yaml(str(tmp / "run.yaml"), max_epoch=1, log_freq=1, accum_grad_iters=2,
                             valid_splits=["val"])
    one = subprocess.run(["bash", SCRIPT, *_train_args(cfg, "one_node")], cwd=REPO, capture_output=True, text=True,
                         timeout=240, env=_env(NNODES="1", NPROC_PER_NODE="2", RDZV_ENDPOINT=f"127.0.0.1:{free_port()}",
                                               RDZV_ID="one"))
    assert one.returncode == 0, one.stderr[-4000:]
    return cfg, tmp / "out"


def _run_nodes(commands, envs):
    nodes = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for cmd, env in zip(commands, envs)]
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    for node, out in zip(nodes, outputs):
        assert node.returncode == 0, out[-4000:]


def _assert_same_training(out, job):
    a, b = read_metrics(out / "one_node"), read_metrics(out / job)
    steps_a = [(r["step"], r["loss"], r["n_tokens"]) for r in a if r["kind"] == "train"]
    steps_b = [(r["step"], r["loss"], r["n_tokens"]) for r in b if r["kind"] == "train"]
    # 64 samples, batch 8 per process, 2 processes, 2 micro-batches per step: 2 steps, each logged once (rank 0)
    assert [s for s, _, _ in steps_a] == [1, 2]
    assert [s for s, _, _ in steps_b] == [1, 2]
    for (_, loss_a, tok_a), (_, loss_b, tok_b) in zip(steps_a, steps_b):
        assert loss_b == pytest.approx(loss_a, rel=1e-6) and tok_a == tok_b
    val_a = [r["loss"] for r in a if r["kind"] == "eval"]
    val_b = [r["loss"] for r in b if r["kind"] == "eval"]
    assert len(val_a) == 1 and val_b == pytest.approx(val_a, rel=1e-6)
    wa = load_file(str(out / "one_node" / "checkpoint_best" / "model.safetensors"))
    wb = load_file(str(out / job / "checkpoint_best" / "model.safetensors"))
    assert set(wa) == set(wb) and wa
    for name in wa:
        assert (wa[name] - wb[name]).abs().max().item() < 1e-6, name


@pytest.mark.slow
def test_torchrun_two_nodes_one_process_each_match_one_node_two_processes(one_node):
    cfg, out = one_node
    endpoint = f"127.0.0.1:{free_port()}"
    _run_nodes([["bash", SCRIPT, *_train_args(cfg, "torchrun_nodes")]] * 2,
               [_env(NNODES="2", NODE_RANK=str(rank), NPROC_PER_NODE="1", RDZV_ENDPOINT=endpoint,
                     RDZV_BACKEND="static", RDZV_ID="two") for rank in (0, 1)])
    _assert_same_training(out, "torchrun_nodes")


@pytest.mark.slow
def test_deepspeed_launcher_two_nodes_match_one_node_two_processes(one_node, tmp_path):
    """DeepSpeed's launcher with a two-host hostfile, started on each "node" without ssh (--no_ssh)."""
    cfg, out = one_node
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = str(free_port())
    script = os.path.join(REPO, "run_scripts", "multinode", "deepspeed.sh")
    _run_nodes([["bash", script, str(hostfile), *_train_args(cfg, "deepspeed_nodes")]] * 2,
               [_env(MASTER_PORT=port, DS_LAUNCHER_ARGS=f"--no_ssh --node_rank={rank} --master_addr=127.0.0.1")
                for rank in (0, 1)])
    _assert_same_training(out, "deepspeed_nodes")


def test_launcher_scripts_parse_and_check_their_arguments(tmp_path):
    for name in ("torchrun.sh", "deepspeed.sh"):
        path = os.path.join(REPO, "run_scripts", "multinode", name)
        assert subprocess.run(["bash", "-n", path]).returncode == 0, name
        usage = subprocess.run(["bash", path], capture_output=True, text=True, env=_env(NPROC_PER_NODE="1"))
        assert usage.returncode == 2 and "usage" in usage.stderr, name
    missing = subprocess.run(["bash", os.path.join(REPO, "run_scripts", "multinode", "deepspeed.sh"),
                              str(tmp_path / "nohostfile"), "train.py"], capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
