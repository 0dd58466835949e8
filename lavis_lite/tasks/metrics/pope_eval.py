"""POPE (Li et al., 2023) scoring as its ``evaluate.py`` computes it.

Yes/no extraction from a free-text reply: keep the text before the first ".", drop commas, split on
spaces; the reply is "no" if one of the words is "No", "no" or "not", otherwise "yes" (so an empty or
evasive reply counts as "yes"). "yes" is the positive class: accuracy, precision, recall, F1 and the
share of "yes" replies, per split (random / popular / adversarial) and their mean.
"""
from __future__ import annotations

from collections import defaultdict

POPE_SPLITS = ("random", "popular", "adversarial")


def pope_yes_no(reply: str) -> str:
    """A model reply -> "yes" | "no" by POPE's rule."""
    text = str(reply)
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _ratio(num: float, den: float) -> float:
    # POPE divides without a guard; an empty class gives 0 here instead of a ZeroDivisionError.
    return num / den if den else 0.0


def pope_metrics(predictions: list[str], labels: list[str]) -> dict:
    """Fractions (as POPE prints them) from yes/no predictions and labels of one split."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"POPE: {len(predictions)} predictions for {len(labels)} labels")
    tp = fp = tn = fn = 0
    for pred, label in zip(predictions, labels):
        label = str(label).strip().lower()
        if label not in ("yes", "no"):
            raise ValueError(f"POPE label must be yes/no, got {label!r}")
        if pred == "yes":
            tp, fp = tp + (label == "yes"), fp + (label == "no")
        else:
            tn, fn = tn + (label == "no"), fn + (label == "yes")
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "yes_ratio": sum(p == "yes" for p in predictions) / len(predictions),
            "TP": tp, "FP": fp, "TN": tn, "FN": fn, "n": len(labels)}


def pope_scores(records: list[dict]) -> dict:
    """``[{"split", "label", "prediction"}, ...]`` -> ``{"per_split": {split: metrics}, "accuracy", "f1", ...}``
    (the top-level figures are the means over the splits present)."""
    if not records:
        raise ValueError("POPE: no predictions to score")
    by_split: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for i, r in enumerate(records):
        for key in ("split", "label", "prediction"):
            if key not in r:
                raise KeyError(f"POPE result #{i} has no {key!r}: {r!r}")
        preds, labels = by_split[r["split"]]
        preds.append(pope_yes_no(r["prediction"]))
        labels.append(r["label"])
    per_split = {s: pope_metrics(*by_split[s]) for s in sorted(by_split)}
    out = {"per_split": per_split}
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        out[key] = sum(m[key] for m in per_split.values()) / len(per_split)
    return out
