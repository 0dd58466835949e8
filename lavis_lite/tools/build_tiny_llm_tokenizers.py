"""Train the tiny OPT-, T5- and LLaMA-style tokenizers shipped in ``lavis_lite/assets/tiny_{opt,t5,llama}_tokenizer``.

They stand in for facebook/opt-*, google/flan-t5-* and Vicuna in the ``tiny`` BLIP-2 / InstructBLIP types
(tests, demo). Byte-level BPE (any text encodes) over the same built-in corpus as the tiny Qwen tokenizer,
with each family's special tokens and the way it adds them:

* OPT:   ``<s> <pad> </s> <unk>`` (ids 0-3), ``</s>`` prepended as BOS (as facebook/opt-*), no EOS appended;
* T5:    ``<pad> </s> <unk>`` (ids 0-2), ``</s>`` appended (as T5), pad = decoder start token;
* LLaMA: ``<unk> <s> </s>`` (ids 0-2), ``<s>`` prepended (as the LLaMA / Vicuna tokenizer).

    python -m lavis_lite.tools.build_tiny_llm_tokenizers [--out-root DIR] [--vocab-size 512]
"""
from __future__ import annotations

import argparse
import os

from lavis_lite.tools.build_tiny_tokenizer import corpus

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
FAMILIES = {
    "opt": {"specials": ["<s>", "<pad>", "</s>", "<unk>"], "template": "</s> $A",
            "tokens": {"bos_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}},
    "t5": {"specials": ["<pad>", "</s>", "<unk>"], "template": "$A </s>",
           "tokens": {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}},
    "llama": {"specials": ["<unk>", "<s>", "</s>"], "template": "<s> $A",
              "tokens": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}},
}


def build(family: str, out_dir: str, vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = FAMILIES[family]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["specials"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    special_ids = [(t, tok.token_to_id(t)) for t in spec["specials"] if t in spec["template"]]
    tok.post_processor = processors.TemplateProcessing(single=spec["template"], special_tokens=special_ids)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **spec["tokens"])
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-root", default=ASSETS)
    parser.add_argument("--vocab-size", type=int, default=512)
    args = parser.parse_args(argv)
    for family in FAMILIES:
        out = os.path.join(args.out_root, f"tiny_{family}_tokenizer")
        fast = build(family, out, args.vocab_size)
        print(f"wrote {out}: {len(fast)} tokens")


if __name__ == "__main__":
    main()
