"""Tiny MiniGPT4-Qwen: image splicing, token-weighted loss, freezing, LoRA, checkpoints, generation."""
import logging

import pytest
import torch
from safetensors.torch import save_file

from lavis_lite.models import load_model, load_model_and_preprocess, model_zoo
from lavis_lite.models.base_model import CheckpointMismatchError
from lavis_lite.models.eva_vit import VisionTransformer
from lavis_lite.models.llm import default_lora_targets, is_grad_checkpointing
from lavis_lite.models.minigpt4qwen import Minigpt4Qwen
from lavis_lite.models.qformer import QformerLMHeadModel

Q = 8  # tiny num_query_token


def build(seed=0, **overrides):
    torch.manual_seed(seed)
    return Minigpt4Qwen.from_pretrained("tiny", **overrides)


def conv(question, answer, marks=1):
    return [{"from": "human", "value": "<ImageHere> " * marks + question}, {"from": "gpt", "value": answer}]


def batch(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    convs = [conv("What colour is the shape?", "red"), conv("Describe the image.", "A blue square in the center."),
             conv("How many shapes are there?", "three"), conv("Where is the shape?", "at the top left")][:n]
    return {"image": torch.randn(n, 3, 32, 32, generator=g), "n_images": [1] * n, "conversations": convs}


def assert_batch_matches_its_samples(model, samples):
    """The batch loss is the token-weighted mean of its samples' losses and n_tokens their sum (padding,
    masks and image placement do not leak between rows)."""
    from lavis_lite.tasks.instruction_eval import split_instruction_batch
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(samples)
            singles = [model(one) for one in split_instruction_batch(samples)]
    finally:
        model.train(was_training)
    n = [int(o["n_tokens"]) for o in singles]
    assert int(out["n_tokens"]) == sum(n) and min(n) > 0
    want = sum(float(o["loss"]) * k for o, k in zip(singles, n)) / sum(n)
    assert float(out["loss"]) == pytest.approx(want, rel=1e-4, abs=1e-5)
    return out


@pytest.fixture(scope="module")
def model():
    return build().eval()


def test_placeholders_receive_projected_query_embeddings(model):
    samples = batch(2)
    pre = model.preprocess(samples["conversations"], [1, 1])
    embeds = model.encode_image(samples["image"])
    assert embeds.shape == (2, Q, 128)
    spliced = model._splice(pre.input_ids, embeds, [1, 1])
    for i in range(2):
        slots = (pre.input_ids[i] == model.image_token_id).nonzero().flatten()
        assert len(slots) == Q
        assert torch.equal(spliced[i, slots], embeds[i])
        other = (pre.input_ids[i] != model.image_token_id)
        assert torch.equal(spliced[i, other], model.llm_model.get_input_embeddings()(pre.input_ids[i, other]))


def test_forward_loss_is_mean_over_supervised_tokens(model):
    samples = batch(2)
    out = model(samples)
    pre = model.preprocess(samples["conversations"], [1, 1])
    inputs = model._splice(pre.input_ids, model.encode_image(samples["image"]), [1, 1])
    logits = model.llm_model(inputs_embeds=inputs, attention_mask=pre.attention_mask).logits
    target = pre.labels[:, 1:]
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1))
    assert out["n_tokens"] == int((target != -100).sum())
    assert torch.allclose(out["loss"], ref, atol=1e-5)
    assert 0 <= out["n_correct"] <= out["n_tokens"]


def test_two_half_batches_accumulate_to_the_full_batch():
    model = build(freeze_qformer=False, freeze_queries=False).train()
    full = batch(4)
    out = model(full)
    out["loss"].backward()
    grads_full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    halves = [{k: v[:1] for k, v in full.items()}, {k: v[1:] for k, v in full.items()}]  # unequal token counts
    outs = [model(h) for h in halves]
    total = sum(o["n_tokens"] for o in outs)
    assert total == out["n_tokens"] and outs[0]["n_tokens"] != outs[1]["n_tokens"]
    for o in outs:
        (o["loss"] * o["n_tokens"] / total).backward()
    acc_loss = sum(o["loss"].item() * o["n_tokens"] for o in outs) / total
    assert abs(acc_loss - out["loss"].item()) < 1e-5
    assert grads_full
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, grads_full[n], atol=1e-6), n


