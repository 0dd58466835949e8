"""Hugging Face BLIP-2 / InstructBLIP folders <-> LAVIS parameter names.

Folders written by transformers' ``Blip2ForConditionalGeneration`` / ``Blip2Model`` /
``InstructBlipForConditionalGeneration`` ``save_pretrained`` hold ``vision_model.*``, ``query_tokens``,
``qformer.*``, ``language_projection.*`` and ``language_model.*``. The mapping to LAVIS's names:

    vision_model.embeddings.{class_embedding, position_embedding, patch_embedding}
                                   -> visual_encoder.{cls_token, pos_embed, patch_embed.proj}
    vision_model.encoder.layers.N.{layer_norm1, layer_norm2, self_attn.projection, mlp.fc1, mlp.fc2}
                                   -> visual_encoder.blocks.N.{norm1, norm2, attn.proj, mlp.fc1, mlp.fc2}
    ...self_attn.qkv.weight        -> ...attn.qkv.weight
    ...self_attn.qkv.bias [q; 0; v] -> ...attn.q_bias, ...attn.v_bias (EVA has no key bias)
    vision_model.post_layernorm    -> ln_vision   (eps: HF 1e-6, LAVIS 1e-5 — carried in the config)
    qformer.layernorm | qformer.embeddings.layernorm -> Qformer.bert.embeddings.LayerNorm
    qformer.embeddings.{word,position}_embeddings    -> Qformer.bert.embeddings.{word,position}_embeddings
    qformer.encoder.layer.N.(cross)attention.attention.* -> Qformer.bert.encoder.layer.N.(cross)attention.self.*
    qformer.encoder.layer.N.*      -> Qformer.bert.encoder.layer.N.*
    language_projection            -> opt_proj | t5_proj | llm_proj
    language_model.*               -> opt_model.* | t5_model.* | llm_model.* (the same transformers class)

A loaded model computes what its source computed: every LayerNorm epsilon comes from the HF config.
"""
from __future__ import annotations

import json
import logging
import os
import re

import torch

from lavis_lite.models.key_rename import DROP, HF_VIT_RULES, UNMATCHED, rename_keys

logger = logging.getLogger(__name__)

HF_MODEL_TYPES = ("blip-2", "instructblip")
# (HF model type, HF text model type) -> our architecture
ARCH_OF = {("blip-2", "opt"): "blip2_opt", ("blip-2", "t5"): "blip2_t5",
           ("instructblip", "llama"): "blip2_vicuna_instruct", ("instructblip", "t5"): "blip2_t5_instruct"}
# our architecture -> (projection, LLM attribute)
LLM_PARTS = {"blip2_opt": ("opt_proj", "opt_model"), "blip2_t5": ("t5_proj", "t5_model"),
             "blip2_vicuna_instruct": ("llm_proj", "llm_model"), "blip2_t5_instruct": ("t5_proj", "t5_model")}
VISION_QFORMER_PREFIXES = ("visual_encoder.", "ln_vision.", "Qformer.", "query_tokens")
_CONFIG_DROP = ("_name_or_path", "architectures", "transformers_version", "model_type", "dtype", "torch_dtype",
                "id2label", "label2id", "task_specific_params", "output_attentions", "output_hidden_states",
                "return_dict", "_attn_implementation_autoset", "is_decoder", "add_cross_attention")
_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


# ---- reading a folder ------------------------------------------------------------------------------
def is_hf_folder(path) -> bool:
    """A folder with a transformers BLIP-2 / InstructBLIP ``config.json`` (and no config.yaml of ours)."""
    path = os.path.expanduser(str(path))
    cfg = os.path.join(path, "config.json")
    if not os.path.isdir(path) or not os.path.isfile(cfg) or os.path.isfile(os.path.join(path, "config.yaml")):
        return False
    with open(cfg) as f:
        return json.load(f).get("model_type") in HF_MODEL_TYPES


