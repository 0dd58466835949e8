"""Vicuna v1.1 and MiniGPT-4 templates against their references.

* vicuna_v1.1 renders FastChat's ``get_conv_template("vicuna_v1.1").get_prompt()`` (checked against
  fastchat.conversation from the dev extra's fschat, and against the strings spelled out below), and
  its token ids equal the ids of the whole rendered string (FastChat's training tokenises the whole string): the separator
  spaces before ``USER:`` / ``ASSISTANT:`` are tokenised with the word after them.
* minigpt4_vicuna0 / minigpt4_llama2 give the ids MiniGPT-4's own code builds (minigpt4/models/
  minigpt_base.py: <s>, the prompt segments between images tokenised one by one, the answer + end_sym
  tokenised alone, later questions as <s> + prompt_template.format(q)), re-done here step by step.
"""
import pytest

from lavis_lite.models import llm as llm_utils
from lavis_lite.models.conversation_encoder import IGNORE_INDEX, IMAGE_MARK, ConversationEncoder
from lavis_lite.models.tiny_tokenizers import tiny_tokenizer

Q = 3
IMG = "<|image_pad|>"
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")


def tokenizer(family):
    tok = tiny_tokenizer(family)
    llm_utils.ensure_image_token(tok, IMG, family)
    return tok


