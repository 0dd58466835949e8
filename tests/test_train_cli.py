"""train.py / evaluate.py: config errors before building, --resume auto, evaluate-only, plain python."""
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
import toy_components as toy  # noqa: E402

import evaluate as evaluate_script  # noqa: E402
import train as train_script  # noqa: E402


def test_config_error_is_reported_before_any_model_is_built(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(toy.ToyLM, "from_config", classmethod(lambda cls, cfg: built.append(1)))
    cfg = toy.write_run_yaml(str(tmp_path / "bad.yaml"), runner="runner_iter", iters=10)
    with pytest.raises(SystemExit, match="iters_per_inner_epoch"):
        train_script.main(["--cfg-path", cfg])
    cfg = toy.write_run_yaml(str(tmp_path / "bad2.yaml"), runner="runner_bse")
    with pytest.raises(SystemExit, match="runner_base"):  # unknown runner: the error suggests the name
        train_script.main(["--cfg-path", cfg])
    cfg = toy.write_run_yaml(str(tmp_path / "bad3.yaml"), runner="deepspeed_runner",
                             deepspeed_config={"gradient_accumulation_steps": 4})
    with pytest.raises(SystemExit, match="gradient_accumulation_steps"):
        train_script.main(["--cfg-path", cfg])
    assert built == []


def test_resume_auto_continues_the_latest_job(tmp_path):
    cfg = toy.write_run_yaml(str(tmp_path / "run.yaml"), max_epoch=1)
    train_script.main(["--cfg-path", cfg, "--job-id", "first"])
    job = tmp_path / "out" / "first"
    assert (job / "checkpoint_0000008" / "COMPLETE").is_file()
    train_script.main(["--cfg-path", cfg, "--resume", "auto", "--options", "run.max_epoch=2"])
    assert (job / "checkpoint_0000016" / "COMPLETE").is_file()  # the same job directory went on
    log = (job / "log.txt").read_text()
    assert "resumed from" in log and '"epoch": 1' in log


def test_evaluate_only_reports_test_metrics(tmp_path, capsys):
    cfg = toy.write_run_yaml(str(tmp_path / "run.yaml"), test_splits=["val"])
    metrics = evaluate_script.main(["--cfg-path", cfg, "--job-id", "ev"])
    # the same figures computed here: the model as evaluate.py builds it (run.seed=7), the val split at once
    import torch
    torch.manual_seed(7)
    model = toy.ToyLM.from_config(OmegaConf.load(toy.TOY_YAML).model).eval()
    val = toy.ToyDataset(16, seed=1000)
    batch = val.collater([val[i] for i in range(16)])
    with torch.no_grad():
        out = model(batch)
    assert metrics["val"]["n_tokens"] == out["n_tokens"] == int((batch["y"] != -100).sum())
    assert metrics["val"]["token_acc"] == pytest.approx(out["n_correct"] / out["n_tokens"])
    assert metrics["val"]["loss"] == pytest.approx(float(out["loss"]), rel=1e-5)
    assert json.loads(capsys.readouterr().out)["val"]["agg_metrics"] == metrics["val"]["agg_metrics"]
    assert not any(n.startswith("checkpoint") for n in os.listdir(tmp_path / "out" / "ev"))


@pytest.mark.slow
def test_plain_python_train_py(tmp_path):
    cfg = toy.write_run_yaml(str(tmp_path / "run.yaml"), max_epoch=1, valid_splits=["val"])
    proc = subprocess.run([sys.executable, "train.py", "--cfg-path", cfg, "--job-id", "cli"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = tmp_path / "out" / "cli"
    assert (job / "checkpoint_best" / "model.safetensors").is_file()
    stats = [json.loads(line) for line in (job / "log.txt").read_text().splitlines() if line.startswith("{")]
    assert [s["split"] for s in stats] == ["train", "val"]


RECIPES = ["instruction_qwen7b_chat", "pretrain_llava558k", "sft_full_qwen7b_chat_zero3", "lora_qwen7b_chat", "demo"]


@pytest.mark.parametrize("name", RECIPES)
def test_project_recipes_are_valid_configs(name):
    """Every training recipe merges with its model / dataset defaults and passes the runner's checks."""
    from lavis_lite.runners.deepspeed_runner import derive_deepspeed_config
    from lavis_lite.runners.launch import load_config, parse_args
    cfg = load_config(parse_args(["--cfg-path", os.path.join(REPO, "projects", "minigpt4qwen", f"{name}.yaml")]))
    run = cfg.run_cfg
    assert run.runner == "deepspeed_runner" and run.task in ("instruction_tuning", "image_text_pretrain")
    ds = derive_deepspeed_config(run, world_size=8)
    assert ds["train_batch_size"] == run.batch_size_train * run.get("accum_grad_iters", 1) * 8
    if name != "demo":  # the real recipes train in bf16 and leave the paths to set visibly marked
        assert ds["bf16"]["enabled"] and str(cfg.model_cfg.llm_model).startswith("/path/to/")
    else:
        assert cfg.model_cfg.model_type == "tiny" and cfg.model_cfg.freeze_llm is False
