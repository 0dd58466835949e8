"""User entry points: ``load_model``, ``load_model_and_preprocess``, ``load_preprocess``, ``model_zoo``.

    from lavis_lite.models import load_model_and_preprocess
    model, vis_processors, txt_processors = load_model_and_preprocess("minigpt4qwen", "tiny", is_eval=True)
    image = vis_processors["eval"](pil_image)[None]
    model.generate({"image": image, "prompt": ["Describe the image."]})
"""
from __future__ import annotations

import logging
import os

from omegaconf import DictConfig, OmegaConf

from lavis_lite.common.registry import registry

logger = logging.getLogger(__name__)

EXPORT_CONFIG_NAME = "config.yaml"
EXPORT_WEIGHTS_NAME = "model.safetensors"


def _model_section(cfg: DictConfig) -> DictConfig:
    return cfg.model if "model" in cfg else cfg


def _build(name: str, model_type: str | None, extra: DictConfig | None = None):
    model_cls = registry.get_model_class(name)
    default = OmegaConf.load(model_cls.default_config_path(model_type))
    cfg = OmegaConf.merge(_model_section(default), {"model_type": model_type or model_cls.DEFAULT_MODEL_TYPE},
                          extra or {})
    return model_cls.from_config(cfg), cfg


def load_model(name: str, model_type: str | None = None, is_eval: bool = False, device="cpu", checkpoint=None,
               partial: bool = False):
    """Build a registered model from its default YAML for ``model_type``.

    ``checkpoint``: a ``.safetensors`` / ``.pth`` file of (trainable) weights, a folder holding
    ``config.yaml`` + ``model.safetensors`` written by an export tool (its config then describes the
    model), a training checkpoint / job folder of our runners, or a Hugging Face BLIP-2 / InstructBLIP
    folder (models/hf_blip2_convert.py). A checkpoint lacking some of the model's trainable parameters
    raises listing them unless ``partial=True``.
    """
    extra = None
    weights = None
    if checkpoint is not None:
        path = os.path.abspath(os.path.expanduser(str(checkpoint)))
        from lavis_lite.models import hf_blip2_convert

        if hf_blip2_convert.is_hf_folder(path):  # a transformers BLIP-2 / InstructBLIP save_pretrained folder
            return hf_blip2_convert.load_hf_model(path, name, model_type, is_eval=is_eval, device=device)
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, EXPORT_CONFIG_NAME)):
            weights = path  # a runner checkpoint (plain or DeepSpeed) or a job folder
        elif os.path.isdir(path):
            cfg_file, weights = os.path.join(path, EXPORT_CONFIG_NAME), os.path.join(path, EXPORT_WEIGHTS_NAME)
            for needed in (cfg_file, weights):
                if not os.path.isfile(needed):
                    raise FileNotFoundError(f"checkpoint folder {path!r} lacks {os.path.basename(needed)}")
            extra = _model_section(OmegaConf.load(cfg_file))
            extra = OmegaConf.masked_copy(extra, [k for k in extra if k not in ("arch",)])
            model_type = extra.get("model_type", model_type)
        elif os.path.isfile(path):
            weights = path
        else:
            raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist (looked at {path})")
    model, _ = _build(name, model_type, extra)
    if weights and os.path.isdir(weights):
        from lavis_lite.tools.export_checkpoint import load_checkpoint_state
        report = model.load_checkpoint(load_checkpoint_state(weights), partial=partial)
        logger.info("loaded %s (%d model tensors not in it)", weights, len(report["missing_keys"]))
    elif weights:
        report = model.load_checkpoint(weights, partial=partial)
        logger.info("loaded %s (%d model tensors not in it)", weights, len(report["missing_keys"]))
    if is_eval:
        model.eval()
    return model.to(device)


def _build_processor(cfg):
    from lavis_lite.processors.base_processor import BaseProcessor

    if cfg is None:
        return BaseProcessor()
    return registry.get_processor_class(cfg.name).from_config(cfg)


def load_preprocess(config) -> tuple[dict, dict]:
    """(vis_processors, txt_processors), each {"train", "eval"}, from a ``preprocess`` section
    (``vis_processor`` / ``text_processor`` with ``train`` / ``eval`` entries; absent ones pass through)."""
    config = OmegaConf.create(config) if isinstance(config, dict) else config
    if config is None:
        config = OmegaConf.create({})
    vis_cfg, txt_cfg = config.get("vis_processor"), config.get("text_processor")
    vis = {split: _build_processor(vis_cfg.get(split) if vis_cfg else None) for split in ("train", "eval")}
    txt = {split: _build_processor(txt_cfg.get(split) if txt_cfg else None) for split in ("train", "eval")}
    return vis, txt


def load_model_and_preprocess(name: str, model_type: str | None = None, is_eval: bool = False, device="cpu",
                              checkpoint=None, partial: bool = False):
    """(model, vis_processors, txt_processors) from the model YAML (its ``preprocess:`` section sits at
    the top level or under ``model:``). ``checkpoint`` / ``partial`` as in ``load_model``: a trained
    checkpoint, a job folder or an exported folder (whose config then picks the model type and,
    when it has one, the preprocess section)."""
    model_cls = registry.get_model_class(name)
    exported = None
    if checkpoint is not None:
        folder = os.path.abspath(os.path.expanduser(str(checkpoint)))
        if os.path.isfile(os.path.join(folder, EXPORT_CONFIG_NAME)):
            exported = OmegaConf.load(os.path.join(folder, EXPORT_CONFIG_NAME))
            model_type = _model_section(exported).get("model_type", model_type)
    cfg = OmegaConf.load(model_cls.default_config_path(model_type))
    preprocess = None
    if exported is not None:
        preprocess = exported.get("preprocess") or _model_section(exported).get("preprocess")
    preprocess = preprocess or cfg.get("preprocess") or _model_section(cfg).get("preprocess")
    if preprocess is None:
        logger.warning("model %s/%s has no preprocess section; processors pass inputs through", name, model_type)
    model = load_model(name, model_type, is_eval=is_eval, device=device, checkpoint=checkpoint, partial=partial)
    vis, txt = load_preprocess(preprocess)
    return model, vis, txt


class ModelZoo:
    """``print(model_zoo)``: every registered architecture and its model types."""

    def rows(self) -> list[tuple[str, str]]:
        return [(name, ", ".join(sorted(getattr(registry.get_model_class(name), "PRETRAINED_MODEL_CONFIG_DICT", {}))))
                for name in registry.list_models()]

    def __str__(self) -> str:
        rows = [("Architectures", "Types")] + self.rows()
        width = max(len(a) for a, _ in rows)
        line = "=" * (width + 2 + max(len(t) for _, t in rows))
        out = [line, f"{rows[0][0]:<{width}}  {rows[0][1]}", line]
        out += [f"{a:<{width}}  {t}" for a, t in rows[1:]]
        return "\n".join(out)

    def __iter__(self):
        return iter(self.rows())

    def __len__(self) -> int:
        return len(registry.list_models())


model_zoo = ModelZoo()
