"""The language model side of the vision-LLM models: tokenizer + causal LM loading, image token, LoRA.

One row per LLM family (``FAMILIES``): remote code or not, the image token, the default chat template
(chat_templates.py), transformers' config / model classes for random-init ``tiny`` models and the LoRA
target modules. Qwen-1 needs remote code (``trust_remote_code`` only for that family); Qwen2 / Qwen2.5,
Qwen3, Llama-2-chat, Llama-3-instruct and Vicuna are native transformers models. An image token the
tokenizer lacks is added as a special token (embeddings grow by one unused row).

Nothing is downloaded: ``llm_model`` / ``tokenizer`` must be local folders. Without ``llm_model`` a
random-init model of the family's class is built from the ``llm_config`` dict (the tiny models);
``tokenizer: tiny`` (or unset) gives the shipped tiny tokenizer with the family's control tokens.
"""
from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

TINY_TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                  "tiny_qwen_tokenizer")
_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
_MLP = ["gate_proj", "up_proj", "down_proj"]
FAMILIES = {
    "qwen": {"image_token": "<|extra_0|>", "remote_code": True, "template": "qwen",
             "lora_targets": ["c_attn", "c_proj", "w1", "w2"]},
    "qwen2": {"image_token": "<|image_pad|>", "remote_code": False, "template": "qwen2", "arch": "Qwen2",
              "lora_targets": _QKVO, "lora_mlp_targets": _MLP},
    "qwen3": {"image_token": "<|image_pad|>", "remote_code": False, "template": "qwen3", "arch": "Qwen3",
              "lora_targets": _QKVO, "lora_mlp_targets": _MLP},
    "llama2": {"image_token": "<|image_pad|>", "remote_code": False, "template": "llama2", "arch": "Llama",
               "lora_targets": _QKVO, "lora_mlp_targets": _MLP},
    "llama3": {"image_token": "<|reserved_special_token_0|>", "remote_code": False, "template": "llama3",
               "arch": "Llama", "lora_targets": _QKVO, "lora_mlp_targets": _MLP},
    "vicuna": {"image_token": "<|image_pad|>", "remote_code": False, "template": "vicuna_v1.1", "arch": "Llama",
               "lora_targets": _QKVO, "lora_mlp_targets": _MLP},
}
# Fallback pad tokens, in order, when a tokenizer sets none (Qwen: <|endoftext|>, Llama-2 / Vicuna: <unk>
# as LLaVA pads, Llama-3: <|end_of_text|>).
PAD_FALLBACKS = ("<|endoftext|>", "<unk>", "<|end_of_text|>")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def family_info(family: str) -> dict:
    if family not in FAMILIES:
        raise ValueError(f"Unknown llm_family {family!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[family]


def resolve_local_path(path: str, key: str, want_dir: bool | None = None) -> str:
    """A user-set weights path as an absolute local path, or a clear error naming the YAML key."""
    expanded = os.path.expanduser(os.path.expandvars(str(path)))
    absolute = os.path.abspath(expanded)
    exists = os.path.isdir(absolute) if want_dir else os.path.isfile(absolute) if want_dir is False \
        else os.path.exists(absolute)
    if not exists:
        kind = "folder" if want_dir else "file" if want_dir is False else "path"
        hint = "" if os.path.isabs(expanded) else f" (relative paths resolve against the working directory {os.getcwd()!r}; use an absolute path)"
        raise FileNotFoundError(f"model.{key} = {path!r}: no such local {kind} {absolute!r}{hint}. "
                                "Weights are never downloaded; point the key at a local copy.")
    return absolute


def dtype_of(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"llm_dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_tokenizer(path: str | None, family: str, key: str = "tokenizer"):
    """The tokenizer at ``path`` (local folder; ``key`` names its YAML key in errors) or, when unset, the
    tiny tokenizer shipped with the package."""
    from transformers import AutoTokenizer

    if path is None or path == "tiny":
        from lavis_lite.models.tiny_tokenizers import tiny_tokenizer
        return tiny_tokenizer(family)
    folder = resolve_local_path(path, key, want_dir=True)
    remote = family_info(family)["remote_code"]
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)


def pad_token_id(tokenizer, family: str) -> int:
    if family == "qwen":
        return int(tokenizer.eod_id)  # Qwen-1 has no pad token; its finetune script pads with <|endoftext|>
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    vocab = tokenizer.get_vocab()
    for token in PAD_FALLBACKS:
        if token in vocab:
            return int(vocab[token])
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the {family} tokenizer has no pad or eos token; set one in its tokenizer_config.json")
    return int(tokenizer.eos_token_id)


def ensure_image_token(tokenizer, token: str, family: str) -> bool:
    """Make ``token`` a single special token; returns True when it had to be added."""
    if family == "qwen":
        return False  # <|extra_0|> is one of Qwen-1's reserved special tokens
    if token in tokenizer.get_vocab():
        return False
    tokenizer.add_special_tokens({"additional_special_tokens": [token]}, replace_extra_special_tokens=False)
    logger.info("added image token %r to the tokenizer (id %d)", token, tokenizer.convert_tokens_to_ids(token))
    return True


def build_llm(llm_model: str | None, llm_config, tokenizer, family: str, dtype: str = "fp32",
              device_map=None):
    """Load the causal LM from a local folder, or build a random-init Qwen2 from ``llm_config``."""
    import transformers
    from transformers import AutoModelForCausalLM

    torch_dtype = dtype_of(dtype)
    if llm_model:
        folder = resolve_local_path(llm_model, "llm_model", want_dir=True)
        kwargs = {"dtype": torch_dtype, "trust_remote_code": family_info(family)["remote_code"]}
        if device_map:
            kwargs["device_map"] = device_map
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    elif llm_config:
        arch = family_info(family).get("arch")
        if arch is None:
            raise ValueError(f"llm_config builds a native transformers model; family {family!r} needs llm_model")
        cfg = dict(llm_config)
        cfg.setdefault("vocab_size", len(tokenizer))
        cfg.setdefault("attn_implementation", "sdpa")
        cfg.setdefault("pad_token_id", pad_token_id(tokenizer, family))
        if "eos_token_id" not in cfg:
            from lavis_lite.models.chat_templates import get_template
            eot = get_template(family_info(family)["template"]).eot
            cfg["eos_token_id"] = tokenizer.get_vocab().get(eot, tokenizer.eos_token_id)
        config = getattr(transformers, f"{arch}Config")(**cfg)
        model = getattr(transformers, f"{arch}ForCausalLM")(config).to(torch_dtype)
    else:
        raise ValueError("Set model.llm_model to a local folder with the LLM (e.g. Qwen-7B-Chat), or give "
                         "model.llm_config for a random-init Qwen2 (the tiny model)")
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer))
        logger.info("resized LLM embeddings from %d to %d rows for added tokens", rows, len(tokenizer))
    return model


def is_grad_checkpointing(model) -> bool:
    # transformers 5 renamed the flag (the old name warns); a peft wrapper forwards either by __getattr__.
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        try:
            return bool(getattr(model, name))
        except AttributeError:
            continue
    return False


def default_lora_targets(family: str, include_mlp: bool = False) -> list[str]:
    info = family_info(family)
    return list(info["lora_targets"]) + (list(info.get("lora_mlp_targets", [])) if include_mlp else [])


def apply_lora(model, family: str, r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules=None,
               include_mlp: bool = False):
    """Wrap ``model`` with peft LoRA adapters (peft is imported only here)."""
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules) if target_modules else default_lora_targets(family, include_mlp)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise ValueError(f"LoRA target modules {missing} do not exist in {type(model).__name__} "
                         f"(family {family!r}); set model.lora_target_modules")
    config = LoraConfig(r=int(r), lora_alpha=int(alpha), lora_dropout=float(dropout), target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def enable_grad_checkpointing(model) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "config"):
        model.config.use_cache = False
