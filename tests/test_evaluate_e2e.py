"""evaluate.py end to end on the shapes demo with a briefly trained tiny MiniGPT4-Qwen.

Training runs task ``instruction_eval``, so the accuracy train.py reports for the test split must come
back, record for record, from ``evaluate.py --cfg-path projects/minigpt4qwen/eval_demo_instruction.yaml``
on the best checkpoint -- the command run_scripts/demo.sh runs, whose figures demo_report.py prints.
The caption and VQA YAMLs then run on the same checkpoint and their metric files are checked against
the metrics recomputed from their own result files.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from lavis_lite.datasets import demo
from lavis_lite.tasks.metrics.caption_eval import coco_caption_eval
from lavis_lite.tasks.metrics.vqa_eval import vqa_score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = os.path.join(ROOT, "projects", "minigpt4qwen")

TRAIN_YAML = """
model:
  arch: minigpt4qwen
  model_type: tiny
  # every part trains, so the checkpoint holds every weight: ranks of a torchrun evaluation
  # (seeded seed + rank) then build the same model
  freeze_vit: False
  freeze_qformer: False
  freeze_queries: False
  freeze_llm: False
datasets:
  instruction:
    build_info:
      annotations:
        train: {storage: demo/instruction/train.json}
        val: {storage: demo/instruction/val.json}
        test: {storage: demo/instruction/test.json}
      images: {storage: demo/images}
    vis_processor:
      train: {name: blip2_image_eval, image_size: 32}
      eval: {name: blip2_image_eval, image_size: 32}
run:
  task: instruction_eval
  runner: runner_base
  device: cpu
  seed: 42
  lr_sched: linear_warmup_cosine_lr
  init_lr: 3.0e-3
  min_lr: 1.0e-4
  warmup_lr: 1.0e-4
  warmup_steps: 1
  weight_decay: 0.0
  max_epoch: 1
  batch_size_train: 16
  batch_size_eval: 16
  num_workers: 0
  amp: false
  progress_bar: false
  train_splits: [train]
  valid_splits: [val]
  test_splits: [test]
  max_new_tokens: 6
