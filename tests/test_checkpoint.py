"""Checkpoints: atomic writes, RNG round trip, crash during save, strict trainable-weight loading."""
import os
import random
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import toy_components as toy  # noqa: E402
from test_runners import make_runner  # noqa: E402

from lavis_lite.common import checkpoint as ckpt  # noqa: E402


def test_atomic_write_crash_keeps_previous_file(tmp_path):
    path = str(tmp_path / "state.pt")
    ckpt.save_torch({"v": torch.tensor(1)}, path)

    def crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")
    with pytest.raises(OSError):
        ckpt.atomic_write(path, crash)
    assert int(ckpt.load_torch(path)["v"]) == 1
    assert os.listdir(tmp_path) == ["state.pt"]  # the partial temp file is gone


def test_rng_state_round_trip():
    state = ckpt.get_rng_state()
    a = (random.random(), float(np.random.rand()), float(torch.rand(())))
    ckpt.set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == a


def test_crash_during_checkpoint_save_leaves_previous_loadable(tmp_path, monkeypatch):
    r = make_runner(tmp_path, "runner_base", max_epoch=2, valid_splits=["val"])
    r.train()
    job = tmp_path / "out" / "job"
    latest = ckpt.find_latest_checkpoint(str(job))
    assert latest.endswith("checkpoint_0000016")
    saved = {n: p.detach().clone() for n, p in r.unwrapped_model.named_parameters()}

    real_save_torch = ckpt.save_torch

    def crash_on_state(obj, path):
        if path.endswith(ckpt.STATE_NAME):
            raise RuntimeError("killed while writing")
        return real_save_torch(obj, path)
    monkeypatch.setattr(ckpt, "save_torch", crash_on_state)
    with torch.no_grad():
        for p in r.unwrapped_model.parameters():
            p.add_(1.0)
    r.start_epoch = 3  # would become checkpoint_0000024
    with pytest.raises(RuntimeError, match="killed"):
        r.save_checkpoint(ckpt.step_dir_name(24))
    with pytest.raises(RuntimeError, match="killed"):
        r.save_checkpoint("checkpoint_best")  # overwriting the best one crashes too
    monkeypatch.setattr(ckpt, "save_torch", real_save_torch)

    assert ckpt.find_latest_checkpoint(str(job)) == latest  # the half-written one is ignored
    assert (job / "checkpoint_0000024.tmp").is_dir() and not (job / "checkpoint_0000024").exists()
    assert ckpt.is_complete(str(job / "checkpoint_best"))
    fresh = make_runner(tmp_path, "runner_base", max_epoch=2, valid_splits=["val"], resume_ckpt_path="auto")
    fresh.maybe_resume()
    assert fresh.start_epoch == 2
    for n, p in fresh.unwrapped_model.named_parameters():
        torch.testing.assert_close(p, saved[n])


def test_load_trainable_weights_is_strict(tmp_path):
    model = toy.ToyLM()
    path = str(tmp_path / "w.safetensors")
    state = ckpt.trainable_state(model)
    assert "embed.weight" not in state and "head.weight" in state  # frozen parts are not saved
    ckpt.save_tensors(state, path)
    other = toy.ToyLM()
    assert ckpt.load_trainable_weights(other, path) == sorted(state)
    torch.testing.assert_close(other.head.weight, model.head.weight)
    ckpt.save_tensors({**state, "ghost.weight": torch.zeros(1)}, path)
    with pytest.raises(ckpt.CheckpointError, match="ghost.weight"):
        ckpt.load_trainable_weights(other, path)
    ckpt.save_tensors({k: v for k, v in state.items() if k != "head.bias"}, path)
    with pytest.raises(ckpt.CheckpointError, match="head.bias"):
        ckpt.load_trainable_weights(other, path)


def test_resume_from_incomplete_dir_is_an_error(tmp_path):
    (tmp_path / "half").mkdir()
    r = make_runner(tmp_path, "runner_base", max_epoch=1, resume_ckpt_path=str(tmp_path / "half"))
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        r.train()


def test_runner_checkpoint_exports_to_single_file(tmp_path):
    from lavis_lite.tools.export_checkpoint import main as export_main
    r = make_runner(tmp_path, "runner_base", max_epoch=1)
    r.train()
    out = str(tmp_path / "export" / "w.safetensors")
    export_main([str(tmp_path / "out" / "job"), out])
    model = toy.ToyLM()
    report = model.load_checkpoint(out)
    assert report["unexpected_keys"] == [] and report["missing_keys"] == ["embed.weight"]
    torch.testing.assert_close(model.head.weight, r.unwrapped_model.head.weight)
