"""MME (Fu et al., 2023) scoring as its ``eval_tool/calculation.py`` computes it.

Rules:
  - the reply is lower-cased; exactly "yes" / "no" is that label, otherwise the label is "yes" if
    "yes" occurs in its first 4 characters, else "no" if "no" does, else "other" (always wrong);
  - every image has two questions (one "yes", one "no"); ``acc`` is the share of questions answered
    right, ``acc_plus`` the share of images with BOTH questions right;
  - a subtask's score is ``(acc + acc_plus) * 100`` (0..200); the perception score sums the 10
    perception subtasks (max 2000), the cognition score the 4 cognition subtasks (max 800).
"""
from __future__ import annotations

import logging
from collections import defaultdict

logger = logging.getLogger(__name__)

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
              "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
CATEGORIES = {"perception": PERCEPTION, "cognition": COGNITION}


def parse_mme_answer(reply: str) -> str:
    """A model reply -> "yes" | "no" | "other" (MME's ``parse_pred_ans``)."""
    text = str(reply).lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_scores(records: list[dict]) -> dict:
    """Score ``[{"category", "image", "answer": "Yes"|"No", "prediction": str}, ...]``.

    Returns ``{"perception", "cognition", "total", "per_subtask": {name: {"acc", "acc_plus", "score",
    "n_questions", "n_images", "n_other"}}}``; acc / acc_plus in percent, scores as MME reports them.
    Subtasks outside MME's 14 are scored and listed but counted in neither category.
    """
    if not records:
        raise ValueError("mme_scores: no predictions to score")
    by_task: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    n_other: dict[str, int] = defaultdict(int)
    for i, r in enumerate(records):
        for key in ("category", "image", "answer", "prediction"):
            if key not in r:
                raise KeyError(f"MME result #{i} has no {key!r}: {r!r}")
        gold = str(r["answer"]).strip().lower()
        if gold not in ("yes", "no"):
            raise ValueError(f"MME result #{i} ({r['category']}/{r['image']}): ground truth must be yes/no, "
                             f"got {r['answer']!r}")
        pred = parse_mme_answer(r["prediction"])
        n_other[r["category"]] += pred == "other"
        by_task[r["category"]][str(r["image"])].append(pred == gold)

    per_subtask = {}
    for task, images in sorted(by_task.items()):
        odd = {img: len(v) for img, v in images.items() if len(v) != 2}
        if odd:
            logger.warning("MME %s: %d image(s) do not have exactly 2 questions (e.g. %s); acc+ counts an image "
                           "right only when all its questions are right", task, len(odd), next(iter(odd.items())))
        answers = [hit for hits in images.values() for hit in hits]
        acc = sum(answers) / len(answers)
        acc_plus = sum(all(hits) for hits in images.values()) / len(images)
        per_subtask[task] = {"acc": 100.0 * acc, "acc_plus": 100.0 * acc_plus, "score": 100.0 * (acc + acc_plus),
                             "n_questions": len(answers), "n_images": len(images), "n_other": n_other[task]}
    out = {}
    for category, names in CATEGORIES.items():
        out[category] = sum(per_subtask[n]["score"] for n in names if n in per_subtask)
        out[f"{category}_subtasks"] = sum(1 for n in names if n in per_subtask)
    out["total"] = out["perception"] + out["cognition"]
    out["per_subtask"] = per_subtask
    unknown = sorted(set(per_subtask) - set(PERCEPTION) - set(COGNITION))
    if unknown:
        logger.warning("MME: subtask(s) %s are not among MME's 14 and count in neither category", unknown)
    return out
