"""Build the tiny WordPiece vocabulary of the `tiny` Blip2Qformer (lavis_lite/assets/tiny_bert_vocab.txt).

The full-size model uses the user's local bert-base-uncased vocab.txt; the tiny one must work
offline with a few hundred tokens. The vocabulary is: BERT's special tokens, every character
and its "##" continuation (so no lower-case ASCII word ever becomes [UNK]), and whole-word
tokens for a built-in list of the demo's words plus any caption files given on the command line:

    python -m lavis_lite.tools.build_tiny_bert_vocab [--captions DIR/caption/train.json ...] [--out PATH]

The output is deterministic (sorted), so rebuilding it gives the same file.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import string

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Words of the shapes demo (colours, shapes, counts, positions, backgrounds) and of short
# everyday captions, so that demo captions tokenize into whole words.
BASE_WORDS = """
a an the this that these those there here it its is are was were be been being has have had
of on in at to from with without and or but not no yes by for as into over under near next
image picture photo photograph drawing scene view background foreground object objects thing things
shape shapes circle circles square squares triangle triangles star stars rectangle rectangles
diamond diamonds cross crosses ellipse ellipses hexagon hexagons pentagon pentagons oval ovals
disc disk ring heart arrow line lines dot dots polygon box
red green blue yellow orange purple pink white black gray grey brown cyan magenta violet
colour color colours colors coloured colored dark light bright pale plain solid
one two three four five six seven eight nine ten zero single pair
left right top bottom center centre middle upper lower corner side edge above below beside
small large big tiny huge medium little round filled empty outline
what which how many much where who why when describe show shows showing contains containing
same different both each other another only all some more most than
answer question caption
""".split()

WORD_RE = re.compile(r"[a-z]+|[0-9]+")


def words_from_captions(path: str) -> set[str]:
    """Lower-case words of the "caption" fields of a Karpathy/COCO-style JSON file."""
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"Caption file {path!r} is not valid JSON: {err}") from None
    if isinstance(data, dict) and "annotations" in data:  # COCO ground-truth layout
        data = data["annotations"]
    if not isinstance(data, list):
        raise ValueError(f"Caption file {path!r} must hold a list of records or a COCO 'annotations' list")
    words: set[str] = set()
    for i, record in enumerate(data):
        if not isinstance(record, dict) or "caption" not in record:
            raise ValueError(f"Record {i} of {path!r} has no 'caption' key")
        captions = record["caption"] if isinstance(record["caption"], list) else [record["caption"]]
        for cap in captions:
            words.update(WORD_RE.findall(str(cap).lower()))
    return words


def build_vocab(extra_words: set[str] | None = None) -> list[str]:
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = {w.lower() for w in BASE_WORDS} | set(extra_words or ())
    words -= set(chars)
    tokens = SPECIAL_TOKENS + chars + ["##" + c for c in string.ascii_lowercase + string.digits]
    # Common English suffixes keep unknown inflections short instead of letter by letter.
    tokens += ["##" + s for s in ("s", "es", "ed", "ing", "ly", "er", "est")
               if "##" + s not in tokens]
    tokens += sorted(words)
    seen, unique = set(), []
    for t in tokens:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    return unique


def default_vocab_path() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "tiny_bert_vocab.txt")


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", nargs="*", default=[], help="caption JSON files whose words to add")
    parser.add_argument("--out", default=default_vocab_path())
    args = parser.parse_args(argv)
    extra: set[str] = set()
    for path in args.captions:
        extra |= words_from_captions(path)
    vocab = build_vocab(extra)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(vocab) + "\n")
    print(f"wrote {len(vocab)} tokens to {args.out}")
    return args.out


if __name__ == "__main__":
    main()
