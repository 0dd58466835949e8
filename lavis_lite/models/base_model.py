"""BaseModel: the contract every registered model follows.

Subclasses provide ``PRETRAINED_MODEL_CONFIG_DICT`` ({model_type: default YAML path,
relative to library_root or to the subclass's own module}), ``from_config(cfg)`` and
``forward(samples) -> {"loss": scalar, "n_tokens": int, ...}``.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn
from omegaconf import OmegaConf

from lavis_lite.common.config import resolve_config_path

logger = logging.getLogger(__name__)


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model (unexpected keys or wrong shapes)."""


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Read a safetensors or torch checkpoint safely (weights_only); unwrap a top-level "model".
    A file that is neither raises naming it."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
    # safetensors: an 8-byte little-endian header length, then a JSON header starting with "{"
    looks_safetensors = path.endswith(".safetensors") or (
        len(head) == 8 and 0 < int.from_bytes(head, "little") < 100_000_000 and _peek(path, 8) == b"{")
    try:
        if looks_safetensors:
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        kind = "safetensors" if looks_safetensors else "torch (.pth, weights_only)"
        raise CheckpointMismatchError(f"Could not read checkpoint {path!r} as a {kind} file: "
                                      f"{type(err).__name__}: {err}") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if isinstance(state, dict) and "module" in state and isinstance(state["module"], dict):
        state = state["module"]  # DeepSpeed model-states files
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"Checkpoint {path!r} holds no state dict")
    return state


