"""The item-2 recipes end to end: evaluate.py on the dataset zoo's tiny stand-in layouts
(tests/zoo_layouts.py) with tiny random-init models; generated replies are replaced by scripted ones
(after the real generate ran) so the scores are hand-computable. Skipped where the zoo's builders,
its layouts or the CLIP model are not in this checkout."""
import importlib.util
import json
import os
import shutil
import sys

import pytest
from omegaconf import OmegaConf

import lavis_lite  # noqa: F401
from lavis_lite.common.registry import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(__file__))
zoo_layouts = pytest.importorskip("zoo_layouts", reason="the dataset zoo's test layouts are not in this checkout")


def _evaluate(recipe, layout, tmp_path, monkeypatch, model, reply=None, options=(), prepare=None):
    if layout not in registry.mapping["builder"] or model["arch"] not in registry.mapping["model"]:
        pytest.skip(f"builder {layout!r} or model {model['arch']!r} is not registered in this checkout")
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("LAVIS_LITE_CACHE_ROOT", str(cache))
    zoo_layouts.make_layout(layout, cache)
    if prepare is not None:
        prepare(cache)
    if reply is not None:
        from lavis_lite.models.minigpt4qwen import Minigpt4Qwen
        real = Minigpt4Qwen.generate

        def scripted(self, samples, **kwargs):
            real(self, samples, **kwargs)
            return [reply(p) for p in samples["prompt"]]
        monkeypatch.setattr(Minigpt4Qwen, "generate", scripted)
    cfg = OmegaConf.load(os.path.join(ROOT, recipe))
    cfg.model = model
    (name,) = list(cfg.datasets)
    cfg.datasets[name].vis_processor.eval.image_size = 32
    OmegaConf.save(cfg, tmp_path / "run.yaml")
    spec = importlib.util.spec_from_file_location("_lavis_lite_evaluate", os.path.join(ROOT, "evaluate.py"))
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    out = tmp_path / "out"
    generation = [] if cfg.run.task == "retrieval" else ["run.max_new_tokens=3"]  # retrieval does not generate
    metrics = evaluate.main(["--cfg-path", str(tmp_path / "run.yaml"), "--job-id", "zoo", "--options",
                             "run.device=cpu", "run.amp=false", "run.num_workers=0", "run.batch_size_eval=4",
                             f"run.output_dir={out}", "run.progress_bar=false", *generation, *options])
    (split,) = list(metrics)
    on_disk = json.loads((out / "zoo" / "result" / f"{split}_metrics.json").read_text())
    return metrics[split], on_disk, cache


TINY_QWEN = {"arch": "minigpt4qwen", "model_type": "tiny"}


@pytest.mark.slow
def test_gqa_recipe(tmp_path, monkeypatch):
    def testdev(cache):  # the recipe reads test-dev (type balanced_testdev)
        ann = cache / "gqa" / "annotations"
        shutil.copy(ann / "val_balanced_questions.json", ann / "testdev_balanced_questions.json")
    m, on_disk, _ = _evaluate("projects/minigpt4qwen/eval_gqa.yaml", "gqa", tmp_path, monkeypatch, TINY_QWEN,
                              reply=lambda p: "Yes.", prepare=testdev)  # gold "yes": right after LAVIS's cleaning
    assert m["accuracy"] == 100.0 == on_disk["accuracy"] and m["n"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("recipe, reply, key", [
    ("eval_aokvqa.yaml", "Racket.", "da_accuracy"),   # 7 of 10 direct answers are "racket"
    ("eval_aokvqa_mc.yaml", "B", "mc_accuracy"),      # choices a bat / a racket / ...: B right
])
def test_aokvqa_recipes(recipe, reply, key, tmp_path, monkeypatch):
    m, _, _ = _evaluate(f"projects/minigpt4qwen/{recipe}", "aok_vqa", tmp_path, monkeypatch, TINY_QWEN,
                        reply=lambda p: reply)
    assert m[key] == 100.0 and m["n"] == 1


@pytest.mark.slow
def test_okvqa_recipe(tmp_path, monkeypatch):
    m, _, _ = _evaluate("projects/minigpt4qwen/eval_okvqa.yaml", "ok_vqa", tmp_path, monkeypatch, TINY_QWEN,
                        reply=lambda p: "Apple.")
    assert m["overall"] == 100.0


@pytest.mark.slow
def test_nocaps_recipe(tmp_path, monkeypatch):
    def official_gt(cache):  # the official file with the images' domains (image ids = LAVIS's img_id)
        (cache / "nocaps" / "annotations" / "nocaps_val_4500_captions.json").write_text(json.dumps({
            "images": [{"id": 0, "domain": "in-domain"}, {"id": 1, "domain": "out-domain"}],
            "annotations": [{"image_id": 0, "caption": "a red square", "id": 0},
                            {"image_id": 1, "caption": "a blue box", "id": 1}]}))
    m, _, _ = _evaluate("projects/minigpt4qwen/eval_nocaps.yaml", "nocaps", tmp_path, monkeypatch, TINY_QWEN,
                        reply=lambda p: "a red square", options=["run.caption_metrics=[bleu,cider]"],
                        prepare=official_gt)
    assert m["per_domain"]["in-domain"]["Bleu_1"] == pytest.approx(1.0)
    assert m["per_domain"]["out-domain"]["Bleu_1"] < 0.5
    assert m["n_images"] == {"in-domain": 1, "near-domain": 0, "out-domain": 1}


@pytest.mark.slow
def test_snli_ve_recipe(tmp_path, monkeypatch):
    # test split: "Two men are outside." contradiction; "Workers are on a building." entailment
    m, _, _ = _evaluate("projects/minigpt4qwen/eval_snli_ve.yaml", "snli_ve", tmp_path, monkeypatch, TINY_QWEN,
                        reply=lambda p: "Contradiction." if "two men" in p.lower() else "neutral")
    assert m["accuracy"] == 50.0 and m["per_label"] == {"contradiction": 100.0, "entailment": 0.0}


@pytest.mark.slow
def test_imagenet_zero_shot_recipe_with_tiny_clip(tmp_path, monkeypatch):
    names = tmp_path / "classnames.txt"
    names.write_text("tench\ngoldfish\nvulture\n")

    def three_classes(cache):  # keep the three class folders that hold images (1000 classes x 80 prompts is slow)
        val = cache / "imagenet" / "val"
        for folder in val.iterdir():
            if not any(folder.iterdir()):
                folder.rmdir()
    m, on_disk, _ = _evaluate("projects/clip/zero_shot_imagenet.yaml", "imagenet", tmp_path, monkeypatch,
                              {"arch": "clip_feature_extractor", "model_type": "tiny"}, prepare=three_classes,
                              options=[f"datasets.imagenet.classnames={names}"])
    assert m["n"] == 3 and 0.0 <= m["top1"] <= 100.0 and on_disk["top1"] == m["top1"]
    assert m["top5"] == 100.0  # 3 classes: every label is in the top 5


@pytest.mark.slow
def test_flickr_retrieval_recipe_with_tiny_blip2(tmp_path, monkeypatch):
    m, _, _ = _evaluate("projects/blip2/ret_flickr_eval.yaml", "flickr30k", tmp_path, monkeypatch,
                        {"arch": "blip2_feature_extractor", "model_type": "tiny"}, options=["run.k_test=2"])
    for k in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10"):
        assert 0.0 <= m[k] <= 100.0
    assert m["txt_r10"] == m["img_r10"] == 100.0  # 2 images, 10 captions: every right match is in the top 10
