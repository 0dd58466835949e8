"""Every BLIP-2 / InstructBLIP recipe trains or evaluates through train.py / evaluate.py at tiny size on the
generated shapes data: the recipe's run / datasets / model sections as written, with the model type set
to ``tiny``, weight paths cleared, and the data, image size and run length overridden by --options."""
import importlib.util
import json
import math
import os

import pytest
from omegaconf import OmegaConf

from lavis_lite.datasets import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHT_KEYS = ("vit_checkpoint", "q_former_model", "opt_model", "t5_model", "llm_model", "checkpoint")
TRAIN = ["blip2/train/pretrain_stage2_opt.yaml", "blip2/train/caption_coco_ft.yaml",
         "blip2/train/caption_coco_ft_t5.yaml", "instructblip/train/caption_coco_ft_vicuna7b.yaml"]
EVAL = ["blip2/eval/caption_coco_opt2.7b_eval.yaml", "blip2/eval/vqav2_zeroshot_flant5xl_eval.yaml",
        "instructblip/eval/caption_coco_vicuna7b_eval.yaml", "instructblip/eval/vqav2_zeroshot_flant5xl_eval.yaml"]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"_lavis_lite_{name}", os.path.join(ROOT, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("blip2_recipes")
    demo.generate(str(root / "demo"), n=24, seed=0)
    old = os.environ.get("LAVIS_LITE_CACHE_ROOT")
    os.environ["LAVIS_LITE_CACHE_ROOT"] = str(root)  # storage: demo/... resolves here
    yield root
    if old is None:
        os.environ.pop("LAVIS_LITE_CACHE_ROOT", None)
    else:
        os.environ["LAVIS_LITE_CACHE_ROOT"] = old


def _tiny_copy(recipe, out):
    cfg = OmegaConf.load(os.path.join(ROOT, "projects", recipe))
    cfg.model.model_type = "tiny"
    for key in WEIGHT_KEYS:
        if key in cfg.model:
            cfg.model[key] = None
    if "tokenizer_vocab" in cfg.model:
        cfg.model.tokenizer_vocab = "tiny"
    path = out / (recipe.replace("/", "_"))
    OmegaConf.save(cfg, path)
    return str(path), cfg


def _options(cfg, out):
    (name, section), = cfg.datasets.items()
    kind = "caption" if name == "coco_caption" else "vqa"
    opts = [f"run.output_dir={out}", "run.device=cpu", "run.amp=false", "run.num_workers=0", "run.progress_bar=false",
            "run.batch_size_train=8", "run.batch_size_eval=8", f"datasets.{name}.build_info.images.storage=demo/images"]
    if cfg.run.task in ("captioning", "vqa"):  # generation options exist for the generative tasks only
        opts += ["run.num_beams=2", "run.max_new_tokens=4", "run.min_length=1"]
    if cfg.run.task == "captioning":
        opts.append("run.caption_metrics=[bleu,rouge_l,cider]")
    annotations = OmegaConf.select(section, "build_info.annotations") or {}
    for split in ("train", "val", "test"):
        if split in annotations and annotations[split] is None:
            continue  # the recipe reads no such split
        opts += [f"datasets.{name}.build_info.annotations.{split}.url=null",
                 f"datasets.{name}.build_info.annotations.{split}.storage=demo/{kind}/{split}.json"]
        if kind == "caption" and split != "train":
            opts.append(f"datasets.{name}.build_info.annotations.{split}.gt=demo/caption/{split}_gt.json")
    for split in section.vis_processor:
        opts.append(f"datasets.{name}.vis_processor.{split}.image_size=32")
    return opts


@pytest.mark.slow
@pytest.mark.parametrize("recipe", TRAIN)
def test_train_recipe_at_tiny_size(recipe, data_root):
    path, cfg = _tiny_copy(recipe, data_root)
    out = data_root / "out"
    job = recipe.replace("/", "_").replace(".yaml", "")
    opts = _options(cfg, out) + ["run.max_epoch=1", "run.warmup_steps=1", "run.init_lr=1e-3"]
    if "train_splits" in cfg.run and cfg.run.get("valid_splits") is None:
        opts.append("run.valid_splits=[]")
    logs = _script("train").main(["--cfg-path", path, "--job-id", job, "--options", *opts])
    job_dir = out / job
    checkpoints = [d for d in os.listdir(job_dir) if d.startswith("checkpoint")]
    assert checkpoints, os.listdir(job_dir)
    log = (job_dir / "log.txt").read_text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith('{"split"')]
    losses = [r["loss"] for r in records if r.get("split") == "train"]
    assert losses and all(math.isfinite(float(x)) for x in losses), log[-2000:]
    if cfg.run.task == "captioning":  # validated and tested on generated captions
        metrics = json.loads((job_dir / "result" / "test_metrics.json").read_text())
        assert "CIDEr" in metrics and metrics["n_records"] == len(json.load(open(data_root / "demo/caption/test_gt.json"))["images"])
        assert logs["test"]["agg_metrics"] == pytest.approx(metrics["agg_metrics"])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", EVAL)
def test_eval_recipe_at_tiny_size(recipe, data_root):
    path, cfg = _tiny_copy(recipe, data_root)
    out = data_root / "eval"
    job = recipe.replace("/", "_").replace(".yaml", "")
    metrics = _script("evaluate").main(["--cfg-path", path, "--job-id", job, "--options", *_options(cfg, out)])
    split = cfg.run.test_splits[0]
    assert "agg_metrics" in metrics[split]
    result_dir = out / job / "result"
    if cfg.run.task == "vqa":
        answers = json.loads((result_dir / f"{split}_vqa_result.json").read_text())
        questions = json.load(open(data_root / f"demo/vqa/{split}.json"))
        assert sorted(a["question_id"] for a in answers) == sorted(q["question_id"] for q in questions)
        assert all(isinstance(a["answer"], str) for a in answers)
    else:
        captions = json.loads((result_dir / f"{split}_caption_result.json").read_text())
        assert len(captions) == len(json.load(open(data_root / f"demo/caption/{split}_gt.json"))["images"])
