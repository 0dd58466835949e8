"""Blip2Base: what every BLIP-2-style model shares — the vision encoder, the Q-Former, autocast,
loading a BLIP-2 / stage-1 checkpoint by name, and optimizer parameter groups."""
from __future__ import annotations

import contextlib
import logging
import re

import torch
from torch import nn

from lavis_lite.models.base_model import BaseModel, CheckpointMismatchError, load_state_dict_file
from lavis_lite.models.eva_vit import create_eva_vit_g
from lavis_lite.models.qformer import QformerLMHeadModel

logger = logging.getLogger(__name__)

VIT_NAMES = ("eva_clip_g", "eva_vit_g")
# Keys a BLIP-2 stage-1 checkpoint holds that an image-only (MiniGPT4-Qwen) model has no place for.
TEXT_SIDE_PATTERNS = (
    r"Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.",
    r"Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.",
    r"Qformer\.cls\.",
    r"(vision_proj|text_proj|itm_head)\.",
    r"temp$",
)
# Parts of an EVA-ViT checkpoint BLIP-2 never uses (the 40th block, classifier norm / head).
VIT_EXTRA_PATTERNS = (r"visual_encoder\.(norm|fc_norm|head)\.",)


def summarise_keys(keys) -> str:
    """Collapse layer numbers so a long key list reads as a few patterns."""
    patterns = sorted({re.sub(r"\.\d+\.", ".*.", k) for k in keys})
    return ", ".join(patterns)


