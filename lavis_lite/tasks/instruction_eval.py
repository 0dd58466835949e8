"""Instruction evaluation on held-out conversations: answer accuracy and mean loss.

For each conversation the model answers its last human turn (earlier turns, with their reference
answers, are the history) and the answer is compared with the reference after normalisation
(lower case, punctuation removed, whitespace collapsed):
  - ``exact_acc``    normalised answer == normalised reference,
  - ``contains_acc`` the normalised reference appears, as whole words, in the normalised answer,
both in percent, overall and ``per_question_type``. ``loss`` is the token-weighted mean loss of the
whole conversations (every assistant turn supervised, the training loss), computed per sample so
that merged results are de-duplicated exactly; ``token_acc`` when the model reports ``n_correct``.

Run options: ``agg_metric`` (``exact_acc`` | ``contains_acc`` | ``token_acc``, default ``exact_acc``),
``compute_loss`` (default true), plus the generation options of ``GenerativeEvalTask``.
"""
from __future__ import annotations

import re
import string
from collections import defaultdict

import torch

from lavis_lite.common.registry import registry
from lavis_lite.common.run_schema import InstructionEvalKeys
from lavis_lite.tasks.base_task import _unwrap
from lavis_lite.tasks.generative_eval import GenerativeEvalTask, run_choice, run_option

TOKEN_KEYS = ("input_ids", "labels", "attention_mask", "position_ids")
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
AGG_CHOICES = ("exact_acc", "contains_acc", "token_acc")


def normalize_text(text: str) -> str:
    return " ".join(_PUNCT.sub("", str(text).lower()).split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_text(prediction) == normalize_text(reference)


def contains_match(prediction: str, reference: str) -> bool:
    ref = normalize_text(reference)
    return bool(ref) and f" {ref} " in f" {normalize_text(prediction)} "


def split_instruction_batch(samples: dict) -> list[dict]:
    """A collated instruction batch -> one single-sample batch per conversation (images by n_images).
    A tokenised evaluation batch (one conversation per row, every image kept: ChatCollator's
    ``all_images``) gives each sample its row without the batch's padding: the tensors the sample alone
    would have been collated to."""
    n = len(samples["conversations"])
    if "input_ids" in samples and not samples.get("all_images"):
        raise ValueError("instruction_eval needs evaluation batches (one conversation per row, all images: "
                         "ChatCollator(all_images=True), as model_wiring gives evaluation splits)")
    lengths = samples["attention_mask"].sum(1).tolist() if "attention_mask" in samples else None
    n_images = [int(k) for k in samples.get("n_images", [0] * n)]
    offsets = [0]
    for k in n_images:
        offsets.append(offsets[-1] + k)
    singles = []
    for i in range(n):
        one = {}
        for key, value in samples.items():
            if key in ("image", "image_features") and isinstance(value, torch.Tensor):
                one[key] = value[offsets[i]:offsets[i + 1]]
            elif isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
                one[key] = value[i:i + 1]
                if lengths is not None and value.dim() == 2 and key in TOKEN_KEYS:
                    one[key] = one[key][:, :int(lengths[i])]
            elif isinstance(value, (list, tuple)) and len(value) == n:
                one[key] = [value[i]]
            else:
                one[key] = value
        singles.append(one)
    return singles


def _percent(hits: list[bool]) -> float:
    return round(100.0 * sum(hits) / len(hits), 2) if hits else 0.0


@registry.register_task("instruction_eval")
class InstructionEvalTask(GenerativeEvalTask):
    run_schema = InstructionEvalKeys  # declared run: keys (lavis_lite/common/run_schema.py)
    id_key = "instance_id"
    result_name = "instruction_result"

    def __init__(self, cfg=None, **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        self.agg_metric = run_choice(cfg, "agg_metric", "exact_acc", AGG_CHOICES, "instruction_eval")
        self.compute_loss = bool(run_option(cfg, "compute_loss", True))

    def valid_step(self, model, samples) -> list[dict]:
        convs = samples["conversations"]
        ids = samples.get("instance_id", [None] * len(convs))
        history, references = [], []
        for conv, inst in zip(convs, ids):
            if not conv or conv[-1]["from"] != "gpt":
                raise ValueError(f"instruction_eval: conversation of instance {inst!r} does not end with an "
                                 "assistant turn to compare against")
            history.append(conv[:-1])
            references.append(conv[-1]["value"])
        predictions = self.generate(model, {**samples, "conversations": history})
        types = samples.get("question_type", [None] * len(convs))
        records = [{"instance_id": inst, "question_type": qt, "prediction": p, "reference": r,
                    "exact": exact_match(p, r), "contains": contains_match(p, r)}
                   for inst, qt, p, r in zip(ids, types, predictions, references)]
        if self.compute_loss:
            module = _unwrap(model)
            for record, one in zip(records, split_instruction_batch(samples)):
                out = module(one)
                n_tokens = int(out["n_tokens"])
                record["loss_sum"] = float(out["loss"]) * n_tokens
                record["n_tokens"] = n_tokens
                if "n_correct" in out:
                    record["n_correct"] = int(out["n_correct"])
        return records

    def compute_metrics(self, records: list[dict], split_name: str) -> dict:
        if not records:
            raise ValueError(f"instruction_eval: no results for split {split_name!r}")
        metrics = {"n": len(records),
                   "exact_acc": _percent([r["exact"] for r in records]),
                   "contains_acc": _percent([r["contains"] for r in records])}
        if all("n_tokens" in r for r in records):
            n_tokens = sum(r["n_tokens"] for r in records)
            metrics["loss"] = sum(r["loss_sum"] for r in records) / max(n_tokens, 1)
            metrics["n_tokens"] = n_tokens
            if all("n_correct" in r for r in records):
                metrics["token_acc"] = round(100.0 * sum(r["n_correct"] for r in records) / max(n_tokens, 1), 2)
        by_type = defaultdict(list)
        for r in records:
            if r.get("question_type") is not None:
                by_type[r["question_type"]].append(r)
        if by_type:
            metrics["per_question_type"] = {
                qt: {"n": len(rs), "exact_acc": _percent([r["exact"] for r in rs]),
                     "contains_acc": _percent([r["contains"] for r in rs])}
                for qt, rs in sorted(by_type.items())}
        if self.agg_metric not in metrics:
            raise KeyError(f"instruction_eval: agg_metric {self.agg_metric!r} is not available "
                           f"(got {sorted(metrics)}); token_acc needs 'n_correct' from the model")
        metrics["agg_metrics"] = metrics[self.agg_metric]
        return metrics
