"""Helpers shared by the inference tools (chat CLI, web demo, batch prediction, merge, export).

- :func:`open_image` opens an image file and raises :class:`ImageLoadError` naming the file.
- :class:`GenerationSettings` holds the generation knobs with typed, range-checked updates
  (``:conf key=value`` in the CLI, sliders in the web demo, flags of ``predict``).
- :func:`load_model_from_cfg` builds a model (plus its eval image processor) from a model
  YAML, a run YAML or an exported folder, then loads a checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Any, Iterable

import torch
from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
EXPORT_CONFIG_NAME = "config.yaml"
EXPORT_WEIGHTS_NAME = "model.safetensors"


class ImageLoadError(ValueError):
    """An image path that does not exist or a file that is not a readable image."""


def open_image(path: str | os.PathLike, image_processor=None):
    """Open ``path`` as an RGB PIL image, fully decoded (so truncated files fail here, not later);
    ``image_processor`` may pick a JPEG draft scale first (its ``decode: draft``)."""
    from PIL import Image, UnidentifiedImageError

    from lavis_lite.processors.image_processors import prepare_decode

    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise ImageLoadError(f"Image {path!r} does not exist")
    if os.path.isdir(path):
        raise ImageLoadError(f"Image path {path!r} is a directory, not an image file")
    try:
        with Image.open(path) as img:
            prepare_decode(image_processor, img)
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise ImageLoadError(f"Image {path!r} is not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated / damaged data
        raise ImageLoadError(f"Image {path!r} could not be decoded: {err}") from None


def load_image_tensor(path: str | os.PathLike, image_processor) -> torch.Tensor:
    """Open ``path`` and run it through the eval image processor -> Tensor[3, S, S]."""
    return image_processor(open_image(path, image_processor))


# ---------------------------------------------------------------------------------------
# Generation settings
# ---------------------------------------------------------------------------------------
def _parse_int(text) -> int:
    value = float(str(text).strip())  # sliders send 3.0 for 3
    if value != int(value):
        raise ValueError(f"expected an integer, got {text!r}")
    return int(value)


def _parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


@dataclasses.dataclass
class GenerationSettings:
    """The keyword arguments of ``model.generate`` / ``model.chat`` that users may change."""

    max_new_tokens: int = 64
    num_beams: int = 1
    min_length: int = 1
    top_p: float = 0.9
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    do_sample: bool = False

    # key -> (parser, lower bound, upper bound); None means unbounded.
    _RULES = {
        "max_new_tokens": (_parse_int, 1, None),
        "num_beams": (_parse_int, 1, None),
        "min_length": (_parse_int, 0, None),
        "top_p": (float, 0.0, 1.0),
        "temperature": (float, 0.0, None),
        "repetition_penalty": (float, 0.0, None),
        "do_sample": (_parse_bool, None, None),
    }

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` from a string or a value; raise ``ValueError`` naming the key on bad input."""
        if key not in self._RULES:
            raise ValueError(f"Unknown generation setting {key!r}; known: {', '.join(sorted(self._RULES))}")
        parse, low, high = self._RULES[key]
        try:
            parsed = parse(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"Bad value for {key}: {err}") from None
        if low is not None and parsed < low or high is not None and parsed > high:
            rng = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise ValueError(f"{key}={parsed} is out of range {rng}")
        if key == "temperature" and parsed == 0.0:
            raise ValueError("temperature must be > 0 (use do_sample=false for greedy decoding)")
        setattr(self, key, parsed)

    def update_from_strings(self, items: Iterable[str]) -> None:
        """Apply ``key=value`` items all or none (a bad item leaves the settings unchanged)."""
        trial = dataclasses.replace(self)
        for item in items:
            if "=" not in item:
                raise ValueError(f"Expected key=value, got {item!r}")
            key, value = item.split("=", 1)
            trial.set(key.strip(), value.strip())
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(trial, f.name))

    def as_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# ---------------------------------------------------------------------------------------
