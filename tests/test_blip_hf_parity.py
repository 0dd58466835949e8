"""Our BLIP models equal transformers' BLIP on the same (tiny, random) weights.

A tiny transformers model is built with the sizes of our tiny type, its state dict is renamed into
LAVIS's names by lavis_lite.models.blip.convert_hf (through ``load_checkpoint``, which must report no
unexpected key), and captions, answers, logits and features are compared.
"""
import pytest
import torch
import torch.nn.functional as F

from lavis_lite.models import load_model

transformers = pytest.importorskip("transformers")
from transformers import (BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval,  # noqa: E402
                          BlipForQuestionAnswering)

ATOL = 1e-5


def hf_config(model, vision_width=None):
    vit, text = model.visual_encoder, model.text_encoder if hasattr(model, "text_encoder") else model.text_decoder
    tok = model.tokenizer
    block = vit.blocks[0]
    vision = dict(hidden_size=vit.embed_dim, intermediate_size=block.mlp.fc1.out_features,
                  num_hidden_layers=len(vit.blocks), num_attention_heads=block.attn.num_heads,
                  image_size=vit.img_size, patch_size=vit.patch_size, layer_norm_eps=1e-6, hidden_act="gelu")
    tc = text.config
    text_cfg = dict(vocab_size=tc.vocab_size, hidden_size=tc.hidden_size, encoder_hidden_size=vit.embed_dim,
                    intermediate_size=tc.intermediate_size, num_hidden_layers=tc.num_hidden_layers,
                    num_attention_heads=tc.num_attention_heads, max_position_embeddings=tc.max_position_embeddings,
                    layer_norm_eps=tc.layer_norm_eps, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                    sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id, label_smoothing=0.1,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BlipConfig(vision_config=vision, text_config=text_cfg, image_text_hidden_size=model.vision_proj.out_features
                      if hasattr(model, "vision_proj") else 256)


def _perturb(hf):
    """Random init leaves biases / LayerNorms at 0 / 1: give every tensor distinct values so a
    mis-mapped key cannot pass."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf.eval()


def _load(ours, hf):
    report = ours.load_checkpoint(hf.state_dict())
    assert report["unexpected_keys"] == [] and report["shape_mismatch"] == []
    # Only the position_ids buffers (non-persistent in transformers) may be missing.
    assert all(k.endswith("position_ids") for k in report["missing_keys"]), report["missing_keys"]
    return ours.eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def test_caption_equals_transformers(images):
    ours = load_model("blip_caption", "tiny")
    hf = _perturb(BlipForConditionalGeneration(hf_config(ours)))
    _load(ours, hf)
    tok = ours.tokenizer
    texts = ["a picture of a red circle", "a picture of two blue squares"]
    batch = tok(texts, padding="longest", return_tensors="pt")
    ids = batch.input_ids.clone()
    ids[:, 0] = tok.bos_token_id
    with torch.no_grad():
        theirs = hf(pixel_values=images, input_ids=ids, attention_mask=batch.attention_mask)
        mine = ours.text_decoder(ids, attention_mask=batch.attention_mask,
                                 encoder_hidden_states=ours.encode_image(images))
    assert torch.allclose(mine.logits, theirs.logits, atol=ATOL)

    prompt = tok(["a picture of "] * 2, return_tensors="pt").input_ids
    for kwargs in ({"num_beams": 1}, {"num_beams": 3}):
        hf_ids = hf.generate(pixel_values=images, input_ids=prompt.clone(), max_length=12, min_length=6, **kwargs)
        hf_caps = tok.batch_decode(hf_ids[:, prompt.shape[1] - 1:], skip_special_tokens=True)
        caps = ours.generate({"image": images}, max_length=12, min_length=6, **kwargs)
        assert caps == hf_caps and all(caps)


def test_vqa_answers_equal_transformers(images):
    # transformers' answer decoder reads states of the vision width: give both sides one width.
    ours = load_model("blip_vqa", "tiny")
    ours = type(ours).from_pretrained("tiny", vit_sizes={"patch_size": 8, "embed_dim": 32, "depth": 2,
                                                         "num_heads": 4, "mlp_ratio": 2.0})
    hf = _perturb(BlipForQuestionAnswering(hf_config(ours)))
    _load(ours, hf)
    tok = ours.tokenizer
    questions = ["what colour is the circle?", "what shape is shown?"]
    q = tok(questions, padding="longest", return_tensors="pt")
    assert q.attention_mask.all()  # transformers' generate ignores question padding; keep none
    q_ids = q.input_ids.clone()
    q_ids[:, 0] = tok.enc_token_id
    samples = {"image": images, "text_input": questions}
    for beams in (1, 3):
        hf_ids = hf.generate(input_ids=q_ids, pixel_values=images, attention_mask=q.attention_mask,
                             num_beams=beams, max_length=6, min_length=2)
        answers = ours.predict_answers(samples, inference_method="generate", num_beams=beams, max_len=6, min_len=2)
        assert answers == tok.batch_decode(hf_ids, skip_special_tokens=True)
    # teacher-forced answer logits
    a = tok(["red", "circle"], return_tensors="pt", padding="longest")
    a_ids = a.input_ids.clone()
    a_ids[:, 0] = tok.bos_token_id
    with torch.no_grad():
        image = hf.vision_model(pixel_values=images).last_hidden_state
        hf_states = hf.text_encoder(q_ids, attention_mask=q.attention_mask, encoder_hidden_states=image,
                                    encoder_attention_mask=torch.ones(image.shape[:-1], dtype=torch.long))[0]
        theirs = hf.text_decoder(a_ids, attention_mask=a.attention_mask, encoder_hidden_states=hf_states,
                                 encoder_attention_mask=q.attention_mask)
        states, atts = ours.encode_question(samples)
        mine = ours.text_decoder(a_ids, attention_mask=a.attention_mask, encoder_hidden_states=states,
                                 encoder_attention_mask=atts)
    assert torch.allclose(states, hf_states, atol=ATOL)
    assert torch.allclose(mine.logits, theirs.logits, atol=ATOL)


@pytest.mark.parametrize("name", ["blip_feature_extractor", "blip_image_text_matching"])
def test_features_and_matching_equal_transformers(images, name):
    ours = load_model(name, "tiny")
    ref = load_model("blip_image_text_matching", "tiny")  # sizes of the HF model (with ITM head)
    hf = _perturb(BlipForImageTextRetrieval(hf_config(ref)))
    report = ours.load_checkpoint(hf.state_dict())
    assert report["unexpected_keys"] == []
    if name == "blip_feature_extractor":
        assert report["dropped_keys"] == ["itm_head.weight", "itm_head.bias"]
    ours.eval()
    tok = ours.tokenizer
    texts = ["a red circle", "two blue squares"]
    t = tok(texts, padding="longest", return_tensors="pt")
    enc_ids = t.input_ids.clone()
    enc_ids[:, 0] = tok.enc_token_id
    with torch.no_grad():
        hf_img = hf.vision_model(pixel_values=images).last_hidden_state
        hf_txt = hf.text_encoder(t.input_ids, attention_mask=t.attention_mask).last_hidden_state
        hf_mm = hf.text_encoder(enc_ids, attention_mask=t.attention_mask, encoder_hidden_states=hf_img,
                                encoder_attention_mask=torch.ones(hf_img.shape[:-1], dtype=torch.long)).last_hidden_state
        hf_sim = hf(input_ids=t.input_ids, pixel_values=images, attention_mask=t.attention_mask,
                    use_itm_head=False).itm_score
        hf_itm = hf(input_ids=enc_ids, pixel_values=images, attention_mask=t.attention_mask).itm_score
    fi = ours.extract_features({"image": images}, mode="image")
    ft = ours.extract_features({"text_input": texts}, mode="text")
    fm = ours.extract_features({"image": images, "text_input": texts})
    assert torch.allclose(fi.image_embeds, hf_img, atol=ATOL)
    assert torch.allclose(fi.image_embeds_proj, F.normalize(hf.vision_proj(hf_img), dim=-1), atol=ATOL)
    assert torch.allclose(ft.text_embeds, hf_txt, atol=ATOL)
    assert torch.allclose(ft.text_embeds_proj, F.normalize(hf.text_proj(hf_txt), dim=-1), atol=ATOL)
    assert torch.allclose(fm.multimodal_embeds, hf_mm, atol=ATOL)
    assert torch.allclose(fi.image_embeds_proj[:, 0] @ ft.text_embeds_proj[:, 0].t(), hf_sim, atol=ATOL)
    if name == "blip_image_text_matching":
        assert torch.allclose(ours({"image": images, "text_input": texts}), hf_itm, atol=ATOL)
        assert torch.allclose(ours({"image": images, "text_input": texts}, match_head="itc"), hf_sim, atol=ATOL)
