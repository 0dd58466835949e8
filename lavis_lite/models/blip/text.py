"""BLIP's text side: BERT with cross-attention to the image ("MED"), from transformers' BLIP text classes.

transformers' ``BlipTextModel`` / ``BlipTextLMHeadModel`` are ports of BLIP's med.py with the same
module names, so stored as ``text_encoder`` / ``text_decoder`` their parameters carry LAVIS's keys:
``text_encoder.embeddings.*``, ``text_encoder.encoder.layer.N.{attention, crossattention, intermediate,
output}.*``, ``text_decoder.bert.*``, ``text_decoder.cls.predictions.*`` (decoder weight tied to the word
embeddings, ``decoder.bias`` to ``predictions.bias``, as in LAVIS). Every layer has cross-attention;
it runs only when image (or question) states are passed, so "text" mode is the plain BERT.

The tokenizer is LAVIS's ``BlipBase.init_tokenizer``: bert-base-uncased WordPiece plus ``[DEC]`` (bos,
the decoder start) and ``[ENC]`` (replaces ``[CLS]`` for image-grounded encoding), 30524 tokens.
"""
from __future__ import annotations

from omegaconf import OmegaConf

from lavis_lite.models.bert_tokenizer import init_bert_tokenizer

# LAVIS's configs/models/med_config.json (bert-base sizes).
MED_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    max_position_embeddings=512, layer_norm_eps=1e-12, hidden_dropout_prob=0.1,
                    attention_probs_dropout_prob=0.1, hidden_act="gelu", initializer_range=0.02)


def init_blip_tokenizer(vocab: str | None = "tiny"):
    """BERT tokenizer with ``[DEC]`` (``bos_token_id``) and ``[ENC]`` (``enc_token_id``)."""
    if vocab is None:
        raise ValueError("model.tokenizer_vocab is not set: give the path of a local bert-base-uncased "
                         "vocab.txt (or its folder), or 'tiny' for the small shipped vocab")
    tokenizer = init_bert_tokenizer(vocab)
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.enc_token_id = tokenizer.convert_tokens_to_ids("[ENC]")
    return tokenizer


def text_config(med: dict | None, tokenizer, encoder_width: int, label_smoothing: float = 0.0):
    """A ``BlipTextConfig`` from the model YAML's ``med_config`` (LAVIS's med_config.json keys);
    ``vocab_size`` defaults to the tokenizer's length (30524 for bert-base-uncased)."""
    from transformers import BlipTextConfig

    med = OmegaConf.to_container(med, resolve=True) if OmegaConf.is_config(med) else dict(med or {})
    med.pop("encoder_width", None)  # LAVIS's name; the image width comes from the ViT
    med.pop("add_cross_attention", None)  # always on in BLIP
    unknown = sorted(set(med) - set(MED_DEFAULTS) - {"vocab_size"})
    if unknown:
        raise KeyError(f"Unknown med_config keys {unknown}; known: {sorted(MED_DEFAULTS) + ['vocab_size']}")
    sizes = {**MED_DEFAULTS, **med}
    vocab_size = sizes.pop("vocab_size", None) or len(tokenizer)
    if vocab_size < len(tokenizer):
        raise ValueError(f"med_config.vocab_size {vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens "
                         "with [DEC] and [ENC])")
    return BlipTextConfig(vocab_size=vocab_size, encoder_hidden_size=encoder_width, is_decoder=True,
                          label_smoothing=label_smoothing, bos_token_id=tokenizer.bos_token_id,
                          pad_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.sep_token_id,
                          eos_token_id=tokenizer.sep_token_id, **sizes)


def _persistent_position_ids(bert) -> None:
    # LAVIS's state dicts (and released files) carry embeddings.position_ids; transformers marks it
    # non-persistent. Keep it in ours so the key maps match.
    bert.embeddings._non_persistent_buffers_set.discard("position_ids")


def build_text_encoder(config):
    """``text_encoder``: BERT with cross-attention, no pooler (LAVIS's XBertEncoder)."""
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    model = BlipTextModel(config, add_pooling_layer=False)
    _persistent_position_ids(model)
    return model


def build_text_decoder(config):
    """``text_decoder``: the causal BERT with LM head (LAVIS's XBertLMHeadDecoder); has ``generate``."""
    from transformers.models.blip.modeling_blip_text import BlipTextLMHeadModel

    model = BlipTextLMHeadModel(config)
    _persistent_position_ids(model.bert)
    generation = model.generation_config
    generation.bos_token_id, generation.pad_token_id = config.bos_token_id, config.pad_token_id
    generation.eos_token_id = config.sep_token_id
    return model
