"""Experiment trackers: metrics.jsonl always, TensorBoard / W&B (offline) / MLflow (file store) read back
with each tool's own reader, resume without duplicate steps, and errors at start for bad logger configs."""
import glob
import json
import time
import os
import struct
import sys

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_runners import Stop, make_runner  # noqa: E402
import toy_components as toy  # noqa: E402

from lavis_lite.common.config import ConfigError  # noqa: E402
from lavis_lite.common.trackers import TRACKERS, TrackerUnavailable, logger_names, read_metrics  # noqa: E402


def _train_steps(records):
    return [r["step"] for r in records if r["kind"] == "train"]


def test_metrics_jsonl_has_one_record_per_logged_step_and_per_validation(tmp_path):
    r = make_runner(tmp_path, "runner_base", max_epoch=2, log_freq=3, valid_splits=["val"])
    r.train()
    records = read_metrics(tmp_path / "out" / "job")
    # 64 samples / batch 8 = 8 steps per epoch: every 3rd step plus each epoch's last step
    assert _train_steps(records) == [3, 6, 8, 9, 12, 15, 16]
    train = [x for x in records if x["kind"] == "train"]
    assert [x["epoch"] for x in train] == [0, 0, 0, 1, 1, 1, 1]
    assert sum(x["steps"] for x in train) == 16
    for x in train:
        assert x["loss"] > 0 and x["lr"] > 0 and x["samples_per_s"] > 0
    # every supervised training token is counted exactly once per epoch
    ds = toy.ToyDataset(64, seed=0)
    tokens = int((ds.y != -100).sum())
    assert sum(x["n_tokens"] for x in train if x["epoch"] == 0) == tokens
    assert sum(x["n_tokens"] for x in train if x["epoch"] == 1) == tokens
    evals = [x for x in records if x["kind"] == "eval"]
    assert [(x["split"], x["step"], x["epoch"]) for x in evals] == [("val", 8, 0), ("val", 16, 1)]
    assert all("agg_metrics" in x and "loss" in x for x in evals)
    # the records' training loss falls, as the loss in log.txt does
    assert train[-1]["loss"] < train[0]["loss"]


@pytest.mark.parametrize("runner,run,expected", [
    ("runner_iter", {"iters": 10, "iters_per_inner_epoch": 4}, [(4, 0), (8, 1), (10, 2)]),
    pytest.param("deepspeed_runner", {"max_epoch": 1, "deepspeed_config": {"zero_optimization": {"stage": 1}}},
                 [(4, 0), (8, 0)], marks=pytest.mark.slow),
])
def test_step_records_for_iteration_and_deepspeed_runners(tmp_path, runner, run, expected):
    r = make_runner(tmp_path, runner, log_freq=4, **run)
    r.train()
    train = [x for x in read_metrics(tmp_path / "out" / "job") if x["kind"] == "train"]
    assert [(x["step"], x["epoch"]) for x in train] == expected
    assert all(x["n_tokens"] > 0 and x["loss"] > 0 for x in train)


