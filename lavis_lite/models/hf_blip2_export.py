"""Our BLIP-2 models -> folders transformers loads (``Blip2ForConditionalGeneration`` /
``InstructBlipForConditionalGeneration`` / ``Blip2Model``), through transformers' own ``save_pretrained``.

* blip2_opt / blip2_t5 -> ``Blip2ForConditionalGeneration``; blip2_vicuna_instruct / blip2_t5_instruct ->
  ``InstructBlipForConditionalGeneration`` (+ ``qformer_tokenizer/``). The LLM tokenizer gets an
  ``<image>`` token (``image_token_index``; the embeddings grow a row when the vocabulary has no spare one)
  and ``num_query_tokens`` is recorded, as transformers' processors expect.
* ``vision_only=True`` (any of our models: blip2 stage 1, minigpt4qwen, ...): the vision side, Q-Former
  and queries as a ``Blip2Model``-style folder. Its ``text_config`` is a one-layer placeholder OPT, so
  ``language_model`` / ``language_projection`` are NOT trained weights: use ``get_image_features`` /
  ``get_qformer_features`` only.

Epsilons: HF uses the vision ``layer_norm_eps`` for the blocks and ``post_layernorm`` alike; a LAVIS model
(blocks 1e-6, ``ln_vision`` 1e-5) is exported with the blocks' value and a logged warning (the image
features then differ by the LayerNorm epsilon change, ~1e-6 relative).
"""
from __future__ import annotations

import logging
import os

import torch

from lavis_lite.models.hf_blip2_convert import LLM_PARTS, lavis_to_hf

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
HF_TYPE = {"blip2_opt": "blip-2", "blip2_t5": "blip-2",
           "blip2_vicuna_instruct": "instructblip", "blip2_t5_instruct": "instructblip"}


def vision_qformer_configs(model) -> tuple[dict, dict]:
    vit, qformer = model.visual_encoder, model.Qformer.config
    block = vit.blocks[0]
    eps = block.norm1.eps
    if model.ln_vision.eps != eps:
        logger.warning("Hugging Face BLIP-2 has one vision LayerNorm epsilon: exporting %g (the blocks'); this "
                       "model's ln_vision uses %g", eps, model.ln_vision.eps)
    vision = {"hidden_size": vit.embed_dim, "intermediate_size": block.mlp.fc1.out_features,
              "num_hidden_layers": len(vit.blocks), "num_attention_heads": block.attn.num_heads,
              "image_size": vit.img_size, "patch_size": vit.patch_size, "layer_norm_eps": eps, "qkv_bias": True,
              "hidden_act": "gelu"}
    q = {"hidden_size": qformer.hidden_size, "num_hidden_layers": qformer.num_hidden_layers,
         "num_attention_heads": qformer.num_attention_heads, "intermediate_size": qformer.intermediate_size,
         "vocab_size": qformer.vocab_size, "max_position_embeddings": qformer.max_position_embeddings,
         "layer_norm_eps": qformer.layer_norm_eps, "hidden_dropout_prob": qformer.hidden_dropout,
         "attention_probs_dropout_prob": qformer.attention_dropout,
         "cross_attention_frequency": qformer.cross_attention_freq, "encoder_hidden_size": vit.embed_dim}
    return vision, q


def _llm_tokenizer(model, arch):
    return model.t5_tokenizer if "t5" in arch else (model.opt_tokenizer if arch == "blip2_opt" else model.llm_tokenizer)


