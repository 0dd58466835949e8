"""Classification evaluation: ``snli_ve`` (visual entailment accuracy) and ``zero_shot_classification``
(ImageNet-style top-1 / top-5 with a CLIP prompt ensemble).

``snli_ve``: a model with LAVIS's classification API (``predict(samples) -> {"predictions": logits,
"targets"}``) is scored by argmax; otherwise the model generates a free-text reply to ``run.prompt``
(``{}`` = the hypothesis sentence) and the label it names (entailment / neutral / contradiction) is
compared with the sample's ``label`` (LAVIS's class id 0/1/2 = contradiction/neutral/entailment, or
the label word). Accuracy in percent, also per label.

``zero_shot_classification``: the class embeddings come from ``model.zero_shot_classifier(classnames,
templates)`` ([dim, n_classes] as LAVIS / open_clip return them; [n_classes, dim] is accepted), the
image embeddings from ``model.encode_image(image)``; logits = 100 * normalised image embeddings @
classifier. Class names: the dataset's ``classnames`` or ``run.classnames_file`` (one per line, in
label order); templates: ``run.templates_file``, else the dataset's ``templates``, else OpenAI's 80.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from lavis_lite.common.registry import registry
from lavis_lite.common.run_schema import GenerationKeys
from lavis_lite.tasks.base_task import _unwrap
from lavis_lite.tasks.generative_eval import GenerativeEvalTask, leaf_datasets, run_option
from lavis_lite.tasks.metrics.classification_eval import OPENAI_IMAGENET_TEMPLATES, SNLI_VE_LABELS, snli_ve_label

logger = logging.getLogger(__name__)


def _ids(value, n):
    if value is None:
        return [None] * n
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _label_name(label) -> str:
    if isinstance(label, str) and label in SNLI_VE_LABELS:
        return label
    try:
        return SNLI_VE_LABELS[int(label)]
    except (ValueError, TypeError, IndexError):
        raise ValueError(f"snli_ve: label {label!r} is neither a class id 0-2 nor one of {SNLI_VE_LABELS}") from None


@registry.register_task("snli_ve")
class SNLIVETask(GenerativeEvalTask):
    result_name = "snli_ve_result"
    default_prompt = ('Does the image semantically entail the sentence "{}"? '
                      "Answer with one word: entailment, neutral or contradiction.")
    default_max_new_tokens = 8

    def valid_step(self, model, samples) -> list[dict]:
        n = len(samples["label"])
        labels = [_label_name(x) for x in _ids(samples["label"], n)]
        inst = _ids(samples.get("instance_id"), n)
        if any(k is None for k in inst):  # results are merged over ranks by this id
            raise KeyError("snli_ve: samples need 'instance_id'")
        net = _unwrap(model)
        if callable(getattr(net, "predict", None)):
            out = net.predict(samples)
            preds = [SNLI_VE_LABELS[i] for i in out["predictions"].argmax(dim=-1).tolist()]
            replies = [None] * n
        else:
            replies = self.generate(model, samples, [self.prompt.replace("{}", t) for t in samples["text_input"]])
            preds = [snli_ve_label(r) for r in replies]
        return [{"instance_id": k, "label": y, "prediction": p, "reply": r}
                for k, y, p, r in zip(inst, labels, preds, replies)]

    def compute_metrics(self, records, split_name):
        if not records:
            raise ValueError(f"snli_ve: no results for split {split_name!r}")
        by_label = defaultdict(list)
        for r in records:
            by_label[r["label"]].append(r["prediction"] == r["label"])
        hits = [h for v in by_label.values() for h in v]
        acc = 100.0 * sum(hits) / len(hits)
        return {"accuracy": acc, "n": len(hits), "n_unmatched": sum(r["prediction"] is None for r in records),
                "per_label": {k: 100.0 * sum(v) / len(v) for k, v in sorted(by_label.items())}, "agg_metrics": acc}


def _read_lines(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


@dataclass
class ZeroShotKeys(GenerationKeys):
    classnames_file: Optional[str] = None
    templates_file: Optional[str] = None


@registry.register_task("zero_shot_classification")
class ZeroShotClassificationTask(GenerativeEvalTask):
    run_schema = ZeroShotKeys  # declared run: keys (lavis_lite/common/run_schema.py)
    result_name = "zero_shot_result"

    def __init__(self, cfg=None, **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        self.classnames_file = run_option(cfg, "classnames_file")
        self.templates_file = run_option(cfg, "templates_file")
        self.classifier = None

    def class_names_and_templates(self, dataset) -> tuple[list[str], list[str]]:
        parts = leaf_datasets(dataset)
        classnames = next((list(p.classnames) for p in parts if getattr(p, "classnames", None)), None)
        if self.classnames_file:
            classnames = _read_lines(self.classnames_file)
        if not classnames:
            raise ValueError("zero_shot_classification: no class names; the dataset has no 'classnames' and "
                             "run.classnames_file is not set")
        # a dataset without configured templates holds the bare ["{}"]: that means "not set" here
        templates = next((list(p.templates) for p in parts if getattr(p, "templates", None)
                          and list(p.templates) != ["{}"]), None)
        if self.templates_file:
            templates = _read_lines(self.templates_file)
        templates = templates or list(OPENAI_IMAGENET_TEMPLATES)
        bad = [t for t in templates if "{}" not in t]
        if bad:
            raise ValueError(f"zero_shot_classification: templates without '{{}}': {bad[:3]}")
        return classnames, templates

    @torch.no_grad()
    def build_classifier(self, model, dataset) -> torch.Tensor:
        classnames, templates = self.class_names_and_templates(dataset)
        net = _unwrap(model)
        if not callable(getattr(net, "zero_shot_classifier", None)):
            raise TypeError(f"zero_shot_classification needs model.zero_shot_classifier(classnames, templates); "
                            f"{type(net).__name__} has none")
        weights = net.zero_shot_classifier(classnames, templates)
        n = len(classnames)
        if weights.dim() != 2 or n not in weights.shape:
            raise ValueError(f"zero_shot_classifier returned shape {tuple(weights.shape)} for {n} classes")
        if weights.shape[1] != n:  # [n_classes, dim] -> [dim, n_classes]
            weights = weights.t()
        logger.info("zero-shot classifier: %d classes x %d templates", n, len(templates))
        return weights

    def before_evaluation(self, model, dataset, **kwargs):
        # Not the model's own before_evaluation hook: a CLIP model would build a classifier there too,
        # and this task builds the one it scores with (its templates) on the first batch.
        self.eval_dataset = dataset

    def prepare_references(self, dataset) -> None:
        self._dataset = dataset

    def evaluation(self, model, data_loader, device=None, log_freq=50, **kwargs):
        self.classifier = None
        return super().evaluation(model, data_loader, device=device, log_freq=log_freq, **kwargs)

    def valid_step(self, model, samples) -> list[dict]:
        net = _unwrap(model)
        if self.classifier is None:
            self.classifier = self.build_classifier(model, self._dataset)
        if not callable(getattr(net, "encode_image", None)):
            raise TypeError(f"zero_shot_classification needs model.encode_image(image); {type(net).__name__} has none")
        feats = F.normalize(net.encode_image(samples["image"]).float(), dim=-1)
        logits = 100.0 * feats @ self.classifier.to(feats.device, torch.float32)
        labels = samples["label"] if "label" in samples else samples["target"]
        labels = torch.as_tensor(labels, device=logits.device).view(-1)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices.tolist()
        inst = _ids(samples.get("instance_id", samples.get("image_id")), len(top5))
        if any(k is None for k in inst):  # results are merged over ranks by this id
            raise KeyError("zero_shot_classification: samples need 'instance_id' (or 'image_id')")
        return [{"instance_id": k, "label": int(y), "top5": t} for k, y, t in zip(inst, labels.tolist(), top5)]

    def compute_metrics(self, records, split_name):
        if not records:
            raise ValueError(f"zero_shot_classification: no results for split {split_name!r}")
        n = len(records)
        top1 = sum(r["top5"][0] == r["label"] for r in records)
        top5 = sum(r["label"] in r["top5"] for r in records)
        return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": n, "agg_metrics": 100.0 * top1 / n}

