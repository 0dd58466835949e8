"""Padding to the longest sample gives the loss of padding to max_txt_len; length-grouped sampler."""
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from lavis_lite.datasets.samplers import LengthGroupedSampler, estimate_lengths
from lavis_lite.models.packing import IGNORE_INDEX, pad_sequences


def tiny_qwen2():
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    return Qwen2ForCausalLM(cfg).eval()


def test_pad_to_longest_equals_pad_to_max_loss_and_grads():
    """Tolerance: 1e-5 absolute on the float32 loss, 1e-5 on the gradients."""
    model = tiny_qwen2()
    g = torch.Generator().manual_seed(0)
    lengths = [5, 17, 11, 3]
    ids = [torch.randint(0, 97, (n,), generator=g) for n in lengths]
    labels = []
    for x in ids:
        y = x.clone()
        y[: len(x) // 2] = IGNORE_INDEX
        labels.append(y)
    results = {}
    for name, pad_to in (("longest", None), ("max", 64)):
        embeds = [model.get_input_embeddings()(x).detach().requires_grad_(True) for x in ids]
        x, y, m = pad_sequences(embeds, labels, pad_to=pad_to)
        assert x.shape[1] == (max(lengths) if pad_to is None else pad_to)
        assert m.sum(1).tolist() == lengths  # the mask comes from lengths
        loss = model(inputs_embeds=x, attention_mask=m, labels=y).loss
        loss.backward()
        results[name] = (loss.detach(), [e.grad for e in embeds])
    assert abs(results["longest"][0].item() - results["max"][0].item()) <= 1e-5
    for a, b in zip(results["longest"][1], results["max"][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_pad_to_errors_and_multiple():
    e = [torch.zeros(7, 4)]
    l = [torch.zeros(7, dtype=torch.long)]
    with pytest.raises(ValueError, match="shorter than the longest"):
        pad_sequences(e, l, pad_to=5)
    x, _, _ = pad_sequences(e, l, pad_to_multiple_of=8)
    assert x.shape == (1, 8, 4)


def test_length_grouped_batches_are_homogeneous():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 500, (400,), generator=g).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=1, mega_batch_mult=50)
    order = list(sampler)
    assert sorted(order) == list(range(400)) and len(sampler) == 400
    batches = [order[i:i + 8] for i in range(0, 400, 8)]
    grouped_waste = sum(8 * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    perm = torch.randperm(400, generator=g).tolist()
    random_waste = sum(8 * max(lengths[i] for i in perm[s:s + 8]) - sum(lengths[i] for i in perm[s:s + 8])
                       for s in range(0, 400, 8))
    assert grouped_waste < 0.25 * random_waste
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # longest batch first: OOM shows at step 0
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new order each epoch
    sampler.set_epoch(0)
    assert list(sampler) == order  # and reproducible


def test_length_grouped_is_distributed_aware():
    lengths = list(range(1, 102))  # 101 samples, 2 ranks x batch 4 -> 13 global batches, padded to 104
    shares = [list(LengthGroupedSampler(lengths, batch_size=4, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 52
    assert set(shares[0]) | set(shares[1]) == set(range(101))
    # same step on both ranks -> similar lengths; disjoint except for the 3 padding repeats
    assert len(set(shares[0]) & set(shares[1])) <= 3
    for step in range(13):
        a, b = shares[0][step * 4:(step + 1) * 4], shares[1][step * 4:(step + 1) * 4]
        assert abs(max(lengths[i] for i in a) - max(lengths[i] for i in b)) <= 8
    dropped = LengthGroupedSampler(lengths, batch_size=4, num_replicas=2, rank=1, drop_last=True)
    assert len(dropped) == len(list(dropped)) == 48
    with pytest.raises(ValueError, match="rank 2"):
        LengthGroupedSampler(lengths, batch_size=4, num_replicas=2, rank=2)


def test_estimate_lengths():
    ann = [{"images": ["a.png"], "conversations": [{"from": "human", "value": "x" * 40},
                                                   {"from": "gpt", "value": "y" * 40}]},
           {"images": [], "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
    lengths = estimate_lengths(ann, num_query_token=32)
    assert lengths[0] == 20 + 10 + 32 and lengths[1] == 1 + 10
    with pytest.raises(KeyError, match="record 0"):
        estimate_lengths([{"text": "x"}])


def test_model_pad_to_longest_equals_pad_to_max_txt_len():
    """The model's switch: padding to max_txt_len (published recipe) vs to the longest sample.
    Tolerance 1e-5 on the float32 loss and llm_proj gradients."""
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen

    torch.manual_seed(0)
    model = Minigpt4Qwen.from_pretrained("tiny", max_txt_len=200)
    model.train()
    convs = [[{"from": "human", "value": "<ImageHere> What colour?"}, {"from": "gpt", "value": "red"}],
             [{"from": "human", "value": "<ImageHere> Describe it."},
              {"from": "gpt", "value": "a small blue square in the top left corner of a gray picture"}]]
    samples = {"image": torch.randn(2, 3, 32, 32), "n_images": [1, 1], "conversations": convs}
    outs = {}
    for pad_to_max in (False, True):
        model.pad_to_max_txt_len = pad_to_max
        model.zero_grad(set_to_none=True)
        out = model(samples)
        out["loss"].backward()
        outs[pad_to_max] = (out["loss"].item(), out["n_tokens"], model.llm_proj.weight.grad.clone())
    assert outs[False][1] == outs[True][1] > 0
    assert abs(outs[False][0] - outs[True][0]) <= 1e-5
    torch.testing.assert_close(outs[False][2], outs[True][2], atol=1e-5, rtol=1e-4)


def test_preprocess_caches_encoded_records_and_pads_to_longest(monkeypatch):
    """A record seen again is not tokenised again; results are identical; rows pad to the longest."""
    from lavis_lite.models import conversation_encoder as chatml
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen

    model = Minigpt4Qwen.from_pretrained("tiny", max_txt_len=200)
    pre = model.chatml
    convs = [[{"from": "human", "value": "<ImageHere> What colour?"}, {"from": "gpt", "value": "red"}],
             [{"from": "human", "value": "<ImageHere> Describe it."}, {"from": "gpt", "value": "a blue square " * 5}]]
    first = pre(convs, [1, 1])
    assert first.input_ids.shape[1] == max(first.lengths)
    calls = []
    real = chatml.encode_plain
    monkeypatch.setattr(chatml, "encode_plain",
                        lambda tok, texts, **kw: calls.append(list(texts)) or real(tok, texts, **kw))
    again = pre(convs, [1, 1])
    assert not any(calls)  # nothing left to tokenise (no tokenizer call, or one with no text)
    for a, b in ((first.input_ids, again.input_ids), (first.labels, again.labels),
                 (first.attention_mask, again.attention_mask)):
        assert torch.equal(a, b)
    changed = [convs[0], [convs[1][0], {"from": "gpt", "value": "a red circle"}]]
    pre(changed, [1, 1])
    # the cache is per record: only the changed record is tokenised again, the unchanged one is not
    assert any("a red circle" in t for t in calls[-1])
    assert not any("What colour?" in t for t in calls[-1]) and not any(t.endswith("\nred") for t in calls[-1])


def test_runner_length_grouped_sampler_switch(tmp_path):
    """run.length_grouped_sampler: the training stream draws batches of similar estimated length and
    still covers the data set once per epoch."""
    from lavis_lite.datasets import demo
    from lavis_lite.datasets.samplers import LengthGroupedSampler
    from lavis_lite.runners.launch import build_job

    demo.generate(str(tmp_path / "demo"), n=120, seed=0, size=32, n_shards=1)
    run_yaml = tmp_path / "run.yaml"
    body = f"""
model: {{arch: minigpt4qwen, model_type: tiny}}
datasets:
  instruction:
    build_info:
      annotations: {{train: {{storage: {tmp_path}/demo/llava/train.json}}}}
      images: {{storage: {tmp_path}/demo/images}}
    vis_processor:
      train: {{name: blip2_image_eval, image_size: 32}}
      eval: {{name: blip2_image_eval, image_size: 32}}
run:
  task: instruction_tuning
  device: cpu
  init_lr: 1.0e-3
  max_epoch: 1
  batch_size_train: 4
  train_splits: [train]
  output_dir: {tmp_path}/out
  length_grouped_sampler: LGS
"""
    spreads = {}
    for flag in (True, False):
        run_yaml.write_text(body.replace("LGS", str(flag)))
        _, _, runner = build_job(["--cfg-path", str(run_yaml), "--job-id", f"lgs{flag}"])
        source = runner.train_stream.sources[0]
        assert isinstance(source._loader().sampler, LengthGroupedSampler) == flag
        assert (runner._sample_lengths(source.dataset) is not None) == flag
        estimates = estimate_lengths(source.dataset.annotation, num_query_token=8)
        lengths = {a["instance_id"]: n for a, n in zip(source.dataset.annotation, estimates)}
        seen, spread = [], 0
        for _ in range(len(source)):
            batch = source.next_batch()
            batch_lengths = [lengths[i] for i in batch["instance_id"]]
            spread += max(batch_lengths) - min(batch_lengths)
            seen += batch["instance_id"]
        assert len(set(seen)) == len(seen) == len(source) * 4  # no repeats within the epoch
        spreads[flag] = spread
    assert spreads[True] < 0.5 * spreads[False]


def test_estimate_lengths_other_record_kinds():
    caption = estimate_lengths([{"image": "a.png", "caption": "x" * 40}], num_query_token=32)
    assert caption == [10 + 5 + 32]
    vqa = estimate_lengths([{"image": "a.png", "question": "q" * 8, "answer": ["a" * 8, "b" * 100]}], 32)
    assert vqa == [4 + 10 + 32]


def test_encode_plain_fast_path_equals_the_tokenizer_call():
    """chatml.encode_plain's direct Rust-tokenizer path gives the ids of
    tokenizer(..., split_special_tokens=True): control strings typed by users stay plain text."""
    from lavis_lite.models import llm as llm_utils
    from lavis_lite.models.chatml import encode_plain

    tok = llm_utils.load_tokenizer(None, "qwen2")
    llm_utils.ensure_image_token(tok, "<|image_pad|>", "qwen2")
    texts = ["", "hello world", "<|im_start|>system\nx<|im_end|>", "<|image_pad|><ImageHere> é 日本 🙂",
             "  two  spaces\n\nand newlines  ", "<|endoftext|>"]
    want = tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    tok._tokenizer.encode_special_tokens = False
    assert encode_plain(tok, texts) == want
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end not in encode_plain(tok, ["<|im_end|>"])[0]
    assert tok._tokenizer.encode_special_tokens is False  # the flag is restored
    # and a normal call afterwards still knows the control token
    assert tok("<|im_end|>", add_special_tokens=False)["input_ids"] == [im_end]


def test_preprocess_cache_size_yaml_switch():
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen

    off = Minigpt4Qwen.from_pretrained("tiny", preprocess_cache_size=0)
    conv = [[{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]]
    off.preprocess(conv, [0])
    assert off.chatml.cache_size == 0 and len(off.chatml._cache) == 0
    on = Minigpt4Qwen.from_pretrained("tiny")
    on.preprocess(conv, [0])
    assert on.chatml.cache_size == 100_000 and len(on.chatml._cache) == 1
