"""Whole-model export: config.yaml + model.safetensors + tokenizer, reopened with identical outputs."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lavis_lite.inference_utils import load_image_tensor, load_model_from_cfg
from lavis_lite.tools.export import export_model, main as export_main
from tiny_helpers import TINY_MODEL_YAML, talkative

PROMPTS = ["What is in the picture?", "Which colour?"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY_MODEL_YAML)
    model, image_processor, model_cfg = load_model_from_cfg(str(cfg))
    talkative(model)
    images = []
    for i in range(2):
        path = root / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(path)
        images.append(load_image_tensor(path, image_processor))
    return root, cfg, model, image_processor, model_cfg, torch.stack(images)


def _outputs(model, images):
    """Greedy answers plus the training loss: both must survive the round trip exactly."""
    samples = {"image": images, "n_images": [1, 1], "prompt": PROMPTS}
    answers = model.generate(samples, max_new_tokens=6, min_length=6)
    convs = [[{"from": "human", "value": "<ImageHere>\n" + p}, {"from": "gpt", "value": "a red square"}]
             for p in PROMPTS]
    with torch.no_grad():
        loss = model({"image": images, "n_images": [1, 1], "conversations": convs})["loss"]
    return answers, loss


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_export_reopens_with_identical_outputs(setup):
    from lavis_lite.models import load_model

    root, _, model, image_processor, model_cfg, images = setup
    out = root / "exported"
    export_model(model, model_cfg, str(out))
    files = set(os.listdir(out))
    assert {"config.yaml", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.model.arch == "minigpt4qwen" and saved.model.model_type == "tiny"
    assert saved.export.weights == "model.safetensors"
    assert saved.model.preprocess.vis_processor.eval.name == "blip2_image_eval"

    answers, loss = _outputs(model, images)
    assert all(answers) and answers[0] != answers[1]

    # the model engineer's entry point, and the tools' loader (folder or its config.yaml)
    for reopened in (load_model("minigpt4qwen", "tiny", is_eval=True, checkpoint=str(out)),
                     load_model_from_cfg(str(out))[0],
                     load_model_from_cfg(str(out / "config.yaml"))[0]):
        _assert_same_weights(model, reopened)
        got_answers, got_loss = _outputs(reopened, images)
        assert got_answers == answers
        assert torch.equal(got_loss, loss)

    with pytest.raises(FileExistsError, match="not empty"):
        export_model(model, model_cfg, str(out))


def test_export_command_line_round_trip(setup, capsys):
    root, _, model, _, _, images = setup
    first = root / "cli_first"
    export_model(model, load_model_from_cfg(str(setup[1]))[2], str(first))
    second = root / "cli_second"
    assert export_main(["--cfg-path", str(first), "--out", str(second)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["exported"] == str(second) and "model.safetensors" in report["files"]
    _assert_same_weights(model, load_model_from_cfg(str(second))[0])
    assert export_main(["--cfg-path", str(first), "--out", str(second)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_export_of_model_built_from_llm_folder_is_self_contained(setup, tmp_path):
    """llm_model pointing at a HF folder: the export must reopen after that folder is gone."""
    _, _, model, _, _, images = setup
    llm_dir = tmp_path / "hf_llm"
    model.llm_model.save_pretrained(llm_dir)
    model.tokenizer.save_pretrained(llm_dir)
    cfg = tmp_path / "from_folder.yaml"
    cfg.write_text(TINY_MODEL_YAML + f"  llm_model: {llm_dir}\n  llm_config: null\n")
    built, _, built_cfg = load_model_from_cfg(str(cfg))
    built.load_state_dict(model.state_dict())  # same weights for vision + projection too
    answers, loss = _outputs(built, images)

    out = tmp_path / "exported"
    export_model(built, built_cfg, str(out))
    shutil.rmtree(llm_dir)
    saved = OmegaConf.load(out / "config.yaml").model
    assert saved.llm_model is None and saved.llm_config.hidden_size == model.llm_model.config.hidden_size
    assert saved.tokenizer == str(out)
    reopened = load_model_from_cfg(str(out))[0]
    _assert_same_weights(built, reopened)
    got_answers, got_loss = _outputs(reopened, images)
    assert got_answers == answers and torch.equal(got_loss, loss)


def test_tools_build_the_random_init_weights_training_built(tmp_path):
    """A trainable-weights checkpoint of the tiny model only makes sense on the frozen random
    weights training had: the tools seed like train.py (run.seed) before building the model."""
    from lavis_lite.common.config import Config
    from lavis_lite.common.registry import registry
    from lavis_lite.runners.runner_base import setup_seeds

    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(TINY_MODEL_YAML + "run:\n  task: instruction_tuning\n  seed: 7\n")
    cfg = Config.from_file(str(run_yaml))
    setup_seeds(cfg.run_cfg)
    trained = registry.get_task_class(cfg.run_cfg.task).setup_task(cfg).build_model(cfg)
    with torch.no_grad():  # "training" changed the trainable weights
        trained.llm_proj.weight.mul_(-3.0)
    torch.manual_seed(123)  # whatever happened before must not matter
    rebuilt = load_model_from_cfg(str(run_yaml))[0]
    assert not torch.equal(rebuilt.llm_proj.weight, trained.llm_proj.weight)
    assert torch.equal(rebuilt.llm_model.lm_head.weight, trained.llm_model.lm_head.weight)

    # a job folder as the runner leaves it: config.yaml + checkpoint_best with trainable weights
    from lavis_lite.common import checkpoint as ckpt

    job = tmp_path / "output" / "job1"
    job.mkdir(parents=True)
    cfg.dump(str(job / "config.yaml"))
    tmp = ckpt.begin_save(str(job / "checkpoint_best"))
    ckpt.save_tensors(ckpt.trainable_state(trained), os.path.join(tmp, ckpt.WEIGHTS_NAME))
    ckpt.finish_save(tmp, str(job / "checkpoint_best"))
    _assert_same_weights(trained, load_model_from_cfg(str(job))[0])
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        empty = tmp_path / "output" / "job2"
        empty.mkdir()
        (empty / "config.yaml").write_text((job / "config.yaml").read_text())
        load_model_from_cfg(str(empty))
    other = tmp_path / "other_seed.yaml"
    other.write_text(run_yaml.read_text().replace("seed: 7", "seed: 8"))
    assert not torch.equal(trained.llm_proj.weight, load_model_from_cfg(str(other))[0].llm_proj.weight)
