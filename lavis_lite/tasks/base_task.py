"""BaseTask: what a training step and an evaluation mean (never how steps are scheduled or wrapped).

API (what runners call and what subclasses override)
----------------------------------------------------
- ``setup_task(cfg)``            classmethod; reads ``cfg.run_cfg`` options it needs.
- ``build_model(cfg)``           registry model class ``.from_config(cfg.model_cfg)``.
- ``build_datasets(cfg)``        ``{dataset_name: {split: Dataset}}`` through the registered builders.
- ``train_step(model, samples)`` one forward; returns the model's dict with ``"loss"`` (mean over the
                                 micro-batch) and optionally ``"n_tokens"``; LAVIS-style overrides may
                                 return ``(loss, loss_dict)`` or a bare loss. A micro-batch weighs its
                                 ``labels``' supervised tokens, else ``n_tokens``, else 1 (equal weights,
                                 LAVIS's behaviour): ``lavis_lite.runners.stepper.micro_batch_weight``.
- ``train_epoch(epoch, model, data_loader, stepper, iters_per_epoch)`` and
  ``train_iters(epoch, start_iters, iters_per_inner_epoch, model, data_loader, stepper)``
                                 both run the ONE inner loop (``_train_loop``); they return averaged stats.
- ``valid_step(model, samples)`` -> ``list[dict]`` (one or more records per batch).
- ``before_evaluation(model, dataset)``, ``evaluation(model, data_loader)`` -> ``list[dict]`` of this rank.
- ``after_evaluation(val_result, split_name, epoch)`` -> ``dict`` with ``"agg_metrics"`` (higher is better).
- ``save_result(result, result_dir, filename, remove_duplicate="")`` writes ``<filename>_rank<r>.json``
  per rank, merges them on rank 0 into ``<filename>.json`` (deduplicated by ``remove_duplicate``)
  and returns that path on every rank.

The default evaluation is loss-based: each batch contributes summed loss, supervised tokens and
(when the model reports ``n_correct``) argmax hits; ``after_evaluation`` sums them over ranks and
reports ``loss``, ``token_acc`` and ``agg_metrics`` (token accuracy, else minus the loss).

The stepper (provided by the runner, see ``lavis_lite.runners.stepper``) hides wrapping and
optimisation: ``accum_grad_iters``, ``prepare(samples)``, ``micro_batch(last)`` (autocast and
DDP no-sync), ``begin_window(batches, epoch, step)``, ``backward(loss, n_tokens)`` and
``step() -> {"loss", "lr", "n_tokens" (token-weighted windows), ...}``.
"""
from __future__ import annotations

import json
import logging
import os
import time

import torch
import torch.distributed as dist

from lavis_lite.common import dist_utils
from lavis_lite.common.logger import MetricLogger
from lavis_lite.common.registry import registry
from lavis_lite.tasks.step_output import TOKENS, micro_batch_weight, split_train_output

logger = logging.getLogger(__name__)


