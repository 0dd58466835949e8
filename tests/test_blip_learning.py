"""The tiny BLIP models learn the shapes demo through train.py (short CPU runs, marked slow).

* blip_caption: held-out CIDEr of the trained captioner far above the untrained one's;
* blip_vqa: colour questions on held-out images answered correctly (chance is 1 in 4);
* blip_feature_extractor: after a short ITC run the matching caption ranks first for most
  held-out images.
RandomAugment and flips are off in these short runs.
"""
import glob
import json
import os
import sys

import pytest
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from blip_recipe_helpers import REPO, make_demo_data, tiny_recipe  # noqa: E402

sys.path.insert(0, REPO)
import evaluate as evaluate_script  # noqa: E402
import train as train_script  # noqa: E402

from lavis_lite.models import load_model_and_preprocess  # noqa: E402


def _schedule(lr, epochs, batch):
    return dict(max_epoch=epochs, init_lr=lr, min_lr=lr / 10, warmup_lr=lr / 10, warmup_steps=10,
                batch_size_train=batch, seed=42)


def _last_checkpoint(job_dir):
    return sorted(glob.glob(os.path.join(job_dir, "checkpoint_*", "model.safetensors")))[-1]


@pytest.mark.slow
def test_blip_caption_learns_the_demo_captions(tmp_path):
    data = make_demo_data(str(tmp_path / "demo"), n=200)
    run = {**_schedule(5e-3, 5, 32), "valid_splits": [], "test_splits": ["test"], "num_beams": 1}
    cfg = tiny_recipe("projects/blip/train/caption_coco_ft.yaml", data, str(tmp_path / "out"), run=run,
                      augment=False, min_scale=0.9)
    untrained = evaluate_script.main(["--cfg-path", cfg, "--job-id", "untrained"])["test"]
    train_script.main(["--cfg-path", cfg, "--job-id", "trained"])
    result = tmp_path / "out" / "trained" / "result"
    trained = json.loads((result / "test_metrics.json").read_text())
    captions = [r["caption"] for r in json.loads((result / "test_caption_result.json").read_text())]
    print(f"held-out CIDEr: untrained {untrained['CIDEr']:.3f}, trained {trained['CIDEr']:.3f}")
    assert untrained["CIDEr"] < 0.1
    assert trained["CIDEr"] > 0.8 and trained["CIDEr"] > untrained["CIDEr"] + 0.7, (untrained, trained)
    assert len(set(captions)) >= 2  # not one caption for every image


def _colour_accuracy(model, vis, txt, data):
    recs = [r for split in ("val", "test") for r in json.load(open(os.path.join(data, "vqa", f"{split}.json")))
            if r["question_type"] == "colour"]
    images = torch.stack([vis["eval"](Image.open(os.path.join(data, "images", r["image"]))) for r in recs])
    answers = model.predict_answers({"image": images, "text_input": [txt["eval"](r["question"]) for r in recs]},
                                    inference_method="generate", num_beams=1)
    return sum(a == r["answer"][0] for a, r in zip(answers, recs)) / len(recs), len(recs)


@pytest.mark.slow
def test_blip_vqa_answers_colour_questions_on_held_out_images(tmp_path):
    data = make_demo_data(str(tmp_path / "demo"), n=300)
    cfg = tiny_recipe("projects/blip/train/vqav2_ft.yaml", data, str(tmp_path / "out"),
                      run=_schedule(3e-3, 10, 16), augment=False)
    train_script.main(["--cfg-path", cfg, "--job-id", "trained"])
    torch.manual_seed(42)
    model, vis, txt = load_model_and_preprocess("blip_vqa", "tiny", is_eval=True)
    before, n = _colour_accuracy(model, vis, txt, data)
    model.load_checkpoint(_last_checkpoint(str(tmp_path / "out" / "trained")))
    after, _ = _colour_accuracy(model, vis, txt, data)
    print(f"held-out colour accuracy ({n} questions): untrained {before:.2f}, trained {after:.2f}")
    assert n >= 15
    assert before < 0.3 and after >= 0.6, (before, after)


@pytest.mark.slow
def test_blip_feature_extractor_ranks_the_matching_caption_first_after_itc(tmp_path):
    from omegaconf import OmegaConf
    data = make_demo_data(str(tmp_path / "demo"), n=600)
    # the demo's descriptive captions ("a red circle on a gray background."): one per image
    # ITC ids per image: the demo's train ids group images by what its stage-1 captions state (count /
    # position layouts by count or position only), which would make images of other colours positives here
    train = [{**r, "image_id": r["image"]} for r in json.load(open(os.path.join(data, "caption", "train.json")))
             if not r["caption"].startswith("a picture of")]
    with open(os.path.join(data, "caption", "train_descriptive.json"), "w") as f:
        json.dump(train, f)
    run = {**_schedule(3e-3, 12, 32), "k_test": 0, "valid_splits": [], "test_splits": []}
    cfg = tiny_recipe("projects/blip/train/retrieval_coco_ft.yaml", data, str(tmp_path / "out"),
                      model={"arch": "blip_feature_extractor"}, run=run, augment=False, min_scale=0.9)
    conf = OmegaConf.load(cfg)
    next(iter(conf.datasets.values())).build_info.annotations.train.storage = f.name
    OmegaConf.save(conf, cfg)
    train_script.main(["--cfg-path", cfg, "--job-id", "itc"])

    def top1(model, vis, txt):
        recs = json.load(open(os.path.join(data, "caption", "test.json")))
        captions = sorted({txt["eval"](r["caption"][0]) for r in recs})
        images = torch.stack([vis["eval"](Image.open(os.path.join(data, "images", r["image"]))) for r in recs])
        image_feat = model.extract_features({"image": images}, mode="image").image_embeds_proj[:, 0]
        text_feat = model.extract_features({"text_input": captions}, mode="text").text_embeds_proj[:, 0]
        best = (image_feat @ text_feat.t()).argmax(1).tolist()
        hits = sum(captions[b] == txt["eval"](r["caption"][0]) for b, r in zip(best, recs))
        return hits / len(recs), len(captions)

    torch.manual_seed(42)
    model, vis, txt = load_model_and_preprocess("blip_feature_extractor", "tiny", is_eval=True)
    before, n_captions = top1(model, vis, txt)
    model.load_checkpoint(_last_checkpoint(str(tmp_path / "out" / "itc")))
    after, _ = top1(model, vis, txt)
    print(f"held-out top-1 caption ({n_captions} candidates): untrained {before:.2f}, after ITC {after:.2f}")
    assert n_captions >= 20  # chance of a right first rank is about 1 in n_captions
    assert before < 0.15 and after > 0.5, (before, after)
