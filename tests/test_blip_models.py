"""BLIP models (tiny types): the details LAVIS users rely on."""
import logging

import pytest
import torch
import torch.nn.functional as F

from lavis_lite.models import load_model, load_model_and_preprocess
from lavis_lite.models.base_model import CheckpointMismatchError


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def caption_model():
    torch.manual_seed(0)
    return load_model("blip_caption", "tiny")


def test_issue_snippet_runs_for_every_tiny_model(images):
    from PIL import Image
    raw = Image.new("RGB", (50, 40), (200, 10, 10))
    model, vis, txt = load_model_and_preprocess("blip_caption", "tiny", is_eval=True)
    image = vis["eval"](raw).unsqueeze(0)
    caps = model.generate({"image": image}, num_beams=1, top_p=0.9, max_length=20, min_length=5)
    assert isinstance(caps, list) and len(caps) == 1 and isinstance(caps[0], str)
    model, vis, txt = load_model_and_preprocess("blip_vqa", "tiny", is_eval=True)
    question = txt["eval"]("what is this photo taken?")
    assert len(model.predict_answers({"image": image, "text_input": question}, inference_method="generate",
                                     num_beams=1)) == 1
    ans = model.predict_answers({"image": image, "text_input": question}, inference_method="rank",
                                answer_list=["red", "blue", "green"], num_ans_candidates=128)
    assert ans[0] in ("red", "blue", "green")
    model, vis, txt = load_model_and_preprocess("blip_feature_extractor", "tiny", is_eval=True)
    sample = {"image": image, "text_input": [txt["eval"]("a red square")]}
    f = model.extract_features(sample)
    f_img = model.extract_features(sample, mode="image")
    f_txt = model.extract_features(sample, mode="text")
    n_tokens = len(model.tokenizer("a red square").input_ids)
    assert f.multimodal_embeds.shape == (1, n_tokens, 32)
    assert f_img.image_embeds.shape == (1, 17, 48) and f_img.image_embeds_proj.shape == (1, 17, 32)
    assert f_txt.text_embeds.shape == (1, n_tokens, 32) and f_txt.text_embeds_proj.shape == (1, n_tokens, 32)
    assert torch.allclose(f_img.image_embeds_proj.norm(dim=-1), torch.ones(1, 17), atol=1e-5)  # per token
    sim = f_img.image_embeds_proj[:, 0, :] @ f_txt.text_embeds_proj[:, 0, :].t()
    assert sim.shape == (1, 1) and -1 <= sim.item() <= 1
    with pytest.raises(ValueError, match="mode"):
        model.extract_features(sample, mode="both")
    with pytest.raises(KeyError, match="text_input"):
        model.extract_features({"image": image}, mode="text")


def test_caption_loss_masks_the_prompt_with_label_smoothing(caption_model, images):
    m = caption_model.train()
    texts = ["a picture of a red circle", "a picture of two small blue squares"]
    out = m({"image": images, "text_input": texts})
    tok = m.tokenizer(texts, padding="longest", return_tensors="pt")
    ids = tok.input_ids.clone()
    assert m.prompt_length == len(m.tokenizer("a picture of ").input_ids) - 1 == 4
    ids[:, 0] = m.tokenizer.bos_token_id
    targets = ids.masked_fill(tok.attention_mask == 0, -100)
    targets[:, :4] = -100  # [DEC] a picture of
    with torch.no_grad():
        logits = m.text_decoder(ids, attention_mask=tok.attention_mask,
                                encoder_hidden_states=m.encode_image(images)).logits
    want = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1),
                           ignore_index=-100, label_smoothing=0.1)
    assert torch.allclose(out["loss"], want, atol=1e-5)
    words = sum(len(m.tokenizer(t[len("a picture of "):], add_special_tokens=False).input_ids) for t in texts)
    assert out["n_tokens"] == int((targets[:, 1:] != -100).sum()) == words + 2  # caption words + [SEP] each
    with pytest.raises(ValueError, match="does not start with the prompt"):
        m({"image": images, "text_input": ["a red circle", "a picture of x"]})
    m.eval()