# ---- readers: each tool's own ------------------------------------------------------------------
def tensorboard_scalars(job_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(job_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def wandb_history(run_file):
    """History rows of a .wandb file: W&B's record log (LevelDB log framing, 32 KiB blocks) holding
    protobuf ``Record`` messages, parsed with wandb's own protobuf classes."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = open(run_file, "rb").read()
    assert data[:4] == b":W&B"
    block, pos, chunk, rows = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            continue
        chunk += data[pos:pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST fragment: one record complete
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return rows


def mlflow_history(job_dir, run_id, key):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri="file:" + str(job_dir / "mlruns"))
    return client, [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


LOGGERS = ["jsonl", "tensorboard", "wandb", "mlflow"]


@pytest.mark.slow
def test_all_loggers_hold_the_metrics_and_resume_without_duplicates(tmp_path, monkeypatch):
    """Train 2 epochs (8 steps each) with every logger; crash mid-epoch 2 (step 13, after records at steps
    10 and 12 were logged past the step-8 checkpoint); resume: every backend holds each step once and the
    same values as the uninterrupted run's metrics.jsonl."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = dict(max_epoch=2, log_freq=2, valid_splits=["val"], loggers=LOGGERS, wandb={"project": "t"})
    full = make_runner(tmp_path / "full", "runner_base", **run)
    full.train()
    expected = read_metrics(tmp_path / "full" / "out" / "job")
    steps = _train_steps(expected)
    assert steps == list(range(2, 17, 2))
    loss_at = {x["step"]: x["loss"] for x in expected if x["kind"] == "train"}

    cut = make_runner(tmp_path / "cut", "runner_base", **run)
    step_fn = cut.task.train_step

    def crash_mid_epoch(model, samples):
        if len(cut.task.losses) == 13:
            raise Stop()
        return step_fn(model, samples)
    cut.task.train_step = crash_mid_epoch
    with pytest.raises(Stop):
        cut.train()
    job = tmp_path / "cut" / "out" / "job"
    assert _train_steps(read_metrics(job)) == [2, 4, 6, 8, 10, 12]  # two records past the checkpoint
    cut.trackers.finish(failed=True)  # what the crashed process's exit would do
    state = json.loads((job / "trackers.json").read_text())
    # W&B names offline run folders by the start second: a real restart (a new process) never starts in
    # the crashed run's second, this in-process one can on a quiet machine -- keep the two apart
    time.sleep(1.1)

    resumed = make_runner(tmp_path / "cut", "runner_base", resume_ckpt_path="auto", **run)
    resumed.train()
    records = read_metrics(job)
    assert _train_steps(records) == steps
    assert [(x["split"], x["step"]) for x in records if x["kind"] == "eval"] == [("val", 8), ("val", 16)]
    for x in records:
        if x["kind"] == "train":
            assert x["loss"] == pytest.approx(loss_at[x["step"]], rel=1e-6)

    # TensorBoard: one folder, the crashed run's steps 10 and 12 purged and written again
    tb = tensorboard_scalars(job, "train/loss")
    assert [s for s, _ in tb] == steps
    assert [v for _, v in tb] == pytest.approx([loss_at[s] for s in steps], rel=1e-5)
    assert [s for s, _ in tensorboard_scalars(job, "val/agg_metrics")] == [8, 16]

    # W&B offline: the same run id before and after the resume, history holds each step once
    run_id = state["wandb"]["run_id"]
    assert json.loads((job / "trackers.json").read_text())["wandb"]["run_id"] == run_id
    runs = sorted(glob.glob(str(job / "wandb" / f"offline-run-*-{run_id}")))
    assert len(runs) == 2
    rows = [row for d in runs for row in wandb_history(glob.glob(os.path.join(d, f"run-{run_id}.wandb"))[0])]
    train_rows = [row for row in rows if "train/loss" in row]
    assert [row["_step"] for row in train_rows] == steps
    assert [row["train/loss"] for row in train_rows] == pytest.approx([loss_at[s] for s in steps], rel=1e-6)
    assert sorted(row["_step"] for row in rows if "val/agg_metrics" in row) == [8, 16]

    # MLflow file store: one run, continued, each step once
    ml_id = state["mlflow"]["run_id"]
    client, history = mlflow_history(job, ml_id, "train/loss")
    assert [s for s, _ in history] == steps
    assert [v for _, v in history] == pytest.approx([loss_at[s] for s in steps], rel=1e-6)
    assert client.get_run(ml_id).info.status == "FINISHED"
    experiment = client.get_experiment_by_name("lavis_lite")
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_logger_config_errors_and_the_deprecated_tensorboard_switch(monkeypatch):
    cfg = OmegaConf.create
    assert logger_names(cfg({})) == ["jsonl"]
    assert logger_names(cfg({"loggers": ["wandb", "jsonl"]})) == ["jsonl", "wandb"]
    assert logger_names(cfg({"tensorboard": True})) == ["jsonl", "tensorboard"]  # deprecated alias, mapped
    assert logger_names(cfg({"tensorboard": False})) == ["jsonl"]
    with pytest.raises(ConfigError, match="deprecated"):
        logger_names(cfg({"tensorboard": "yes"}))
    with pytest.raises(ConfigError, match=r"unknown logger.*'tensorbord'.*tensorboard"):
        logger_names(cfg({"loggers": ["tensorbord"]}))
    from lavis_lite.common.trackers import check_loggers
    with pytest.raises(ConfigError, match=r"run.wandb has unknown keys \['projekt'\]"):
        check_loggers(cfg({"loggers": ["wandb"], "wandb": {"projekt": "x"}}))
    monkeypatch.setattr(TRACKERS["mlflow"], "package", "mlflow_is_not_installed_here")
    with pytest.raises(TrackerUnavailable, match=r"lavis-lite\[track\]"):
        check_loggers(cfg({"loggers": ["mlflow"]}))


def test_missing_logger_package_fails_before_the_model_is_built(tmp_path, monkeypatch):
    from lavis_lite.runners import launch
    monkeypatch.setattr(TRACKERS["wandb"], "package", "wandb_is_not_installed_here")
    built = []
    monkeypatch.setattr(launch.dist_utils, "init_distributed_mode", lambda cfg: built.append(cfg))
    path = toy.write_run_yaml(str(tmp_path / "run.yaml"), loggers=["wandb"])
    with pytest.raises(SystemExit, match=r"Configuration error: .*wandb.*pip install 'lavis-lite\[track\]'"):
        launch.build_job(["--cfg-path", path])
    assert built == []
    assert not (tmp_path / "out").exists()  # nothing written, no job folder


def test_scalar_items_flatten_one_level_and_skip_what_is_not_a_finite_number():
    import numpy as np
    from lavis_lite.common.trackers import scalar_items
    record = {"kind": "eval", "split": "val", "step": 3, "epoch": 0, "agg_metrics": np.float32(0.5),
              "per_type": {"colour": 1.0, "name": "x"}, "note": "s", "bad": float("nan"), "flag": True}
    assert scalar_items(record) == {"val/agg_metrics": 0.5, "val/per_type/colour": 1.0}
    assert scalar_items({"kind": "train", "step": 1, "loss": 2.0, "steps": 4}) == {"train/loss": 2.0}


def test_evaluate_only_jobs_write_their_evaluation_records(tmp_path):
    r = make_runner(tmp_path, "runner_base", evaluate=True, valid_splits=["val"], test_splits=["val"])
    metrics = r.evaluate(["val"], cur_epoch="eval", skip_reload=True)
    records = read_metrics(tmp_path / "out" / "job")
    assert [(x["kind"], x["split"], x["epoch"], x["step"]) for x in records] == [("eval", "val", "eval", 0)]
    assert records[0]["loss"] == pytest.approx(metrics["val"]["loss"])
    assert r.trackers is None  # evaluate() started and finished them itself


def test_tracker_keys_are_declared_run_keys(tmp_path):
    from lavis_lite.common.config import Config
    ok = toy.write_run_yaml(str(tmp_path / "ok.yaml"), loggers=["jsonl"], wandb={"project": "p"}, mlflow={})
    Config.from_file(ok)  # declared by RunnerBase.run_schema: accepted
    typo = toy.write_run_yaml(str(tmp_path / "typo.yaml"), logers=["wandb"])
    with pytest.raises(ConfigError, match=r"run.logers.*did you mean 'loggers'"):
        Config.from_file(typo)
