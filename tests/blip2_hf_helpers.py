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


KIND_FAMILY = {"blip2_opt": ("blip2", "opt"), "blip2_t5": ("blip2", "t5"),
               "blip2_vicuna_instruct": ("instructblip", "llama"), "blip2_t5_instruct": ("instructblip", "t5")}


def images(seed=1, n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def assert_same_as_hf(ours, hf, arch, atol=1e-5, seed=4):
    """Image features, Q-Former outputs, loss and greedy tokens of ``ours`` equal transformers' ``hf``."""
    kind, family = KIND_FAMILY[arch]
    pixels = images(seed)
    n, n_query = pixels.shape[0], ours.query_tokens.shape[1]
    img_tok = hf.config.image_token_index
    instructions = ["what colour is the shape?", "describe the image in detail please"]
    answers = ["red", "a blue square on the left"]
    extra = {}
    if kind == "instructblip":  # the instruction's BERT tokens join the queries in the Q-Former
        bert = ours.tokenizer(instructions, padding="longest", return_tensors="pt")
        extra = {"qformer_input_ids": bert.input_ids, "qformer_attention_mask": bert.attention_mask}
    queries = torch.full((n, n_query), img_tok)
    ones = torch.ones(n, n_query, dtype=torch.long)
    with torch.no_grad():
        vit = ours.vit_features(pixels)
        query = ours.query_output(vit, instructions if kind == "instructblip" else None)
        torch.testing.assert_close(vit, hf.vision_model(pixels).last_hidden_state, atol=atol, rtol=0)
        torch.testing.assert_close(query, hf.get_image_features(pixels, **extra).qformer_outputs.last_hidden_state[:, :n_query],
                                   atol=atol, rtol=0)
        if family == "opt":
            loss = ours({"image": pixels, "text_input": answers})["loss"]
            tok = ours.opt_tokenizer
            tok.padding_side = "right"
            enc = tok([t + "\n" for t in answers], return_tensors="pt", padding="longest")
            ids, mask = torch.cat([queries, enc.input_ids], 1), torch.cat([ones, enc.attention_mask], 1)
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :n_query] = -100
            hf_loss = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=labels).loss
        elif family == "t5":
            loss = ours({"image": pixels, "text_input": instructions, "text_output": answers})["loss"]
            tok = ours.t5_tokenizer
            enc = tok(instructions, padding="longest", return_tensors="pt")
            dec = tok(answers, padding="longest", return_tensors="pt")
            labels = dec.input_ids.masked_fill(dec.input_ids == tok.pad_token_id, -100)
            hf_loss = hf(pixel_values=pixels, input_ids=torch.cat([queries, enc.input_ids], 1),
                         attention_mask=torch.cat([ones, enc.attention_mask], 1), labels=labels,
                         decoder_attention_mask=dec.attention_mask, **extra).loss
        else:
            loss = ours({"image": pixels, "text_input": instructions, "text_output": answers})["loss"]
            ids, mask, input_lens = ours._rows(instructions, answers)
            labels = ids.masked_fill(ids == ours.llm_tokenizer.pad_token_id, -100)
            for i, k in enumerate(input_lens):
                labels[i, :k] = -100
            labels = torch.cat([torch.full((n, n_query), -100), labels], 1)
            hf_loss = hf(pixel_values=pixels, input_ids=torch.cat([queries, ids], 1),
                         attention_mask=torch.cat([ones, mask], 1), labels=labels, **extra).loss
    torch.testing.assert_close(loss, hf_loss, atol=atol, rtol=0)

    prompt = "describe the image" if kind == "instructblip" else "a photo of"
    if kind == "instructblip":
        bert = ours.tokenizer([prompt] * n, return_tensors="pt")
        extra = {"qformer_input_ids": bert.input_ids, "qformer_attention_mask": bert.attention_mask}
    tok = {"opt": getattr(ours, "opt_tokenizer", None), "t5": getattr(ours, "t5_tokenizer", None),
           "llama": getattr(ours, "llm_tokenizer", None)}[family]
    eos = ours.eos_token_id if family == "opt" else tok.eos_token_id
    p = tok([prompt] * n, return_tensors="pt").input_ids
    ids = torch.cat([queries, p], 1)
    ours_text = ours.generate({"image": pixels, "prompt": prompt}, num_beams=1, max_length=6, min_length=1,
                              repetition_penalty=1.0)
    out = hf.generate(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                      min_new_tokens=1, num_beams=1, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id,
                      **extra)
    if family != "t5":
        out = out[:, ids.shape[1]:]
    hf_text = [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
    assert ours_text == hf_text
    return hf_text