# Model loading
# ---------------------------------------------------------------------------------------
def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} was asked for but CUDA is not available on this machine")
    return dev


def resolve_cfg_path(cfg_path: str | os.PathLike) -> str:
    """A YAML file, or the config.yaml of a folder: an export folder (``lavis_lite.tools.export``)
    or a training job folder (``output_dir/<job_id>``, where the runner saves its config)."""
    cfg_path = os.path.expanduser(os.fspath(cfg_path))
    if os.path.isdir(cfg_path):
        cand = os.path.join(cfg_path, EXPORT_CONFIG_NAME)
        if not os.path.isfile(cand):
            raise FileNotFoundError(f"Folder {cfg_path!r} holds no {EXPORT_CONFIG_NAME} "
                                    "(expected an export folder or a training job folder)")
        return cand
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"Config {cfg_path!r} does not exist")
    return cfg_path


def build_model_config(cfg_path: str | os.PathLike, options: Iterable[str] = ()) -> DictConfig:
    """The merged ``model`` section of a model YAML, run YAML or export folder.

    Layers as in training (later wins): the model class's default YAML for ``model_type``
    < the file's ``model:`` section < ``options`` (``model.key=value`` or ``key=value``).
    """
    from lavis_lite.common.config import Config, ConfigError, parse_options

    path = resolve_cfg_path(cfg_path)
    raw = OmegaConf.load(path)
    if "model" not in raw or raw.model is None:
        raise ConfigError(f"Missing required section 'model' in {path}")
    if raw.get("imports"):
        from lavis_lite.common.plugins import import_plugins
        import_plugins(list(raw.imports), base_dir=os.path.dirname(os.path.abspath(path)))
    opts = parse_options([o if o.startswith("model.") else f"model.{o}" for o in options])
    merged = Config.build_model_config(raw, opts.get("model", None), path)
    return OmegaConf.merge(merged, {"model": opts.get("model", {})}).model


def find_image_processor_config(cfg_path, model_cfg: DictConfig) -> DictConfig:
    """Which eval image processor a config asks for, first found wins:

    the model's ``preprocess.vis_processor.eval``; a run YAML's first
    ``datasets.<name>.vis_processor.eval``; else ``blip2_image_eval`` at the model's ``image_size``.
    """
    found = OmegaConf.select(model_cfg, "preprocess.vis_processor.eval")
    if found is None:
        raw = OmegaConf.load(resolve_cfg_path(cfg_path))
        for section in (raw.get("datasets", None) or {}).values():
            found = OmegaConf.select(section, "vis_processor.eval") if section is not None else None
            if found is not None:
                break
    if found is None:
        found = OmegaConf.create({"name": "blip2_image_eval", "image_size": int(model_cfg.get("image_size", 224))})
    if "name" not in found:
        raise ValueError(f"Image processor config {OmegaConf.to_container(found)} in {cfg_path} has no 'name'")
    return found


def build_eval_image_processor(proc_cfg: DictConfig):
    from lavis_lite.common.registry import registry

    return registry.get_processor_class(proc_cfg.name).from_config(proc_cfg)