def read_hf_config(folder: str) -> dict:
    with open(os.path.join(os.path.expanduser(folder), "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type") not in HF_MODEL_TYPES:
        raise ValueError(f"{folder}/config.json: model_type {cfg.get('model_type')!r} is not one of {HF_MODEL_TYPES}")
    return cfg


def read_hf_state(folder: str) -> dict[str, torch.Tensor]:
    """Every tensor of the folder: model.safetensors, sharded safetensors, or pytorch_model.bin (weights_only)."""
    folder = os.path.expanduser(folder)
    single, index = os.path.join(folder, "model.safetensors"), os.path.join(folder, "model.safetensors.index.json")
    bin_single, bin_index = os.path.join(folder, "pytorch_model.bin"), os.path.join(folder, "pytorch_model.bin.index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index) or os.path.isfile(bin_index):
        with open(index if os.path.isfile(index) else bin_index) as f:
            files = [os.path.join(folder, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
    elif os.path.isfile(bin_single):
        files = [bin_single]
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors, shard index or pytorch_model.bin")
    state = {}
    for path in files:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state.update(load_file(path))
        else:
            state.update(torch.load(path, map_location="cpu", weights_only=True))
    return state


def arch_of(hf_cfg: dict) -> str | None:
    """Our architecture for this HF config, or None when only the vision side + Q-Former can be used."""
    text_type = (hf_cfg.get("text_config") or {}).get("model_type", "opt")
    return ARCH_OF.get((hf_cfg["model_type"], text_type))


# ---- names -------------------------------------------------------------------------------------------
_VISION_RULES = HF_VIT_RULES + [  # (HF pattern, our replacement), matched at the key's start
    (r"vision_model\.embeddings\.patch_embedding\.(weight|bias)$", r"visual_encoder.patch_embed.proj.\1"),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.weight$", r"visual_encoder.blocks.\1.attn.qkv.weight"),
    (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qv])_bias$", r"visual_encoder.blocks.\1.attn.\2_bias"),
    (r"vision_model\.post_layernorm\.", "ln_vision."),
    (r"query_tokens$", "query_tokens"),
    (r"qformer\.(embeddings\.)?layernorm\.", "Qformer.bert.embeddings.LayerNorm."),
    (r"qformer\.embeddings\.(word_embeddings|position_embeddings|position_ids)", r"Qformer.bert.embeddings.\1"),
    (r"qformer\.encoder\.layer\.(\d+)\.(attention|crossattention)\.attention\.", r"Qformer.bert.encoder.layer.\1.\2.self."),
    (r"qformer\.encoder\.layer\.(\d+)\.", r"Qformer.bert.encoder.layer.\1."),
]


def _moved_prefix(key: str, value, moves: tuple[tuple[str, str | None], ...]):
    """The LLM and its projection move whole: ``(from_prefix, to_prefix)``; to None = no place here."""
    for old, new in moves:
        if old and key.startswith(old + "."):
            return [(new + key[len(old):], value)] if new else UNMATCHED
    return None


def hf_to_lavis(state: dict, arch: str | None) -> tuple[dict, list[str]]:
    """(renamed state, HF keys this architecture has no place for). ``arch`` None: vision + Q-Former only."""
    proj, llm = LLM_PARTS.get(arch, (None, None))

    def special(key, value):
        m = re.match(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.bias$", key)
        if m:
            q, k, v = value.chunk(3)
            if k.abs().max() > 0:  # q.(k + b) shifts every score of a row equally: softmax ignores it
                logger.info("%s: dropping a non-zero key bias (max %.3g); attention is invariant to it", key,
                            float(k.abs().max()))
            return [(f"visual_encoder.blocks.{m.group(1)}.attn.q_bias", q.clone()),
                    (f"visual_encoder.blocks.{m.group(1)}.attn.v_bias", v.clone())]
        # no LLM of this family here (vision + Q-Former use): unmatched
        return _moved_prefix(key, value, (("language_projection", proj), ("language_model", llm)))

    return rename_keys(state, _VISION_RULES, special)


def lavis_to_hf(state: dict, arch: str | None, hf_model_type: str = "blip-2") -> tuple[dict, list[str]]:
    """Our names -> HF names (the inverse of :func:`hf_to_lavis`); returns (state, our keys left out)."""
    proj, llm = LLM_PARTS.get(arch, (None, None))
    qformer_ln = "qformer.layernorm." if hf_model_type == "blip-2" else "qformer.embeddings.layernorm."
    rules = [
        (r"visual_encoder\.cls_token$", "vision_model.embeddings.class_embedding"),
        (r"visual_encoder\.pos_embed$", "vision_model.embeddings.position_embedding"),
        (r"visual_encoder\.patch_embed\.proj\.", "vision_model.embeddings.patch_embedding."),
        (r"visual_encoder\.blocks\.(\d+)\.norm([12])\.", r"vision_model.encoder.layers.\1.layer_norm\2."),
        (r"visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision_model.encoder.layers.\1.self_attn.projection."),
        (r"visual_encoder\.blocks\.(\d+)\.attn\.qkv\.weight$", r"vision_model.encoder.layers.\1.self_attn.qkv.weight"),
        (r"visual_encoder\.blocks\.(\d+)\.mlp\.", r"vision_model.encoder.layers.\1.mlp."),
        (r"ln_vision\.", "vision_model.post_layernorm."),
        (r"query_tokens$", "query_tokens"),
        (r"Qformer\.bert\.embeddings\.LayerNorm\.", qformer_ln),
        (r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.", r"qformer.encoder.layer.\1.\2.attention."),
        (r"Qformer\.bert\.encoder\.layer\.(\d+)\.", r"qformer.encoder.layer.\1."),
    ]
    if hf_model_type == "instructblip":
        rules.append((r"Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.", r"qformer.embeddings.\1."))

    def special(key, value):
        m = re.match(r"visual_encoder\.blocks\.(\d+)\.attn\.q_bias$", key)
        if m:
            v = state[key.replace("q_bias", "v_bias")]
            return [(f"vision_model.encoder.layers.{m.group(1)}.self_attn.qkv.bias",
                     torch.cat([value, torch.zeros_like(v), v]))]
        if key.endswith("attn.v_bias"):
            return DROP  # went into the fused qkv bias above
        return _moved_prefix(key, value, ((proj, "language_projection"), (llm, "language_model")))

    return rename_keys(state, rules, special)


# ---- configs -----------------------------------------------------------------------------------------
def clean_text_config(text_cfg: dict) -> dict:
    return {k: v for k, v in text_cfg.items() if k not in _CONFIG_DROP}


def model_overrides(hf_cfg: dict, folder: str | None = None) -> dict:
    """Our model-config keys describing the HF model (sizes, epsilons, dtypes, LLM, tokenizers)."""
    vis, q = hf_cfg.get("vision_config") or {}, hf_cfg.get("qformer_config") or {}
    for name, sub in (("vision_config", vis), ("qformer_config", q)):
        act = sub.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"{name}.hidden_act {act!r}: only exact GELU (as BLIP-2) is supported")
    if not vis.get("qkv_bias", True):
        raise ValueError("vision_config.qkv_bias false: EVA-ViT always has q/v biases")
    hidden, inter = int(vis.get("hidden_size", 1408)), int(vis.get("intermediate_size", 6144))
    eps = float(vis.get("layer_norm_eps", 1e-6))
    dtype = _DTYPES.get(str(hf_cfg.get("dtype") or hf_cfg.get("torch_dtype") or "float32"), "fp32")
    out = {
        "img_size": int(vis.get("image_size", 224)),
        # int(hidden * ratio) must give the MLP width exactly: aim half a unit above it
        "vit_sizes": {"patch_size": int(vis.get("patch_size", 14)), "embed_dim": hidden,
                      "depth": int(vis.get("num_hidden_layers", 39)), "num_heads": int(vis.get("num_attention_heads", 16)),
                      "mlp_ratio": (inter + 0.5) / hidden, "eps": eps},
        "vit_precision": dtype,
        "ln_vision_eps": eps,
        "num_query_token": int(hf_cfg.get("num_query_tokens", 32)),
        "cross_attention_freq": int(q.get("cross_attention_frequency", 2)),
        "qformer_config": {"hidden_size": int(q.get("hidden_size", 768)), "num_hidden_layers": int(q.get("num_hidden_layers", 12)),
                           "num_attention_heads": int(q.get("num_attention_heads", 12)),
                           "intermediate_size": int(q.get("intermediate_size", 3072)),
                           "vocab_size": int(q.get("vocab_size", 30522)),
                           "max_position_embeddings": int(q.get("max_position_embeddings", 512)),
                           "layer_norm_eps": float(q.get("layer_norm_eps", 1e-12)),
                           "hidden_dropout": float(q.get("hidden_dropout_prob", 0.1)),
                           "attention_dropout": float(q.get("attention_probs_dropout_prob", 0.1))},
    }
    if arch_of(hf_cfg) is not None:
        out["llm_config"] = clean_text_config(hf_cfg["text_config"])
        out["llm_dtype"] = dtype
    if folder is not None:
        folder = os.path.abspath(os.path.expanduser(folder))
        if any(os.path.isfile(os.path.join(folder, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
            out["tokenizer"] = folder
        qtok = os.path.join(folder, "qformer_tokenizer")
        if os.path.isfile(os.path.join(qtok, "vocab.txt")):
            out["tokenizer_vocab"] = qtok
    return out


def _set_layer_norm_eps(model, hf_cfg: dict) -> None:
    """Make every LayerNorm of the vision side and the Q-Former use the source's epsilon."""
    vis_eps = float((hf_cfg.get("vision_config") or {}).get("layer_norm_eps", 1e-6))
    q_eps = float((hf_cfg.get("qformer_config") or {}).get("layer_norm_eps", 1e-12))
    changed = []
    for root, eps in ((getattr(model, "visual_encoder", None), vis_eps), (getattr(model, "Qformer", None), q_eps)):
        for module in (root.modules() if root is not None else []):
            if isinstance(module, torch.nn.LayerNorm) and module.eps != eps:
                changed.append((module.eps, eps))
                module.eps = eps
    if getattr(model, "ln_vision", None) is not None and model.ln_vision.eps != vis_eps:
        changed.append((model.ln_vision.eps, vis_eps))
        model.ln_vision.eps = vis_eps
    if changed:
        logger.info("set %d LayerNorm epsilon(s) to the Hugging Face source's (e.g. %g -> %g)", len(changed),
                    *changed[0])


# ---- loading into a model -----------------------------------------------------------------------------
def load_hf_into(model, folder: str, parts: tuple[str, ...] | None = None) -> dict:
    """Load an HF BLIP-2 / InstructBLIP folder into ``model`` (any Blip2Base model) by LAVIS names.

    ``parts=("vision", "qformer")`` takes only the vision side, Q-Former and queries (``q_former_model``).
    The LLM and projection load when the model's architecture matches the folder's; otherwise they are
    left out with a logged note. Keys that do not fit raise ``CheckpointMismatchError``.
    """
    from lavis_lite.models.base_model import CheckpointMismatchError
    from lavis_lite.models.blip2 import summarise_keys

    hf_cfg = read_hf_config(folder)
    folder_arch = arch_of(hf_cfg)
    own_arch = getattr(model, "ARCH_NAME", None)  # None: e.g. minigpt4qwen / blip2 stage 1
    state, unused = hf_to_lavis(read_hf_state(folder), folder_arch)
    unknown = [k for k in unused if not k.startswith(("language_model.", "language_projection."))]
    if unknown and parts is None:  # e.g. retrieval heads: nothing of ours takes them
        raise CheckpointMismatchError(f"Hugging Face folder {folder}: {len(unknown)} tensor(s) have no LAVIS name: "
                                      f"{summarise_keys(unknown)[:300]}")
    own = model.state_dict()
    left_out = list(unused)
    keep = {}
    for key, value in state.items():
        vision_qformer = key.startswith(VISION_QFORMER_PREFIXES)
        if parts is not None and not vision_qformer:
            left_out.append(key)
        elif not vision_qformer and key not in own and own_arch != folder_arch:
            left_out.append(key)  # another model family's LLM / projection
        else:
            keep[key] = value
    bad = [f"{k} {tuple(v.shape)}" + (f" vs model {tuple(own[k].shape)}" if k in own else " (no such key)")
           for k, v in keep.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointMismatchError(f"Hugging Face folder {folder}: {len(bad)} tensor(s) do not fit "
                                      f"{type(model).__name__}: {bad[:20]}")
    _set_layer_norm_eps(model, hf_cfg)
    result = model.load_state_dict(keep, strict=False)
    missing = [k for k in result.missing_keys if parts is None or k.startswith(VISION_QFORMER_PREFIXES)]
    if left_out:
        logger.info("%s: left out %d tensor(s) %s has no place for: %s", folder, len(left_out), type(model).__name__,
                    summarise_keys(left_out)[:300])
    logger.info("%s: loaded %d tensors; %d model tensors not in it (%s)", folder, len(keep), len(missing),
                summarise_keys(missing)[:300])
    return {"loaded": sorted(keep), "left_out": sorted(left_out), "missing_keys": missing, "unexpected_keys": []}


def hf_model_config(folder: str, name: str | None = None, model_type: str | None = None):
    """(architecture, our model config) describing an HF BLIP-2 / InstructBLIP folder: the type's default
    YAML with the folder's sizes, epsilons, dtypes, LLM config and tokenizers; weight paths cleared."""
    from omegaconf import OmegaConf

    from lavis_lite.common.registry import registry

    hf_cfg = read_hf_config(folder)
    arch = arch_of(hf_cfg)
    if arch is None:
        raise ValueError(f"{folder}: a {hf_cfg['model_type']} model with a "
                         f"{(hf_cfg.get('text_config') or {}).get('model_type')!r} LLM has no matching architecture; "
                         f"use it as model.q_former_model (vision + Q-Former) of another model")
    if name is not None and name != arch:
        raise ValueError(f"{folder} holds a {arch} model (HF {hf_cfg['model_type']} with "
                         f"{hf_cfg['text_config']['model_type']}), not {name!r}")
    model_cls = registry.get_model_class(arch)
    model_type = model_type or model_cls.DEFAULT_MODEL_TYPE
    default = OmegaConf.load(model_cls.default_config_path(model_type))
    section = default.model if "model" in default else default
    overrides = model_overrides(hf_cfg, folder)
    for key in ("opt_model", "t5_model", "llm_model", "q_former_model", "checkpoint", "vit_checkpoint", "pretrained",
                "finetuned"):
        if key in section:
            overrides.setdefault(key, None)  # every weight comes from the folder
    cfg = OmegaConf.merge(section, {"model_type": model_type}, overrides)
    cfg.qformer_config = overrides["qformer_config"]  # replace, not merge: sizes describe the source
    cfg.vit_sizes = overrides["vit_sizes"]
    return arch, cfg


def load_hf_model(folder: str, name: str | None = None, model_type: str | None = None, is_eval: bool = False,
                  device="cpu"):
    """Build our model for an HF BLIP-2 / InstructBLIP folder and load every weight, the LLM included."""
    from lavis_lite.common.registry import registry

    arch, cfg = hf_model_config(folder, name, model_type)
    model = registry.get_model_class(arch).from_config(cfg)
    load_hf_into(model, folder)
    if is_eval:
        model.eval()
    return model.to(device)
