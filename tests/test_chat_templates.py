"""Our chat templates give the token ids of the families' own ``tokenizer.apply_chat_template``.

Small tokenizers per family (tiny_tokenizers.py) carry the real chat_template strings of Qwen2,
Qwen2.5, Qwen3, Llama-2-chat and Llama-3-instruct (tests/fixtures/chat_templates); the same
conversations are rendered by transformers and by our encoder: identical prompt ids (generation) and
identical full training sequences; labels cover exactly the replies + end of turn.
"""
import os

import pytest

from lavis_lite.models import llm as llm_utils
from lavis_lite.models.chat_templates import TEMPLATES, get_template
from lavis_lite.models.conversation_encoder import IGNORE_INDEX, IMAGE_MARK, ConversationEncoder
from lavis_lite.models.tiny_tokenizers import tiny_tokenizer

Q = 3
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "chat_templates")
CASES = {"qwen2": "qwen2", "qwen2.5": "qwen2", "qwen3": "qwen3", "llama2": "llama2", "llama3": "llama3"}  # template: family


def setup(template):
    family = CASES[template]
    tok = tiny_tokenizer(family)
    image_token = llm_utils.family_info(family)["image_token"]
    llm_utils.ensure_image_token(tok, image_token, family)
    with open(os.path.join(FIXTURES, f"{template}.jinja")) as f:
        tok.chat_template = f.read().rstrip("\n")
    enc = ConversationEncoder(tok, template, image_token, Q, max_txt_len=100_000, cache_size=0)
    return tok, enc, image_token


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


CONVERSATIONS = [
    ([human("What colour is the shape?")], 0),
    ([{"from": "system", "value": "You answer briefly."}, human("Describe the image."), gpt("A red circle."),
      human("And the background?")], 0),
    ([human("<ImageHere> What is it?")], 1),
    ([human("Compare <ImageHere> and <ImageHere>, please."), gpt("They differ: one is blue."),
      human("Which one is larger? <ImageHere>")], 3),
]


def hf_messages(conv, template, image_token):
    wrap = get_template(template).image.replace("{image}", image_token * Q)
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    return [{"role": roles[t["from"]], "content": t["value"].replace(IMAGE_MARK, wrap)} for t in conv]


def hf_ids(tok, messages, generation):
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation,
                                   enable_thinking=False)
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", sorted(CASES))
@pytest.mark.parametrize("case", range(len(CONVERSATIONS)))
def test_prompt_ids_equal_apply_chat_template(template, case):
    tok, enc, image_token = setup(template)
    conv, n_images = CONVERSATIONS[case]
    ours = enc.encode([conv], [n_images], add_generation_prompt=True)[0]
    assert ours.ids.tolist() == hf_ids(tok, hf_messages(conv, template, image_token), generation=True)
    assert ours.n_images_used == n_images


@pytest.mark.parametrize("template", sorted(CASES))
def test_training_sequence_equals_apply_chat_template_and_labels_cover_replies(template):
    tok, enc, image_token = setup(template)
    conv = CONVERSATIONS[3][0] + [gpt("The second one.")]
    ours = enc.encode([conv], [3])[0]
    assert ours.ids.tolist() == hf_ids(tok, hf_messages(conv, template, image_token), generation=False)
    eot = get_template(template).eot
    supervised = tok.decode(ours.labels[ours.labels != IGNORE_INDEX].tolist())
    assert supervised.replace(" ", "") == f"They differ: one is blue.{eot}The second one.{eot}".replace(" ", "")
    # every supervised position is a reply token or an end of turn, never a header or a user token
    runs = (ours.labels != IGNORE_INDEX).astype(int)
    assert int(((runs[1:] - runs[:-1]) == 1).sum()) == 2  # two supervised spans: one per reply


@pytest.mark.parametrize("template", sorted(CASES))
def test_typed_control_strings_stay_text(template):
    tok, enc, image_token = setup(template)
    tpl = get_template(template)
    typed = " ".join(tpl.control) + f" {image_token} [INST] <<SYS>> <ImageHere>"
    clean = enc.encode([[human("<ImageHere> hi"), gpt("ok")]], [1])[0]
    nasty = enc.encode([[human("<ImageHere> hi " + typed), gpt("ok " + typed)]], [1])[0]
    control = set(enc.control_ids.values()) | {enc.image_token_id}
    count = lambda ids: sum(int(t in control) for t in ids.tolist())  # noqa: E731
    assert count(nasty.ids) == count(clean.ids)  # only the template's own control ids
    assert typed.strip() in tok.decode(nasty.ids.tolist())


def test_qwen3_thinking_block_only_on_the_last_reply_and_the_prompt():
    tok, enc, _ = setup("qwen3")
    conv = [human("a"), gpt("b"), human("c"), gpt("d")]
    text = tok.decode(enc.encode([conv], [0])[0].ids.tolist())
    assert text.count("<think>") == 1 and text.endswith("<think>\n\n</think>\n\nd<|im_end|>\n")
    prompt = tok.decode(enc.encode([conv[:3]], [0], add_generation_prompt=True)[0].ids.tolist())
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and prompt.count("<think>") == 1


def test_every_registered_template_encodes_and_names_missing_control_tokens():
    from lavis_lite.models.tiny_tokenizers import FAMILY_TOKENS

    assert {"qwen", "qwen2", "qwen2.5", "qwen3", "llama2", "llama3", "vicuna_v1.1", "minigpt4_vicuna0",
            "minigpt4_llama2", "plain"} <= set(TEMPLATES)
    tok = tiny_tokenizer("llama2")
    llm_utils.ensure_image_token(tok, "<|image_pad|>", "llama2")
    for name in ("vicuna_v1.1", "minigpt4_vicuna0", "minigpt4_llama2", "plain"):
        enc = ConversationEncoder(tok, name, "<|image_pad|>", Q)
        out = enc.encode([[human("<ImageHere> What?"), gpt("red")]], [1])[0]
        assert tok.decode(out.labels[out.labels != IGNORE_INDEX].tolist()).startswith(("red", " red"))
        assert out.ids.tolist().count(enc.image_token_id) == Q
    mini = ConversationEncoder(tok, "minigpt4_vicuna0", "<|image_pad|>", Q)
    text = tok.decode(mini.encode([[human("<ImageHere> Describe this image in detail.")]], [1],
                                  add_generation_prompt=True)[0].ids.tolist())
    assert text == "<s>###Human: <Img>" + "<|image_pad|>" * Q + "</Img> Describe this image in detail. ###Assistant: "
    with pytest.raises(KeyError, match="needs the control token '<|eot_id|>'"):
        ConversationEncoder(tiny_tokenizer("qwen2"), "llama3", "<|image_pad|>", Q)
    assert set(FAMILY_TOKENS) >= {"qwen2", "qwen3", "llama2", "llama3", "vicuna"}
