"""Multimodal-LLM benchmarks as evaluation tasks: ``mme``, ``mmbench``, ``pope``, ``scienceqa``.

Each task builds the benchmark authors' prompt from the sample's fields, generates greedily, keeps
the raw reply in ``<split>_<result_name>.json`` and scores with the benchmark's own rules
(``lavis_lite/tasks/metrics/{mme,mmbench,pope,scienceqa}_eval.py``). ``run.prompt`` (default ``{}``)
wraps the benchmark text, e.g. ``"{}\\nAnswer the question using a single word or phrase."`` for
LLaVA-1.5's MME / POPE suffix. The datasets are the builders of the same names
(``lavis_lite/datasets/builders/benchmark_builders.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

from lavis_lite.common.registry import registry
from lavis_lite.common.run_schema import GenerationKeys
from lavis_lite.tasks.generative_eval import GenerativeEvalTask, run_choice, run_option
from lavis_lite.tasks.metrics import mmbench_eval, scienceqa_eval
from lavis_lite.tasks.metrics.mme_eval import mme_scores
from lavis_lite.tasks.metrics.pope_eval import pope_scores, pope_yes_no


class BenchmarkTask(GenerativeEvalTask):
    id_key = "instance_id"
    default_prompt = "{}"
    kept_fields: tuple[str, ...] = ()

    def __init__(self, cfg=None, **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        if "{}" not in self.prompt:
            raise ValueError(f"{type(self).__name__}: run.prompt must contain '{{}}' where the benchmark's "
                             f"question goes, got {self.prompt!r}")

    def benchmark_text(self, samples: dict, i: int) -> str:
        raise NotImplementedError

    def valid_step(self, model, samples) -> list[dict]:
        n = len(samples["instance_id"])
        prompts = [self.prompt.replace("{}", self.benchmark_text(samples, i)) for i in range(n)]
        replies = self.generate(model, samples, prompts)
        records = []
        for i, reply in enumerate(replies):
            record = {"instance_id": samples["instance_id"][i], "prediction": reply}
            record.update({k: samples[k][i] for k in self.kept_fields})
            records.append(self.annotate(record))
        return records

    def annotate(self, record: dict) -> dict:
        """Add the parsed answer to a record (kept in the result file for inspection)."""
        return record


@registry.register_task("mme")
class MMETask(BenchmarkTask):
    result_name = "mme_result"
    default_max_new_tokens = 16
    kept_fields = ("question_id", "category", "image_name", "question", "answer")

    def benchmark_text(self, samples, i):
        return samples["question"][i]  # MME's questions end with "Please answer yes or no."

    def compute_metrics(self, records, split_name):
        scores = mme_scores([{"category": r["category"], "image": r["image_name"], "answer": r["answer"],
                              "prediction": r["prediction"]} for r in records])
        return {**scores, "agg_metrics": scores["total"]}


@registry.register_task("pope")
class POPETask(BenchmarkTask):
    result_name = "pope_result"
    default_max_new_tokens = 16
    kept_fields = ("question_id", "pope_split", "question", "label")

    def benchmark_text(self, samples, i):
        return samples["question"][i]

    def annotate(self, record):
        return {**record, "parsed": pope_yes_no(record["prediction"])}

    def compute_metrics(self, records, split_name):
        scores = pope_scores([{"split": r["pope_split"], "label": r["label"], "prediction": r["prediction"]}
                              for r in records])
        return {**scores, "agg_metrics": scores["f1"]}


@dataclass
class MMBenchKeys(GenerationKeys):
    mmbench_prompt_style: str = "mmbench"
    mmbench_lang: str = "en"


@registry.register_task("mmbench")
class MMBenchTask(BenchmarkTask):
    """Run options: ``mmbench_prompt_style`` (mmbench | llava, default mmbench), ``mmbench_lang`` (en | cn)."""

    run_schema = MMBenchKeys  # declared run: keys (lavis_lite/common/run_schema.py)
    result_name = "mmbench_result"
    default_max_new_tokens = 32
    kept_fields = ("g_index", "shift", "options", "answer", "category", "l2_category")

    def __init__(self, cfg=None, **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        self.style = run_choice(cfg, "mmbench_prompt_style", "mmbench", mmbench_eval.PROMPT_STYLES, "mmbench")
        self.lang = str(run_option(cfg, "mmbench_lang", "en"))

    def benchmark_text(self, samples, i):
        return mmbench_eval.build_prompt(samples["question"][i], samples["options"][i], samples["hint"][i],
                                         style=self.style, lang=self.lang)

    def annotate(self, record):
        return {**record, "choice": mmbench_eval.extract_choice(record["prediction"], record["options"])}

    def compute_metrics(self, records, split_name):
        scored = [r for r in records if r.get("answer") is not None]
        if not scored:
            return {"agg_metrics": 0.0, "n": len(records), "scored": False}  # test split: answers withheld
        scores = mmbench_eval.circular_scores(scored)
        return {**scores, "agg_metrics": scores["overall"]}


@registry.register_task("scienceqa")
class ScienceQATask(BenchmarkTask):
    result_name = "scienceqa_result"
    default_max_new_tokens = 32
    kept_fields = ("pid", "answer", "subject", "grade")

    def benchmark_text(self, samples, i):
        return scienceqa_eval.build_prompt(samples["question"][i], samples["choices"][i], samples["hint"][i])

    def valid_step(self, model, samples):
        records = super().valid_step(model, samples)
        for record, choices in zip(records, samples["choices"]):
            record["n_choices"] = len(choices)
            record["parsed"] = scienceqa_eval.extract_answer_index(record["prediction"], len(choices))
        return records

    def compute_metrics(self, records, split_name):
        scores = scienceqa_eval.scienceqa_scores(records)
        return {**scores, "agg_metrics": scores["accuracy"]}
