"""The official VQAv2 accuracy (Antol et al. / the VQA challenge's ``vqaEval.py``), re-implemented.

Answer normalisation, in the official order:
  1. newlines/tabs -> spaces, strip;
  2. punctuation: each of ``;/[]"{}()=+\\_-><@`,?!`` is deleted when it touches a space (or the text
     holds a digit-comma-digit such as ``1,000``), otherwise replaced by a space; a period is deleted
     unless a digit follows it (``2.5`` stays);
  3. lower-case, number words ``none``/``zero``..``ten`` -> digits, articles ``a an the`` dropped,
     apostrophe-less contractions restored (``dont`` -> ``don't``).
Accuracy of one prediction against N human answers: for each of the N leave-one-out subsets
(10 choose 9 for VQAv2) ``min(#answers in the subset equal to the prediction / 3, 1)``, averaged.

Official quirk kept on purpose: steps 2-3 only run when the human answers disagree (``len(set) > 1``);
pass ``always_normalize=True`` to normalise unconditionally (kinder to chatty generative models).
With a single human answer there is no leave-one-out subset, so the score is plain exact match.
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable, Mapping

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
# A period not followed by a digit. (The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a
# mistyped look-behind that never matches anything, so only the look-ahead has an effect — same as here.)
_PERIOD = re.compile(r"\.(?!\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# The official table (keys are what annotators typed without an apostrophe).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def _clean_whitespace(text: str) -> str:
    return str(text).replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    out = text
    has_number_comma = _COMMA_IN_NUMBER.search(text) is not None
    for p in _PUNCT:
        # Decided on the original text, as the official code does.
        if (p + " " in text or " " + p in text) or has_number_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def process_digit_article(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """Full official normalisation of one answer string."""
    return process_digit_article(process_punctuation(_clean_whitespace(text)))


def _answer_strings(answers) -> list[str]:
    """Accept ``["red", ...]`` or the official ``[{"answer": "red", ...}, ...]``."""
    if isinstance(answers, str):
        raise TypeError(f"answers must be a list of human answers, got the string {answers!r}")
    out = []
    for a in answers:
        out.append(a["answer"] if isinstance(a, Mapping) else a)
    return out


def vqa_accuracy(prediction: str, answers: Iterable, always_normalize: bool = False) -> float:
    """Accuracy in [0, 1] of one predicted answer against the human answers of one question."""
    gts = [_clean_whitespace(a) for a in _answer_strings(answers)]
    if not gts:
        raise ValueError("vqa_accuracy needs at least one human answer")
    pred = _clean_whitespace(prediction)
    if always_normalize or len(set(gts)) > 1:
        gts = [normalize_answer(a) for a in gts]
        pred = normalize_answer(pred)
    if len(gts) == 1:
        return float(pred == gts[0])
    accs = []
    for i in range(len(gts)):  # leave annotator i out
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        accs.append(min(1.0, matches / 3.0))
    return sum(accs) / len(accs)


def _percent(values: list[float], ndigits: int) -> float:
    return round(100.0 * sum(values) / len(values), ndigits)


def vqa_score(results: list[dict], annotations: Mapping, always_normalize: bool = False,
              ndigits: int = 2) -> dict:
    """Score predictions against annotations the way the VQA challenge does.

    results: ``[{"question_id": qid, "answer": str}, ...]`` (one per question).
    annotations: ``{qid: {"answers": [...], optional "answer_type", optional "question_type"}}``.
    Returns percentages: ``{"overall", "per_answer_type", "per_question_type", "per_question", "n"}``
    (the per-type tables only when the annotations carry the types).
    """
    if not results:
        raise ValueError("vqa_score: no predictions to score")
    overall: list[float] = []
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_question_type: dict[str, list[float]] = defaultdict(list)
    per_question: dict = {}
    for res in results:
        for key in ("question_id", "answer"):
            if key not in res:
                raise KeyError(f"VQA result {res!r} has no {key!r}")
        qid = res["question_id"]
        ann = annotations.get(qid, annotations.get(str(qid)))
        if ann is None:
            raise KeyError(f"VQA result for question_id {qid!r} has no annotation")
        if qid in per_question:
            raise ValueError(f"VQA results hold question_id {qid!r} twice")
        acc = vqa_accuracy(res["answer"], ann["answers"], always_normalize=always_normalize)
        overall.append(acc)
        per_question[qid] = round(100.0 * acc, ndigits)
        if ann.get("answer_type") is not None:
            by_answer_type[ann["answer_type"]].append(acc)
        if ann.get("question_type") is not None:
            by_question_type[ann["question_type"]].append(acc)
    out = {"overall": _percent(overall, ndigits), "n": len(overall), "per_question": per_question}
    if by_answer_type:
        out["per_answer_type"] = {k: _percent(v, ndigits) for k, v in sorted(by_answer_type.items())}
    if by_question_type:
        out["per_question_type"] = {k: _percent(v, ndigits) for k, v in sorted(by_question_type.items())}
    return out
