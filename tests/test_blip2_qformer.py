"""Blip2Qformer (BLIP-2 stage 1): released key layout, losses, switches, masks, tokenizer."""
import json
import os

import pytest
import torch

from lavis_lite.common.registry import registry
from lavis_lite.models.blip2_qformer import Blip2Qformer
from lavis_lite.models.bert_tokenizer import init_bert_tokenizer

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "minigpt4qwen_qwen7b_keys.json")


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    texts = ["a red circle", "a blue square in the middle", "two green stars on a white background", "a red circle"]
    return {"image": torch.randn(n, 3, 32, 32, generator=g), "text_input": texts[:n], "image_id": [1, 2, 3, 1][:n]}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Blip2Qformer.from_pretrained("tiny")


def test_registered_names():
    assert registry.get_model_class("blip2") is Blip2Qformer
    assert registry.get_model_class("blip2_qformer") is Blip2Qformer


def test_pretrain_on_meta_has_released_keys_plus_text_side():
    with torch.device("meta"):
        model = Blip2Qformer.from_pretrained("pretrain", tokenizer_vocab="tiny")
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    with open(FIXTURE) as f:
        reference = {k: v for k, v in json.load(f).items() if not k.startswith("llm_proj.")}
    for key, shape in reference.items():
        assert key in got, f"missing released key {key}"
        assert got[key] == shape, f"{key}: {got[key]} vs released {shape}"
    H, V = 768, 30523
    expected_extra = {
        "Qformer.bert.embeddings.word_embeddings.weight": [V, H],
        "Qformer.bert.embeddings.position_embeddings.weight": [512, H],
        "Qformer.cls.predictions.bias": [V],
        "Qformer.cls.predictions.transform.dense.weight": [H, H],
        "Qformer.cls.predictions.transform.dense.bias": [H],
        "Qformer.cls.predictions.transform.LayerNorm.weight": [H],
        "Qformer.cls.predictions.transform.LayerNorm.bias": [H],
        "Qformer.cls.predictions.decoder.weight": [V, H],
        "vision_proj.weight": [256, H], "vision_proj.bias": [256],
        "text_proj.weight": [256, H], "text_proj.bias": [256],
        "itm_head.weight": [2, H], "itm_head.bias": [2],
        "temp": [],
    }
    for n in range(12):
        p = f"Qformer.bert.encoder.layer.{n}."
        expected_extra.update({
            p + "intermediate.dense.weight": [3072, H], p + "intermediate.dense.bias": [3072],
            p + "output.dense.weight": [H, 3072], p + "output.dense.bias": [H],
            p + "output.LayerNorm.weight": [H], p + "output.LayerNorm.bias": [H],
        })
    assert set(got) == set(reference) | set(expected_extra)
    for key, shape in expected_extra.items():
        assert got[key] == shape, key


def test_tokenizer_dec_bos_and_tiny_vocab():
    tok = init_bert_tokenizer("tiny")
    assert tok.bos_token == "[DEC]" and tok.bos_token_id == len(tok) - 1
    assert tok.pad_token_id == 0 and tok.cls_token == "[CLS]"
    ids = tok("A red circle, top-left.").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "a", "red", "circle", ",", "top", "-", "left", ".", "[SEP]"]
    with pytest.raises(FileNotFoundError, match="tokenizer_vocab"):
        init_bert_tokenizer("/nonexistent/bert-base-uncased")


def test_tokenizer_from_the_local_hf_cache_only(monkeypatch):
    import huggingface_hub
    from lavis_lite.models.bert_tokenizer import TINY_VOCAB

    asked = []
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name: asked.append((repo, name)) or TINY_VOCAB)
    assert len(init_bert_tokenizer("bert-base-uncased")) == len(init_bert_tokenizer("tiny"))
    assert asked == [("bert-base-uncased", "vocab.txt")]
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache.*tokenizer_vocab"):
        init_bert_tokenizer("bert-base-uncased")


