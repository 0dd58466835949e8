"""The tiny BLIP-2 LLM models through load_model_and_preprocess: LAVIS's loss layouts, freezing and generation."""
import pytest
import torch
from PIL import Image

from lavis_lite.models import load_model_and_preprocess

ARCHS = ["blip2_opt", "blip2_t5", "blip2_vicuna_instruct", "blip2_t5_instruct"]
LLM = {"blip2_opt": "opt_model", "blip2_t5": "t5_model", "blip2_vicuna_instruct": "llm_model",
       "blip2_t5_instruct": "t5_model"}


def _images(model, vis, n=2):
    colours = ["red", "blue", "green"]
    return torch.stack([vis["eval"](Image.new("RGB", (40, 40), colours[i % 3])) for i in range(n)])


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_trains_and_generates(arch):
    torch.manual_seed(0)
    model, vis, txt = load_model_and_preprocess(arch, "tiny")
    images = _images(model, vis)
    captions = [txt["train"]("A red circle."), txt["train"]("Two blue squares, on the left!")]
    out = model({"image": images, "text_input": captions})
    assert torch.isfinite(out["loss"]) and out["n_tokens"] > 0
    out["loss"].backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and not any(n.startswith(("visual_encoder.", LLM[arch] + ".")) for n in grads)
    assert {n.split(".")[0] for n in grads} >= {"Qformer", "query_tokens", "ln_vision"}
    model.eval()
    beams = model.generate({"image": images}, num_beams=3, max_length=4)
    sampled = model.generate({"image": images, "prompt": ["describe", "what is it"]}, use_nucleus_sampling=True,
                             top_p=0.9, max_length=4, num_captions=2)
    assert len(beams) == 2 and len(sampled) == 4 and all(isinstance(t, str) for t in beams + sampled)
    answers = model.predict_answers({"image": images, "text_input": ["what colour?", "how many?"]},
                                    prompt="Question: {} Short answer:", max_len=3, num_beams=2)
    assert len(answers) == 2
    with pytest.raises(ValueError, match="texts for a batch of 2"):
        model({"image": images, "text_input": ["only one"]})


def test_opt_masks_the_prompt_and_refuses_texts_without_it():
    model, vis, _ = load_model_and_preprocess("blip2_opt", "tiny")
    images = _images(model, vis)
    texts = ["a photo of a red circle", "a photo of two blue squares"]
    plain = model({"image": images, "text_input": texts})["n_tokens"]
    model.prompt = "a photo of"
    model.prompt_length = len(model.opt_tokenizer(model.prompt).input_ids)
    masked = model({"image": images, "text_input": texts})["n_tokens"]
    # as LAVIS: without a prompt even the BOS after the queries is a target; with one, BOS + prompt are not
    assert plain - masked == 2 * model.prompt_length
    with pytest.raises(ValueError, match="do not start with it"):
        model({"image": images, "text_input": ["a red circle", "a photo of a square"]})


def test_t5_puts_the_prompt_on_the_encoder_side():
    model, vis, _ = load_model_and_preprocess("blip2_t5", "tiny")
    images = _images(model, vis)
    model.prompt = "a photo of"
    caps = ["a red circle", "two blue squares"]
    out = model({"image": images, "text_input": caps})
    targets = model.t5_tokenizer(caps, padding="longest").input_ids
    assert out["n_tokens"] == sum(sum(1 for t in row if t != model.t5_tokenizer.pad_token_id) for row in targets)
    same = model({"image": images, "text_input": [model.prompt] * 2, "text_output": caps})
    torch.testing.assert_close(out["loss"], same["loss"])


@pytest.mark.parametrize("arch", ["blip2_vicuna_instruct", "blip2_t5_instruct"])
def test_instruction_joins_the_queries_in_the_qformer(arch):
    model, vis, _ = load_model_and_preprocess(arch, "tiny", is_eval=True)
    images = _images(model, vis, 1).repeat(2, 1, 1, 1)
    with torch.no_grad():
        vit = model.vit_features(images)
        a = model.query_output(vit, ["what colour is it?", "what colour is it?"])
        b = model.query_output(vit, ["what colour is it?", "how many shapes are there?"])
    assert a.shape == (2, model.num_query_token, model.Qformer.config.hidden_size)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])  # another instruction, other query outputs for the same image
    assert model.Qformer.cls is None and model.Qformer.bert.embeddings.word_embeddings is not None


def test_vicuna_tokenizer_follows_lavis():
    model, _, _ = load_model_and_preprocess("blip2_vicuna_instruct", "tiny")
    tok = model.llm_tokenizer
    assert tok.pad_token == "[PAD]" and tok.bos_token == tok.eos_token == "</s>"
    assert tok("hello").input_ids[0] == tok.bos_token_id  # prompts start with </s>, as LAVIS's slow tokenizer
    ids, mask, input_lens = model._rows(["describe"], ["a red circle"])
    assert ids[0, input_lens[0]:].tolist().count(tok.bos_token_id) == 1  # only the eos after the answer


def test_readme_model_table_lists_every_type():
    import os
    import re

    from lavis_lite.common.registry import registry
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 3:
            for arch in re.findall(r"`([\w.]+)`", cells[0]):
                rows[arch] = set(re.findall(r"`([\w.-]+)`", cells[1]))
    built_in = [a for a in registry.list_models() if registry.get_model_class(a).__module__.startswith("lavis_lite.")]
    assert set(ARCHS + ["minigpt4qwen", "blip2", "blip2_qformer"]) <= set(built_in)
    for arch in built_in:  # every architecture lavis_lite ships
        assert rows.get(arch) == set(registry.get_model_class(arch).PRETRAINED_MODEL_CONFIG_DICT), arch
