"""Run the BLIP recipes (projects/blip/) at tiny size on the shapes demo data.

``tiny_recipe(recipe, data_dir, out_dir, run=...)`` writes a copy of a recipe whose model is the
``tiny`` type of the same architecture, whose COCO / NoCaps datasets are the demo's caption or VQA
files (the recipe's processors kept, at 32 px), and whose run options are the recipe's with CPU-sized
overrides. Everything else -- task, generation settings, k_test, splits -- is the recipe's own.
"""
from __future__ import annotations

import json
import os

from omegaconf import OmegaConf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# recipe dataset name -> (demo folder, builder)
DEMO_SOURCES = {"coco_caption": ("caption", "caption"), "coco_retrieval": ("caption", "coco_retrieval"),
                "nocaps": ("caption", "nocaps"), "coco_vqa": ("vqa", "vqa")}
# model keys of a recipe that describe the full-size weights, not behaviour
WEIGHT_KEYS = {"model_type", "load_pretrained", "pretrained", "checkpoint", "answer_list"}


def make_demo_data(out: str, n: int = 240, seed: int = 0) -> str:
    from lavis_lite.datasets.demo import generate
    if not os.path.isfile(os.path.join(out, "vqa", "test.json")):
        generate(out, n=n, seed=seed, size=32, n_shards=1)
    answers = sorted({a for split in ("train", "val", "test")
                      for rec in json.load(open(os.path.join(out, "vqa", f"{split}.json"))) for a in rec["answer"]})
    with open(os.path.join(out, "answer_list.json"), "w") as f:
        json.dump(answers, f)
    return out


def _split_files(folder: str, split: str) -> dict:
    # the zoo datasets' defaults carry LAVIS's URLs and md5 sums: the demo files replace them
    entry = {"storage": os.path.join(folder, f"{split}.json"), "url": None, "md5": None}
    gt = os.path.join(folder, f"{split}_gt.json")
    if split != "train" and os.path.isfile(gt) and folder.endswith("caption"):
        entry["gt"] = gt
    return entry


def tiny_recipe(recipe: str, data_dir: str, out_dir: str, model: dict | None = None, run: dict | None = None,
                name: str | None = None, augment: bool = True, min_scale: float | None = None) -> str:
    """``augment=False``: no RandomAugment / flip (the short learning runs); ``min_scale``: the crops'."""
    cfg = OmegaConf.load(os.path.join(REPO, recipe))
    tiny_model = {"arch": cfg.model.arch, "model_type": "tiny"}
    tiny_model.update({k: v for k, v in cfg.model.items() if k not in WEIGHT_KEYS and k != "arch"})
    if "answer_list" in cfg.model:
        tiny_model["answer_list"] = os.path.join(data_dir, "answer_list.json")
    tiny_model.update(model or {})
    splits = [s for key in ("train_splits", "valid_splits", "test_splits") for s in cfg.run.get(key, []) or []]
    datasets = {}
    for ds_name, section in cfg.datasets.items():
        folder, builder = DEMO_SOURCES[ds_name]
        section = OmegaConf.to_container(section)
        for split, procs in (section.get("vis_processor") or {}).items():
            procs["image_size"] = 32
            if split == "train" and not augment:
                procs.update(randaugment=False, hflip=False)
            if split == "train" and min_scale is not None:
                procs["min_scale"] = min_scale
        annotations = {s: None for s in ("train", "val", "test")}  # splits the run does not use: not built
        annotations.update({s: _split_files(os.path.join(data_dir, folder), s) for s in splits})
        if builder == "nocaps":
            for entry in annotations.values():
                if entry:
                    entry["gt_url"] = None
        section.update(builder=builder, build_info={
            "annotations": annotations,
            "images": {"storage": os.path.join(data_dir, "images")}})
        datasets[f"demo_{ds_name}"] = section
    run_cfg = OmegaConf.to_container(cfg.run)
    run_cfg.update(device="cpu", amp=False, num_workers=0, batch_size_train=16, batch_size_eval=32,
                   output_dir=out_dir, max_epoch=1, warmup_steps=0, progress_bar=False)
    if run_cfg.get("task") == "captioning":  # Java-free metrics keep the tests fast
        run_cfg["caption_metrics"] = ["bleu", "cider"]
    run_cfg.update(run or {})
    path = os.path.join(out_dir, name or os.path.basename(recipe))
    os.makedirs(out_dir, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"model": tiny_model, "datasets": datasets, "run": run_cfg}), path)
    return path