def _peek(path: str, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(1)


class BaseModel(nn.Module):
    PRETRAINED_MODEL_CONFIG_DICT: dict[str, str] = {}
    DEFAULT_MODEL_TYPE: str | None = None

    # ---- construction -----------------------------------------------------
    @classmethod
    def default_config_path(cls, model_type: str | None = None) -> str:
        model_type = model_type or cls.DEFAULT_MODEL_TYPE
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            raise KeyError(
                f"Unknown model_type {model_type!r} for {cls.__name__}; "
                f"available types: {sorted(cls.PRETRAINED_MODEL_CONFIG_DICT)}"
            )
        return resolve_config_path(cls, cls.PRETRAINED_MODEL_CONFIG_DICT[model_type])

    @classmethod
    def from_config(cls, cfg):  # pragma: no cover - abstract
        raise NotImplementedError(f"{cls.__name__} must implement from_config(cfg)")

    # Config keys that describe the model rather than its constructor arguments.
    CONFIG_META_KEYS = frozenset({"arch", "model_type", "preprocess", "checkpoint", "partial_load",
                                  "load_finetuned", "finetuned", "load_pretrained", "pretrained"})

    @classmethod
    def constructor_kwargs(cls, cfg) -> dict:
        """The model config as ``__init__`` keyword arguments; an unknown key raises naming it
        (a misspelt YAML key must not be ignored)."""
        import inspect
        cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg or {})
        allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(cfg) - allowed - cls.CONFIG_META_KEYS)
        if unknown:
            raise KeyError(f"Unknown model config key(s) {unknown} for {cls.__name__}; known keys: {sorted(allowed)}")
        return {k: v for k, v in cfg.items() if k in allowed}

    @classmethod
    def from_pretrained(cls, model_type: str | None = None, **overrides):
        """Build from the default YAML of ``model_type``; ``overrides`` win over it."""
        cfg = OmegaConf.load(cls.default_config_path(model_type)).model
        cfg = OmegaConf.merge(cfg, {"model_type": model_type or cls.DEFAULT_MODEL_TYPE}, overrides)
        return cls.from_config(cfg)

    # ---- checkpoints --------------------------------------------------------
    partial_load: bool = False  # a model may opt in for every load (cfg ``partial_load: true``)

    def load_checkpoint(self, path_or_state, partial: bool | None = None, allow_missing: bool = True,
                        strict_unexpected: bool = True):
        """Load weights by name and report what did not match.

        Frozen keys missing from the checkpoint are normal (checkpoints hold trainable weights only)
        and are logged as a count. A missing *trainable* parameter is an error listing them, unless a
        partial load is asked for (``partial=True`` or the model config's ``partial_load: true``): a
        file with only ``llm_proj`` must not silently leave a trained Q-Former at its initial values.
        Unexpected keys or shape mismatches raise unless ``strict_unexpected=False`` (then logged).
        ``allow_missing=False`` makes any missing key (frozen too) an error.
        """
        name = str(path_or_state) if isinstance(path_or_state, (str, os.PathLike)) else "<state dict>"
        state = load_state_dict_file(path_or_state) if isinstance(path_or_state, (str, os.PathLike)) \
            else path_or_state
        partial = self.partial_load if partial is None else bool(partial)
        own = self.state_dict()
        unexpected = [k for k in state if k not in own]
        bad_shape = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                     for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
        if (unexpected or bad_shape) and strict_unexpected:
            raise CheckpointMismatchError(
                f"Checkpoint {name} does not fit "
                f"{type(self).__name__}: unexpected keys {unexpected[:20]}{'...' if len(unexpected) > 20 else ''}; "
                f"shape mismatches {bad_shape[:20]}"
            )
        loadable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        missing_trainable = sorted(n for n, p in self.named_parameters() if p.requires_grad and n not in loadable)
        if missing_trainable and not partial:
            more = f" ... ({len(missing_trainable)} in all)" if len(missing_trainable) > 30 else ""
            raise CheckpointMismatchError(
                f"Checkpoint {name} lacks {len(missing_trainable)} trainable parameter(s) of "
                f"{type(self).__name__}: {missing_trainable[:30]}{more}. Load it on purpose with "
                f"load_checkpoint(..., partial=True) or the model config's 'partial_load: true'")
        result = self.load_state_dict(loadable, strict=False)
        missing = list(result.missing_keys)
        if missing and not allow_missing:
            raise CheckpointMismatchError(f"Checkpoint {name} is missing keys: {missing[:20]}")
        if missing_trainable:
            logger.warning("partial load of %s: %d trainable parameters keep their current values: %s",
                           name, len(missing_trainable), missing_trainable[:20])
        logger.info("loaded %d tensors; %d model keys not in checkpoint; unexpected: %s; shape mismatch: %s",
                    len(loadable), len(missing), unexpected, bad_shape)
        return {"missing_keys": missing, "unexpected_keys": unexpected, "shape_mismatch": bad_shape,
                "missing_trainable": missing_trainable}

    def load_checkpoint_from_config(self, cfg, **kwargs):
        """LAVIS's hook for ``from_config``: ``finetuned`` (when ``load_finetuned``, default True) is
        loaded as a full checkpoint; else ``pretrained`` (when ``load_pretrained``) as an initialisation
        (partial: it need not hold every trainable parameter). Nothing happens when neither is set."""
        self.partial_load = bool(cfg.get("partial_load", False))
        finetuned, pretrained = cfg.get("finetuned", None), cfg.get("pretrained", None)
        if cfg.get("load_finetuned", True) and finetuned:
            return self.load_checkpoint(finetuned, **kwargs)
        if cfg.get("load_pretrained", True) and pretrained:
            loader = getattr(self, "load_from_pretrained", None)
            return loader(pretrained) if callable(loader) else self.load_checkpoint(pretrained, partial=True)
        return None

    # ---- conveniences -------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def n_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def show_n_params(self) -> str:
        total, trainable = self.n_params(), self.n_params(trainable_only=True)
        def fmt(n):
            return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
        return f"{fmt(total)} parameters, {fmt(trainable)} trainable"

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def before_evaluation(self, **kwargs) -> None:
        """Hook called by tasks before evaluation (e.g. to set up generation)."""

    def before_training(self, **kwargs) -> None:
        """Hook called by runners before training."""
