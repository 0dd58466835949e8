"""GQA accuracy (Hudson & Manning, 2019).

The official ``eval.py`` compares the prediction string with the gold answer exactly
(``predicted == question["answer"]``), over the balanced questions (``isBalanced``), and breaks
accuracy down by structural / semantic type and into "binary" (structural type verify / logical /
compare / choose) and "open" (query) questions. It expects predictions already cleaned; the cleaning
applied before it is the only thing that differs between projects:
  - ``lavis`` (default): LAVIS's GQA task -- the VQA evaluation's punctuation and digit / article
    processing (``processPunctuation`` + ``processDigitArticle``) of the prediction;
  - ``llava``: LLaVA's ``convert_gqa_for_eval`` -- ``rstrip(".")`` and lower-case;
  - ``none``: the prediction as generated (strictly the official script).
The gold answer is never changed (GQA's answers are already lower-case words).
"""
from __future__ import annotations

from collections import defaultdict

from lavis_lite.tasks.metrics.vqa_eval import process_digit_article, process_punctuation

NORMALIZATIONS = ("lavis", "llava", "none")


def normalize_gqa_prediction(text: str, mode: str = "lavis") -> str:
    text = str(text)
    if mode == "lavis":
        return process_digit_article(process_punctuation(text))
    if mode == "llava":
        return text.rstrip(".").lower()
    if mode == "none":
        return text
    raise ValueError(f"GQA normalisation must be one of {NORMALIZATIONS}, got {mode!r}")


def gqa_scores(records: list[dict], mode: str = "lavis") -> dict:
    """``[{"prediction", "answer", "is_balanced"?, "structural"?, "semantic"?}, ...]`` -> percentages.

    Unbalanced records (``is_balanced`` false) are left out, as the official accuracy does."""
    if not records:
        raise ValueError("GQA: no predictions to score")
    hits, by_struct, by_sem, by_kind = [], defaultdict(list), defaultdict(list), defaultdict(list)
    for i, r in enumerate(records):
        for key in ("prediction", "answer"):
            if key not in r:
                raise KeyError(f"GQA result #{i} has no {key!r}: {r!r}")
        if r.get("is_balanced") is False:
            continue
        hit = normalize_gqa_prediction(r["prediction"], mode) == r["answer"]
        hits.append(hit)
        if r.get("structural"):
            by_struct[r["structural"]].append(hit)
            by_kind["open" if r["structural"] == "query" else "binary"].append(hit)
        if r.get("semantic"):
            by_sem[r["semantic"]].append(hit)
    if not hits:
        raise ValueError("GQA: no balanced question among the predictions")

    def pct(v):
        return 100.0 * sum(v) / len(v)
    out = {"accuracy": pct(hits), "n": len(hits)}
    for name, table in (("per_structural_type", by_struct), ("per_semantic_type", by_sem)):
        if table:
            out[name] = {k: pct(v) for k, v in sorted(table.items())}
    for kind, v in by_kind.items():
        out[kind] = pct(v)
    return out
