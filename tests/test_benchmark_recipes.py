"""The evaluation recipes of issue 21: each names a registered task that accepts its run options, and
(where its dataset builder is registered) resolves to a full config with the split it evaluates."""
import os
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

import lavis_lite  # noqa: F401  (registers tasks and builders)
from lavis_lite.common.config import Config
from lavis_lite.common.registry import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {  # recipe -> (task, dataset, split evaluated)
    "projects/minigpt4qwen/eval_mme.yaml": ("mme", "mme", "test"),
    "projects/minigpt4qwen/eval_mmbench.yaml": ("mmbench", "mmbench", "test"),
    "projects/minigpt4qwen/eval_pope.yaml": ("pope", "pope", "test"),
    "projects/minigpt4qwen/eval_scienceqa.yaml": ("scienceqa", "scienceqa", "test"),
    "projects/minigpt4qwen/eval_okvqa.yaml": ("vqa", "ok_vqa", "test"),
    "projects/minigpt4qwen/eval_aokvqa.yaml": ("aok_vqa", "aok_vqa", "val"),
    "projects/minigpt4qwen/eval_aokvqa_mc.yaml": ("aok_vqa", "aok_vqa", "val"),
    "projects/minigpt4qwen/eval_gqa.yaml": ("gqa", "gqa", "val"),
    "projects/minigpt4qwen/eval_nocaps.yaml": ("nocaps", "nocaps", "val"),
    "projects/minigpt4qwen/eval_snli_ve.yaml": ("snli_ve", "snli_ve", "test"),
    "projects/blip2/ret_flickr_eval.yaml": ("retrieval", "flickr30k", "test"),
    "projects/clip/zero_shot_imagenet.yaml": ("zero_shot_classification", "imagenet", "val"),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_task_and_dataset(recipe):
    task_name, dataset, split = RECIPES[recipe]
    raw = OmegaConf.load(os.path.join(ROOT, recipe))
    assert raw.run.task == task_name and list(raw.datasets) == [dataset]
    assert list(raw.run.test_splits) == [split]
    task = registry.get_task_class(task_name).setup_task(SimpleNamespace(run_cfg=raw.run))
    if task_name == "aok_vqa":
        assert task.mode == ("multiple_choice" if recipe.endswith("_mc.yaml") else "direct")
    if task_name == "retrieval":
        assert task.tie_mode == "argsort"
    if dataset not in registry.mapping["builder"]:
        pytest.skip(f"builder {dataset!r} is not registered in this checkout (the dataset zoo adds it)")
    cfg = Config.from_file(os.path.join(ROOT, recipe))
    info = cfg.datasets_cfg[dataset].build_info
    if info.get("annotations", None) is None:  # an image-folder data set (imagenet): splits are folders
        assert split in list(info.splits)
    else:
        assert info.annotations[split] is not None and info.annotations[split].storage


def test_every_recipe_is_documented():
    with open(os.path.join(ROOT, "docs", "benchmarks.md")) as f:
        doc = f.read()
    for recipe in RECIPES:
        assert os.path.basename(recipe) in doc, recipe
