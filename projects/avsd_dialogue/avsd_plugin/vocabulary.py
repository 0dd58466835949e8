"""The closed world of the synthetic AVSD-style data: attributes, questions, answers.

Kept in one place so the data generator and the local tokenizer agree on the words.
Each attribute is carried by a block of dimensions in a feature stream, so an answer
can only be produced by looking at the features.
"""
from __future__ import annotations

# attribute -> (feature stream, first dimension of its one-hot block, values)
ATTRIBUTES = {
    "colour": ("i3d_rgb", 0, ["red", "green", "blue", "yellow"]),
    "action": ("i3d_rgb", 4, ["running", "sitting", "cooking", "reading"]),
    "object": ("i3d_rgb", 8, ["cup", "book", "phone", "ball"]),
    "sound": ("vggish", 0, ["music", "talking", "barking", "silence"]),
}

# Feature widths of the two streams (the last dimensions of each are pure noise).
FEATURE_DIMS = {"i3d_rgb": 16, "vggish": 8}

# attribute -> (question, answer template)
QUESTIONS = {
    "colour": ("what color is the shirt of the person ?", "the shirt is {}"),
    "action": ("what is the person doing ?", "the person is {}"),
    "object": ("what is the person holding ?", "the person is holding a {}"),
    "sound": ("what can you hear in the video ?", "i can hear {}"),
}

CAPTIONS = [
    "a person is in a room",
    "someone is at home",
    "a person stands near a table",
]
SUMMARIES = [
    "a short video of a person",
    "a person does something in a room",
]

# Extra everyday words so free text is not all byte pieces.
EXTRA_WORDS = ["yes", "no", "there", "one", "two", "and", "it", "video", "man", "woman", "hello"]


def all_words() -> list[str]:
    """Every word that appears in the synthetic data, sorted (used as whole tokens)."""
    texts = [q for q, _ in QUESTIONS.values()] + [a for _, a in QUESTIONS.values()] + CAPTIONS + SUMMARIES
    words = {w for t in texts for w in t.replace("{}", " ").split()}
    for _, _, values in ATTRIBUTES.values():
        words.update(values)
    words.update(EXTRA_WORDS)
    return sorted(words)
