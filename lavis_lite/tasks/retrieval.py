"""Image-text retrieval evaluation (registered "retrieval"): image->text and text->image recall@1/5/10.

As LAVIS's RetrievalTask: the images of the eval split are embedded once, every caption of the split
is embedded once, the ITC similarity ranks all pairs, and (``k_test`` > 0, model with ``itm_scores``)
the top-k candidates of each query are re-ranked by ITM logit + ITC similarity. Ground truth comes
from the split's COCO/Karpathy-format annotation (each record: image id + one or more captions).
Metric names follow LAVIS: txt_r1/5/10 (image->text), img_r1/5/10 (text->image), the means and
``agg_metrics`` = txt_r_mean.

Run option ``retrieval_tie_mode``: ``argsort`` (default; LAVIS's numpy argsort order, reproduces its
published figures) or ``expected`` (tie-aware expected rank); see ``tasks/metrics/retrieval_eval.py``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lavis_lite.common import dist_utils
from lavis_lite.common.logger import MetricLogger
from lavis_lite.common.registry import registry
from lavis_lite.common.run_schema import RetrievalKeys
from lavis_lite.tasks.base_task import BaseTask, _unwrap, move_to_device
from lavis_lite.tasks.metrics.retrieval_eval import TIE_MODES, recall_at_k  # recall_at_k is also imported from here

logger = logging.getLogger(__name__)


def retrieval_ground_truth(dataset) -> tuple[list, list[str], list[list[int]], list[int]]:
    """(image ids, texts, img2txt, txt2img) from a caption split's annotation records.

    Records need ``caption`` (a string or a list of strings) and an image id (``image_id``, else the
    ``image`` path). Several records of one image (one caption each) are merged. An eval split whose
    parsed records dropped the captions (CaptionEvalDataset) is read again from its annotation files.
    """
    records = getattr(dataset, "annotation", None)
    if records is None:
        raise TypeError(f"retrieval needs a dataset with an 'annotation' list; got {type(dataset).__name__}")
    text_processor = getattr(dataset, "text_processor", None)
    source = getattr(dataset, "ann_paths", None) or getattr(dataset, "ann_path", None) or type(dataset).__name__
    if records and all("caption" not in r for r in records) and getattr(dataset, "ann_paths", None):
        records = _with_captions_from_files(records, dataset.ann_paths)
    image_ids, texts, img2txt, txt2img, index = [], [], [], [], {}
    for i, rec in enumerate(records):
        if "caption" not in rec:
            raise KeyError(f"record {i} of {source} has no 'caption' key (needed for retrieval)")
        image_id = rec.get("image_id", rec.get("image"))
        if image_id is None:
            raise KeyError(f"record {i} of {source} has neither 'image_id' nor 'image'")
        key = str(image_id)
        if key not in index:
            index[key] = len(image_ids)
            image_ids.append(key)
            img2txt.append([])
        captions = rec["caption"] if isinstance(rec["caption"], (list, tuple)) else [rec["caption"]]
        for cap in captions:
            img2txt[index[key]].append(len(texts))
            txt2img.append(index[key])
            texts.append(text_processor(cap) if callable(text_processor) else str(cap))
    if not texts:
        raise ValueError(f"retrieval split {source} has no captions")
    return image_ids, texts, img2txt, txt2img


def _with_captions_from_files(records: list[dict], ann_paths: list[str]) -> list[dict]:
    """The parsed eval records (one per image, in loader order) with their captions from the raw files."""
    from lavis_lite.datasets.datasets.caption_datasets import image_id_from_path

    captions: dict[str, list[str]] = {}
    for path in ann_paths:
        with open(path) as f:
            raw = json.load(f)
        raw = raw["annotations"] if isinstance(raw, dict) and "annotations" in raw else raw
        for i, rec in enumerate(raw):
            if not isinstance(rec, dict) or "caption" not in rec or "image" not in rec:
                raise KeyError(f"record {i} of {path} needs 'image' and 'caption' for retrieval")
            key = str(rec.get("image_id", image_id_from_path(rec["image"])))
            caps = rec["caption"] if isinstance(rec["caption"], list) else [rec["caption"]]
            captions.setdefault(key, []).extend(caps)
    out = []
    for rec in records:
        key = str(rec.get("image_id", rec.get("image")))
        if key not in captions:
            raise KeyError(f"image id {key} has no caption in {ann_paths}")
        out.append({"image_id": rec.get("image_id", rec.get("image")), "caption": captions[key]})
    return out


@dataclass
class RetrievalTieKeys(RetrievalKeys):
    retrieval_tie_mode: str = "argsort"  # argsort (LAVIS) | expected (tie-aware)


@registry.register_task("retrieval")
class RetrievalTask(BaseTask):
    run_schema = RetrievalTieKeys  # declared run: keys (lavis_lite/common/run_schema.py)

    def __init__(self, cfg=None, k_test: int = 128, text_batch_size: int = 256, tie_mode: str = "argsort",
                 **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        self.k_test, self.text_batch_size = int(k_test), int(text_batch_size)
        if tie_mode not in TIE_MODES:
            raise ValueError(f"retrieval: run.retrieval_tie_mode must be one of {TIE_MODES}, got {tie_mode!r}")
        self.tie_mode = tie_mode
        self._ground_truth = None

    @classmethod
    def setup_task(cls, cfg=None, **kwargs):
        run = cfg.run_cfg if cfg is not None else {}
        return cls(cfg=cfg, k_test=run.get("k_test", 128), text_batch_size=run.get("text_batch_size", 256),
                   tie_mode=run.get("retrieval_tie_mode", "argsort"))

    @torch.no_grad()
    def evaluation(self, model, data_loader, device=None, log_freq=50) -> list[dict]:
        net = _unwrap(model)
        net.eval()
        device = device or net.device
        image_ids, texts, img2txt, txt2img = retrieval_ground_truth(data_loader.dataset)
        # Images of this rank's shard, then gathered so that every rank ranks against all of them.
        rerank = self.k_test > 0 and hasattr(net, "itm_scores")
        # BLIP ranks by the [CLS] feature only; BLIP-2 by the best of its query features (all of them).
        n_feature_tokens = getattr(net, "retrieval_feature_tokens", None)
        local = []
        for samples in MetricLogger().log_every(data_loader, log_freq, header="Retrieval images", logger=logger):
            samples = move_to_device(samples, device)
            feats = net.extract_features({"image": samples["image"]}, mode="image")
            for j, image_id in enumerate(samples["image_id"]):
                image_id = image_id.item() if isinstance(image_id, torch.Tensor) else image_id
                # The image encoder's output is kept only for ITM re-ranking (it is large).
                frozen = feats.image_embeds_frozen[j].cpu() if rerank else None
                local.append((str(image_id), feats.image_embeds_proj[j, :n_feature_tokens].cpu(), frozen))
        gathered = [local]
        if dist_utils.is_dist_avail_and_initialized():
            gathered = [None] * dist_utils.get_world_size()
            dist.all_gather_object(gathered, local)
        by_id = {image_id: (proj, embeds) for part in gathered for image_id, proj, embeds in part}
        missing = [i for i in image_ids if i not in by_id]
        if missing:
            raise KeyError(f"the eval loader yielded no image for annotation image ids {missing[:5]}")
        image_proj = torch.stack([by_id[i][0] for i in image_ids]).to(device)
        text_feat = torch.cat([
            net.extract_features({"text_input": texts[s:s + self.text_batch_size]}, mode="text").text_embeds_proj[:, 0]
            for s in range(0, len(texts), self.text_batch_size)])
        sim_i2t = torch.einsum("iqd,td->itq", image_proj, text_feat).max(-1).values  # [n_img, n_txt]
        score_i2t, score_t2i = sim_i2t.clone(), sim_i2t.t().clone()
        if rerank:
            image_embeds = [by_id[i][1] for i in image_ids]
            score_i2t, score_t2i = self._rerank(net, sim_i2t, image_embeds, texts, device)
        metrics = recall_at_k(score_i2t.cpu(), score_t2i.cpu(), img2txt, txt2img, tie_mode=self.tie_mode)
        return [metrics]

    def _rerank(self, net, sim_i2t, image_embeds, texts, device):
        """Top-k by ITC, re-scored by ITM logit + ITC similarity (LAVIS's compute_sim_matrix)."""
        rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
        k = min(self.k_test, sim_i2t.shape[1])
        score_i2t = torch.full_like(sim_i2t, -100.0)
        for i in range(rank, sim_i2t.shape[0], world):  # rows split over ranks, merged below
            top_sim, top_idx = sim_i2t[i].topk(k)
            img = image_embeds[i].to(device).unsqueeze(0).expand(k, -1, -1)
            itm = net.itm_scores(img, [texts[t] for t in top_idx.tolist()])
            score_i2t[i, top_idx] = itm + top_sim
        k = min(self.k_test, sim_i2t.shape[0])
        sim_t2i = sim_i2t.t()
        score_t2i = torch.full_like(sim_t2i, -100.0)
        for t in range(rank, sim_t2i.shape[0], world):
            top_sim, top_idx = sim_t2i[t].topk(k)
            img = torch.stack([image_embeds[i] for i in top_idx.tolist()]).to(device)
            itm = net.itm_scores(img, [texts[t]] * k)
            score_t2i[t, top_idx] = itm + top_sim
        if dist_utils.is_dist_avail_and_initialized():
            dist.all_reduce(score_i2t, op=dist.ReduceOp.MAX)
            dist.all_reduce(score_t2i, op=dist.ReduceOp.MAX)
        return score_i2t, score_t2i

    def after_evaluation(self, val_result, split_name, epoch, **kwargs) -> dict:
        # Every rank computed the same full ranking; report it once.
        metrics = dict(val_result[0])
        logger.info("retrieval %s: %s", split_name, {k: round(v, 2) for k, v in metrics.items()})
        self._write_metrics(metrics, split_name, epoch)
        self._write_metrics_json(metrics, split_name, epoch)
        return metrics

    @dist_utils.main_process
    def _write_metrics_json(self, metrics, split_name, epoch):
        """``<result_dir>/<split>_metrics.json`` as the other evaluation tasks write it (inside a runner)."""
        try:
            result_dir = registry.get_path("result_dir")
        except KeyError:
            return
        os.makedirs(result_dir, exist_ok=True)
        with open(os.path.join(result_dir, f"{split_name}_metrics.json"), "w") as f:
            json.dump({"split": split_name, "epoch": epoch, **metrics}, f, indent=2)