@pytest.mark.parametrize("flags, trainable_prefixes", [
    ({}, ["llm_proj."]),
    ({"freeze_qformer": False, "freeze_queries": False}, ["llm_proj.", "Qformer.", "query_tokens"]),
    ({"freeze_queries": False, "freeze_proj": True}, ["query_tokens"]),
    ({"unfreeze_pos_embed": True}, ["llm_proj.", "visual_encoder.pos_embed"]),
    ({"freeze_vit": False, "freeze_proj": True}, ["visual_encoder.", "ln_vision."]),
    ({"freeze_llm": False, "freeze_proj": True}, ["llm_model."]),
])
def test_backward_reaches_exactly_the_unfrozen_parameters(flags, trainable_prefixes):
    model = build(**flags).train()
    model(batch(2))["loss"].backward()
    for name, p in model.named_parameters():
        should = any(name.startswith(prefix) for prefix in trainable_prefixes)
        assert p.requires_grad == should, name
        if should:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_frozen_parts_stay_in_eval_mode_and_feature_stages():
    model = build().train()
    assert not model.visual_encoder.training and not model.Qformer.training and model.llm_proj.training
    assert model.frozen_feature_stage() == "qformer"
    assert build(freeze_proj=True).frozen_feature_stage() == "proj"
    assert build(freeze_queries=False).frozen_feature_stage() == "vit"
    assert build(freeze_vit=False).frozen_feature_stage() is None


def test_cached_features_give_the_same_loss_as_images(model):
    samples = batch(3)
    feats, stage = model.extract_frozen_features(samples["image"])
    assert stage == "qformer" and feats.shape == (3, Q, 64)
    cached = {**{k: v for k, v in samples.items() if k != "image"}, "image_features": feats}
    assert torch.allclose(model(samples)["loss"], model(cached)["loss"], atol=1e-6)
    vit = model.encode_image(samples["image"], upto="vit")
    assert torch.allclose(model.encode_image(features=vit, stage="vit"), model.encode_image(samples["image"]), atol=1e-6)


def test_image_count_errors_name_the_problem(model):
    samples = batch(2)
    with pytest.raises(ValueError, match="adds up to 2 images but the batch holds 3"):
        model({**samples, "image": torch.randn(3, 3, 32, 32)})
    with pytest.raises(ValueError, match="sample 1 has 2 image"):
        model({**samples, "image": torch.randn(3, 3, 32, 32), "n_images": [1, 2]})


def test_several_images_and_none(model):
    samples = {"image": torch.randn(3, 3, 32, 32), "n_images": [2, 0, 1],
               "conversations": [conv("Which has more shapes?", "the first", marks=2), conv("Hello", "Hi", marks=0),
                                 conv("What colour?", "red")]}
    assert_batch_matches_its_samples(model, samples)


def test_truncation_drops_the_images_of_dropped_rounds():
    model = build(max_txt_len=60)
    c = [{"from": "human", "value": "<ImageHere> What colour?"}, {"from": "gpt", "value": "red"},
         {"from": "human", "value": "<ImageHere> Describe the image in detail please."}, {"from": "gpt", "value": "A blue square."}]
    samples = {"image": torch.randn(2, 3, 32, 32), "n_images": [2], "conversations": [c]}
    pre = model.preprocess(c and [c], [2])
    assert pre.n_images_used == [1] and pre.lengths[0] <= 60
    assert model(samples)["n_tokens"] == 2  # "red" + <|im_end|>


