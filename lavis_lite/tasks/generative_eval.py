"""What the generation-based evaluation tasks (captioning, vqa, instruction_eval) share.

Every rank generates for its shard of the eval split (``valid_step`` -> one record per sample);
``after_evaluation`` merges the per-rank records on rank 0 through ``BaseTask.save_result``
(de-duplicated by ``id_key``, so DistributedSampler's padding repeats are dropped), scores them with
the subclass's ``compute_metrics``, writes ``<result_dir>/<split>_metrics.json``, logs, and hands the
same metrics dict (with ``agg_metrics``) back on every rank.

Generation options come from ``run:`` in the YAML: ``prompt``, ``num_beams``, ``max_new_tokens``
(alias ``max_len``), ``min_length`` (alias ``min_len``), ``repetition_penalty``, ``temperature``,
``top_p``, ``do_sample``; ``progress_bar: false`` hides the progress bar (as for training).
"""
from __future__ import annotations

import json
import logging
import os

import torch

from lavis_lite.common import dist_utils
from lavis_lite.common.registry import registry
from lavis_lite.common.run_schema import GenerationKeys
from lavis_lite.tasks.base_task import BaseTask, _unwrap, move_to_device

logger = logging.getLogger(__name__)

_GENERATE_OPTIONS = {  # run-config key -> generate() argument
    "num_beams": "num_beams", "max_new_tokens": "max_new_tokens", "max_len": "max_new_tokens",
    "min_length": "min_length", "min_len": "min_length", "repetition_penalty": "repetition_penalty",
    "temperature": "temperature", "top_p": "top_p", "do_sample": "do_sample",
}


def run_option(cfg, key, default=None):
    """``cfg.run_cfg[key]`` for a Config, ``cfg[key]`` for a plain mapping, else ``default``."""
    if cfg is None:
        return default
    run = getattr(cfg, "run_cfg", cfg)
    value = run.get(key, None) if hasattr(run, "get") else getattr(run, key, None)
    return default if value is None else value


def run_choice(cfg, key, default, choices, task: str) -> str:
    """``run_option`` for a key whose value must be one of ``choices``; the error names task, key and value."""
    value = str(run_option(cfg, key, default))
    if value not in choices:
        raise ValueError(f"{task}: run.{key} must be one of {tuple(choices)}, got {value!r}")
    return value


def find_dataset(data_loader):
    """The Dataset behind a DataLoader (or a runner's wrapper around one), else None."""
    obj = data_loader
    for _ in range(5):
        if obj is None or hasattr(obj, "annotation") or hasattr(obj, "datasets"):
            return obj
        obj = next((getattr(obj, a) for a in ("dataset", "loader", "_dataloader", "data_loader")
                    if getattr(obj, a, None) is not None), None)
    return None


def leaf_datasets(dataset) -> list:
    """``[dataset]``, or the parts of a ConcatDataset (as the runner builds for several datasets)."""
    if dataset is None:
        return []
    if hasattr(dataset, "datasets"):
        return [leaf for part in dataset.datasets for leaf in leaf_datasets(part)]
    return [dataset]


