"""Export a whole model as one self-contained folder.

    python -m lavis_lite.tools.export --cfg-path <model yaml | run yaml> [--checkpoint PATH] --out DIR

Writes ``DIR/config.yaml`` (the merged model config, with the eval image processor spelled
out), ``DIR/model.safetensors`` (every weight: frozen and trained) and the LLM tokenizer files.
The folder reopens with ``load_model(name, type, checkpoint=DIR)``, or with the tools:
``python -m lavis_lite.chat --cfg-path DIR``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch
from omegaconf import DictConfig, OmegaConf

from lavis_lite.inference_utils import EXPORT_CONFIG_NAME, EXPORT_WEIGHTS_NAME

logger = logging.getLogger(__name__)


def _unique_storage_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors (e.g. input/output embeddings) stored once.

    safetensors refuses tensors that share memory; loading the kept name fills the tied one.
    """
    state, seen = {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
               tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and key in seen:
            logger.info("export: %s is tied to %s; stored once", name, seen[key])
            continue
        seen[key] = name
        state[name] = tensor.detach().to("cpu").contiguous()
    return state


# Keys whose files the export makes unnecessary: their weights are all in model.safetensors.
WEIGHT_FILE_KEYS = ("checkpoint", "vit_checkpoint", "q_former_model")
# Qwen2 config entries that describe the saved file, not the architecture.
_LLM_CONFIG_DROP = ("_name_or_path", "architectures", "transformers_version", "model_type", "dtype", "torch_dtype",
                    "id2label", "label2id")


def _base_llm(model):
    llm = getattr(model, "llm_model", None)
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


def portable_model_config(model, model_cfg: DictConfig, out_dir: str) -> DictConfig:
    """The model config rewritten so the export folder needs nothing outside itself.

    Pretrained-weight paths are dropped (the weights are in model.safetensors); a native Qwen2
    LLM loaded from a folder is described by its architecture (``llm_config``) instead, so the
    folder reopens without the original LLM; a tokenizer that is not the shipped tiny one is read
    from the export folder (absolute path: pass ``--options tokenizer=NEW`` after moving it).
    """
    cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    for key in WEIGHT_FILE_KEYS:
        if key in cfg:
            cfg[key] = None
    llm = _base_llm(model)
    custom_tokenizer = bool(cfg.get("tokenizer", None) or cfg.get("llm_model", None))
    if cfg.get("llm_model", None) and cfg.get("llm_family", None) == "qwen2" and llm is not None:
        # every entry, not a diff: the default YAML layered underneath must not fill gaps
        arch = {k: v for k, v in llm.config.to_dict().items() if k not in _LLM_CONFIG_DROP}
        cfg.llm_config = arch
        cfg.llm_model = None
    if custom_tokenizer and "tokenizer" in cfg:
        cfg.tokenizer = os.path.abspath(out_dir)
    return cfg


def export_model(model, model_cfg: DictConfig, out_dir: str, image_processor_cfg: DictConfig | None = None,
                 overwrite: bool = False) -> str:
    """Write config.yaml + model.safetensors + tokenizer files into ``out_dir``; returns it."""
    from safetensors.torch import save_file

    out_dir = os.path.expanduser(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"Export folder {out_dir!r} is not empty (pass --overwrite to replace its files)")
    os.makedirs(out_dir, exist_ok=True)

    cfg = portable_model_config(model, model_cfg, out_dir)
    if image_processor_cfg is not None and OmegaConf.select(cfg, "preprocess.vis_processor.eval") is None:
        cfg = OmegaConf.merge(cfg, {"preprocess": {"vis_processor": {"eval": image_processor_cfg}}})
    # "export" sits beside "model": readers of the folder find the weights file by it.
    OmegaConf.save({"model": cfg, "export": {"weights": EXPORT_WEIGHTS_NAME}},
                   os.path.join(out_dir, EXPORT_CONFIG_NAME))

    state = _unique_storage_state(model)
    meta = {"format": "pt", "lavis_lite_arch": str(cfg.get("arch", "")),
            "lavis_lite_model_type": str(cfg.get("model_type", "")),
            "n_tensors": str(len(state))}
    save_file(state, os.path.join(out_dir, EXPORT_WEIGHTS_NAME), metadata=meta)

    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    logger.info("exported %d tensors to %s", len(state), out_dir)
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lavis_lite.tools.export", description=__doc__.split("\n")[0])
    parser.add_argument("--cfg-path", required=True, help="model YAML, run YAML or export folder")
    parser.add_argument("--checkpoint", default=None, help="training checkpoint or export folder to load first")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--options", nargs="+", default=[], help="model config overrides key=value")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lavis_lite.inference_utils import find_image_processor_config, load_model_from_cfg

    model, _, model_cfg = load_model_from_cfg(args.cfg_path, args.checkpoint, "cpu", args.options)
    try:
        out = export_model(model, model_cfg, args.out, find_image_processor_config(args.cfg_path, model_cfg),
                           overwrite=args.overwrite)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"exported": out, "files": sorted(os.listdir(out))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