def test_caption_generation_options(caption_model, images):
    m = caption_model.eval()
    beam = m.generate({"image": images}, num_beams=3, max_length=10, min_length=8)
    assert len(beam) == 2
    # min/max length count the 4 prompt tokens; the returned text excludes the prompt
    n_words = [len(m.tokenizer(c, add_special_tokens=False).input_ids) for c in beam]
    assert all(4 <= n <= 6 for n in n_words), n_words
    torch.manual_seed(1)
    s1 = m.generate({"image": images}, use_nucleus_sampling=True, top_p=0.9, max_length=12, min_length=5,
                    num_captions=3)
    torch.manual_seed(1)
    s2 = m.generate({"image": images}, use_nucleus_sampling=True, top_p=0.9, max_length=12, min_length=5,
                    num_captions=3)
    assert s1 == s2 and len(s1) == 6 and len(set(s1)) > 1
    # repetition_penalty reaches the decoder: a huge penalty forbids repeating a token
    for cap in m.generate({"image": images}, num_beams=1, max_length=16, min_length=16, repetition_penalty=1e9):
        words = m.tokenizer(cap, add_special_tokens=False).input_ids
        assert len(words) == len(set(words))
    with pytest.raises(TypeError, match="unknown arguments"):
        m.generate({"image": images}, num_beam=3)


def test_vqa_loss_weights_answers_and_rank_picks_by_full_answer(images):
    torch.manual_seed(0)
    m = load_model("blip_vqa", "tiny")
    samples = {"image": images, "text_input": ["what colour?", "what shape?"], "answers": ["red", "blue", "circle"],
               "weights": [0.75, 0.25, 1.0], "n_answers": [2, 1]}
    m.eval()  # no dropout: compare exactly
    out = m(samples)
    states, atts = m.encode_question(samples)
    tok = m.tokenizer(samples["answers"], padding="longest", return_tensors="pt")
    ids = tok.input_ids.clone()
    ids[:, 0] = m.tokenizer.bos_token_id
    targets = ids.masked_fill(ids == 0, -100)
    idx = torch.tensor([0, 0, 1])
    per_answer = m.text_decoder(ids, attention_mask=tok.attention_mask, encoder_hidden_states=states[idx],
                                encoder_attention_mask=atts[idx], labels=targets, reduction="none").loss
    assert torch.allclose(out["loss"], (torch.tensor([0.75, 0.25, 1.0]) * per_answer).sum() / 2, atol=1e-5)
    # LAVIS's key names work too
    lavis = {**samples, "answer": samples["answers"], "weight": torch.tensor(samples["weights"])}
    del lavis["answers"], lavis["weights"]
    assert torch.allclose(m(lavis)["loss"], out["loss"])
    with pytest.raises(ValueError, match="n_answers"):
        m({**samples, "n_answers": [1, 1]})

    answers = ["red", "blue", "green square", "a large yellow circle"]
    ranked = m.predict_answers(samples, inference_method="rank", answer_list=answers, num_ans_candidates=4)
    # by hand: every candidate's full-answer loss, the smallest wins
    a = m.tokenizer(answers, padding="longest", return_tensors="pt")
    a_ids = a.input_ids.clone()
    a_ids[:, 0] = m.tokenizer.bos_token_id
    for q in range(2):
        losses = m.text_decoder(a_ids, attention_mask=a.attention_mask,
                                encoder_hidden_states=states[q:q + 1].expand(4, -1, -1),
                                encoder_attention_mask=atts[q:q + 1].expand(4, -1), labels=a_ids.masked_fill(a_ids == 0, -100),
                                reduction="none").loss
        assert ranked[q] == answers[int(losses.argmin())]
    one = m.predict_answers(samples, inference_method="rank", answer_list=answers, num_ans_candidates=1)
    first = F.softmax(m.text_decoder(a_ids[:1, :1].expand(2, 1), encoder_hidden_states=states,
                                     encoder_attention_mask=atts).logits[:, 0], -1)[:, a_ids[:, 1]]
    assert one == [answers[int(i)] for i in first.argmax(1)]
    with pytest.raises(ValueError, match="answer_list"):
        m.predict_answers(samples, inference_method="rank")