class GenerativeEvalTask(BaseTask):
    run_schema = GenerationKeys  # declared run: keys (lavis_lite/common/run_schema.py)
    id_key = "instance_id"     # merged records are de-duplicated by this key
    result_name = "result"     # records go to <result_dir>/<split>_<result_name>.json
    default_prompt = ""
    default_max_new_tokens = 30

    def __init__(self, cfg=None, **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        self.prompt = str(run_option(cfg, "prompt", self.default_prompt))
        self.generate_kwargs = {"num_beams": 1, "max_new_tokens": self.default_max_new_tokens}
        for key, arg in _GENERATE_OPTIONS.items():
            value = run_option(cfg, key)
            if value is not None:
                self.generate_kwargs[arg] = value
        self.progress = bool(run_option(cfg, "progress_bar", True))  # the runner's switch for training too
        self.eval_dataset = None

    # ---- hooks for subclasses -------------------------------------------------------------------
    def prepare_references(self, dataset) -> None:
        """Called at the start of ``evaluation`` with the split's Dataset (may be None or a ConcatDataset)."""

    def compute_metrics(self, records: list[dict], split_name: str) -> dict:
        raise NotImplementedError

    def before_evaluation(self, model, dataset, **kwargs):
        super().before_evaluation(model, dataset, **kwargs)
        self.eval_dataset = dataset

    # ---- generation -----------------------------------------------------------------------------
    def generate(self, model, samples: dict, prompts: list[str] | None = None) -> list[str]:
        """``model.generate`` on this batch (unwrapped: generation is not a DDP forward)."""
        batch = dict(samples)
        if prompts is not None:
            batch["prompt"] = list(prompts)
            n = len(prompts)
            if "n_images" not in batch:
                has_image = batch.get("image") is not None or batch.get("image_features") is not None
                batch["n_images"] = [1 if has_image else 0] * n
        outputs = _unwrap(model).generate(batch, **self.generate_kwargs)
        expected = len(prompts) if prompts is not None else len(batch["conversations"])
        if not isinstance(outputs, list) or len(outputs) != expected:
            raise ValueError(f"{type(_unwrap(model)).__name__}.generate returned {type(outputs).__name__} of "
                             f"length {len(outputs) if hasattr(outputs, '__len__') else '?'}; expected a list "
                             f"of {expected} strings (docs/contracts.md)")
        return [str(o).strip() for o in outputs]

    # ---- the loop -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluation(self, model, data_loader, device=None, log_freq=50, **kwargs) -> list[dict]:
        model.eval()
        self.eval_dataset = find_dataset(data_loader) or self.eval_dataset
        self.prepare_references(self.eval_dataset)
        if device is None:
            device = getattr(_unwrap(model), "device", None)
        bar = None
        if self.progress and dist_utils.is_main_process():
            from tqdm.auto import tqdm
            bar = tqdm(total=len(data_loader) if hasattr(data_loader, "__len__") else None,
                       desc=f"Evaluation ({type(self).__name__})", dynamic_ncols=True)
        results: list[dict] = []
        for i, samples in enumerate(data_loader):
            if device is not None:
                samples = move_to_device(samples, device)
            results.extend(self.valid_step(model, samples))
            if bar is not None:
                bar.update(1)
            elif i % log_freq == 0:
                logger.info("Evaluation [%d] %d records", i, len(results))
        if bar is not None:
            bar.close()
        dist_utils.barrier()
        return results

    def result_dir(self) -> str:
        try:
            return registry.get_path("result_dir")
        except KeyError:
            raise RuntimeError("No 'result_dir' path is registered: the runner registers "
                               "output_dir/<job_id>/result; outside a runner call "
                               "registry.register_path('result_dir', DIR) first") from None

    def after_evaluation(self, val_result, split_name, epoch, **kwargs) -> dict:
        """Merge on rank 0, score, write ``<split>_metrics.json``; every rank gets the metrics back."""
        result_dir = self.result_dir()
        merged_file = self.save_result(val_result, result_dir, f"{split_name}_{self.result_name}",
                                       remove_duplicate=self.id_key)
        outcome = None
        if dist_utils.is_main_process():
            try:
                outcome = self._score_merged(merged_file, result_dir, split_name, epoch)
            except Exception as err:  # the other ranks wait in the broadcast: tell them, then raise
                dist_utils.broadcast_object(("error", f"{type(err).__name__}: {err}"))
                raise
        kind, value = dist_utils.broadcast_object(("ok", outcome)) if dist_utils.is_main_process() else dist_utils.broadcast_object(None)
        if kind == "error":
            raise RuntimeError(f"scoring split {split_name!r} failed on rank 0: {value}")
        return value

    def _score_merged(self, merged_file, result_dir, split_name, epoch) -> dict:
        with open(merged_file) as f:
            records = json.load(f)
        metrics = self.compute_metrics(records, split_name)
        if "agg_metrics" not in metrics:
            raise KeyError(f"{type(self).__name__}.compute_metrics must return 'agg_metrics'")
        path = os.path.join(result_dir, f"{split_name}_metrics.json")
        with open(path, "w") as f:
            json.dump({"split": split_name, "epoch": epoch, "n_records": len(records), **metrics}, f, indent=2)
        logger.info("%s metrics (%d records) -> %s\n%s", split_name, len(records), path, json.dumps(metrics, indent=2))
        self._write_metrics(metrics, split_name, epoch)
        return metrics
