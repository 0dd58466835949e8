"""Tiny transformers BLIP-2 / InstructBLIP models, built with a fixed seed and saved with save_pretrained,
for the Hugging Face conversion tests."""
import os

import torch

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lavis_lite", "assets")
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)
QFORMER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               cross_attention_frequency=1, max_position_embeddings=64, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)
N_QUERY = 8
VOCAB = 512            # the tiny LLM tokenizers' size; the image token takes the next free id


def image_token(family):
    return VOCAB + 1 if family == "llama" else VOCAB  # LLaMA: [PAD] (added as LAVIS does) takes 512


def randomize(model, seed=0):
    """Non-trivial weights (HF inits queries to zero, LayerNorms to one): outputs differ per image."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.dim() == 1 and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(noise * 0.15)
            if name.endswith("self_attn.qkv.bias"):  # EVA / BLIP-2 have no key bias
                param[param.shape[0] // 3: 2 * param.shape[0] // 3] = 0
    return model


def tokenizer(family):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(os.path.join(ASSETS, f"tiny_{family}_tokenizer"))


def text_config(family):
    from transformers import LlamaConfig, OPTConfig, T5Config
    tok = tokenizer(family)
    if family == "opt":
        return OPTConfig(vocab_size=VOCAB + 1, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=128, word_embed_proj_dim=64, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, dropout=0.0)
    if family == "t5":
        return T5Config(vocab_size=VOCAB + 1, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.0,
                        feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    return LlamaConfig(vocab_size=VOCAB + 2, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=VOCAB + 1)


def build_hf(folder, kind="blip2", family="opt", seed=0):
    """Save a random tiny HF model (+ the LLM tokenizer, + the Q-Former BERT vocab for InstructBLIP) to ``folder``."""
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, InstructBlipConfig,
                              InstructBlipForConditionalGeneration)
    torch.manual_seed(seed)
    if kind == "blip2":
        cfg = Blip2Config(vision_config=VISION, qformer_config=QFORMER, text_config=text_config(family).to_dict(),
                          num_query_tokens=N_QUERY, image_token_index=image_token(family))
        model = Blip2ForConditionalGeneration(cfg)
    else:
        from lavis_lite.models.bert_tokenizer import init_bert_tokenizer
        bert = init_bert_tokenizer("tiny")
        cfg = InstructBlipConfig(vision_config=VISION, qformer_config={**QFORMER, "vocab_size": len(bert)},
                                 text_config=text_config(family).to_dict(), num_query_tokens=N_QUERY,
                                 image_token_index=image_token(family))
        model = InstructBlipForConditionalGeneration(cfg)
        os.makedirs(os.path.join(folder, "qformer_tokenizer"), exist_ok=True)
        with open(os.path.join(ASSETS, "tiny_bert_vocab.txt")) as src, \
                open(os.path.join(folder, "qformer_tokenizer", "vocab.txt"), "w") as dst:
            dst.write(src.read())
    randomize(model, seed).eval()
    model.save_pretrained(folder)
    tok = tokenizer(family)
    if family == "llama":
        tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.save_pretrained(folder)
    return model