class Blip2Base(BaseModel):
    @classmethod
    def init_vision_encoder(cls, model_name: str = "eva_clip_g", img_size: int = 224,
                            drop_path_rate: float = 0.0, use_grad_checkpoint: bool = False,
                            precision: str = "fp16", checkpoint_path: str | None = None, **sizes):
        """(visual_encoder, ln_vision). ``sizes`` override EVA-ViT-G's sizes (tiny model)."""
        if model_name not in VIT_NAMES:
            raise ValueError(f"vit_model must be one of {VIT_NAMES}, got {model_name!r}")
        visual_encoder = create_eva_vit_g(img_size, drop_path_rate, use_grad_checkpoint, precision,
                                          checkpoint_path=checkpoint_path, **sizes)
        ln_vision = nn.LayerNorm(visual_encoder.num_features)  # kept in fp32, as in LAVIS
        return visual_encoder, ln_vision

    @classmethod
    def init_Qformer(cls, num_query_token: int, vision_width: int, cross_attention_freq: int = 2,
                     config=None, text_input: bool = False):
        """(Qformer, query_tokens). ``config``: the Q-Former sizes (bert-base by default, from YAML)."""
        cfg = dict(config or {})
        cfg.update(encoder_width=vision_width, cross_attention_freq=cross_attention_freq,
                   query_length=num_query_token, text_input=text_input)
        Qformer = QformerLMHeadModel(cfg)
        query_tokens = nn.Parameter(torch.zeros(1, num_query_token, Qformer.config.hidden_size))
        if not query_tokens.is_meta:
            query_tokens.data.normal_(mean=0.0, std=Qformer.config.initializer_range)
        return Qformer, query_tokens

    def maybe_autocast(self, dtype: torch.dtype = torch.float16, enabled: bool | None = None):
        """Autocast on GPU (no-op on CPU unless ``enabled=True``, then bf16 CPU autocast)."""
        device = self.device
        if enabled is None:
            enabled = device.type != "cpu"
        if not enabled:
            return contextlib.nullcontext()
        if device.type == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return torch.autocast(device.type, dtype=dtype)

    # ---- checkpoints ------------------------------------------------------
    def droppable_pretrained_key(self, key: str) -> bool:
        """Keys of a BLIP-2 checkpoint this model may drop (logged by name, never silently)."""
        if any(re.match(p, key) for p in VIT_EXTRA_PATTERNS):
            return True
        m = re.match(r"visual_encoder\.blocks\.(\d+)\.", key)
        if m and hasattr(self, "visual_encoder") and int(m.group(1)) >= len(self.visual_encoder.blocks):
            return True
        return any(re.match(p, key) for p in TEXT_SIDE_PATTERNS)

    def load_from_pretrained(self, url_or_filename: str) -> dict:
        """Load a BLIP-2 / stage-1 checkpoint (local file, runner checkpoint folder, Hugging Face BLIP-2 /
        InstructBLIP folder, file:// URL or cached URL) by name.

        Accepts a top-level ``"model"`` key or a bare state dict. ``query_tokens`` of another count are
        dropped (logged). Keys this model has no place for are dropped and reported by name when they are
        the text side (word/position embeddings, text FFN, LM head, vision_proj, text_proj, itm_head,
        temp) or ViT parts BLIP-2 never uses; anything else that does not fit raises.
        Returns {"loaded", "dropped", "missing"}.
        """
        import os

        from lavis_lite.common.dist_utils import download_cached_file

        folder = os.path.expanduser(str(url_or_filename))
        from lavis_lite.models import hf_blip2_convert

        if hf_blip2_convert.is_hf_folder(folder):  # transformers BLIP-2 / InstructBLIP: vision + Q-Former
            return hf_blip2_convert.load_hf_into(self, folder, parts=("vision", "qformer"))
        if os.path.isdir(folder):  # a training checkpoint directory of our runner
            url_or_filename = os.path.join(folder, "model.safetensors")
            if not os.path.isfile(url_or_filename):
                raise FileNotFoundError(f"checkpoint folder {folder!r} holds no model.safetensors")
        path = download_cached_file(url_or_filename, check_hash=False)
        state = load_state_dict_file(path)
        own = self.state_dict()
        dropped = []
        if "query_tokens" in state and "query_tokens" in own and state["query_tokens"].shape != own["query_tokens"].shape:
            logger.info("%s: query_tokens %s does not match the model's %s; keeping the model's own",
                        path, tuple(state["query_tokens"].shape), tuple(own["query_tokens"].shape))
            dropped.append("query_tokens")
            state = {k: v for k, v in state.items() if k != "query_tokens"}
        # Released checkpoints store the LM-head bias twice (tied alias); the head loads either.
        alias = {k for k in state if k.endswith("cls.predictions.decoder.bias")}
        unfit = [k for k in state if k not in alias and (k not in own or state[k].shape != own[k].shape)]
        bad = [k for k in unfit if not self.droppable_pretrained_key(k)]
        if bad:
            details = [f"{k} {tuple(state[k].shape)}" + (f" vs model {tuple(own[k].shape)}" if k in own else " (no such key)")
                       for k in bad[:20]]
            raise CheckpointMismatchError(f"{path}: {len(bad)} key(s) do not fit {type(self).__name__}: {details}")
        dropped += unfit
        dropped += [k for k in alias if k not in own]
        loadable = {k: v for k, v in state.items() if k in own and k not in unfit}
        result = self.load_state_dict(loadable, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys  # filtered above
        if dropped:
            logger.info("%s: dropped %d key(s) this model has no place for: %s", path, len(dropped),
                        summarise_keys(dropped))
        logger.info("%s: loaded %d tensors; %d model tensors not in the checkpoint (%s)", path, len(loadable),
                    len(result.missing_keys), summarise_keys(result.missing_keys)[:300])
        return {"loaded": sorted(loadable), "dropped": sorted(dropped), "missing": list(result.missing_keys)}

    # ---- optimizer ----------------------------------------------------------
    def get_optimizer_params(self, weight_decay: float, lr_scale: float = 1.0) -> list[dict]:
        """Parameter groups: no weight decay for biases / norms / 1-d tensors; layer-wise lr decay
        (``lr_scale ** (depth + 1 - layer_id)``) for an unfrozen ViT. Each group carries "lr_scale"."""
        vit = getattr(self, "visual_encoder", None)
        depth = len(vit.blocks) if vit is not None else 0
        groups: dict[str, dict] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            no_decay = param.ndim <= 1 or name.endswith(".bias")  # biases, norms, other 1-d tensors
            kind = "no_decay" if no_decay else "decay"
            scale = 1.0
            if vit is not None and name.startswith("visual_encoder."):
                layer_id = vit.get_num_layer(name[len("visual_encoder."):])
                scale = lr_scale ** (depth + 1 - layer_id)
                kind = f"vit_layer_{layer_id}_{kind}"
            group = groups.setdefault(kind, {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                                             "lr_scale": scale, "name": kind})
            group["params"].append(param)
        return list(groups.values())
