"""Every BLIP recipe (projects/blip/) trains and evaluates at tiny size on the shapes demo data,
through train.py / evaluate.py and the captioning, vqa and retrieval tasks."""
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from blip_recipe_helpers import REPO, make_demo_data, tiny_recipe  # noqa: E402

sys.path.insert(0, REPO)
import evaluate as evaluate_script  # noqa: E402
import train as train_script  # noqa: E402

TRAIN = ["caption_coco_ft", "caption_coco_large_ft", "vqav2_ft", "retrieval_coco_ft"]
EVAL = ["caption_coco_eval", "caption_coco_large_eval", "vqav2_eval", "ret_coco_eval", "nocaps_eval"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_data(str(tmp_path_factory.mktemp("blip_demo")), n=60)


def _metrics_of(job_dir):
    with open(os.path.join(job_dir, "log.txt")) as f:
        return f.read()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", TRAIN)
def test_train_recipe_runs_at_tiny_size(recipe, demo, tmp_path):
    cfg = tiny_recipe(f"projects/blip/train/{recipe}.yaml", demo, str(tmp_path))
    train_script.main(["--cfg-path", cfg, "--job-id", "job"])
    job = tmp_path / "job"
    assert any(p.name.startswith("checkpoint") for p in job.iterdir())
    log = (job / "log.txt").read_text()
    assert '"train_loss"' in log or "loss" in log
    result = job / "result"
    if "caption" in recipe:  # validation and test through the captioning task: CIDEr and BLEU-4
        metrics = json.loads((result / "test_metrics.json").read_text())
        assert {"CIDEr", "Bleu_4", "agg_metrics"} <= set(metrics)
    if "retrieval" in recipe:
        metrics = json.loads((result / "test_metrics.json").read_text())
        assert {"txt_r1", "img_r1", "r_mean"} <= set(metrics)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", EVAL)
def test_eval_recipe_runs_at_tiny_size(recipe, demo, tmp_path):
    cfg = tiny_recipe(f"projects/blip/eval/{recipe}.yaml", demo, str(tmp_path))
    metrics = evaluate_script.main(["--cfg-path", cfg, "--job-id", "ev"])
    (split,) = metrics
    m = metrics[split]
    if "vqa" in recipe:
        assert 0.0 <= m["overall"] <= 100.0 and m["n"] > 0
        answers = json.loads((tmp_path / "ev" / "result" / f"{split}_vqa_result.json").read_text())
        ranked_from = set(json.load(open(os.path.join(demo, "answer_list.json"))))
        assert answers and all(a["answer"] in ranked_from for a in answers)  # inference_method: rank
    elif "ret" in recipe:
        assert 0.0 <= m["txt_r1"] <= 100.0 and "img_r_mean" in m
    else:
        assert "CIDEr" in m and m["agg_metrics"] >= 0.0
        captions = json.loads((tmp_path / "ev" / "result" / f"{split}_caption_result.json").read_text())
        assert captions and all(isinstance(c["caption"], str) for c in captions)
