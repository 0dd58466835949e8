"""Merge a LoRA-trained checkpoint into the LLM and save the LLM in Hugging Face format.

    python -m lavis_lite.tools.merge_lora --cfg-path <run or model yaml with get_lora: True> \
        --checkpoint <checkpoint dir or .safetensors> --out DIR [--full-export DIR2]

``DIR`` then holds config.json + model.safetensors + the tokenizer (with the image token),
loadable by ``AutoModelForCausalLM.from_pretrained(DIR)`` / vLLM as a plain language model.
``--full-export`` also writes the whole multimodal model with the merged LLM (``get_lora``
off) as an export folder (see lavis_lite.tools.export).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from omegaconf import OmegaConf

logger = logging.getLogger(__name__)


class NoLoraError(ValueError):
    """The model carries no LoRA adapters, so there is nothing to merge."""


def merge_lora_into_llm(model):
    """Fold the LoRA adapters of ``model.llm_model`` into its weights (in place); returns the plain LLM."""
    llm = getattr(model, "llm_model", None)
    if llm is None:
        raise NoLoraError(f"{type(model).__name__} has no llm_model")
    if not hasattr(llm, "merge_and_unload"):
        raise NoLoraError("The LLM has no LoRA adapters (the config has get_lora: False); nothing to merge. "
                          "Use lavis_lite.tools.export to save the whole model instead.")
    merged = llm.merge_and_unload()
    model.llm_model = merged
    return merged


def save_hf_llm(llm, tokenizer, out_dir: str, overwrite: bool = False) -> str:
    """``save_pretrained`` of the LLM (safetensors) and its tokenizer into ``out_dir``."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"Output folder {out_dir!r} is not empty (pass --overwrite to replace its files)")
    os.makedirs(out_dir, exist_ok=True)
    llm.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lavis_lite.tools.merge_lora",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--cfg-path", required=True, help="run or model YAML (with get_lora: True), or export folder")
    parser.add_argument("--checkpoint", default=None, help="LoRA-trained checkpoint (dir or .safetensors)")
    parser.add_argument("--out", required=True, help="folder for the merged HF language model")
    parser.add_argument("--full-export", default=None, help="also export the whole merged model here")
    parser.add_argument("--options", nargs="+", default=[], help="model config overrides key=value")
    parser.add_argument("--overwrite", action="store_true", help="write into non-empty folders")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lavis_lite.inference_utils import find_image_processor_config, load_model_from_cfg

    model, _, model_cfg = load_model_from_cfg(args.cfg_path, args.checkpoint, "cpu", args.options)
    try:
        merged = merge_lora_into_llm(model)
        out = save_hf_llm(merged, getattr(model, "tokenizer", None), args.out, args.overwrite)
        report = {"merged_llm": out, "files": sorted(os.listdir(out))}
        if args.full_export:
            from lavis_lite.tools.export import export_model

            full_cfg = OmegaConf.merge(model_cfg, {"get_lora": False})
            report["full_export"] = export_model(model, full_cfg, args.full_export,
                                                 find_image_processor_config(args.cfg_path, model_cfg),
                                                 overwrite=args.overwrite)
    except (NoLoraError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