class BaseTask:
    def __init__(self, cfg=None, **kwargs):
        self.cfg = cfg
        self.inst_id_key = "instance_id"

    @classmethod
    def setup_task(cls, cfg=None, **kwargs):
        return cls(cfg=cfg, **kwargs)

    # ---- building ----------------------------------------------------------
    def build_model(self, cfg):
        model_cfg = cfg.model_cfg
        return registry.get_model_class(model_cfg.arch).from_config(model_cfg)

    def build_datasets(self, cfg) -> dict:
        datasets_cfg = cfg.datasets_cfg
        if not datasets_cfg:
            raise ValueError(f"No datasets configured in {getattr(cfg, 'cfg_path', 'the run config')} "
                             "(section 'datasets' is empty)")
        datasets = {}
        for name, ds_cfg in datasets_cfg.items():
            builder = registry.get_builder_class(ds_cfg.get("builder", name))(ds_cfg)
            datasets[name] = builder.build_datasets()
        return datasets

    # ---- training ----------------------------------------------------------
    def train_step(self, model, samples) -> dict:
        output = model(samples)
        if not isinstance(output, dict) or "loss" not in output:
            got = sorted(output) if isinstance(output, dict) else type(output).__name__
            raise TypeError(f"{type(_unwrap(model)).__name__}.forward must return a dict with 'loss' "
                            f"(and optionally 'n_tokens'; docs/contracts.md); got {got}")
        return output

    def train_epoch(self, epoch, model, data_loader, stepper, iters_per_epoch=None, log_freq=50,
                    progress=True):
        """One pass over ``data_loader``: ``iters_per_epoch`` optimizer steps (default: all full windows)."""
        if iters_per_epoch is None:
            iters_per_epoch = len(data_loader) // stepper.accum_grad_iters
        return self._train_loop(epoch, 0, iters_per_epoch, model, iter(data_loader), stepper,
                                sched_epoch=epoch, log_freq=log_freq, progress=progress,
                                header=f"Train: epoch [{epoch}]")

    def train_iters(self, epoch, start_iters, iters_per_inner_epoch, model, data_loader, stepper,
                    log_freq=50, progress=True):
        """One inner epoch of iteration-based training; ``data_loader`` is an endless iterator.
        Scheduler steps are global optimizer steps (``cur_epoch=0``)."""
        return self._train_loop(epoch, start_iters, iters_per_inner_epoch, model, data_loader, stepper,
                                sched_epoch=0, log_freq=log_freq, progress=progress,
                                header=f"Train: inner epoch [{epoch}] iters [{start_iters}]")

    def _train_loop(self, epoch, start_step, n_steps, model, batches, stepper, sched_epoch, log_freq,
                    progress, header):
        """The one inner loop: windows of ``accum_grad_iters`` micro-batches, one optimizer step each."""
        model.train()
        meters = MetricLogger()
        bar = _progress_bar(n_steps, header) if progress and dist_utils.is_main_process() else None
        start, n_samples = time.time(), 0
        for step in range(start_step, start_step + n_steps):
            window = [next(batches) for _ in range(stepper.accum_grad_iters)]
            stepper.begin_window(window, sched_epoch, step)
            extra_losses = {}
            for i, samples in enumerate(window):
                samples = stepper.prepare(samples)
                with stepper.micro_batch(last=i == len(window) - 1):
                    loss, extras = split_train_output(self.train_step(model=model, samples=samples))
                    weight, kind = micro_batch_weight(samples, extras)
                    stepper.backward(loss, weight, kind)
                for k, v in extras.items():  # LAVIS logs every "*loss*" entry of the loss dict
                    if k != "loss" and "loss" in k and isinstance(v, (torch.Tensor, float, int)):
                        extra_losses.setdefault(k, []).append(float(v))
                n_samples += batch_size(samples)
            stats = stepper.step()
            meters.update(loss=stats["loss"], lr=stats["lr"],
                          **{k: sum(v) / len(v) for k, v in extra_losses.items()})
            rate = n_samples * dist_utils.get_world_size() / max(time.time() - start, 1e-9)
            if bar is not None:
                bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}", samples_s=f"{rate:.1f}")
                bar.update(1)
            if (step - start_step) % log_freq == 0 or step == start_step + n_steps - 1:
                logger.info("%s [%d/%d] %s samples/s: %.1f", header, step - start_step, n_steps, meters, rate)
        if bar is not None:
            bar.close()
        return {name: meter.global_avg for name, meter in meters.meters.items()}

    # ---- evaluation --------------------------------------------------------
    def before_evaluation(self, model, dataset, **kwargs):
        hook = getattr(_unwrap(model), "before_evaluation", None)
        if callable(hook):
            hook(dataset=dataset, task_type=type(self))

    def valid_step(self, model, samples) -> list[dict]:
        """One record per batch: the loss weighted like in training (supervised tokens of ``labels``,
        else the model's ``n_tokens``, else 1 per batch)."""
        output = model(samples)
        loss, extras = split_train_output(output)
        weight, kind = micro_batch_weight(samples, extras)
        weight = int(weight)
        record = {"loss_sum": float(loss) * weight if weight else 0.0, "weight": weight}
        if kind == TOKENS:
            record["n_tokens"] = weight
        if isinstance(output, dict) and "n_correct" in output:
            record["n_correct"] = int(output["n_correct"])
        return [record]

    @torch.no_grad()
    def evaluation(self, model, data_loader, device=None, log_freq=50) -> list[dict]:
        model.eval()
        results = []
        meters = MetricLogger()
        for samples in meters.log_every(data_loader, log_freq, header="Evaluation", logger=logger):
            if device is not None:
                samples = move_to_device(samples, device)
            results.extend(self.valid_step(model, samples))
        dist_utils.barrier()
        return results

    def after_evaluation(self, val_result, split_name, epoch, **kwargs) -> dict:
        """Loss-based metrics summed over ranks (every rank must call this)."""
        totals = torch.zeros(3, dtype=torch.float64)
        has_correct = all("n_correct" in r for r in val_result) and len(val_result) > 0
        has_tokens = all("n_tokens" in r for r in val_result)
        for r in val_result:
            weight = r.get("weight", r.get("n_tokens"))
            totals += torch.tensor([r["loss_sum"], weight, r.get("n_correct", 0)], dtype=torch.float64)
        flag = torch.tensor([0.0 if has_correct else 1.0, 0.0 if has_tokens else 1.0])
        if dist_utils.is_dist_avail_and_initialized():
            backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            totals, flag = totals.to(backend_device), flag.to(backend_device)
            dist.all_reduce(totals)
            dist.all_reduce(flag)
            totals, flag = totals.cpu(), flag.cpu()
        loss = float(totals[0] / max(totals[1], 1))
        metrics = {"loss": loss}
        if flag[1].item() == 0:
            metrics["n_tokens"] = int(totals[1])
        else:  # a model without n_tokens: the mean of the batches' losses (LAVIS's weighting)
            metrics["n_batches"] = int(totals[1])
        if flag[0].item() == 0 and flag[1].item() == 0:
            metrics["token_acc"] = float(totals[2] / max(totals[1], 1))
        metrics["agg_metrics"] = metrics.get("token_acc", -loss)
        self._write_metrics(metrics, split_name, epoch)
        return metrics

    @dist_utils.main_process
    def _write_metrics(self, metrics, split_name, epoch):
        try:
            out_dir = registry.get_path("output_dir")
        except KeyError:
            return
        with open(os.path.join(out_dir, "evaluate.txt"), "a") as f:
            f.write(json.dumps({"split": split_name, "epoch": epoch, **metrics}) + "\n")

    # ---- results -----------------------------------------------------------
    @staticmethod
    def save_result(result, result_dir, filename, remove_duplicate="") -> str:
        """Per-rank JSON, merged on rank 0 (deduplicated by ``remove_duplicate``); returns the merged path."""
        os.makedirs(result_dir, exist_ok=True)
        rank_file = os.path.join(result_dir, f"{filename}_rank{dist_utils.get_rank()}.json")
        final_file = os.path.join(result_dir, f"{filename}.json")
        with open(rank_file, "w") as f:
            json.dump(result, f)
        dist_utils.barrier()
        if dist_utils.is_main_process():
            merged = []
            for rank in range(dist_utils.get_world_size()):
                path = os.path.join(result_dir, f"{filename}_rank{rank}.json")
                with open(path) as f:
                    merged.extend(json.load(f))
            if remove_duplicate:
                seen, unique = set(), []
                for r in merged:
                    if remove_duplicate not in r:
                        raise KeyError(f"Result record {r!r} in {result_dir} has no key {remove_duplicate!r} "
                                       "to deduplicate by")
                    key = json.dumps(r[remove_duplicate], sort_keys=True)
                    if key not in seen:
                        seen.add(key)
                        unique.append(r)
                merged = unique
            tmp = final_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(merged, f)
            os.replace(tmp, final_file)
            logger.info("result file saved to %s (%d records)", final_file, len(merged))
        dist_utils.barrier()
        return final_file


# ---- helpers shared by tasks and runners -------------------------------------
def _unwrap(model):
    return getattr(model, "module", model)


def move_to_device(samples, device):
    """Tensors (nested in dicts/lists) to ``device``; everything else unchanged."""
    if isinstance(samples, torch.Tensor):
        return samples.to(device, non_blocking=True)
    if isinstance(samples, dict):
        return {k: move_to_device(v, device) for k, v in samples.items()}
    if isinstance(samples, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in samples):
        return type(samples)(move_to_device(v, device) for v in samples)
    return samples


def batch_size(samples) -> int:
    """Number of samples in a collated batch (for samples/s)."""
    if isinstance(samples, dict):
        for key in ("n_images", "conversations", "text_input", "instance_id"):
            if key in samples and hasattr(samples[key], "__len__"):
                return len(samples[key])
        for value in samples.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.shape[0])
            if isinstance(value, (list, tuple)):
                return len(value)
    return 1


def _progress_bar(total, desc):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)
