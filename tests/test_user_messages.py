"""What the user is told: evaluate.py warns loudly about random weights, chat and the web demo say when
no image is loaded, predict interrupted with Ctrl-C prints how to resume, and a job folder's config.yaml
holds absolute paths (so chat / predict / export work from any working directory)."""
import io
import os
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


def test_evaluate_warns_loudly_about_random_weights(tmp_path, capsys):
    cfg = toy.write_run_yaml(str(tmp_path / "run.yaml"), test_splits=["val"])
    evaluate_script.main(["--cfg-path", cfg, "--job-id", "ev"])  # toy_lm/default: a real type, no weights
    err = capsys.readouterr().err
    assert "NO trained weights" in err and "RANDOM" in err and "model.checkpoint" in err
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")  # the toy model does not read it; what matters is that weights were named
    evaluate_script.main(["--cfg-path", cfg, "--job-id", "ev2", "--options", f"model.checkpoint={weights}"])
    assert "NO trained weights" not in capsys.readouterr().err
    from lavis_lite.runners.launch import warn_if_random_weights
    assert not warn_if_random_weights(OmegaConf.create({"arch": "minigpt4qwen", "model_type": "tiny"}))


def test_job_config_stores_absolute_paths(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "weights").mkdir(parents=True)
    (work / "weights" / "w.safetensors").write_bytes(b"")
    cache = tmp_path / "cache"
    monkeypatch.setenv("LAVIS_LITE_CACHE_ROOT", str(cache))
    monkeypatch.chdir(work)
    cfg = toy.write_run_yaml(str(tmp_path / "run.yaml"), max_epoch=1)
    train_script.main(["--cfg-path", cfg, "--job-id", "abs", "--options", "model.checkpoint=weights/w.safetensors",
                       "model.tokenizer=Qwen/Qwen-7B-Chat",
                       "datasets.toy_data.build_info.annotations.train.storage=toy/train.json",
                       "datasets.toy_data.build_info.annotations.train.url=https://example.org/train.json"])
    saved = OmegaConf.load(tmp_path / "out" / "abs" / "config.yaml")
    assert saved.model.checkpoint == str(work / "weights" / "w.safetensors")
    assert saved.model.tokenizer == "Qwen/Qwen-7B-Chat"  # not a local path: unchanged
    train = saved.datasets.toy_data.build_info.annotations.train
    assert train.storage == str(cache / "toy" / "train.json") and train.url == "https://example.org/train.json"


class _StubSession:
    def __init__(self, images):
        self.images = images

    def ask(self, question):
        return iter(["an answer"])


def test_chat_says_when_no_image_is_loaded():
    from lavis_lite.chat import NO_IMAGE_NOTE, run_repl
    for images, told in (([], True), (["img"], False)):
        lines = iter(["what is this?", ":quit"])
        out = io.StringIO()
        run_repl(_StubSession(images), lambda: next(lines), out)
        assert (NO_IMAGE_NOTE in out.getvalue()) == told and "an answer" in out.getvalue()


def test_web_demo_says_once_when_no_image_is_loaded():
    from lavis_lite.webui import NO_IMAGE_NOTE, WebChat

    class Settings:
        def set(self, key, value):
            pass

    class Turn:
        answer = "an answer"

        def __iter__(self):
            return iter(["an answer"])

    session = _StubSession([])
    session.settings, session.ask = Settings(), lambda q: Turn()
    web = WebChat(model=None, image_processor=None)
    log = list(web.respond("hi", [], [], session, 1.0, 0.9, 1, 8, False))[-1][1]
    assert log[0] == {"role": "assistant", "content": NO_IMAGE_NOTE}
    assert log[1:] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "an answer"}]
    log = list(web.respond("again", [], log, session, 1.0, 0.9, 1, 8, False))[-1][1]
    assert [m["content"] for m in log].count(NO_IMAGE_NOTE) == 1  # said once per session


def test_predict_interrupted_prints_how_to_resume(tmp_path, monkeypatch, capsys):
    import lavis_lite.inference_utils as iu
    import lavis_lite.predict as predict_mod
    (tmp_path / "imgs").mkdir()
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    monkeypatch.setattr(iu, "load_model_from_cfg", lambda *a, **k: (None, None, None))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_mod, "predict", interrupted)
    argv = ["--cfg-path", "some model.yaml", "--images", str(tmp_path / "imgs"), "--question", "What?",
            "--out", str(tmp_path / "answers.jsonl")]
    assert predict_mod.main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "To resume, run the same command again" in err
    assert f"python -m lavis_lite.predict --cfg-path 'some model.yaml' --images {tmp_path / 'imgs'}" in err
