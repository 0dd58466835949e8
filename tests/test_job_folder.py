"""One job folder, one run (runners/job_folder.py): a new run into a folder with checkpoints stops unless
--resume or --overwrite; --overwrite moves the old run aside; a live lock stops a second run at start;
a resumed run leaves each epoch recorded once in the logs."""
import json
import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
import toy_components as toy  # noqa: E402

import train as train_script  # noqa: E402
from lavis_lite.runners import job_folder  # noqa: E402


def _records(path):
    return [json.loads(line) for line in open(path) if line.startswith("{")]


def test_new_run_into_a_used_job_folder_stops_unless_resume_or_overwrite(tmp_path):
    cfg = toy.write_run_yaml(str(tmp_path / "run.yaml"), max_epoch=1)
    job = tmp_path / "out" / "fixed"
    train_script.main(["--cfg-path", cfg, "--job-id", "fixed"])
    first = (job / "checkpoint_0000008" / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit, match=r"already holds a run \(checkpoint_0000008\).*--resume auto.*--overwrite"):
        train_script.main(["--cfg-path", cfg, "--job-id", "fixed"])
    assert (job / "checkpoint_0000008" / "model.safetensors").read_bytes() == first  # untouched
    with pytest.raises(SystemExit, match="contradict"):
        train_script.main(["--cfg-path", cfg, "--job-id", "fixed", "--resume", "auto", "--overwrite"])
    # --overwrite: the old run moves aside whole, the new run starts in an empty folder
    train_script.main(["--cfg-path", cfg, "--job-id", "fixed", "--overwrite", "--options", "run.seed=8"])
    (aside,) = [p for p in (tmp_path / "out").iterdir() if p.name.startswith("fixed.replaced-")]
    assert (aside / "checkpoint_0000008" / "model.safetensors").read_bytes() == first
    assert (job / "checkpoint_0000008" / "model.safetensors").read_bytes() != first
    assert [r["epoch"] for r in _records(job / "log.txt") if r["split"] == "train"] == [0]
    assert not (job / job_folder.LOCK_NAME).exists()  # released at the end of training
    # --resume auto without --job-id never picks the moved-aside run
    train_script.main(["--cfg-path", cfg, "--resume", "auto", "--options", "run.max_epoch=2"])
    assert (job / "checkpoint_0000016" / "COMPLETE").is_file() and not (aside / "checkpoint_0000016").exists()


def test_a_live_lock_stops_a_second_run_and_a_dead_one_is_taken_over(tmp_path):
    cfg = toy.write_run_yaml(str(tmp_path / "run.yaml"), max_epoch=1)
    job = tmp_path / "out" / "busy"
    job.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (job / job_folder.LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                            "started": "then"}))
        with pytest.raises(SystemExit, match=rf"in use by another run \(pid {sleeper.pid} on host"):
            train_script.main(["--cfg-path", cfg, "--job-id", "busy"])
        assert not (job / "log.txt").exists()  # failed at start, before writing anything
    finally:
        sleeper.kill()
        sleeper.wait()
    train_script.main(["--cfg-path", cfg, "--job-id", "busy"])  # the owner is dead: its lock is taken over
    assert (job / "checkpoint_0000008" / "COMPLETE").is_file()


@pytest.mark.slow
def test_two_concurrent_runs_the_second_fails_at_start(tmp_path):
    cfg = toy.write_run_yaml(str(tmp_path / "run.yaml"), max_epoch=100000)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([HERE, REPO, os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, os.path.join(REPO, "train.py"), "--cfg-path", cfg, "--job-id", "race"]
    first = subprocess.Popen(args, cwd=str(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "out" / "race" / job_folder.LOCK_NAME
    try:
        import time
        deadline = time.time() + 120
        while not lock.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert lock.exists(), "the first run never took the lock"
        second = subprocess.run(args, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode != 0 and f"pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_resumed_run_records_each_epoch_once(tmp_path):
    """A killed attempt logged epoch 1 (and its validation) but died before checkpointing it; the resumed
    run writes epoch 1 again, and the logs keep only the resumed run's record."""
    cfg = toy.write_run_yaml(str(tmp_path / "run.yaml"), max_epoch=1, valid_splits=["val"])
    train_script.main(["--cfg-path", cfg, "--job-id", "k"])
    job = tmp_path / "out" / "k"
    with open(job / "log.txt", "a") as f:  # what the killed attempt left after its last checkpoint
        f.write(json.dumps({"split": "train", "epoch": 1, "loss": 123.0}) + "\n")
        f.write(json.dumps({"split": "val", "epoch": 1, "loss": 456.0}) + "\n")
    with open(job / "evaluate.txt", "a") as f:
        f.write(json.dumps({"split": "val", "epoch": 1, "loss": 456.0}) + "\n")
    train_script.main(["--cfg-path", cfg, "--job-id", "k", "--resume", "auto", "--options", "run.max_epoch=2"])
    train = [r for r in _records(job / "log.txt") if r["split"] == "train"]
    val = [r for r in _records(job / "log.txt") if r["split"] == "val"]
    assert [r["epoch"] for r in train] == [0, 1] and [r["epoch"] for r in val] == [0, 1]
    assert 123.0 not in [r["loss"] for r in train] and 456.0 not in [r["loss"] for r in val]
    assert [r["epoch"] for r in _records(job / "evaluate.txt")] == [0, 1]
    assert "resumed from" in (job / "log.txt").read_text()  # text log lines stay
