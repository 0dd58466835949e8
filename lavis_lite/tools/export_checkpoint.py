"""Export a training checkpoint as one trainable-weights safetensors file.

    python -m lavis_lite.tools.export_checkpoint CHECKPOINT OUT.safetensors

CHECKPOINT is a checkpoint directory written by a runner (``checkpoint_<step>`` or
``checkpoint_best``) or a job directory (its best checkpoint, else the latest). Runner
checkpoints already hold ``model.safetensors``; DeepSpeed ones (ZeRO 0-3, saved with
``exclude_frozen_parameters``) are consolidated to fp32 full tensors. The result loads with
``load_model(name, type, checkpoint=OUT)`` / ``BaseModel.load_checkpoint``.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os

import torch

from lavis_lite.common import checkpoint as ckpt

logger = logging.getLogger(__name__)
DS_TAG = "deepspeed"


def resolve_checkpoint_dir(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    if ckpt.is_complete(path):
        return path
    best = os.path.join(path, "checkpoint_best")
    if ckpt.is_complete(best):
        return best
    latest = ckpt.find_latest_checkpoint(path)
    if latest is None:
        raise ckpt.CheckpointError(f"{path} is neither a complete checkpoint directory nor a job directory "
                                   "holding one")
    return latest


def _model_states_file(ds_dir: str) -> str:
    files = sorted(glob.glob(os.path.join(ds_dir, "*model_states.pt")))
    if not files:
        raise ckpt.CheckpointError(f"No DeepSpeed *model_states.pt in {ds_dir}")
    return files[0]


def deepspeed_saved_names(ds_dir: str) -> set[str] | None:
    """Names of the parameters DeepSpeed recorded as saved (its ``param_shapes``)."""
    state = torch.load(_model_states_file(ds_dir), map_location="cpu", weights_only=True)
    shapes = state.get("param_shapes")
    if shapes is None:
        return None
    groups = shapes if isinstance(shapes, list) else [shapes]
    return {name for group in groups for name in group}


def deepspeed_state_dict(ckpt_dir: str) -> dict[str, torch.Tensor]:
    """Full fp32 trainable weights of a DeepSpeed checkpoint (any ZeRO stage)."""
    ds_dir = os.path.join(ckpt_dir, DS_TAG)
    has_zero_files = bool(glob.glob(os.path.join(ds_dir, "*zero_pp_rank_*_optim_states.pt")))
    if has_zero_files:  # ZeRO 1-3: the fp32 master partitions are in the optimizer files
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=DS_TAG, exclude_frozen_parameters=True)
    else:  # ZeRO 0: the module state holds the (trainable) weights themselves
        state = torch.load(_model_states_file(ds_dir), map_location="cpu", weights_only=True)["module"]
    saved = deepspeed_saved_names(ds_dir)
    if saved is not None:
        state = {k: v for k, v in state.items() if k in saved}
        missing = saved - set(state)
        if missing:
            raise ckpt.CheckpointError(f"DeepSpeed checkpoint {ckpt_dir} lacks tensors for {sorted(missing)[:10]}")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_checkpoint_state(path: str) -> dict[str, torch.Tensor]:
    ckpt_dir = resolve_checkpoint_dir(path)
    weights = os.path.join(ckpt_dir, ckpt.WEIGHTS_NAME)
    if os.path.isfile(weights):
        from safetensors.torch import load_file
        return load_file(weights)
    if os.path.isdir(os.path.join(ckpt_dir, DS_TAG)):
        return deepspeed_state_dict(ckpt_dir)
    raise ckpt.CheckpointError(f"{ckpt_dir} holds neither {ckpt.WEIGHTS_NAME} nor a DeepSpeed '{DS_TAG}' directory")


def export_checkpoint(path: str, out_path: str) -> dict[str, torch.Tensor]:
    """Write the trainable weights of checkpoint ``path`` to ``out_path``; returns them."""
    state = load_checkpoint_state(path)
    if not state:
        raise ckpt.CheckpointError(f"{path}: no trainable weights to export")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)) or ".", exist_ok=True)
    ckpt.save_tensors(state, out_path)
    logger.info("exported %d tensors to %s", len(state), out_path)
    return state


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint directory (or job directory)")
    parser.add_argument("out", help="output .safetensors path")
    args = parser.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        parser.error("the output file must end in .safetensors")
    state = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {len(state)} trainable tensors to {args.out}")


if __name__ == "__main__":
    main()
