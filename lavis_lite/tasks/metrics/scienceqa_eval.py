"""ScienceQA-IMG (Lu et al., 2022) as LLaVA-1.5 evaluates it (``model_vqa_science`` + ``eval_science_qa``).

Prompt (``llava_test_CQM-A.json`` with ``--single-pred-prompt``)::

    Context: {hint}\\n{question}\\nA. {choice 0}\\nB. {choice 1}\\n...\\nAnswer with the option's letter from the given choices directly.

(the "Context:" line only when the problem has a hint). Answer extraction: the reply is an option
letter; or it starts with "<letter>. "; or "The answer is <letter>." occurs exactly once; anything
else (or a letter beyond the problem's choices) is wrong. ScienceQA-IMG = the test problems that
have an image.
"""
from __future__ import annotations

import re
from collections import defaultdict

OPTIONS = ("A", "B", "C", "D", "E")
SUFFIX = "Answer with the option's letter from the given choices directly."
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def build_prompt(question: str, choices: list[str], hint: str | None = None, suffix: str = SUFFIX) -> str:
    if len(choices) > len(OPTIONS):
        raise ValueError(f"ScienceQA problem has {len(choices)} choices; at most {len(OPTIONS)} are lettered")
    context = f"Context: {hint}\n" if hint else ""
    options = "\n".join(f"{OPTIONS[i]}. {c}" for i, c in enumerate(choices))
    prompt = f"{context}{question}\n{options}"
    return f"{prompt}\n{suffix}" if suffix else prompt


def extract_answer_index(reply: str, n_choices: int) -> int:
    """Index of the chosen option, or -1 when the reply names none of the problem's options."""
    text = str(reply)
    if text in OPTIONS:
        letter = text
    elif len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _THE_ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else None
    if letter is None or letter not in OPTIONS[:n_choices]:
        return -1
    return OPTIONS.index(letter)


def scienceqa_scores(records: list[dict]) -> dict:
    """``[{"prediction", "answer": int, "n_choices", "subject"?, "grade"?}, ...]`` -> percentages:
    ``accuracy``, ``per_subject``, ``per_grade`` (G1-6 / G7-12 as the paper groups them), ``n_failed``."""
    if not records:
        raise ValueError("ScienceQA: no predictions to score")
    hits, by_subject, by_grade, failed = [], defaultdict(list), defaultdict(list), 0
    for i, r in enumerate(records):
        for key in ("prediction", "answer", "n_choices"):
            if key not in r:
                raise KeyError(f"ScienceQA result #{i} has no {key!r}: {r!r}")
        idx = extract_answer_index(r["prediction"], int(r["n_choices"]))
        failed += idx < 0
        hit = idx == int(r["answer"])
        hits.append(hit)
        if r.get("subject"):
            by_subject[r["subject"]].append(hit)
        grade = str(r.get("grade") or "")
        if grade.startswith("grade") and grade[5:].isdigit():
            by_grade["G1-6" if int(grade[5:]) <= 6 else "G7-12"].append(hit)

    def pct(v):
        return 100.0 * sum(v) / len(v)
    out = {"accuracy": pct(hits), "n": len(hits), "n_failed": failed}
    if by_subject:
        out["per_subject"] = {k: pct(v) for k, v in sorted(by_subject.items())}
    if by_grade:
        out["per_grade"] = {k: pct(v) for k, v in sorted(by_grade.items())}
    return out