def test_lora_wraps_the_qwen2_projections():
    model = build(get_lora=True, lora_r=4)
    wrapped = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if "lora_A" in n}
    suffixes = {w.rsplit(".", 1)[-1] for w in wrapped}
    assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert len(wrapped) == 4 * 2  # 4 projections x 2 layers
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("llm_proj.") for n in trainable)
    model.train()
    model(batch(2))["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)
    assert default_lora_targets("qwen") == ["c_attn", "c_proj", "w1", "w2"]
    mlp = build(get_lora=True, lora_include_mlp=True)
    assert {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in mlp.named_parameters() if "lora_A" in n} == \
        {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with pytest.raises(ValueError, match="c_attn"):
        build(get_lora=True, lora_target_modules=["c_attn"])


def test_trainable_weights_round_trip(tmp_path):
    trained = build(seed=1, freeze_queries=False)
    with torch.no_grad():
        trained.llm_proj.weight.add_(0.5)
        trained.query_tokens.add_(0.5)
    state = trained.trainable_state_dict()
    assert set(state) == {"llm_proj.weight", "llm_proj.bias", "query_tokens"}
    path = tmp_path / "trainable.safetensors"
    save_file(state, str(path))
    fresh = build(seed=2, freeze_queries=False)
    report = fresh.load_checkpoint(str(path))
    assert report["unexpected_keys"] == [] and report["shape_mismatch"] == []
    for k, v in state.items():
        assert torch.equal(fresh.state_dict()[k], v)
    loaded = load_model("minigpt4qwen", "tiny", checkpoint=str(path))
    assert torch.equal(loaded.llm_proj.weight, state["llm_proj.weight"])
    save_file({"llm_proj.weight": torch.zeros(3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="llm_proj.weight"):
        fresh.load_checkpoint(str(tmp_path / "bad.safetensors"))


def blip2_stage1_state(model, extra_block=True, n_query=Q):
    """A BLIP-2-style checkpoint for the tiny sizes: ViT with one more block, the Q-Former with its text
    side, and the stage-1 heads."""
    torch.manual_seed(5)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=3 if extra_block else 2, num_heads=4,
                            mlp_ratio=2.0)
    cfg = dict(model.Qformer.config.__dict__, text_input=True)
    qformer = QformerLMHeadModel(cfg)
    state = {f"visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    state.update({f"Qformer.{k}": v for k, v in qformer.state_dict().items()})
    state["Qformer.cls.predictions.decoder.bias"] = state["Qformer.cls.predictions.bias"].clone()
    state.update({"ln_vision.weight": torch.full((64,), 2.0), "ln_vision.bias": torch.zeros(64),
                  "query_tokens": torch.randn(1, n_query, 64), "vision_proj.weight": torch.zeros(16, 64),
                  "vision_proj.bias": torch.zeros(16), "text_proj.weight": torch.zeros(16, 64),
                  "text_proj.bias": torch.zeros(16), "itm_head.weight": torch.zeros(2, 64),
                  "itm_head.bias": torch.zeros(2), "temp": torch.tensor(0.07)})
    return state


def test_blip2_checkpoint_loads_reporting_only_the_text_side(tmp_path, caplog):
    model = build()
    state = blip2_stage1_state(model)
    path = tmp_path / "blip2_pretrained.pth"
    torch.save({"model": state}, path)
    with caplog.at_level(logging.INFO):
        report = model.load_from_pretrained(str(path))
    dropped = set(report["dropped"])
    expected = {k for k in state if k.startswith("visual_encoder.blocks.2.")} | {
        k for k in state if any(p in k for p in ("word_embeddings", "position_embeddings", ".intermediate.",
                                                  ".output.", "Qformer.cls.", "vision_proj", "text_proj",
                                                  "itm_head")) and "_query" not in k and ".attention." not in k
        and "crossattention" not in k} | {"temp"}
    assert dropped == expected
    assert "dropped" in caplog.text and "word_embeddings" in caplog.text
    assert set(report["missing"]) == {k for k in model.state_dict() if k.startswith(("llm_model.", "llm_proj."))}
    assert torch.equal(model.query_tokens, state["query_tokens"])
    assert torch.equal(model.visual_encoder.blocks[1].mlp.fc1.weight, state["visual_encoder.blocks.1.mlp.fc1.weight"])
    key = "Qformer.bert.encoder.layer.1.output_query.dense.weight"
    assert torch.equal(model.state_dict()[key], state[key])
    # through the YAML key, with a file:// URL
    other = build(q_former_model=f"file://{path}")
    assert torch.equal(other.query_tokens, state["query_tokens"])


def test_blip2_checkpoint_with_other_query_count_or_foreign_keys(tmp_path):
    model = build()
    state = blip2_stage1_state(model, n_query=32)
    torch.save(state, tmp_path / "q32.pth")  # no "model" key
    before = model.query_tokens.clone()
    report = model.load_from_pretrained(str(tmp_path / "q32.pth"))
    assert "query_tokens" in report["dropped"] and torch.equal(model.query_tokens, before)
    state = blip2_stage1_state(model)
    state["t5_proj.weight"] = torch.zeros(4, 4)
    torch.save(state, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointMismatchError, match="t5_proj.weight"):
        model.load_from_pretrained(str(tmp_path / "foreign.pth"))


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.vit_checkpoint.*relative"):
        build(vit_checkpoint="no/such/eva_vit_g.pth")
    with pytest.raises(FileNotFoundError, match="model.q_former_model"):
        build(q_former_model=str(tmp_path / "missing.pth"))
    with pytest.raises(KeyError, match="freeze_vitt"):
        build(freeze_vitt=True)
    with pytest.raises(ValueError, match="model.llm_model"):
        Minigpt4Qwen.from_pretrained("qwen7b_chat")
    with pytest.raises(KeyError, match="qwen7b_chat"):
        Minigpt4Qwen.default_config_path("qwen-7b")


def test_optimizer_groups_and_layer_decay():
    model = build(freeze_vit=False)
    groups = model.get_optimizer_params(weight_decay=0.05, lr_scale=0.5)
    by_name = {g["name"]: g for g in groups}
    assert by_name["no_decay"]["weight_decay"] == 0.0 and by_name["decay"]["weight_decay"] == 0.05
    assert any(p is model.llm_proj.bias for p in by_name["no_decay"]["params"])
    assert any(p is model.llm_proj.weight for p in by_name["decay"]["params"])
    assert by_name["vit_layer_0_decay"]["lr_scale"] == 0.5 ** 3  # depth 2: embeddings decay most
    assert by_name["vit_layer_2_no_decay"]["lr_scale"] == 0.5
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert sum(len(g["params"]) for g in groups) == n_trainable


def test_llm_grad_checkpoint_only_when_asked():
    assert not is_grad_checkpointing(build().llm_model)
    model = build(llm_grad_checkpoint=True, freeze_llm=False).train()
    assert is_grad_checkpointing(model.llm_model)
    model(batch(2))["loss"].backward()


def scramble(model):
    """Random-init tiny LLMs repeat one token; larger weights make greedy output depend on the input."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.llm_model.parameters():
            if p.dim() == 2:
                p.normal_(std=0.5)
        model.llm_proj.weight.normal_(std=2.0)
    return model


def test_batched_generate_equals_one_by_one():
    model = scramble(build()).eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["What colour is the shape?", "Describe the image in detail.", "How many shapes?"]
    batched = model.generate({"image": images, "prompt": prompts}, max_new_tokens=8)
    single = [model.generate({"image": images[i:i + 1], "prompt": [p]}, max_new_tokens=8)[0]
              for i, p in enumerate(prompts)]
    assert batched == single
    assert len(set(batched)) > 1 and all(isinstance(t, str) and t for t in batched)


def test_chat_multi_turn_and_conversation_generate():
    model = scramble(build()).eval()
    image = torch.randn(3, 32, 32)
    answer, history = model.chat(image, "What colour is the shape?", max_new_tokens=5)
    assert history[0]["value"].startswith("<ImageHere>") and history[-1] == {"from": "gpt", "value": answer}
    answer2, history2 = model.chat(image, "And the shape?", history=history, max_new_tokens=5)
    assert len(history2) == 4 and history2[2]["value"] == "And the shape?"
    direct = model.generate({"image": image[None], "n_images": [1], "conversations": [history2[:3]]},
                            max_new_tokens=5)
    assert direct == [answer2]


def test_extract_features_shapes(model):
    feats = model.extract_features({"image": torch.randn(2, 3, 32, 32)})
    assert feats["image_embeds"].shape == (2, 17, 64)
    assert feats["query_output"].shape == (2, Q, 64)
    assert feats["image_embeds_proj"].shape == (2, Q, 128)
    with pytest.raises(ValueError, match="image"):
        model.extract_features({"image": torch.randn(1, 3, 32, 32)}, mode="text")


def test_load_model_and_preprocess_generates_text_from_a_pil_image():
    from PIL import Image

    model, vis, txt = load_model_and_preprocess("minigpt4qwen", "tiny", is_eval=True, device="cpu")
    assert not model.training
    image = vis["eval"](Image.new("RGB", (50, 40), (200, 30, 30)))
    assert image.shape == (3, 32, 32)
    out = model.generate({"image": image[None], "prompt": [txt["eval"]("What colour is the shape?")]},
                         max_new_tokens=4)
    assert len(out) == 1 and isinstance(out[0], str)
    assert "minigpt4qwen" in str(model_zoo) and "qwen2.5_7b_instruct" in str(model_zoo)


def test_missing_image_token_is_added_as_a_special_token():
    model = build(image_token="<|vision_pad|>")
    tok = model.tokenizer
    assert len(tok) == 694 and model.llm_model.get_input_embeddings().weight.shape[0] == 694
    assert tok("<|vision_pad|>", add_special_tokens=False).input_ids == [model.image_token_id]
    assert_batch_matches_its_samples(model, batch(2))


def test_stage1_runner_checkpoint_folder_loads(tmp_path):
    model = build()
    state = blip2_stage1_state(model, extra_block=False)
    (tmp_path / "checkpoint_best").mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "checkpoint_best" / "model.safetensors"))
    other = build(q_former_model=str(tmp_path / "checkpoint_best"))
    assert torch.equal(other.query_tokens, state["query_tokens"])
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        other.load_from_pretrained(str(tmp_path))


def test_load_model_from_an_export_folder(tmp_path):
    trained = build(seed=4, max_txt_len=100)
    with torch.no_grad():
        trained.llm_proj.bias.fill_(0.25)
    save_file(trained.trainable_state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.yaml").write_text("model:\n  arch: minigpt4qwen\n  model_type: tiny\n  max_txt_len: 100\n")
    model = load_model("minigpt4qwen", "tiny", is_eval=True, checkpoint=str(tmp_path))
    assert model.chatml.max_txt_len == 100 and not model.training
    assert torch.all(model.llm_proj.bias == 0.25)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model("minigpt4qwen", "tiny", checkpoint=str(tmp_path))


def test_generate_from_cached_features_equals_from_images():
    model = scramble(build()).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    feats, stage = model.extract_frozen_features(images)
    prompts = ["What colour is the shape?", "Describe the image."]
    from_images = model.generate({"image": images, "n_images": [1, 1], "prompt": prompts}, max_new_tokens=6)
    from_cache = model.generate({"image": None, "image_features": feats, "image_features_stage": stage,
                                 "n_images": [1, 1], "prompt": prompts}, max_new_tokens=6)
    assert from_images == from_cache


def test_missing_llm_folder_names_its_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.llm_model = .*no such local folder"):
        Minigpt4Qwen.from_pretrained("qwen2.5_7b_instruct", llm_model=str(tmp_path / "Qwen2.5-7B-Instruct"))


def test_llm_loaded_from_a_local_folder(tmp_path):
    source = build(seed=6)
    source.llm_model.save_pretrained(str(tmp_path / "llm"))
    source.tokenizer.save_pretrained(str(tmp_path / "llm"))
    model = build(llm_model=str(tmp_path / "llm"), llm_config=None, image_token="<|vision_pad|>")
    assert type(model.llm_model).__name__ == "Qwen2ForCausalLM"
    assert model.llm_model.get_input_embeddings().weight.shape[0] == len(source.tokenizer) + 1  # token added
    assert torch.equal(model.llm_model.get_input_embeddings().weight[:-1],
                       source.llm_model.get_input_embeddings().weight)
    assert_batch_matches_its_samples(model, batch(2))


@pytest.mark.parametrize("overrides", [{}, {"packing": True}, {"max_txt_len": 64}])
def test_count_supervised_tokens_equals_forward_n_tokens(overrides):
    m = build(**overrides).eval()
    samples = batch(4)
    samples["conversations"][1] = samples["conversations"][1] + conv("And its colour?", "blue", marks=0)
    samples["n_images"] = [1, 1, 1, 1]
    with torch.no_grad():
        assert m.count_supervised_tokens(samples) == m(samples)["n_tokens"] > 0


def test_deepspeed_accumulation_with_minigpt4qwen_is_token_weighted(tmp_path):
    """Two accumulated micro-batches with different supervised-token counts give the same update as one
    batch of both (DeepSpeed ZeRO-2, CPU, gloo): the stepper weights by count_supervised_tokens."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from lavis_lite.runners.deepspeed_runner import DeepSpeedStepper

    full = batch(4)
    full["conversations"][0] = conv("What colour is the shape?", "a rather long answer about red things")
    halves = [{"image": full["image"][:2], "n_images": [1, 1], "conversations": full["conversations"][:2]},
              {"image": full["image"][2:], "n_images": [1, 1], "conversations": full["conversations"][2:]}]
    m0 = build()
    assert m0.count_supervised_tokens(halves[0]) != m0.count_supervised_tokens(halves[1])

    def train(batches, accum):
        import deepspeed

        from lavis_lite.runners.deepspeed_runner import _ensure_process_group
        from lavis_lite.common.optims import ConstantLRScheduler
        model = build(freeze_llm=True)
        _ensure_process_group()
        __import__("deepspeed.comm.torch").comm.torch.build_shm_op = lambda: None  # no JIT build, as the runner
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.5)
        engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config={
            "train_micro_batch_size_per_gpu": len(batches[0]["conversations"]),
            "gradient_accumulation_steps": accum, "zero_optimization": {"stage": 2},
            "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9})
        sched = ConstantLRScheduler(opt, init_lr=0.5)
        stepper = DeepSpeedStepper(engine, opt, sched, accum, None, torch.device("cpu"))
        stepper.begin_window(batches, 0, 0)
        for b in batches:
            out = engine(b)
            stepper.backward(out["loss"], out["n_tokens"])
        return {n: p.detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad}

    acc, one = train(halves, 2), train([full], 1)
    for name in acc:
        torch.testing.assert_close(acc[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
