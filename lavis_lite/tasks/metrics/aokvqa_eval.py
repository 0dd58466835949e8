"""A-OKVQA (Schwenk et al., 2022) accuracy as its ``evaluation/eval_predictions.py`` computes it.

- Direct answer: ``min(1, #direct_answers equal to the prediction / 3)`` per question (no
  leave-one-out, unlike VQAv2), averaged over the questions NOT marked ``difficult_direct_answer``.
- Multiple choice: 1 if the prediction equals ``choices[correct_choice_idx]``, over all questions.
Missing predictions score 0. Both in percent.
"""
from __future__ import annotations


def direct_answer_accuracy(prediction: str, direct_answers: list[str]) -> float:
    return min(1.0, sum(prediction == a for a in direct_answers) / 3.0)


def aokvqa_scores(records: list[dict], questions: dict, multiple_choice: bool = False) -> dict:
    """records ``[{"question_id", "prediction"}]`` (for MC the prediction is the chosen choice text);
    questions ``{question_id: {"choices", "correct_choice_idx", "direct_answers", "difficult_direct_answer"}}``."""
    preds = {}
    for i, r in enumerate(records):
        if "question_id" not in r or "prediction" not in r:
            raise KeyError(f"A-OKVQA result #{i} needs 'question_id' and 'prediction': {r!r}")
        preds[str(r["question_id"])] = r["prediction"]
    scored = {str(q): v for q, v in questions.items()
              if multiple_choice or not v.get("difficult_direct_answer", False)}
    if not scored:
        raise ValueError("A-OKVQA: no question to score")
    accs, missing = [], 0
    for qid, q in scored.items():
        if qid not in preds:
            missing += 1
            accs.append(0.0)
            continue
        if multiple_choice:
            accs.append(float(preds[qid] == q["choices"][int(q["correct_choice_idx"])]))
        else:
            accs.append(direct_answer_accuracy(preds[qid], list(q["direct_answers"])))
    return {"accuracy": 100.0 * sum(accs) / len(accs), "n": len(accs), "n_missing": missing}
