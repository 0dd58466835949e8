"""MMBench (Liu et al., 2023): prompts, circular variants, answer extraction and CircularEval.

Answer extraction follows the official evaluation (OpenCompass / VLMEvalKit ``can_infer``) without
the GPT judge (its "exact matching" policy):
  1. option letter: replace ``.()[],:;!*#{}`` by spaces and split into words; if exactly one of the
     option letters appears as a word it is the answer (a refusal phrase gives "Z");
  2. option content: otherwise, if the lower-cased content of exactly one option occurs in the
     lower-cased reply, that option is the answer;
  3. otherwise the reply matches nothing and counts as wrong.
CircularEval: a question with N options is asked N times, the option contents shifted by one place
each time (the answer letter moving with its content); it is right only if every variant is right.
"""
from __future__ import annotations

import string
from collections import defaultdict

LETTERS = tuple(string.ascii_uppercase)
CIRCULAR_OFFSET = 1_000_000  # released circular copies carry index + k * 1e6

_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_SPLIT_CHARS = ".()[],:;!*#{}"

PROMPT_STYLES = ("mmbench", "llava")


def build_prompt(question: str, options: dict, hint: str | None = None, style: str = "mmbench",
                 lang: str = "en") -> str:
    """The published prompt.

    ``mmbench`` (OpenCompass / VLMEvalKit's default for MMBench)::

        Hint: {hint}\\nQuestion: {question}\\nOptions:\\nA. ...\\nB. ...\\nPlease select the correct answer from the options above. \\n
    ``llava`` (LLaVA-1.5's ``model_vqa_mmbench --single-pred-prompt``)::

        {hint}\\n{question}\\nA. ...\\nB. ...\\nAnswer with the option's letter from the given choices directly.
    """
    if style == "mmbench":
        prompt = f"Hint: {hint}\n" if hint else ""
        prompt += f"Question: {question}\n"
        if options:
            prompt += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in options.items())
            prompt += "Please select the correct answer from the options above. \n"
        return prompt
    if style == "llava":
        prompt = f"{hint}\n{question}" if hint else question
        prompt += "".join(f"\n{k}. {v}" for k, v in options.items())
        suffix = "请直接回答选项字母。" if lang == "cn" else "Answer with the option's letter from the given choices directly."
        return prompt + "\n" + suffix
    raise ValueError(f"MMBench prompt style must be one of {PROMPT_STYLES}, got {style!r}")


def circular_variants(options: dict, answer: str) -> list[tuple[dict, str]]:
    """``[(options, answer letter), ...]`` for shifts 0..N-1: shift k moves every content k places
    up (the content of B is shown as A, ...), as LLaVA's ``--all-rounds`` and MMBench's circular copies."""
    letters = list(options)
    if answer not in options:
        raise ValueError(f"MMBench answer {answer!r} is not one of the options {letters}")
    contents = [options[k] for k in letters]
    right = letters.index(answer)
    variants = []
    for shift in range(len(letters)):
        rotated = contents[shift:] + contents[:shift]
        variants.append((dict(zip(letters, rotated)), letters[(right - shift) % len(letters)]))
    return variants


def _count_letters(words: list[str], letters) -> int:
    return sum(1 for c in letters if c in words)


def infer_option_letter(reply: str, options: dict):
    """Step 1: the one option letter standing as a word in the reply ("Z" for a refusal), else None."""
    reply = str(reply)
    for refusal in _REFUSALS:
        if refusal in reply:
            return "Z"
    text = reply
    for c in _SPLIT_CHARS:
        text = text.replace(c, " ")
    words = text.split()
    count = _count_letters(words, options)
    if count == 1:
        return next(c for c in options if c in words)
    if count == 0 and _count_letters(words, ("Z",)) == 1:
        return "Z"
    return None


def infer_option_content(reply: str, options: dict):
    """Step 2: the one option whose (lower-cased) content occurs in the reply, else None."""
    reply = str(reply).lower()
    hits = [k for k, v in options.items() if str(v).lower() in reply]
    return hits[0] if len(hits) == 1 else None


def extract_choice(reply: str, options: dict):
    """Option letter for a free-text reply, or None when it matches no single option."""
    return infer_option_letter(reply, options) or infer_option_content(reply, options)


def circular_scores(records: list[dict]) -> dict:
    """CircularEval over ``[{"g_index", "shift", "answer", "choice", "category"?, "l2_category"?}, ...]``.

    ``choice`` is the extracted letter (None = no match). A question (``g_index``) is right only if
    every one of its variants is right. Returns percentages: ``overall``, ``per_category``,
    ``per_l2_category``, plus ``vanilla`` (shift-0 variants only), ``n_questions``, ``n_variants``,
    ``n_unmatched``.
    """
    if not records:
        raise ValueError("MMBench: no predictions to score")
    groups: dict = defaultdict(list)
    for i, r in enumerate(records):
        for key in ("g_index", "shift", "answer", "choice"):
            if key not in r:
                raise KeyError(f"MMBench result #{i} has no {key!r}: {r!r}")
        groups[r["g_index"]].append(r)
    right, vanilla = {}, {}
    for g, variants in groups.items():
        shifts = sorted(v["shift"] for v in variants)
        if len(set(shifts)) != len(shifts):
            raise ValueError(f"MMBench question {g!r} has a repeated shift among {shifts}")
        right[g] = all(v["choice"] == v["answer"] for v in variants)
        first = [v for v in variants if v["shift"] == 0]
        if first:
            vanilla[g] = first[0]["choice"] == first[0]["answer"]

    def table(key):
        by: dict = defaultdict(list)
        for g, variants in groups.items():
            value = variants[0].get(key)
            if value is not None:
                by[value].append(right[g])
        return {k: 100.0 * sum(v) / len(v) for k, v in sorted(by.items())}

    out = {"overall": 100.0 * sum(right.values()) / len(right), "n_questions": len(right),
           "n_variants": len(records), "n_unmatched": sum(1 for r in records if r["choice"] is None)}
    if vanilla:
        out["vanilla"] = 100.0 * sum(vanilla.values()) / len(vanilla)
    for key, name in (("category", "per_category"), ("l2_category", "per_l2_category")):
        t = table(key)
        if t:
            out[name] = t
    return out