def export_hf(model, out_dir: str, vision_only: bool = False) -> str:
    """Write ``model`` as a transformers folder; returns the HF class name written."""
    import transformers

    arch = getattr(model, "ARCH_NAME", None)
    if not vision_only and arch not in HF_TYPE:
        raise ValueError(f"{type(model).__name__} has no transformers counterpart with its LLM; export the vision "
                         f"side and Q-Former with vision_only=True")
    vision, qformer = vision_qformer_configs(model)
    hf_type = "blip-2" if vision_only else HF_TYPE[arch]
    state = {k: v for k, v in model.state_dict().items()}
    if vision_only:
        state = {k: v for k, v in state.items() if k.startswith(("visual_encoder.", "ln_vision.", "Qformer.bert.", "query_tokens"))}
        hidden = qformer["hidden_size"]
        text = transformers.OPTConfig(vocab_size=8, hidden_size=hidden, word_embed_proj_dim=hidden, ffn_dim=hidden,
                                      num_hidden_layers=1, num_attention_heads=1, max_position_embeddings=8).to_dict()
        tokenizer, image_token_index = None, None
    else:
        tokenizer = _llm_tokenizer(model, arch)
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            tokenizer = _private_copy(tokenizer)
            tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]},
                                         replace_extra_special_tokens=False)
        image_token_index = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        text = getattr(model, LLM_PARTS[arch][1]).config.to_dict()
    hf_state, left = lavis_to_hf(state, None if vision_only else arch, hf_type)
    # the text side of a stage-1 Q-Former has no place in Blip2Model / the generation models' Q-Former
    dropped = [k for k in hf_state if hf_type == "blip-2" and k.startswith("qformer.") and
               (".intermediate." in k or ".output.dense" in k or ".output.LayerNorm" in k) and "attention" not in k]
    for k in dropped:
        del hf_state[k]
    if left or dropped:
        logger.info("HF export: left out %d tensor(s) with no place in %s (e.g. %s)", len(left) + len(dropped),
                    hf_type, (left + dropped)[:5])
    if hf_type == "blip-2":
        config = transformers.Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                                          num_query_tokens=model.query_tokens.shape[1],
                                          image_token_index=image_token_index)
        cls = transformers.Blip2Model if vision_only else transformers.Blip2ForConditionalGeneration
    else:
        config = transformers.InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text,
                                                 num_query_tokens=model.query_tokens.shape[1],
                                                 image_token_index=image_token_index)
        cls = transformers.InstructBlipForConditionalGeneration
    hf = cls(config)
    rows = hf.get_input_embeddings().weight.shape[0] if not vision_only else None
    result = hf.load_state_dict(hf_state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"HF export: {cls.__name__} has no place for {result.unexpected_keys[:10]}")
    real_missing = [k for k in result.missing_keys if not (vision_only and k.startswith(("language_", "qformer.embeddings")))
                    and not k.endswith(("lm_head.weight", "position_ids"))]
    if real_missing:
        raise RuntimeError(f"HF export: {cls.__name__} weights not provided: {real_missing[:10]}")
    if tokenizer is not None and image_token_index >= rows:
        # No spare row for <image> (e.g. LAVIS's Vicuna: 32001 rows for 32001 tokens): grow by one, as
        # transformers' own InstructBLIP conversion did. The output layer then scores one more token.
        logger.warning("HF export: the LLM has no spare embedding row for %s; adding one (its output row makes "
                       "the LLM's probabilities cover one more token)", IMAGE_TOKEN)
        hf.resize_token_embeddings(image_token_index + 1)
    os.makedirs(out_dir, exist_ok=True)
    hf.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
        if getattr(model, "qformer_text_input", False):
            save_bert_vocab(model.tokenizer, os.path.join(out_dir, "qformer_tokenizer"))
    logger.info("wrote %s (%s) to %s", cls.__name__, hf_type, out_dir)
    return cls.__name__


def _private_copy(tokenizer):
    """A copy of the tokenizer: adding <image> must not change the live model's tokenizer."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp)


def save_bert_vocab(tokenizer, folder: str) -> None:
    """The Q-Former's BERT tokenizer as transformers saves it, plus the plain ``vocab.txt`` (without the
    added ``[DEC]``, which every reader adds back) that LAVIS and our loader read."""
    tokenizer.save_pretrained(folder)
    base = sorted((i, t) for t, i in tokenizer.get_vocab().items() if t != "[DEC]")
    if [i for i, _ in base] != list(range(len(base))):
        raise ValueError("the Q-Former tokenizer's base vocabulary ids are not contiguous")
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for _, t in base))
