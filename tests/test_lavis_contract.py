"""LAVIS's model/task contract: a plugin package written like LAVIS's tutorials (processor, dataset +
builder with only ``train_dataset_cls`` + default YAML, a model returning only ``{"loss"}``, a task with
``setup_task(cfg)``, a ``(loss, loss_dict)`` ``train_step`` and its own ``valid_step`` /
``after_evaluation``) is pip-installed into a temporary target directory, found through its
``lavis_lite.plugins`` entry point (no ``imports:``), and trained through train.py with runner_base and
deepspeed_runner; its loss falls."""
import json
import os
import random
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(REPO, "tests", "fixtures", "lavis_tutorial_plugin")


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """A real ``pip install --target`` of the plugin (not into the shared venv)."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(target), PLUGIN], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(target.glob("lavis_tutorial_plugin-0.1.0.dist-info/entry_points.txt"))
    return str(target)


def _env(site):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([site, REPO, env.get("PYTHONPATH", "")])
    return env


def _write_data(root):
    rng = random.Random(0)
    os.makedirs(root, exist_ok=True)
    for split, n in (("train", 96), ("val", 16)):
        records = []
        for i in range(n):
            start = rng.randrange(10)
            records.append({"text": " ".join(str((start + k) % 10) for k in range(8)), "instance_id": i})
        with open(os.path.join(root, f"{split}.json"), "w") as f:
            json.dump(records, f)


def _run_yaml(tmp_path, runner):
    data = tmp_path / "data"
    _write_data(str(data))
    extra = "  deepspeed_config: {zero_optimization: {stage: 1}}\n" if runner == "deepspeed_runner" else ""
    text = f"""model:
  arch: tutorial_next_number
  model_type: base
datasets:
  tutorial_next_number:
    build_info:
      annotations:
        train: {{storage: {data / 'train.json'}}}
        val: {{storage: {data / 'val.json'}}}
run:
  task: tutorial_next_number
  report_name: next_number_loss
  runner: {runner}
  lr_sched: constant_lr
  init_lr: 0.05
  weight_decay: 0.0
  batch_size_train: 16
  batch_size_eval: 16
  accum_grad_iters: 2
  max_epoch: 3
  seed: 3
  device: cpu
  progress_bar: false
  train_splits: [train]
  valid_splits: [val]
  output_dir: {tmp_path / 'out'}
{extra}"""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["runner_base", "deepspeed_runner"])
def test_lavis_tutorial_plugin_trains_through_train_py(tmp_path, installed_plugin, runner):
    cfg = _run_yaml(tmp_path, runner)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--cfg-path", str(cfg), "--job-id", "j"],
                          cwd=str(tmp_path), env=_env(installed_plugin), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = tmp_path / "out" / "j" / "log.txt"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["epoch"] for r in train] == [0, 1, 2]
    # equal micro-batch weighting: no token count is invented for a model that returns only the loss
    assert train[-1]["loss"] < 0.6 * train[0]["loss"]
    # the task's own after_evaluation decided the metrics (and the best checkpoint)
    assert [r["epoch"] for r in val] == [0, 1, 2]
    assert val[-1]["next_number_loss"] < val[0]["next_number_loss"]
    assert val[-1]["agg_metrics"] == pytest.approx(-val[-1]["next_number_loss"])
    assert (tmp_path / "out" / "j" / "checkpoint_best" / "COMPLETE").is_file()
