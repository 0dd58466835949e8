"""Packing: several conversations per row give exactly the loss and gradients of the unpacked batch.

Tolerance: float32 on CPU, |packed - unpacked| <= 1e-5 absolute on the mean loss (observed ~1e-7),
1e-4 on input-embedding gradients; float64 runs agree to 1e-10.
"""
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from lavis_lite.models.packing import (IGNORE_INDEX, block_causal_mask, pack_sequences, pad_sequences,
                                       padding_stats, plan_rows)
from tiny_helpers import mixed_conversations


def tiny_qwen2(attn="sdpa", dtype=torch.float32):
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      attn_implementation=attn)
    return Qwen2ForCausalLM(cfg).to(dtype).eval()


def make_samples(model, lengths, seed=1, n_image_tokens=4):
    """Per-sample (embeds, labels) the way the multimodal model builds them: image query tokens
    (random "projected" embeddings, no label) spliced after a prompt, then supervised reply tokens."""
    g = torch.Generator().manual_seed(seed)
    emb = model.get_input_embeddings()
    dtype = emb.weight.dtype
    embeds, labels = [], []
    for n in lengths:
        ids = torch.randint(0, 97, (n,), generator=g)
        e = emb(ids).detach().clone()
        e[1:1 + n_image_tokens] = torch.randn(n_image_tokens, e.shape[1], generator=g).to(dtype)
        lab = ids.clone()
        lab[: n // 2] = IGNORE_INDEX  # system + user part unsupervised
        embeds.append(e)
        labels.append(lab)
    return embeds, labels


def unpacked_loss(model, embeds, labels):
    x, y, m = pad_sequences(embeds, labels)
    return model(inputs_embeds=x, attention_mask=m, labels=y).loss


@pytest.mark.parametrize("attn,mode", [("sdpa", "mask"), ("eager", "mask"), ("sdpa", "position_ids")])
def test_packed_loss_equals_unpacked(attn, mode):
    model = tiny_qwen2(attn)
    lengths = [37, 12, 50, 9, 23, 61, 15]
    embeds, labels = make_samples(model, lengths)
    ref = unpacked_loss(model, embeds, labels)
    packed = pack_sequences(embeds, labels, max_len=64, attention=mode, attn_implementation=attn)
    assert len(packed.rows) < len(lengths)  # something was actually packed
    assert any(len(r) > 1 for r in packed.rows)
    out = model(**packed.model_kwargs(), labels=packed.labels)
    assert torch.isfinite(out.loss)
    assert abs(out.loss.item() - ref.item()) <= 1e-5, (out.loss.item(), ref.item())


def test_packed_loss_and_grads_float64():
    model = tiny_qwen2("sdpa", torch.float64)
    embeds, labels = make_samples(model, [30, 7, 44, 19, 25], seed=3)
    leaves = [e.clone().requires_grad_(True) for e in embeds]
    ref = unpacked_loss(model, leaves, labels)
    ref.backward()
    ref_grads = [e.grad.clone() for e in leaves]
    leaves2 = [e.clone().requires_grad_(True) for e in embeds]
    packed = pack_sequences(leaves2, labels, max_len=64)
    loss = model(**packed.model_kwargs(), labels=packed.labels).loss
    loss.backward()
    assert abs(loss.item() - ref.item()) < 1e-10
    for g_ref, e in zip(ref_grads, leaves2):
        torch.testing.assert_close(e.grad, g_ref, atol=1e-10, rtol=1e-8)


def test_packed_logits_match_per_sample_logits():
    model = tiny_qwen2("sdpa")
    embeds, labels = make_samples(model, [20, 11, 29], seed=5)
    packed = pack_sequences(embeds, labels, max_len=64)
    logits = model(**packed.model_kwargs()).logits
    for r, row in enumerate(packed.rows):
        start = 0
        for i in row:
            n = embeds[i].shape[0]
            alone = model(inputs_embeds=embeds[i][None]).logits[0]
            torch.testing.assert_close(logits[r, start:start + n], alone, atol=1e-5, rtol=1e-4)
            start += n


def test_pack_layout_positions_labels_and_mask():
    embeds = [torch.full((n, 2), float(i)) for i, n in enumerate([3, 2, 4])]
    labels = [torch.arange(n) + 10 * i for i, n in enumerate([3, 2, 4])]
    p = pack_sequences(embeds, labels, max_len=6, rows=[[0, 1], [2]])
    assert p.inputs_embeds.shape == (2, 5, 2)  # padded to longest row (5), not max_len (6)
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert p.segment_ids.tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, -1]]
    # the first token of each conversation is never a target; padding is ignored
    assert p.labels.tolist() == [[IGNORE_INDEX, 1, 2, IGNORE_INDEX, 11], [IGNORE_INDEX, 21, 22, 23, IGNORE_INDEX]]
    # images (here: values) stay with their own conversation
    assert p.inputs_embeds[0, 3:, 0].tolist() == [1.0, 1.0] and p.inputs_embeds[1, :4, 0].tolist() == [2.0] * 4
    m = p.attention_mask[0, 0]
    assert m.shape == (5, 5) and p.attention_mask.dtype == torch.bool
    assert m[4].tolist() == [False, False, False, True, True]  # 2nd conversation never sees the 1st
    assert m[2].tolist() == [True, True, True, False, False]  # causal inside the 1st
    assert p.attention_mask[1, 0, 4].tolist() == [False] * 4 + [True]  # padding: itself only, never NaN


