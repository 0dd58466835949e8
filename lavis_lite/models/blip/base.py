"""What every BLIP model shares: tokenizer, ViT, building from a YAML, loading released BLIP files.

Released BLIP files (``checkpoint["model"]``, from the original BLIP repository) hold the whole model
under LAVIS's names. ``load_checkpoint`` resizes ``pos_embed`` trained at another image size, drops the
keys a model is known not to use (e.g. the feature extractor reading the pretrain file, which also
holds the decoder and momentum encoders) with a logged count and pattern list, and raises on anything
else that does not fit.
"""
from __future__ import annotations

import logging
import os
import re

import torch

from lavis_lite.models.base_model import BaseModel, load_state_dict_file
from lavis_lite.models.blip.convert_hf import hf_to_lavis, is_hf_blip_state_dict
from lavis_lite.models.blip.vit import create_vit, interpolate_pos_embed

logger = logging.getLogger(__name__)


def summarise_keys(keys) -> str:
    """Collapse layer numbers so a long key list reads as a few patterns."""
    return ", ".join(sorted({re.sub(r"\.\d+\.", ".*.", k) for k in keys}))


class BlipBase(BaseModel):
    CONFIG_META_KEYS = BaseModel.CONFIG_META_KEYS | {"load_pretrained", "pretrained"}
    # Regexes of checkpoint keys this model may drop when loading (logged, never silent).
    DROPPABLE_KEYS: tuple[str, ...] = ()
    # What the BLIP pretrain files (model_base_capfilt_large.pth, model_large.pth) hold beyond a task model.
    PRETRAIN_EXTRAS = (r".*_m\.", r"(image|text|idx)_queue$", r"queue_ptr$", r"itm_head\.", r"vision_proj\.",
                       r"text_proj\.", r"temp$")

    @staticmethod
    def build_vit(vit_type, image_size, vit_grad_ckpt=False, vit_ckpt_layer=0, drop_path_rate=None, vit_sizes=None):
        from omegaconf import OmegaConf
        sizes = OmegaConf.to_container(vit_sizes) if OmegaConf.is_config(vit_sizes) else vit_sizes
        return create_vit(vit_type, image_size, vit_grad_ckpt, vit_ckpt_layer, drop_path_rate, sizes)

    @classmethod
    def constructor_kwargs(cls, cfg) -> dict:
        """As BaseModel's, also accepting the arguments a subclass passes on through ``**kwargs``."""
        import inspect
        from omegaconf import OmegaConf
        cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg or {})
        allowed = set()
        for klass in cls.__mro__:
            if "__init__" in vars(klass) and issubclass(klass, BlipBase):
                params = inspect.signature(klass.__init__).parameters.values()
                allowed |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}
        allowed -= {"with_itm_head"}  # fixed by the model class
        unknown = sorted(set(cfg) - allowed - cls.CONFIG_META_KEYS)
        if unknown:
            raise KeyError(f"Unknown model config key(s) {unknown} for {cls.__name__}; known keys: {sorted(allowed)}")
        return {k: v for k, v in cfg.items() if k in allowed}

    @classmethod
    def from_config(cls, cfg):
        model = cls(**cls.constructor_kwargs(cfg))
        if cfg.get("load_pretrained", False):
            if not cfg.get("pretrained"):
                raise ValueError(f"{cls.__name__}: model.load_pretrained is True but model.pretrained is not set")
            model.load_from_pretrained(cfg["pretrained"])
        if cfg.get("checkpoint"):
            model.load_checkpoint(cfg["checkpoint"])
        return model

    def load_from_pretrained(self, url_or_filename: str) -> dict:
        """A released BLIP file: a local path, ``file://`` or an http(s) URL already in (or fetched into)
        the cache. A missing file raises FileNotFoundError naming it."""
        from lavis_lite.common.dist_utils import download_cached_file

        return self.load_checkpoint(download_cached_file(str(url_or_filename), check_hash=False))

    def load_checkpoint(self, path_or_state, **kwargs):
        state = load_state_dict_file(path_or_state) if isinstance(path_or_state, (str, os.PathLike)) \
            else dict(path_or_state)
        own = self.state_dict()
        if is_hf_blip_state_dict(state):  # transformers' BLIP layout (e.g. Salesforce/blip-* safetensors)
            logit_scale = state.get("logit_scale")
            state, skipped = hf_to_lavis(state)
            logger.info("converted a transformers BLIP state dict to LAVIS names; not loaded: %s", skipped)
            if "temp" in own and "temp" not in state:
                # BlipModel's logit_scale is log(1 / temp); the other transformers BLIP classes have no temperature.
                state["temp"] = torch.exp(-logit_scale.float()).reshape(own["temp"].shape) \
                    if logit_scale is not None else own["temp"].clone()
                logger.info("temp set to %.4f (%s)", float(state["temp"]),
                            "from logit_scale" if logit_scale is not None else "transformers' BLIP has none: kept")
        for key in [k for k in state if k.endswith("pos_embed") and k in own]:
            if state[key].shape != own[key].shape:
                logger.info("%s: resizing %s to %s", key, tuple(state[key].shape), tuple(own[key].shape))
                state[key] = interpolate_pos_embed(state[key], own[key].shape[1] - 1)
        dropped = [k for k in state if k not in own and any(re.match(p, k) for p in self.DROPPABLE_KEYS)]
        if dropped:
            logger.info("%s: dropped %d checkpoint key(s) it does not use: %s", type(self).__name__, len(dropped),
                        summarise_keys(dropped))
            state = {k: v for k, v in state.items() if k not in set(dropped)}
        report = super().load_checkpoint(state, **kwargs)
        report["dropped_keys"] = dropped
        return report

    def tokenize(self, texts, max_length: int | None = None, padding="longest"):
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts, padding=padding, truncation=True, max_length=max_length or self.max_txt_len,
                              return_tensors="pt").to(self.device)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """ViT output, every token: [B, 1 + patches, width]."""
        return self.visual_encoder(image.to(self.device))

    @staticmethod
    def require(samples: dict, *keys: str, who: str) -> None:
        for key in keys:
            if samples.get(key) is None:
                raise KeyError(f"{who} needs samples[{key!r}]; got keys {sorted(samples)}")