def test_retrieval_momentum_queue_and_itm(images):
    torch.manual_seed(0)
    m = load_model("blip_retrieval", "tiny").train()
    before = m.visual_encoder_m.norm.weight.clone()
    batch = {"image": images, "text_input": ["a red circle", "a blue square"], "image_id": [3, 4]}
    out = m(batch)
    assert set(out) >= {"loss", "loss_itc", "loss_itm"} and out["n_tokens"] == 2
    out["loss"].backward()
    assert m.visual_encoder.blocks[0].attn.qkv.weight.grad is not None
    assert m.itm_head.weight.grad is not None
    assert all(p.grad is None for p in m.visual_encoder_m.parameters())  # frozen copies
    assert int(m.queue_ptr) == 2 and m.idx_queue[0, :2].tolist() == [3, 4]
    assert torch.allclose(m.image_queue[:, :2].norm(dim=0), torch.ones(2), atol=1e-5)
    torch.optim.SGD(m.parameters(), lr=1.0).step()
    m({"image": images, "text_input": ["x", "y"], "image_id": [5, 6]})  # the momentum update follows
    assert not torch.equal(before, m.visual_encoder_m.norm.weight) and int(m.queue_ptr) == 4
    m.eval()
    scores = m.itm_scores(m.extract_features({"image": images}, mode="image").image_embeds_frozen, ["a", "b"])
    assert scores.shape == (2,)


def test_released_file_loads_and_pos_embed_is_resized(tmp_path, caplog):
    torch.manual_seed(0)
    src = load_model("blip_caption", "tiny")
    path = tmp_path / "model_tiny_caption.pth"
    torch.save({"model": src.state_dict()}, path)  # the released files' layout
    dst = load_model("blip_caption", "tiny", checkpoint=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    # a file trained at another resolution (LAVIS interpolates pos_embed)
    big = type(src).from_pretrained("tiny", image_size=48)
    with caplog.at_level(logging.INFO):
        report = big.load_checkpoint(str(path))
    assert report["unexpected_keys"] == [] and report["missing_keys"] == []
    assert big.visual_encoder.pos_embed.shape == (1, 37, 48)
    assert torch.equal(big.visual_encoder.pos_embed[:, 0], src.visual_encoder.pos_embed[:, 0])
    assert "visual_encoder.pos_embed: resizing (1, 17, 48) to (1, 37, 48)" in caplog.text
    # an unknown key is an error, not ignored
    torch.save({"model": {**src.state_dict(), "text_decoder.extra.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointMismatchError, match="text_decoder.extra.weight"):
        load_model("blip_caption", "tiny", checkpoint=str(path))
    # the feature extractor drops what the pretrain file carries beyond it, and says so
    fe = load_model("blip_feature_extractor", "tiny")
    state = {**fe.state_dict(), "text_decoder.bert.embeddings.word_embeddings.weight": torch.zeros(3, 3),
             "visual_encoder_m.cls_token": torch.zeros(1)}
    with caplog.at_level(logging.INFO):
        report = fe.load_checkpoint(state)
    assert sorted(report["dropped_keys"]) == ["text_decoder.bert.embeddings.word_embeddings.weight",
                                               "visual_encoder_m.cls_token"]
    assert "dropped 2 checkpoint key(s)" in caplog.text


def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    from lavis_lite.models.blip.caption import BlipCaption
    with pytest.raises(FileNotFoundError, match="no_such.pth"):
        BlipCaption.from_pretrained("tiny", load_pretrained=True, pretrained=str(tmp_path / "no_such.pth"))
    with pytest.raises(KeyError, match="Unknown model config key"):
        BlipCaption.from_pretrained("tiny", promt="a photo of ")
