"""GQA and A-OKVQA evaluation tasks (``gqa``, ``aok_vqa``, LAVIS's task names). OK-VQA is the ``vqa``
task (VQAv2 accuracy over its 10 answers): projects/minigpt4qwen/eval_okvqa.yaml.

``gqa``: exact match after GQA's prediction cleaning (``run.gqa_normalization``: lavis | llava | none,
see tasks/metrics/gqa_eval.py); the gold answers come from the eval split's records, or from
``run.gqa_questions_files`` (``{split: path}``: the official ``testdev_balanced_questions.json``
dict, or LAVIS's list), which also give ``types`` / ``isBalanced`` for the per-type tables.

``aok_vqa``: ``run.aokvqa_mode`` ``direct`` (default; direct-answer accuracy, prompt = ``run.prompt``;
also ``vqav2_accuracy``: the same questions through the VQAv2 scorer)
or ``multiple_choice`` (the choices are lettered in the prompt, the reply's letter -- else the one
choice whose text it contains -- is the prediction). Annotations: A-OKVQA's records with
``question_id``, ``choices``, ``correct_choice_idx``, ``direct_answers``, ``difficult_direct_answer``
(the eval split's records, or ``run.aokvqa_annotation_files.<split>``). A multiple-choice reply that
names no single choice counts as wrong.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from lavis_lite.common.registry import registry
from lavis_lite.common.run_schema import GenerationKeys
from lavis_lite.tasks.generative_eval import GenerativeEvalTask, leaf_datasets, run_choice, run_option
from lavis_lite.tasks.metrics.aokvqa_eval import aokvqa_scores
from lavis_lite.tasks.metrics.gqa_eval import NORMALIZATIONS, gqa_scores, normalize_gqa_prediction
from lavis_lite.tasks.metrics.mmbench_eval import LETTERS, extract_choice
from lavis_lite.tasks.metrics.vqa_eval import vqa_accuracy
from lavis_lite.tasks.vqa import clean_answer

logger = logging.getLogger(__name__)

MC_SUFFIX = "Answer with the option's letter from the given choices directly."


def read_question_records(paths) -> dict:
    """``{str(question_id): record}`` from JSON lists / JSONL (LAVIS) or an official ``{qid: record}`` dict."""
    out = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            data = [json.loads(line) for line in f if line.strip()] if str(path).endswith(".jsonl") else json.load(f)
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):
            data = data["annotations"]
        if isinstance(data, dict):  # official GQA: {qid: {...}}
            items = data.items()
        elif isinstance(data, list):
            items = []
            for i, rec in enumerate(data):
                if not isinstance(rec, dict) or "question_id" not in rec:
                    raise KeyError(f"{path}: record #{i} has no 'question_id'")
                items.append((rec["question_id"], rec))
        else:
            raise TypeError(f"{path}: expected a list of question records or a {{question_id: record}} dict")
        for qid, rec in items:
            out[str(qid)] = rec
    return out


class _AnnotatedVQATask(GenerativeEvalTask):
    id_key = "question_id"
    default_prompt = "{}\nAnswer the question using a single word or phrase."
    default_max_new_tokens = 10
    files_option = ""

    def __init__(self, cfg=None, **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        if "{}" not in self.prompt:
            raise ValueError(f"{type(self).__name__}: run.prompt must contain '{{}}', got {self.prompt!r}")
        self.annotation_files = dict(run_option(cfg, self.files_option, {}) or {})
        self.dataset_ann_paths: list[str] = []
        self._questions: dict | None = None

    def prepare_references(self, dataset) -> None:
        self.dataset_ann_paths = [p for part in leaf_datasets(dataset) for p in getattr(part, "ann_paths", [])]
        self._questions = None

    def questions(self, split_name: str | None = None) -> dict:
        """``{str(question_id): record}``: ``run.<files_option>.<split>`` when given, else the eval
        dataset's parsed records, else its annotation files."""
        path = self.annotation_files.get(split_name) if split_name else None
        if path:
            return read_question_records([path] if isinstance(path, str) else list(path))
        if self._questions is None:
            records = [a for part in leaf_datasets(self.eval_dataset) for a in getattr(part, "annotation", None) or []]
            if records and all(isinstance(a, dict) and "question_id" in a for a in records):
                self._questions = {str(a["question_id"]): a for a in records}
            elif self.dataset_ann_paths:
                self._questions = read_question_records(self.dataset_ann_paths)
            else:
                raise FileNotFoundError(f"{type(self).__name__}: no question records to score against; set "
                                        f"run.{self.files_option}.<split>")
        return self._questions


@dataclass
class GQAKeys(GenerationKeys):
    gqa_normalization: str = "lavis"
    gqa_questions_files: Any = None


@dataclass
class AOKVQAKeys(GenerationKeys):
    aokvqa_mode: str = "direct"
    aokvqa_annotation_files: Any = None


