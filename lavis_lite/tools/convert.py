"""Convert BLIP-2 / InstructBLIP weights between Hugging Face format and ours (LAVIS names).

    python -m lavis_lite.tools.convert --from hf --to lavis SRC_HF_FOLDER DST [--model-type TYPE]
    python -m lavis_lite.tools.convert --from lavis --to hf SRC DST [--arch A --model-type T] [--vision-only]

``--from hf``: SRC is a folder saved by transformers' ``Blip2ForConditionalGeneration`` / ``Blip2Model`` /
``InstructBlipForConditionalGeneration``. DST gets ``config.yaml`` (our model config: sizes, epsilons and the
LLM's config from the source), ``model.safetensors`` (every weight, LAVIS names, the LLM included) and the
tokenizers; it reopens with ``load_model(arch, checkpoint=DST)``. ``--lavis-pth`` adds ``lavis_checkpoint.pth``
(``{"model": ...}`` without the LLM, LAVIS's released layout: LAVIS's ``load_checkpoint`` reads it).

``--from lavis``: SRC is such a folder (or an export of ours), or a weights file (.pth / .safetensors,
e.g. a released LAVIS checkpoint or a runner checkpoint's model.safetensors) with ``--arch`` and
``--model-type``. DST becomes a folder ``transformers`` ``from_pretrained`` loads. ``--vision-only`` writes
the vision side + Q-Former of any of our models (e.g. a stage-1 ``blip2`` checkpoint) Blip2Model-style.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil

from omegaconf import OmegaConf

logger = logging.getLogger(__name__)


LAVIS_PTH = "lavis_checkpoint.pth"


def hf_to_lavis_folder(src: str, dst: str, model_type: str | None = None, lavis_pth: bool = False) -> str:
    """Returns the architecture written."""
    from lavis_lite.common.registry import registry
    from lavis_lite.inference_utils import EXPORT_CONFIG_NAME, EXPORT_WEIGHTS_NAME
    from lavis_lite.models import hf_blip2_convert as hf
    from lavis_lite.tools.export import _unique_storage_state
    from safetensors.torch import save_file

    src, dst = os.path.abspath(os.path.expanduser(src)), os.path.abspath(os.path.expanduser(dst))
    arch, cfg = hf.hf_model_config(src, None, model_type)
    model = registry.get_model_class(arch).from_config(cfg)
    hf.load_hf_into(model, src)
    os.makedirs(dst, exist_ok=True)
    if cfg.get("tokenizer") == src:  # the folder must not depend on SRC
        tokenizer = getattr(model, {"blip2_opt": "opt_tokenizer"}.get(arch, "t5_tokenizer" if "t5" in arch else "llm_tokenizer"))
        tokenizer.save_pretrained(os.path.join(dst, "tokenizer"))
        cfg.tokenizer = os.path.join(dst, "tokenizer")
    if str(cfg.get("tokenizer_vocab", "")).startswith(src):
        os.makedirs(os.path.join(dst, "qformer_tokenizer"), exist_ok=True)
        shutil.copy(os.path.join(cfg.tokenizer_vocab, "vocab.txt"), os.path.join(dst, "qformer_tokenizer", "vocab.txt"))
        cfg.tokenizer_vocab = os.path.join(dst, "qformer_tokenizer")
    save_file(_unique_storage_state(model), os.path.join(dst, EXPORT_WEIGHTS_NAME))
    if lavis_pth:  # LAVIS's own layout: checkpoint["model"] without the frozen LLM (it loads with strict=False)
        import torch

        llm = hf.LLM_PARTS[arch][1] + "."
        torch.save({"model": {k: v for k, v in _unique_storage_state(model).items() if not k.startswith(llm)}},
                   os.path.join(dst, LAVIS_PTH))
    cfg.arch = arch
    OmegaConf.save(OmegaConf.create({"model": cfg}), os.path.join(dst, EXPORT_CONFIG_NAME))
    logger.info("wrote %s (%s) to %s", arch, cfg.model_type, dst)
    return arch


def load_ours(src: str, arch: str | None = None, model_type: str | None = None):
    """Our model from a folder with config.yaml, or from a weights file with ``arch`` / ``model_type``."""
    from lavis_lite.inference_utils import EXPORT_CONFIG_NAME
    from lavis_lite.models import load_model

    src = os.path.abspath(os.path.expanduser(src))
    if os.path.isdir(src) and os.path.isfile(os.path.join(src, EXPORT_CONFIG_NAME)):
        section = OmegaConf.load(os.path.join(src, EXPORT_CONFIG_NAME))
        section = section.model if "model" in section else section
        return load_model(arch or section.arch, section.get("model_type", model_type), is_eval=True, checkpoint=src)
    if not arch:
        raise ValueError(f"{src} is not a folder with {EXPORT_CONFIG_NAME}: give --arch and --model-type")
    return load_model(arch, model_type, is_eval=True, checkpoint=src)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="src_format", choices=["hf", "lavis"], required=True)
    parser.add_argument("--to", dest="dst_format", choices=["hf", "lavis"], required=True)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--arch", default=None, help="our architecture (with --from lavis and a weights file)")
    parser.add_argument("--model-type", default=None, help="our model type whose YAML gives the defaults")
    parser.add_argument("--vision-only", action="store_true", help="--to hf: vision side + Q-Former only")
    parser.add_argument("--lavis-pth", action="store_true",
                        help=f"--to lavis: also write {LAVIS_PTH} ({{'model': state}} without the LLM) for LAVIS itself")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.src_format == args.dst_format:
        parser.error("--from and --to must differ")
    import lavis_lite.models  # noqa: F401  (registers the models)

    if args.src_format == "hf":
        arch = hf_to_lavis_folder(args.src, args.dst, args.model_type, args.lavis_pth)
        print(f"wrote {arch} to {args.dst} (load_model({arch!r}, checkpoint={args.dst!r}))")
    else:
        from lavis_lite.models.hf_blip2_export import export_hf

        model = load_ours(args.src, args.arch, args.model_type)
        name = export_hf(model, args.dst, vision_only=args.vision_only)
        print(f"wrote {name} to {args.dst} (transformers {name}.from_pretrained({args.dst!r}))")


if __name__ == "__main__":
    main()
