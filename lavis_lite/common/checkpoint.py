"""Training checkpoints: atomic directories, trainable weights in safetensors, RNG state.

A checkpoint is a directory ``<job_dir>/checkpoint_<step:07d>/`` (or ``checkpoint_best/``) holding
- ``model.safetensors``     trainable parameters only, under the model's own parameter names;
- ``training_state.pt``     optimizer / scheduler / scaler / epoch / step / data position (rank 0);
- ``rng_rank<r>.pt``        python, numpy and torch RNG states of every rank;
- ``COMPLETE``              written last.
It is written under ``<name>.tmp`` (every file fsynced) and renamed into place only when
complete, so a crash mid-save leaves the previous checkpoint as it was. Everything is read back
with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from typing import Callable

import numpy as np
import torch

from lavis_lite.common import dist_utils

WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "training_state.pt"
COMPLETE_NAME = "COMPLETE"
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the model."""


# ---- atomic files ------------------------------------------------------------
def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` then fsync and rename to ``path`` (readers never see a partial file)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def save_tensors(tensors: dict, path: str) -> None:
    from safetensors.torch import save_file
    # Clones break shared storage (tied weights), which safetensors refuses to write.
    flat = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp))


def save_torch(obj, path: str) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str):
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint file {path!r} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


# ---- RNG -----------------------------------------------------------------------
def get_rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---- checkpoint directories ----------------------------------------------------
def step_dir_name(step: int) -> str:
    return f"checkpoint_{int(step):07d}"


def is_complete(ckpt_dir: str) -> bool:
    return os.path.isfile(os.path.join(ckpt_dir, COMPLETE_NAME))


def find_latest_checkpoint(job_dir: str) -> str | None:
    """The complete ``checkpoint_<step>`` directory with the highest step, or None."""
    if not os.path.isdir(job_dir):
        return None
    found = []
    for name in os.listdir(job_dir):
        m = _STEP_DIR.match(name)
        path = os.path.join(job_dir, name)
        if m and is_complete(path):
            found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


def begin_save(final_dir: str) -> str:
    """Rank 0 creates an empty ``<final_dir>.tmp``; every rank then writes its files into it."""
    tmp = final_dir + ".tmp"
    if dist_utils.is_main_process():
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
    dist_utils.barrier()
    return tmp


def finish_save(tmp_dir: str, final_dir: str) -> None:
    """After every rank wrote into ``tmp_dir``: mark complete and rename into place (rank 0)."""
    dist_utils.barrier()
    if dist_utils.is_main_process():
        for root, _, files in os.walk(tmp_dir):
            for name in files:
                with open(os.path.join(root, name), "rb+") as f:
                    os.fsync(f.fileno())
        with open(os.path.join(tmp_dir, COMPLETE_NAME), "w") as f:
            f.write("ok\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp_dir)
        old = final_dir + ".old"
        if os.path.exists(final_dir):  # e.g. checkpoint_best: keep the previous one until the swap
            if os.path.exists(old):
                shutil.rmtree(old)
            os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        _fsync_dir(os.path.dirname(os.path.abspath(final_dir)))
        if os.path.exists(old):
            shutil.rmtree(old)
    dist_utils.barrier()


def write_rank_rng(ckpt_dir: str) -> None:
    save_torch(get_rng_state(), os.path.join(ckpt_dir, f"rng_rank{dist_utils.get_rank()}.pt"))


def restore_rank_rng(ckpt_dir: str) -> None:
    path = os.path.join(ckpt_dir, f"rng_rank{dist_utils.get_rank()}.pt")
    if os.path.isfile(path):
        set_rng_state(load_torch(path))


def prune_step_checkpoints(job_dir: str, keep: int) -> None:
    """Delete all but the ``keep`` newest complete ``checkpoint_<step>`` dirs (rank 0; keep<=0 keeps all)."""
    if keep <= 0 or not dist_utils.is_main_process():
        return
    steps = sorted((int(m.group(1)), n) for n in os.listdir(job_dir) if (m := _STEP_DIR.match(n))
                   and is_complete(os.path.join(job_dir, n)))
    for _, name in steps[:-keep]:
        shutil.rmtree(os.path.join(job_dir, name), ignore_errors=True)


# ---- trainable weights -----------------------------------------------------------
def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_weights(model: torch.nn.Module, path: str) -> list[str]:
    """Load a trainable-weights safetensors file; every trainable parameter must be present and
    nothing unknown may be; returns the names loaded."""
    from safetensors.torch import load_file
    if not os.path.isfile(path):
        raise CheckpointError(f"Weights file {path!r} does not exist")
    state = load_file(path)
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in state)
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(params[k].shape)}" for k, v in state.items()
           if k in params and tuple(v.shape) != tuple(params[k].shape)]
    if unknown or missing or bad:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: unknown keys {unknown[:10]}, "
                              f"missing trainable keys {missing[:10]}, shape mismatches {bad[:10]}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].dtype))
    return sorted(state)
