"""The language model side of MiniGPT4-Qwen: tokenizer + causal LM loading, image token, LoRA.

Two LLM families:

* ``qwen``  — Qwen-1 (Qwen-7B/14B-Chat): remote code (``trust_remote_code`` only for this family),
  image token ``<|extra_0|>``, projections named c_attn / c_proj / w1 / w2.
* ``qwen2`` — native transformers Qwen2 / Qwen2.5 (and the ``tiny`` model): no remote code; the image
  token (default ``<|image_pad|>``) is added as a special token when the tokenizer lacks it;
  projections q_proj / k_proj / v_proj / o_proj (+ gate_proj / up_proj / down_proj).

Nothing is downloaded: ``llm_model`` / ``tokenizer`` must be local folders. Without ``llm_model`` a
random-init ``Qwen2ForCausalLM`` is built from the ``llm_config`` dict (the tiny model).
"""
from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

TINY_TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                  "tiny_qwen_tokenizer")
FAMILIES = {
    "qwen": {"image_token": "<|extra_0|>", "remote_code": True,
             "lora_targets": ["c_attn", "c_proj", "w1", "w2"]},
    "qwen2": {"image_token": "<|image_pad|>", "remote_code": False,
              "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
              "lora_mlp_targets": ["gate_proj", "up_proj", "down_proj"]},
}
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

    if path is None:
        return AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    folder = resolve_local_path(path, key, want_dir=True)
    remote = family_info(family)["remote_code"]
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)


def pad_token_id(tokenizer, family: str) -> int:
    if family == "qwen":
        return int(tokenizer.eod_id)  # Qwen-1 has no pad token; its finetune script pads with <|endoftext|>
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))


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
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch_dtype = dtype_of(dtype)
    if llm_model:
        folder = resolve_local_path(llm_model, "llm_model", want_dir=True)
        kwargs = {"dtype": torch_dtype, "trust_remote_code": family_info(family)["remote_code"]}
        if device_map:
            kwargs["device_map"] = device_map
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    elif llm_config:
        if family != "qwen2":
            raise ValueError("llm_config builds a native Qwen2 model; set llm_family: qwen2")
        cfg = dict(llm_config)
        cfg.setdefault("vocab_size", len(tokenizer))
        cfg.setdefault("attn_implementation", "sdpa")
        cfg.setdefault("pad_token_id", pad_token_id(tokenizer, family))
        cfg.setdefault("eos_token_id", tokenizer.convert_tokens_to_ids("<|im_end|>"))
        model = Qwen2ForCausalLM(Qwen2Config(**cfg)).to(torch_dtype)
    else:
        raise ValueError("Set model.llm_model to a local folder with the LLM (e.g. Qwen-7B-Chat), or give "
                         "model.llm_config for a random-init Qwen2 (the tiny model)")
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer))
        logger.info("resized LLM embeddings from %d to %d rows for added tokens", rows, len(tokenizer))
    return model


def is_grad_checkpointing(model) -> bool:
    flag = getattr(type(model), "is_activation_checkpointing", None)
    return bool(model.is_activation_checkpointing if flag is not None else model.is_gradient_checkpointing)


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