def test_plan_rows_fits_and_covers():
    lengths = [50, 10, 30, 30, 20, 64, 5]
    rows = plan_rows(lengths, 64)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 64 for r in rows)
    assert len(rows) == 4  # 209 tokens need at least ceil(209/64) = 4 rows
    # exact token counts: the longest sample (64) fills a row alone, so every packed row is 64 wide
    assert padding_stats(lengths, 64) == {"real_tokens": 209, "pad_to_max": 7 * 64, "pad_to_longest": 7 * 64,
                                          "packed": 4 * 64, "packed_rows": 4}
    # short samples: one packed row of 35 beats 3 x 20 (longest) and 3 x 64 (max)
    assert padding_stats([10, 20, 5], 64) == {"real_tokens": 35, "pad_to_max": 192, "pad_to_longest": 60,
                                              "packed": 35, "packed_rows": 1}


def test_errors_are_clear():
    with pytest.raises(ValueError, match="sample 1 has 70 tokens"):
        plan_rows([10, 70], 64)
    with pytest.raises(ValueError, match="exactly once"):
        pack_sequences([torch.zeros(2, 2)] * 2, [torch.zeros(2, dtype=torch.long)] * 2, 8, rows=[[0]])
    with pytest.raises(ValueError, match="sample 0"):
        pack_sequences([torch.zeros(3, 2)], [torch.zeros(2, dtype=torch.long)], 8)
    with pytest.raises(ValueError, match="attention"):
        pack_sequences([torch.zeros(2, 2)], [torch.zeros(2, dtype=torch.long)], 8, attention="flash")


def test_block_causal_mask_matches_plain_causal_for_one_segment():
    seg = torch.zeros(1, 6, dtype=torch.long)
    assert torch.equal(block_causal_mask(seg)[0, 0], torch.ones(6, 6, dtype=torch.bool).tril())


# ---- the model's switch: Minigpt4Qwen(packing=True) --------------------------------------------
def _conversations():
    return mixed_conversations(3)


def test_model_packing_switch_gives_the_same_loss_and_grads():
    """Tolerance: 1e-5 on the loss, 1e-5 / 1e-4 (abs / rel) on llm_proj gradients (float32)."""
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen

    torch.manual_seed(0)
    model = Minigpt4Qwen.from_pretrained("tiny", max_txt_len=160)
    model.train()
    samples = {"image": torch.randn(4, 3, 32, 32), "n_images": [1, 1, 2, 0], "conversations": _conversations()}
    results = {}
    for packing in (False, True):
        model.packing = packing
        model.zero_grad(set_to_none=True)
        out = model(samples)
        out["loss"].backward()
        results[packing] = (out, model.llm_proj.weight.grad.clone())
    (plain, g_plain), (packed, g_packed) = results[False], results[True]
    assert packed["n_tokens"] == plain["n_tokens"] > 0
    assert packed["n_correct"] == plain["n_correct"]
    assert abs(packed["loss"].item() - plain["loss"].item()) <= 1e-5
    torch.testing.assert_close(g_packed, g_plain, atol=1e-5, rtol=1e-4)


def test_model_packing_actually_packs():
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen

    model = Minigpt4Qwen.from_pretrained("tiny", max_txt_len=160, packing=True)
    samples = {"image": torch.randn(4, 3, 32, 32), "n_images": [1, 1, 2, 0], "conversations": _conversations()}
    batch = model.collate_conversations(samples)
    rows = batch["input_ids"].shape[0]
    assert rows < 4  # four samples in fewer rows
    assert batch["images_per_row"] and sum(batch["images_per_row"]) == 4
    # positions restart at every conversation; segments number them, -1 on padding
    starts = (batch["position_ids"] == 0) & (batch["segment_ids"] >= 0)
    assert int(starts.sum()) == 4
    assert (batch["labels"][starts] == IGNORE_INDEX).all()
    # every row holds exactly its images' placeholder runs
    per_row = (batch["input_ids"] == model.image_token_id).sum(1).tolist()
    assert per_row == [n * model.num_query_token for n in batch["images_per_row"]]
    model(samples)
    with pytest.raises(ValueError, match="exclude each other"):
        model.pad_to_max_txt_len = True
        model({"image": torch.randn(1, 3, 32, 32), "n_images": [1], "conversations": _conversations()[:1]})


def test_arrange_batch_layouts():
    from lavis_lite.models.packing import arrange_batch

    embeds = torch.randn(3, 6, 4)
    labels = torch.tensor([[-100, 1, 2, -100, -100, -100], [-100, 3, 4, 5, 6, 7], [-100, 8, -100, -100, -100, -100]])
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 1, 0, 0, 0, 0]])
    lengths = [3, 6, 2]
    same = arrange_batch(embeds, mask, labels, lengths, max_len=8)
    assert same["inputs_embeds"] is embeds and same["position_ids"] is None
    padded = arrange_batch(embeds, mask, labels, lengths, max_len=8, pad_to_max=True)
    assert padded["inputs_embeds"].shape == (3, 8, 4) and padded["attention_mask"][:, 6:].sum() == 0
    assert (padded["labels"][:, 6:] == IGNORE_INDEX).all()
    packed = arrange_batch(embeds, mask, labels, lengths, max_len=8, packing=True)
    assert packed["attention_mask"].shape[:2] == (2, 1)  # 3 samples in 2 rows: [6] and [3 + 2]
    assert packed["position_ids"][1].tolist()[:5] == [0, 1, 2, 0, 1]
    flash = arrange_batch(embeds, mask, labels, lengths, max_len=8, packing=True,
                          attn_implementation="flash_attention_2")
    assert flash["attention_mask"] is None and flash["position_ids"] is not None  # varlen via positions
