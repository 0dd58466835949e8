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
    """Read a safetensors or torch checkpoint safely (weights_only); unwrap a top-level "model"."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointMismatchError(f"Could not read checkpoint {path!r}: {err}") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if isinstance(state, dict) and "module" in state and isinstance(state["module"], dict):
        state = state["module"]  # DeepSpeed model-states files
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"Checkpoint {path!r} holds no state dict")
    return state


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
    CONFIG_META_KEYS = frozenset({"arch", "model_type", "preprocess", "checkpoint"})

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
    def load_checkpoint(self, path_or_state, allow_missing: bool = True, strict_unexpected: bool = True):
        """Load weights by name and report what did not match.

        Missing keys are normal (checkpoints hold trainable weights only) and are logged
        as a count; unexpected keys or shape mismatches raise unless
        ``strict_unexpected=False``, in which case they are logged by name.
        """
        state = load_state_dict_file(path_or_state) if isinstance(path_or_state, (str, os.PathLike)) \
            else path_or_state
        own = self.state_dict()
        unexpected = [k for k in state if k not in own]
        bad_shape = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                     for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
        if (unexpected or bad_shape) and strict_unexpected:
            raise CheckpointMismatchError(
                f"Checkpoint {path_or_state if isinstance(path_or_state, str) else '<state dict>'} does not fit "
                f"{type(self).__name__}: unexpected keys {unexpected[:20]}{'...' if len(unexpected) > 20 else ''}; "
                f"shape mismatches {bad_shape[:20]}"
            )
        loadable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        result = self.load_state_dict(loadable, strict=False)
        missing = list(result.missing_keys)
        if missing and not allow_missing:
            raise CheckpointMismatchError(f"Checkpoint is missing keys: {missing[:20]}")
        logger.info("loaded %d tensors; %d model keys not in checkpoint; unexpected: %s; shape mismatch: %s",
                    len(loadable), len(missing), unexpected, bad_shape)
        return {"missing_keys": missing, "unexpected_keys": unexpected, "shape_mismatch": bad_shape}

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
