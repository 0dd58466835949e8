"""Conversations + encoder settings whose ids / labels are pinned in fixtures/chat_encoding_golden.json.

The fixture was written by the encoder *before* its speed rewrite (commit 81ea1e9; the vicuna_v1.1 and
minigpt4_* entries re-pinned when those templates were fixed to FastChat / MiniGPT-4 ids, see
test_vicuna_template.py), so
``test_chat_encoding_exact.py`` proves the rewrite gives identical ids, labels, image counts and
truncation accounting for every registered template: images (also more marks than images), system
messages, typed control strings, whitespace and Unicode edges, truncation at several lengths
(through an image run, a head longer than the limit), and generation prompts.

    python tests/chat_golden_cases.py   # rewrite the fixture (only when a change of ids is intended)
"""
from __future__ import annotations

import hashlib
import json
import os
import random

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "chat_encoding_golden.json")
Q = 3
# template -> tiny tokenizer family that has its control tokens
TEMPLATE_FAMILY = {"qwen": "qwen2", "qwen2": "qwen2", "qwen2.5": "qwen2", "qwen3": "qwen3", "llama2": "llama2",
                   "llama3": "llama3", "vicuna_v1.1": "vicuna", "minigpt4_vicuna0": "vicuna",
                   "minigpt4_llama2": "llama2", "plain": "llama2"}
WORDS = ["red", "circle", " ", "  ", "\n", "\n\n", "What", "is", "it?", "é", "日本", "42", "3.5", "(ok)", "<|im_end|>",
         "<|im_start|>", "<s>", "</s>", "[INST]", "[/INST]", "USER:", "ASSISTANT:", "###", "<Img>", "</Img>",
         "<|eot_id|>", "<|image_pad|>", "<think>", "don't", "\t", "!!"]


def _text(rng, lo=0, hi=8, marks=0):
    words = rng.choices(WORDS, k=rng.randint(lo, hi))
    for _ in range(marks):
        words.insert(rng.randint(0, len(words)), rng.choice(["<ImageHere>", "<ImageHere>\n", " <ImageHere>"]))
    return rng.choice(["", " ", "\n"]) + rng.choice([" ", ""]).join(words) + rng.choice(["", " ", "\n", "."])


def conversations(seed: int = 0, n: int = 24) -> list[tuple[list[dict], int]]:
    rng = random.Random(seed)
    out = [([{"from": "human", "value": "<ImageHere> What is it?"}, {"from": "gpt", "value": "A red circle."}], 1),
           ([{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}], 0),
           ([{"from": "gpt", "value": "lead"}, {"from": "human", "value": "<ImageHere><ImageHere>x"},
             {"from": "gpt", "value": " two"}], 2)]
    for _ in range(n):
        conv, images = [], 0
        if rng.random() < 0.3:
            conv.append({"from": "system", "value": _text(rng, 1, 4)})
        for r in range(rng.randint(1, 3)):
            marks = rng.choice([0, 0, 1, 2])
            q = _text(rng, marks=marks)
            images += marks
            conv += [{"from": rng.choice(["human", "user"]), "value": q},
                     {"from": rng.choice(["gpt", "assistant"]), "value": _text(rng, 0, 10)}]
        out.append((conv, rng.randint(0, images)))
    return out


def encoder(template: str, max_txt_len: int, system_message=None, fast_tokenize: bool = True):
    from lavis_lite.models import llm as llm_utils
    from lavis_lite.models.conversation_encoder import ConversationEncoder
    from lavis_lite.models.tiny_tokenizers import tiny_tokenizer

    family = TEMPLATE_FAMILY[template]
    tok = tiny_tokenizer(family)
    image_token = llm_utils.family_info(family)["image_token"]
    llm_utils.ensure_image_token(tok, image_token, family)
    return ConversationEncoder(tok, template, image_token, Q, max_txt_len=max_txt_len, system_message=system_message,
                               cache_size=0, fast_tokenize=fast_tokenize)


def digest(enc) -> str:
    payload = [enc.ids.tolist(), enc.labels.tolist(), int(enc.n_images_used), int(enc.cut_tokens), bool(enc.truncated)]
    return hashlib.sha1(json.dumps(payload).encode()).hexdigest()[:16]


MAX_LENS = (100_000, 150, 90, 60, 37, 5)


def encode_all(template: str) -> dict[str, list[str]]:
    """{mode: [digest per conversation]} for one template."""
    convs = conversations()
    out = {}
    for max_len in MAX_LENS:
        enc = encoder(template, max_len)
        out[f"train_{max_len}"] = [digest(e) for e in enc.encode([c for c, _ in convs], [n for _, n in convs])]
    enc = encoder(template, 100_000, fast_tokenize=False)  # the plain Rust tokenizer call
    out["train_slow_tokenize"] = [digest(e) for e in enc.encode([c for c, _ in convs], [n for _, n in convs])]
    prompts = [(c[:-1], n) for c, n in convs if c[-1]["from"] in ("gpt", "assistant")
               and c[:-1] and c[-2]["from"] in ("human", "user")]
    prompts = [(c, min(n, sum(t["value"].count("<ImageHere>") for t in c if t["from"] in ("human", "user"))))
               for c, n in prompts]
    enc = encoder(template, 100_000, system_message="")
    out["generation_nosys"] = [digest(e) for e in enc.encode([c for c, _ in prompts], [n for _, n in prompts],
                                                             add_generation_prompt=True)]
    return out


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)  # the truncation cases warn per sample
    from lavis_lite.models.chat_templates import TEMPLATES

    golden = {name: encode_all(name) for name in sorted(TEMPLATE_FAMILY)}
    assert set(golden) == set(TEMPLATES), sorted(set(TEMPLATES) ^ set(golden))
    with open(FIXTURE, "w") as f:
        json.dump(golden, f, indent=0, sort_keys=True)
        f.write("\n")
    print("wrote", FIXTURE, sum(len(v) for g in golden.values() for v in g.values()), "digests")