def test_forward_losses_and_gradients(tiny):
    out = tiny(_batch())
    assert set(out) == {"loss", "loss_itc", "loss_itm", "loss_itg", "n_tokens"}
    assert out["n_tokens"] == 4
    for k in ("loss_itc", "loss_itm", "loss_itg"):
        assert torch.isfinite(out[k]) and out[k].item() > 0
    torch.testing.assert_close(out["loss"], out["loss_itc"] + out["loss_itm"] + out["loss_itg"])
    tiny.zero_grad()
    out["loss"].backward()
    no_grad = [n for n, p in tiny.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert no_grad == []
    # An untrained ITM head is near chance: ln 2
    assert abs(out["loss_itm"].item() - 0.693) < 0.1


@pytest.mark.parametrize("only", ["itc", "itm", "itg"])
def test_each_loss_can_be_switched_off(only):
    torch.manual_seed(0)
    model = Blip2Qformer.from_pretrained("tiny", losses={k: k == only for k in ("itc", "itm", "itg")})
    out = model(_batch())
    for k in ("itc", "itm", "itg"):
        assert (out[f"loss_{k}"].item() > 0) == (k == only)
    out["loss"].backward()
    grads = {n: p.grad is not None and bool(p.grad.any()) for n, p in model.named_parameters()}
    assert grads["itm_head.weight"] == (only == "itm")
    assert grads["text_proj.weight"] == (only == "itc")
    assert grads["temp"] == (only == "itc")
    assert grads["Qformer.cls.predictions.decoder.weight"] == (only == "itg")
    assert grads["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"]
    # Heads of switched-off losses are frozen, so they are not trainable weights of a checkpoint.
    trainable = set(model.trainable_state_dict())
    assert ("itm_head.weight" in trainable) == (only == "itm")
    assert ("temp" in trainable) == (only == "itc")
    assert ("Qformer.cls.predictions.bias" in trainable) == (only == "itg")
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if only == "itg":
        # ITG reads the queries' keys/values of every layer, never the last layer's query outputs.
        last = f"Qformer.bert.encoder.layer.{model.Qformer.config.num_hidden_layers - 1}."
        no_grad = [n for n in no_grad if not n.startswith((last + "crossattention.", last + "intermediate_query.",
                                                           last + "output_query."))]
    assert no_grad == []


def test_bad_config_and_input():
    with pytest.raises(KeyError, match="itx"):
        Blip2Qformer.from_pretrained("tiny", losses={"itx": True})
    with pytest.raises(ValueError, match="switched off"):
        Blip2Qformer.from_pretrained("tiny", losses={"itc": False, "itm": False, "itg": False})
    with pytest.raises(ValueError, match="tokenizer_vocab"):
        Blip2Qformer.from_pretrained("tiny", tokenizer_vocab=None)
    model = Blip2Qformer.from_pretrained("tiny")
    with pytest.raises(KeyError, match="text_input"):
        model({"image": torch.zeros(1, 3, 32, 32)})
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        model({"image": torch.zeros(2, 3, 32, 32), "text_input": ["a"]})


def test_temperature_clamped_in_forward(tiny):
    tiny.temp.data.fill_(5.0)
    tiny(_batch())
    assert tiny.temp.item() == pytest.approx(0.5)
    tiny.temp.data.fill_(0.07)


def test_frozen_vit_gets_no_gradient():
    model = Blip2Qformer.from_pretrained("tiny", freeze_vit=True)
    model.train()
    assert not model.visual_encoder.training
    model(_batch())["loss"].backward()
    assert all(p.grad is None for p in model.visual_encoder.parameters())
    assert model.query_tokens.grad is not None


def test_itg_masks_queries_never_see_text_and_text_is_causal(tiny):
    """Through the model's own ITG path: queries are cached from an image-only pass, text attends to
    all queries and to earlier text only."""
    tiny.eval()
    image = _batch(1)["image"]
    with torch.no_grad():
        frozen = tiny.encode_image(image)
        queries = tiny.encode_queries(frozen, use_cache=True)

        def text_logits(text, past):
            tok = tiny.tokenize([text])
            ids = tok.input_ids.clone()
            ids[:, 0] = tiny.tokenizer.bos_token_id
            atts = torch.cat([torch.ones(1, tiny.query_tokens.shape[1], dtype=torch.long), tok.attention_mask], 1)
            return tiny.Qformer(ids, attention_mask=atts, past_key_values=past).logits

        a = text_logits("a red circle on the left", queries.past_key_values)
        b = text_logits("a red circle on the right", queries.past_key_values)
        # Same prefix "[DEC] a red circle on the" -> same logits; the changed word changes its own position.
        torch.testing.assert_close(a[:, :6], b[:, :6])
        assert not torch.allclose(a[:, 6], b[:, 6])
        # The text sees the queries: another image changes every text position.
        other = tiny.encode_queries(tiny.encode_image(image.flip(-1) * 2), use_cache=True)
        c = text_logits("a red circle on the left", other.past_key_values)
        assert not torch.allclose(a[:, 0], c[:, 0])
        # Queries never see the text: in one decoder pass with queries and text together, the query
        # outputs equal the image-only pass whatever the text.
        q = tiny.query_tokens
        for text in ("a red circle", "two blue squares in the middle"):
            tok = tiny.tokenize([text])
            atts = torch.cat([torch.ones(1, q.shape[1], dtype=torch.long), tok.attention_mask], 1)
            joint = tiny.Qformer.bert(tok.input_ids, query_embeds=q, attention_mask=atts, is_decoder=True,
                                      encoder_hidden_states=frozen,
                                      encoder_attention_mask=torch.ones(frozen.shape[:-1], dtype=torch.long))
            torch.testing.assert_close(joint.last_hidden_state[:, :q.shape[1]], queries.last_hidden_state)
    tiny.train()


def test_hard_negatives_in_itm_exclude_same_image(tiny, monkeypatch):
    """The ITM batch pairs each text with an image of another id, and each image with another id's text."""
    from lavis_lite.models import blip2_losses as L
    seen = {}
    real = L.sample_hard_negatives

    def spy(sim_i2t, sim_t2i, positives, generator=None):
        seen["out"] = real(sim_i2t, sim_t2i, positives, generator)
        seen["positives"] = positives
        return seen["out"]
    monkeypatch.setattr(L, "sample_hard_negatives", spy)
    batch = _batch()
    for _ in range(5):
        tiny(batch)
        neg_img, neg_txt = seen["out"]
        ids = torch.tensor(batch["image_id"])
        assert (ids[neg_img] != ids).all() and (ids[neg_txt] != ids).all()
        assert seen["positives"][0, 3] and seen["positives"][3, 0]


def test_tiny_vocab_covers_every_demo_caption_word():
    """Each word of every caption the demo generator can write is one token of the tiny vocab."""
    import itertools
    from lavis_lite.datasets import demo

    tok = init_bert_tokenizer("tiny")
    captions = set()
    for colour, shape, bg, n, layout, variant in itertools.product(
            demo.COLOURS, demo.SHAPES, demo.BACKGROUNDS, (1, 2, 3), (None, "position"), (0, 1)):
        for cx in (4, 28):  # left and right of a 32-px image
            shapes = [{"shape": shape, "colour": colour, "cx": cx, "cy": 16, "size": 8}] * n
            captions.add(demo.caption_of({"background": bg, "shapes": shapes, "layout": layout}, 32, variant))
    assert len(captions) > 100
    for caption in captions:
        pieces = tok.tokenize(caption)
        assert "[UNK]" not in pieces and not any(p.startswith("##") for p in pieces), (caption, pieces)


def _ddp_forward(rank, world, init_file, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    batch = _batch(4)
    sl = slice(rank * 2, rank * 2 + 2)
    local = {"image": batch["image"][sl], "text_input": batch["text_input"][sl], "image_id": batch["image_id"][sl]}
    torch.manual_seed(0)
    itc_only = Blip2Qformer.from_pretrained("tiny", losses={"itc": True, "itm": False, "itg": False})
    loss = itc_only(local)["loss_itc"]
    torch.manual_seed(0)
    full = Blip2Qformer.from_pretrained("tiny")(local)  # ITM gathers padded token ids across ranks
    torch.save({"itc": loss.detach(), "full": {k: float(v) for k, v in full.items()}},
               os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


def test_two_process_forward_matches_whole_batch(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ddp_forward, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    res = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    whole = Blip2Qformer.from_pretrained("tiny", losses={"itc": True, "itm": False, "itg": False})(_batch(4))
    # image ids [1, 2, 3, 1]: the repeated image sits on both ranks and is a positive across them.
    mean = (res[0]["itc"] + res[1]["itc"]) / 2
    assert mean.item() == pytest.approx(whole["loss_itc"].item(), rel=1e-5)
    for r in res:
        assert all(v == v and v > 0 for k, v in r["full"].items() if k.startswith("loss")), r["full"]


def test_load_pretrained_released_style_file(tmp_path):
    """load_pretrained + pretrained: a {"model": state} .pth (with the tied LM-head bias alias) loads whole."""
    torch.manual_seed(1)
    source = Blip2Qformer.from_pretrained("tiny")
    state = dict(source.state_dict())
    state["Qformer.cls.predictions.decoder.bias"] = state["Qformer.cls.predictions.bias"]
    torch.save({"model": state}, tmp_path / "blip2_pretrained.pth")
    torch.manual_seed(2)
    model = Blip2Qformer.from_pretrained("tiny", load_pretrained=True, pretrained=str(tmp_path / "blip2_pretrained.pth"))
    for k, v in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, msg=k)
    # The same file as a checkpoint of load_model (strict about unknown keys; the alias is folded in).
    from lavis_lite.models import load_model
    loaded = load_model("blip2", "tiny", checkpoint=str(tmp_path / "blip2_pretrained.pth"))
    torch.testing.assert_close(loaded.Qformer.cls.predictions.bias, source.Qformer.cls.predictions.bias)
    torch.testing.assert_close(loaded.itm_head.weight, source.itm_head.weight)
    with pytest.raises(ValueError, match="pretrained"):
        Blip2Qformer.from_pretrained("tiny", load_pretrained=True)
    with pytest.raises(KeyError, match="Unknown model config key"):
        Blip2Qformer.from_config({"model_type": "tiny", "vit_size": {}})


@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_tokenize_memo_equals_the_tokenizer(padding):
    """Blip2Qformer.tokenize encodes each distinct text once (TextIdsMemo) and gives exactly what the
    tokenizer gives for the batch: ids, token types and mask, truncation and padding included."""
    from lavis_lite.models.bert_tokenizer import TextIdsMemo

    model = Blip2Qformer.from_pretrained("tiny")
    texts = ["a red circle on a white background.", "A PICTURE of two blue squares!", "",
             " ".join(["word"] * 80), "a red circle on a white background."]
    want = model.tokenizer(texts, padding=padding, truncation=True, max_length=model.max_txt_len,
                           return_tensors="pt")
    for _ in range(2):  # the second call reads the memo
        got = model.tokenize(texts, padding=padding)
        assert set(got.keys()) == set(want.keys())
        for key in want:
            assert torch.equal(got[key], want[key]), key
    assert len(model._text_ids.ids) == 4  # distinct texts, each once
    memo = TextIdsMemo(model.tokenizer, 8, max_entries=1)
    assert torch.equal(memo.encode(["a b c", "d e"])["input_ids"],
                       model.tokenizer(["a b c", "d e"], padding="longest", truncation=True, max_length=8,
                                       return_tensors="pt")["input_ids"])
    assert len(memo.ids) == 1  # bounded
    with pytest.raises(ValueError, match="padding must be"):
        memo.encode(["a"], padding="do_not_pad")
