"""Stage 1 -> stage 2: the demo's stage 1 (projects/minigpt4qwen/demo_stage1.yaml through train.py)
learns image-text matching, and its checkpoint -- like a released blip2_pretrained*.pth -- initialises
Minigpt4Qwen through `q_former_model`, dropping only the text side."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from lavis_lite.models import load_model
from lavis_lite.models.blip2_qformer import Blip2Qformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
TEXT_SIDE = re.compile(r"^(Qformer\.bert\.embeddings\.(word|position)_embeddings\.|"
                       r"Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.|Qformer\.cls\.|"
                       r"vision_proj\.|text_proj\.|itm_head\.|temp$)")


def _run(args, env):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A short stage 1 of the demo (same YAML, fewer data and epochs) through train.py."""
    root = tmp_path_factory.mktemp("stage1")
    env = dict(os.environ, LAVIS_LITE_CACHE_ROOT=str(root / "cache"), PYTHONWARNINGS="ignore")
    _run(["-m", "lavis_lite.datasets.demo", "--out", str(root / "cache" / "demo"), "--n", "600", "--seed", "1",
          "--contrast", "position"], env)  # as run_scripts/demo.sh (demo_stage1.yaml groups contrast sets)
    _run(["train.py", "--cfg-path", "projects/minigpt4qwen/demo_stage1.yaml", "--options",
          f"run.output_dir={root / 'out'}", "run.max_epoch=4", "run.valid_every=2", "run.warmup_steps=10",
          "run.progress_bar=False"], env)
    job = root / "out" / "stage1"
    return {"root": root, "job": job, "weights": job / "checkpoint_best" / "model.safetensors"}


@pytest.mark.slow
def test_stage1_matched_pairs_score_higher(stage1):
    from PIL import Image
    from lavis_lite.common.registry import registry

    assert stage1["weights"].is_file()
    metrics = [json.loads(line) for line in open(stage1["job"] / "evaluate.txt")]
    assert metrics and "txt_r1" in metrics[-1]
    # The demo's stage 1 trains without ITM, the tiny type's default has it: a partial load, asked for.
    with pytest.raises(Exception, match=r"lacks 2 trainable parameter\(s\).*itm_head"):
        load_model("blip2", "tiny", is_eval=True, checkpoint=str(stage1["weights"]))
    model = load_model("blip2", "tiny", is_eval=True, checkpoint=str(stage1["weights"]), partial=True)
    proc = registry.get_processor_class("blip2_image_eval").from_config({"image_size": 32})
    demo = stage1["root"] / "cache" / "demo"
    records = json.load(open(demo / "caption" / "test.json"))
    single = [r for r in records if re.match(r"a \w+ \w+ on a \w+ background", r["caption"][0])]
    images = torch.stack([proc(Image.open(demo / "images" / r["image"]).convert("RGB")) for r in single])
    # Template captions of every colour and shape; the matched one is the image's own content.
    words = [r["caption"][0].split()[1:3] for r in single]
    colours, shapes = sorted({w[0] for w in words}), sorted({w[1] for w in words})
    texts = [f"a picture of a {c} {s}." for c in colours for s in shapes]
    with torch.no_grad():
        from lavis_lite.models.blip2_feature_extractor import image_text_similarity
        sim = image_text_similarity(model.extract_features({"image": images}, mode="image"),
                                    model.extract_features({"text_input": texts}, mode="text"))
    matched = torch.tensor([texts.index(f"a picture of a {c} {s}.") for c, s in words])
    pos = sim[torch.arange(len(single)), matched]
    mismatched_mask = torch.ones_like(sim, dtype=torch.bool)
    mismatched_mask[torch.arange(len(single)), matched] = False
    neg_mean = (sim * mismatched_mask).sum(1) / mismatched_mask.sum(1)
    # Matched pairs beat the average mismatched pair for nearly every image, and on average clearly.
    assert (pos > neg_mean).float().mean() > 0.9
    assert (pos - neg_mean).mean() > 0.05
    # The best-scoring caption has the right colour for most images (colour is learned first).
    best = sim.argmax(1)
    right_colour = [texts[b].split()[4] == c for b, (c, _) in zip(best.tolist(), words)]
    assert sum(right_colour) / len(right_colour) > 0.8


def _minigpt4qwen_from(path):
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen
    return Minigpt4Qwen.from_pretrained("tiny", q_former_model=str(path))


def _check_handover(model, state, report, extra_dropped=()):
    dropped = set(report["dropped"])
    text_side = {k for k in state if TEXT_SIDE.match(k)}
    assert text_side, "a stage-1 checkpoint holds the text side"
    assert dropped == text_side | set(extra_dropped), sorted(dropped ^ (text_side | set(extra_dropped)))[:10]
    # Everything of the image side was loaded and equals the checkpoint.
    own = model.state_dict()
    image_side = [k for k in state if k not in dropped]
    assert any(k.startswith("visual_encoder.blocks.") for k in image_side)
    assert "query_tokens" in image_side and "ln_vision.weight" in image_side
    assert any(k.startswith("Qformer.bert.encoder.layer.0.crossattention.") for k in image_side)
    for k in image_side:
        torch.testing.assert_close(own[k], state[k].to(own[k].dtype), msg=k)
    # What the model has and the checkpoint lacks is the LLM side only (and constant buffers such as
    # position_ids, which the runner's trainable-weights checkpoint does not store).
    buffers = {name for name, _ in model.named_buffers()}
    assert all(k.startswith(("llm_proj.", "llm_model.")) or k in buffers for k in report["missing"]), \
        [k for k in report["missing"] if not k.startswith("llm_")][:5]