def seed_like_training(cfg_path) -> int:
    """Seed as train.py does before it builds the model (``run.seed``, default 42, rank 0).

    Weights a checkpoint does not hold (frozen parts of a random-init tiny model) then come out
    as they were in training; real models load those parts from their pretrained files anyway.
    """
    import random

    import numpy as np

    run = OmegaConf.load(resolve_cfg_path(cfg_path)).get("run", None) or {}
    seed = int(run.get("seed", 42))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def load_model_from_cfg(cfg_path, checkpoint: str | None = None, device: str | None = "cpu",
                        options: Iterable[str] = ()):
    """Build the model described by ``cfg_path`` in eval mode on ``device``.

    ``checkpoint`` may be a training checkpoint file (trainable weights), a full
    ``model.safetensors`` or an export folder. With ``cfg_path`` an export folder (or its
    config.yaml) the folder's own weights are loaded first, then ``checkpoint`` over them; with
    ``cfg_path`` a training job folder and no checkpoint, the job's best (else newest) checkpoint.
    Returns ``(model, image_processor, model_cfg)``.
    """
    from lavis_lite.common.registry import registry

    model_cfg = build_model_config(cfg_path, options)
    model_cls = registry.get_model_class(model_cfg.arch)
    seed_like_training(cfg_path)
    model = model_cls.from_config(model_cfg)
    exported = export_weights_of(cfg_path)
    if exported:  # the folder's full weights first, a (trainable-weights) checkpoint over them
        load_weights(model, exported)
    checkpoint = checkpoint or job_checkpoint_of(cfg_path)
    if checkpoint:
        load_weights(model, checkpoint)
    model = model.to(resolve_device(device)).eval()
    return model, build_eval_image_processor(find_image_processor_config(cfg_path, model_cfg)), model_cfg


def export_weights_of(cfg_path) -> str | None:
    """The weights file of an export folder (``cfg_path`` is the folder or its config.yaml), else None."""
    path = resolve_cfg_path(cfg_path)
    marker = OmegaConf.load(path).get("export", None)
    if not marker:
        return None
    weights = os.path.join(os.path.dirname(os.path.abspath(path)), marker.get("weights", EXPORT_WEIGHTS_NAME))
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{path} describes an export but its weights {weights!r} are missing")
    return weights


def job_checkpoint_of(cfg_path) -> str | None:
    """For a training job folder given as ``cfg_path``: its checkpoint_best, else its newest
    complete checkpoint_<step>; None for anything else."""
    from lavis_lite.common.checkpoint import CheckpointError
    from lavis_lite.tools.export_checkpoint import resolve_checkpoint_dir

    path = os.path.expanduser(os.fspath(cfg_path))
    if not os.path.isdir(path) or export_weights_of(path):
        return None
    try:
        return resolve_checkpoint_dir(path)
    except CheckpointError:
        raise FileNotFoundError(f"Job folder {path!r} holds no complete checkpoint (checkpoint_best or "
                                "checkpoint_<step>); pass --checkpoint") from None


def load_weights(model, checkpoint: str | os.PathLike) -> dict:
    """Load weights into ``model`` by name; unexpected keys or shape mismatches raise.

    ``checkpoint``: a weights file (.safetensors / .pth), an export folder, or a runner
    checkpoint / job folder (plain or DeepSpeed, read by lavis_lite.tools.export_checkpoint).
    """
    path = os.path.expanduser(os.fspath(checkpoint))
    if os.path.isfile(path):
        report = model.load_checkpoint(path)
    elif os.path.isdir(path):
        exported = export_weights_of(path) if os.path.isfile(os.path.join(path, EXPORT_CONFIG_NAME)) else None
        if exported:
            report = model.load_checkpoint(exported)
        else:
            from lavis_lite.tools.export_checkpoint import load_checkpoint_state
            report = model.load_checkpoint(load_checkpoint_state(path))
    else:
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist")
    logger.info("loaded %s", path)
    return report


def add_model_arguments(parser, generation: bool = True):
    """The arguments every inference tool shares: which model, which weights, where, overrides."""
    parser.add_argument("--cfg-path", required=True, help="model YAML, run YAML or export folder")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file or export folder")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--options", nargs="+", default=[], help="model config overrides key=value")
    if generation:
        parser.add_argument("--conf", nargs="+", default=[], help="generation settings key=value")
    return parser


def settings_from_args(args) -> "GenerationSettings | None":
    """The tool's ``--conf key=value`` generation settings; None (after printing why) when invalid."""
    settings = GenerationSettings()
    try:
        settings.update_from_strings(args.conf)
    except ValueError as err:
        print(f"error: --conf: {err}", file=sys.stderr)
        return None
    return settings