"""


def _script(name):
    spec = importlib.util.spec_from_file_location(f"_lavis_lite_{name}", os.path.join(ROOT, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _evaluate(yaml_name, out_dir, ckpt, job_id, extra=()):
    options = [f"model.checkpoint={ckpt}", f"run.output_dir={out_dir}", "run.progress_bar=false", *extra]
    metrics = _script("evaluate").main(["--cfg-path", os.path.join(PROJECT, yaml_name), "--job-id", job_id,
                                        "--options", *options])
    result_dir = os.path.join(out_dir, job_id, "result")
    with open(os.path.join(result_dir, "test_metrics.json")) as f:
        on_disk = json.load(f)
    return metrics["test"], on_disk, result_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    demo.generate(str(root / "demo"), n=100, seed=0)
    old = os.environ.get("LAVIS_LITE_CACHE_ROOT")
    os.environ["LAVIS_LITE_CACHE_ROOT"] = str(root)  # the YAMLs' demo/... storage lives here
    (root / "train.yaml").write_text(TRAIN_YAML)
    out = root / "out"
    test_logs = _script("train").main(["--cfg-path", str(root / "train.yaml"), "--job-id", "train",
                                       "--options", f"run.output_dir={out}"])
    yield {"root": root, "out": out, "test_logs": test_logs,
           "ckpt": out / "train" / "checkpoint_best" / "model.safetensors"}
    if old is None:
        os.environ.pop("LAVIS_LITE_CACHE_ROOT", None)
    else:
        os.environ["LAVIS_LITE_CACHE_ROOT"] = old


@pytest.mark.slow
def test_evaluate_instruction_reproduces_training_demo_accuracy(trained, capsys):
    printed = trained["test_logs"]["test"]  # what train.py reported for the test split
    assert trained["ckpt"].is_file()
    metrics, on_disk, result_dir = _evaluate("eval_demo_instruction.yaml", trained["root"] / "eval",
                                             trained["ckpt"], "instr", ["run.max_new_tokens=6"])
    for key in ("exact_acc", "contains_acc", "n", "n_tokens", "token_acc", "agg_metrics"):
        assert metrics[key] == printed[key], key
    assert metrics["loss"] == pytest.approx(printed["loss"], rel=1e-5)
    assert on_disk["exact_acc"] == metrics["exact_acc"] and on_disk["n_records"] == 10
    assert set(on_disk["per_question_type"]) <= {"colour", "shape", "count", "position", "describe", "compare"}
    # the same answers, record for record
    with open(os.path.join(result_dir, "test_instruction_result.json")) as f:
        ours = {r["instance_id"]: r["prediction"] for r in json.load(f)}
    with open(trained["out"] / "train" / "result" / "test_instruction_result.json") as f:
        theirs = {r["instance_id"]: r["prediction"] for r in json.load(f)}
    assert ours == theirs and len(ours) == 10
    assert 0 < metrics["loss"] < 10

    # run_scripts/demo.sh prints these files through demo_report.py: the same figures come out
    spec = importlib.util.spec_from_file_location("_demo_report", os.path.join(ROOT, "run_scripts", "demo_report.py"))
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    capsys.readouterr()
    report.main(["--result-dir", result_dir, "--data", str(trained["root"] / "demo")])
    printed_rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("all ")]
    assert printed_rows == [["all", "10", f"{printed['exact_acc']:.1f}", f"{printed['contains_acc']:.1f}"]]


@pytest.mark.slow
def test_evaluate_vqa_and_caption_write_their_metrics(trained):
    root = trained["root"]
    vqa, on_disk, result_dir = _evaluate("eval_demo_vqa.yaml", root / "eval", trained["ckpt"], "vqa")
    with open(os.path.join(result_dir, "test_vqa_result.json")) as f:
        answers = json.load(f)
    with open(root / "demo" / "vqa" / "test.json") as f:
        questions = json.load(f)
    assert sorted(r["question_id"] for r in answers) == sorted(q["question_id"] for q in questions)
    annotations = {q["question_id"]: {"answers": q["answer"], "question_type": q["question_type"]} for q in questions}
    expected = vqa_score(answers, annotations)
    assert vqa["overall"] == on_disk["overall"] == expected["overall"] == vqa["agg_metrics"]
    assert vqa["per_question_type"] == expected["per_question_type"]

    cap, on_disk, result_dir = _evaluate("eval_demo_caption.yaml", root / "eval", trained["ckpt"], "cap",
                                         ["run.caption_metrics=[bleu,rouge_l,cider]"])
    with open(os.path.join(result_dir, "test_caption_result.json")) as f:
        captions = json.load(f)
    with open(root / "demo" / "caption" / "test_gt.json") as f:
        n_images = len(json.load(f)["images"])
    assert len(captions) == n_images == on_disk["n_records"]
    expected = coco_caption_eval(str(root / "demo" / "caption" / "test_gt.json"), captions,
                                 metrics=["bleu", "rouge_l", "cider"])
    for key, value in expected.items():
        assert cap[key] == pytest.approx(value) and on_disk[key] == pytest.approx(value)
    assert cap["agg_metrics"] == pytest.approx(expected["CIDEr"] + expected["Bleu_4"])


@pytest.mark.slow
def test_torchrun_evaluate_merges_two_ranks_to_the_single_process_figures(trained):
    out = trained["root"] / "eval"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "evaluate.py"), "--cfg-path", os.path.join(PROJECT, "eval_demo_instruction.yaml"),
           "--job-id", "two", "--options", f"model.checkpoint={trained['ckpt']}", f"run.output_dir={out}",
           "run.progress_bar=false", "run.max_new_tokens=6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result_dir = out / "two" / "result"
    per_rank = [json.loads((result_dir / f"test_instruction_result_rank{r}.json").read_text()) for r in (0, 1)]
    assert [len(p) for p in per_rank] == [5, 5]  # 10 test conversations, one shard each
    merged = json.loads((result_dir / "test_instruction_result.json").read_text())
    with open(trained["out"] / "train" / "result" / "test_instruction_result.json") as f:
        single = {r["instance_id"]: r for r in json.load(f)}
    assert sorted(r["instance_id"] for r in merged) == sorted(single)  # none lost, none twice
    for r in merged:
        assert r["prediction"] == single[r["instance_id"]]["prediction"]
        assert r["loss_sum"] == pytest.approx(single[r["instance_id"]]["loss_sum"], rel=1e-5)
    printed = trained["test_logs"]["test"]
    metrics = json.loads((result_dir / "test_metrics.json").read_text())
    for key in ("n", "exact_acc", "contains_acc", "token_acc", "n_tokens"):
        assert metrics[key] == printed[key], key
    assert metrics["loss"] == pytest.approx(printed["loss"], rel=1e-5)