@pytest.mark.slow
def test_runner_stage1_checkpoint_initialises_minigpt4qwen(stage1):
    from safetensors.torch import load_file

    state = load_file(str(stage1["weights"]))
    # As demo.yaml names it: the runner's checkpoint folder.
    model = _minigpt4qwen_from(stage1["weights"].parent)
    report = model.load_from_pretrained(str(stage1["weights"].parent))
    _check_handover(model, state, report)


def test_released_style_blip2_checkpoint_initialises_minigpt4qwen(tmp_path):
    """A blip2_pretrained*.pth look-alike: torch.save({"model": state}) of a stage-1 model whose ViT has
    40 blocks where the model keeps 39 (as EVA-ViT-G in BLIP-2), with the LM-head bias stored twice."""
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen

    sizes = {"patch_size": 8, "embed_dim": 64, "num_heads": 4, "mlp_ratio": 2.0}
    torch.manual_seed(0)
    stage1 = Blip2Qformer.from_pretrained("tiny", vit_sizes=dict(sizes, depth=40))
    state = {k: v.clone() for k, v in stage1.state_dict().items()}
    state["Qformer.cls.predictions.decoder.bias"] = state["Qformer.cls.predictions.bias"].clone()
    path = tmp_path / "blip2_pretrained_tiny.pth"
    torch.save({"model": state}, path)
    model = Minigpt4Qwen.from_pretrained("tiny", vit_sizes=dict(sizes, depth=39), q_former_model=str(path))
    report = model.load_from_pretrained(str(path))
    extra_block = {k for k in state if k.startswith("visual_encoder.blocks.39.")}
    assert extra_block and not any(k.startswith("visual_encoder.blocks.39.") for k in model.state_dict())
    _check_handover(model, state, report, extra_dropped=extra_block)


@pytest.mark.slow
def test_retrieval_through_evaluate_py(stage1):
    """projects/blip2/eval_demo_retrieval.yaml with the stage-1 checkpoint, through evaluate.py."""
    root = stage1["root"]
    env = dict(os.environ, LAVIS_LITE_CACHE_ROOT=str(root / "cache"), PYTHONWARNINGS="ignore")
    _run(["evaluate.py", "--cfg-path", "projects/blip2/eval_demo_retrieval.yaml", "--job-id", "ret", "--options",
          f"model.checkpoint={stage1['weights']}", f"run.output_dir={root / 'eval'}"], env)
    metrics = json.load(open(root / "eval" / "ret" / "result" / "test_metrics.json"))
    from test_retrieval import assert_recall_structure
    test_split = json.load(open(root / "cache" / "demo" / "caption" / "test.json"))
    n_images = len({r["image"] for r in test_split})
    n_texts = sum(len(r["caption"]) if isinstance(r["caption"], list) else 1 for r in test_split)
    assert_recall_structure(metrics, n_images=n_images, n_texts=n_texts)
    # Far above chance (~10 of ~100 test images at recall@10) even though identical captions tie.
    assert metrics["img_r10"] > 30.0 and metrics["txt_r10"] > 30.0


def test_model_checkpoint_key_takes_a_runner_checkpoint_or_job_folder(tmp_path):
    """model.checkpoint: a runner's checkpoint folder (or its job folder: best, else latest) loads as its
    exported file would, so the next stage of a pipeline needs no export step; anything else is an error."""
    from omegaconf import OmegaConf

    from lavis_lite.common import checkpoint as ckpt
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen

    cfg = OmegaConf.load(Minigpt4Qwen.default_config_path("tiny")).model
    torch.manual_seed(0)
    trained = Minigpt4Qwen.from_config(OmegaConf.merge(cfg, {"freeze_llm": False}))
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.25)
    state = ckpt.trainable_state(trained)
    job = tmp_path / "job"
    final = str(job / ckpt.step_dir_name(10))
    tmp = ckpt.begin_save(final)
    ckpt.save_tensors(state, os.path.join(tmp, ckpt.WEIGHTS_NAME))
    ckpt.finish_save(tmp, final)
    for where in (final, str(job)):
        torch.manual_seed(1)  # another random init: the loaded weights must replace it
        model = Minigpt4Qwen.from_config(OmegaConf.merge(cfg, {"freeze_llm": False, "checkpoint": where}))
        got = dict(model.named_parameters())
        assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad}
        for name, tensor in state.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="neither a complete checkpoint directory nor a job directory"):
        Minigpt4Qwen.from_config(OmegaConf.merge(cfg, {"checkpoint": str(tmp_path / "empty")}))