@registry.register_task("gqa")
class GQATask(_AnnotatedVQATask):
    run_schema = GQAKeys  # declared run: keys (lavis_lite/common/run_schema.py)
    result_name = "gqa_result"
    files_option = "gqa_questions_files"

    def __init__(self, cfg=None, **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        self.normalization = run_choice(cfg, "gqa_normalization", "lavis", NORMALIZATIONS, "gqa")

    def valid_step(self, model, samples) -> list[dict]:
        questions = samples["text_input"]
        replies = self.generate(model, samples, [self.prompt.replace("{}", q) for q in questions])
        inst = samples.get("instance_id", [None] * len(questions))
        return [{"question_id": q, "prediction": r, "normalized": normalize_gqa_prediction(r, self.normalization),
                 "instance_id": k} for q, r, k in zip(samples["question_id"], replies, inst)]

    def compute_metrics(self, records, split_name):
        questions = self.questions(split_name)
        rows = []
        for r in records:
            q = questions.get(str(r["question_id"]))
            if q is None:
                raise KeyError(f"gqa: prediction for question_id {r['question_id']!r} has no annotation")
            answer = q.get("answer", (q.get("answers") or [None])[0])  # raw record, or a parsed VQA record
            if answer is None:
                continue
            types = q.get("types") or {}
            rows.append({"prediction": r["prediction"], "answer": answer, "is_balanced": q.get("isBalanced"),
                         "structural": types.get("structural"), "semantic": types.get("semantic")})
        if not rows:
            logger.warning("gqa: split %r has no answers; %d predictions saved, not scored", split_name, len(records))
            return {"agg_metrics": 0.0, "n": len(records), "scored": False}
        scores = gqa_scores(rows, mode=self.normalization)
        return {**scores, "agg_metrics": scores["accuracy"]}


def mc_prompt(question: str, choices: list[str]) -> str:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{question}\n{options}\n{MC_SUFFIX}"


@registry.register_task("aok_vqa")
class AOKVQATask(_AnnotatedVQATask):
    run_schema = AOKVQAKeys  # declared run: keys (lavis_lite/common/run_schema.py)
    result_name = "aokvqa_result"
    files_option = "aokvqa_annotation_files"

    def __init__(self, cfg=None, **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        self.mode = run_choice(cfg, "aokvqa_mode", "direct", ("direct", "multiple_choice"), "aok_vqa")
        if self.mode == "multiple_choice" and run_option(cfg, "prompt") is None:
            self.prompt = "{}"  # the lettered choices and the instruction are built below

    def valid_step(self, model, samples) -> list[dict]:
        qids, questions = samples["question_id"], samples["text_input"]
        if self.mode == "multiple_choice":
            choices = samples.get("choices")
            if choices is None:  # a dataset whose samples do not carry them: its records do
                table = self.questions()
                choices = [(table.get(str(qid)) or {}).get("choices") for qid in qids]
            for qid, c in zip(qids, choices):
                if not c:
                    raise KeyError(f"aok_vqa: question {qid!r} has no 'choices' (multiple-choice mode)")
            choices = [list(c) for c in choices]
            texts = [mc_prompt(q, c) for q, c in zip(questions, choices)]
        else:
            texts = questions
        replies = self.generate(model, samples, [self.prompt.replace("{}", t) for t in texts])
        inst = samples.get("instance_id", [None] * len(qids))
        records = []
        for i, (qid, reply) in enumerate(zip(qids, replies)):
            if self.mode == "multiple_choice":
                letter = extract_choice(reply, {LETTERS[j]: c for j, c in enumerate(choices[i])})
                pred = choices[i][LETTERS.index(letter)] if letter in LETTERS[:len(choices[i])] else None
            else:
                pred = clean_answer(reply)
            records.append({"question_id": qid, "reply": reply, "prediction": pred, "instance_id": inst[i]})
        return records

    def compute_metrics(self, records, split_name):
        questions = self.questions(split_name)
        key = "choices" if self.mode == "multiple_choice" else "direct_answers"
        scored = {q: v for q, v in questions.items() if v.get(key) and
                  (self.mode == "direct" or v.get("correct_choice_idx") is not None)}
        if not scored:
            logger.warning("aok_vqa: split %r has no %s; %d predictions saved, not scored", split_name, key, len(records))
            return {"agg_metrics": 0.0, "n": len(records), "scored": False}
        # an unmatched multiple-choice reply (prediction None) equals no choice: scored 0
        scores = aokvqa_scores(records, scored, multiple_choice=self.mode == "multiple_choice")
        missing = scores["n_missing"]
        if missing:
            logger.warning("aok_vqa: %d annotated questions of %r have no prediction (scored 0, as the official "
                           "evaluation does)", missing, split_name)
        name = "mc_accuracy" if self.mode == "multiple_choice" else "da_accuracy"
        out = {name: scores["accuracy"], "n": scores["n"], "n_missing": missing,
               "n_unmatched": sum(r["prediction"] is None for r in records), "agg_metrics": scores["accuracy"]}
        if self.mode == "direct":  # the same questions with the VQAv2 scorer (normalisation, leave-one-out)
            preds = {str(r["question_id"]): r["prediction"] for r in records}
            accs = [vqa_accuracy(preds.get(q, ""), v["direct_answers"]) for q, v in scored.items()
                    if not v.get("difficult_direct_answer", False)]
            out["vqav2_accuracy"] = 100.0 * sum(accs) / len(accs)
        return out
