"""Train the tiny byte-level BPE tokenizer shipped in ``lavis_lite/assets/tiny_qwen_tokenizer/``.

It stands in for the Qwen tokenizer in the ``tiny`` MiniGPT4-Qwen (tests, CPU demo): byte-level, so any
text encodes; ChatML control tokens and the image placeholder are special tokens, exactly as in Qwen2.
The corpus below is built in and covers the demo vocabulary, so the result is deterministic.

    python -m lavis_lite.tools.build_tiny_tokenizer [--out DIR] [--vocab-size 1024]
"""
from __future__ import annotations

import argparse
import itertools
import os

ENDOFTEXT, IM_START, IM_END, IMAGE_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, IMAGE_TOKEN]
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                           "tiny_qwen_tokenizer")

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "grey", "pink", "brown"]
SHAPES = ["circle", "square", "triangle", "rectangle", "star", "shape", "shapes", "circles", "squares", "triangles"]
PLACES = ["left", "right", "top", "bottom", "center", "centre", "middle", "top left", "top right", "bottom left",
          "bottom right", "upper", "lower"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"] + \
    [str(i) for i in range(0, 101)]
QUESTIONS = [
    "What colour is the shape?", "What color is the shape?", "What shape is it?", "What shape is in the image?",
    "How many shapes are there?", "How many shapes are in the image?", "Describe the image.",
    "Describe the image in detail.", "Where is the shape?", "Is the shape on the left or on the right?",
    "Which image has more shapes?", "Are the two images the same?", "What is different between the images?",
    "Answer with one word.", "Answer the question briefly.", "Please describe what you see.",
]
SENTENCES = [
    "You are a helpful assistant.", "I am a helpful assistant.", "Hello! How can I help you today?",
    "The image shows a {c} {s} on a {b} background.", "There is a {c} {s} in the {p} of the image.",
    "There are {n} shapes in the image.", "The {s} is {c}.", "It is a {s}.", "The answer is {n}.",
    "A {c} {s} and a {c2} {s2}.", "The first image has a {c} {s}; the second image has a {c2} {s2}.",
    "Yes, they are the same.", "No, they are different.", "The {s} is at the {p}.",
    "a photo of a {c} {s}", "an image with {n} {c} {s}s", "Thank you. What else would you like to know?",
    "The quick brown fox jumps over the lazy dog.", "This is a small picture with simple shapes.",
]


def corpus() -> list[str]:
    lines = list(QUESTIONS) + [" ".join(COLOURS), " ".join(SHAPES), " ".join(PLACES), " ".join(NUMBERS)]
    combos = itertools.product(COLOURS[:9], SHAPES[:4], PLACES[:6], NUMBERS[1:6])
    for i, (c, s, p, n) in enumerate(combos):
        template = SENTENCES[i % len(SENTENCES)]
        c2, s2 = COLOURS[(i + 3) % 9], SHAPES[(i + 1) % 3]
        lines.append(template.format(c=c, s=s, p=p, n=n, b=COLOURS[(i + 5) % 9], c2=c2, s2=s2))
        lines.append(f"{QUESTIONS[i % len(QUESTIONS)]}\n{c.capitalize()} {s}, {p}, {n}.")
    return lines


def build(out_dir: str = DEFAULT_OUT, vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT,
                                   additional_special_tokens=[IM_START, IM_END, IMAGE_TOKEN],
                                   clean_up_tokenization_spaces=False)
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args(argv)
    fast = build(args.out, args.vocab_size)
    print(f"wrote {args.out}: {len(fast)} tokens")


if __name__ == "__main__":
    main()