def trained_vicuna_tokenizer():
    """A byte-level BPE trained here on Vicuna-formatted text, so it has the merges the shipped tiny
    vocabulary lacks (`` USER``, `` ASSISTANT`` as single tokens): piece-wise tokenisation that put the
    separator space on the wrong side would give other ids than the whole string."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", IMG],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [fastchat_prompt(c, g) for c in CONVS for g in (False, True)] * 20
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert tok.tokenize(" ASSISTANT:")[0] == "ĠASSISTANT" and tok.tokenize(" USER")[0] == "ĠUSER"
    return tok


def h(text):
    return {"from": "human", "value": text}


def g(text):
    return {"from": "gpt", "value": text}


CONVS = [
    [h("Hello"), g("Hi there")],
    [h("What is it?"), g("A red circle."), h("And the background?"), g("White, mostly.")],
    [h("<ImageHere> Describe it."), g(" A square ")],         # image, reply with edge spaces
    [h("two spaces  "), g("ok"), h("\nnew line first"), g("fine\n")],
    [h("Tell me."), g("")],                                  # empty reply
]


def fastchat_prompt(conv, generation):
    """The FastChat vicuna_v1.1 string (ADD_COLON_TWO, sep ' ', sep2 '</s>'), spelled out."""
    out = SYSTEM + " "
    for i, turn in enumerate(conv):
        role = "USER" if turn["from"] == "human" else "ASSISTANT"
        out += f"{role}: {turn['value']}" + (" " if i % 2 == 0 else "</s>")
    return out + ("ASSISTANT:" if generation else "")


def with_images(text):
    return text.replace(IMAGE_MARK, "<Img>" + IMG * Q + "</Img>")


@pytest.fixture(scope="module")
def vicuna_tok():
    return trained_vicuna_tokenizer()


@pytest.mark.parametrize("case", range(len(CONVS)))
def test_vicuna_string_is_fastchats_and_ids_are_the_whole_strings(case, vicuna_tok):
    tok = vicuna_tok
    enc = ConversationEncoder(tok, "vicuna_v1.1", IMG, Q, max_txt_len=100_000, cache_size=0)
    conv = CONVS[case]
    n = sum(t["value"].count(IMAGE_MARK) for t in conv)
    for generation, turns in ((False, conv), (True, conv[:-1])):
        ours = enc.encode([turns], [n], add_generation_prompt=generation)[0]
        rendered = "<s>" + with_images(fastchat_prompt(turns, generation))
        assert tok.decode(ours.ids.tolist()) == rendered
        assert ours.ids.tolist() == tok(rendered, add_special_tokens=False)["input_ids"]
    full = enc.encode([conv], [n])[0]
    replies = [t["value"] for t in conv if t["from"] == "gpt"]
    sup = full.labels[full.labels != IGNORE_INDEX].tolist()
    # replies + end of turn, nothing else (a reply's first token carries the space after "ASSISTANT:")
    assert tok.decode(sup).replace(" ", "") == "".join(r + "</s>" for r in replies).replace(" ", "")


def test_vicuna_matches_fastchat_conversation():
    from fastchat import conversation  # the dev extra installs fschat
    for conv in [c for c in CONVS if all(t["value"] for t in c)]:  # FastChat renders "" as a prompt end
        for generation, turns in ((False, conv), (True, conv[:-1])):
            fc = conversation.get_conv_template("vicuna_v1.1")
            for t in turns:
                fc.append_message(fc.roles[0] if t["from"] == "human" else fc.roles[1], t["value"])
            if generation:
                fc.append_message(fc.roles[1], None)
            assert fc.get_prompt() == fastchat_prompt(turns, generation)


MINIGPT4 = {"minigpt4_vicuna0": ("vicuna", "###Human: {} ###Assistant: ", "###"),
            "minigpt4_llama2": ("llama2", "[INST] {} [/INST] ", "</s>")}


def minigpt4_ids(tok, conv, template, end_sym):
    """minigpt_base.py: bos + prompt_wrap(first question) + tokenize_conversation(later questions, answers)."""
    questions = [template.format(t["value"]) for t in conv if t["from"] == "human"]
    answers = [t["value"] for t in conv if t["from"] == "gpt"]
    segs = questions[0].split(IMAGE_MARK)
    ids, labels = [tok.bos_token_id], [IGNORE_INDEX]
    for i, seg in enumerate(segs):  # prompt_wrap: each segment alone, the image embeddings between them
        part = tok(seg, add_special_tokens=False)["input_ids"] + ([tok.convert_tokens_to_ids(IMG)] * Q
                                                                  if i < len(segs) - 1 else [])
        ids, labels = ids + part, labels + [IGNORE_INDEX] * len(part)
    for i, answer in enumerate(answers):
        a = tok(answer + end_sym, add_special_tokens=False)["input_ids"]
        ids, labels = ids + a, labels + a
        if i + 1 < len(questions):
            q = tok(tok.bos_token + questions[i + 1], add_special_tokens=False)["input_ids"]
            ids, labels = ids + q, labels + [IGNORE_INDEX] * len(q)
    return ids, labels


@pytest.mark.parametrize("name", sorted(MINIGPT4))
def test_minigpt4_templates_give_minigpt4s_own_ids(name):
    family, template, end_sym = MINIGPT4[name]
    tok = tokenizer(family)
    enc = ConversationEncoder(tok, name, IMG, Q, max_txt_len=100_000, cache_size=0)
    # our records mark the image (<ImageHere>), the template wraps it; MiniGPT-4's instructions hold the wrapper
    convs = [[h("<ImageHere> Describe this image in detail."), g("A red circle.")],
             [h("<ImageHere> Colour?"), g("red"), h("Shape?"), g("round")]]
    wrap = "<Img>" + IMAGE_MARK + "</Img>"
    for conv in convs:
        ours = enc.encode([conv], [1])[0]
        theirs = [{**t, "value": t["value"].replace(IMAGE_MARK, wrap)} for t in conv]
        ids, labels = minigpt4_ids(tok, theirs, template, end_sym)
        assert ours.ids.tolist() == ids and ours.labels.tolist() == labels
    # generation: MiniGPT-4's prompt ends with the assistant header
    prompt = enc.encode([convs[0][:1]], [1], add_generation_prompt=True)[0]
    assert tok.decode(prompt.ids.tolist()) == "<s>" + template.format("<Img>" + IMG * Q + "</Img> Describe this "
                                                                      "image in detail.")
