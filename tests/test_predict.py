"""Batch prediction: inputs, resumable JSONL output, corrupt images, batching, interruption."""
import json

import numpy as np
import pytest
from PIL import Image

from lavis_lite.inference_utils import GenerationSettings
from lavis_lite.predict import (PredictInputError, ResumableJsonlWriter, list_items, main as predict_main,
                                predict)
from tiny_helpers import TINY_MODEL_YAML, talkative

QUESTION = "What is in the picture?"
SETTINGS = dict(max_new_tokens=5, min_length=1)


def _save_image(path, seed, size=(40, 40)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lavis_lite.inference_utils import load_model_from_cfg

    cfg = tmp_path_factory.mktemp("predict_model") / "tiny.yaml"
    cfg.write_text(TINY_MODEL_YAML)
    model, image_processor, _ = load_model_from_cfg(str(cfg))
    talkative(model)
    return model, image_processor, str(cfg)


@pytest.fixture()
def image_dir(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png", "e.png", "f.png"]):
        _save_image(folder / name, i, size=(32 + 8 * i, 40))  # different sizes on purpose
    (folder / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # corrupt image
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_list_items_folder_and_jsonl(tmp_path, image_dir):
    items = list_items(str(image_dir), QUESTION)
    assert [it.id for it in items] == ["a.png", "b.jpg", "d.png", "e.png", "f.png", "sub/c.png"]
    assert all(it.question == QUESTION for it in items)
    with pytest.raises(PredictInputError, match="--question is required"):
        list_items(str(image_dir), None)

    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text(json.dumps({"image": "images/a.png", "id": "x1"}) + "\n\n"
                     + json.dumps({"image": "images/b.jpg", "question": "Own question?"}) + "\n")
    items = list_items(str(jsonl), QUESTION)
    assert [(it.id, it.question) for it in items] == [("x1", QUESTION), ("images/b.jpg", "Own question?")]
    assert items[0].image == str(tmp_path / "images" / "a.png")

    jsonl.write_text(json.dumps({"image": "a.png"}) + "\n{broken\n")
    with pytest.raises(PredictInputError, match=r"list\.jsonl:2: not valid JSON"):
        list_items(str(jsonl), QUESTION)
    jsonl.write_text(json.dumps({"id": 3}) + "\n")
    with pytest.raises(PredictInputError, match=r"list\.jsonl:1: record has no 'image'"):
        list_items(str(jsonl), QUESTION)
    jsonl.write_text(json.dumps({"image": "a.png"}) + "\n" + json.dumps({"image": "a.png"}) + "\n")
    with pytest.raises(PredictInputError, match="duplicate id 'a.png'"):
        list_items(str(jsonl), QUESTION)
    with pytest.raises(PredictInputError, match="neither a folder nor a file"):
        list_items(str(tmp_path / "missing"), QUESTION)


def test_writer_drops_half_written_line_and_rejects_foreign_files(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "a", "answer": "x"}) + "\n" + '{"id": "b", "ans')
    with ResumableJsonlWriter(str(out)) as writer:
        assert set(writer.done) == {"a"}
        writer.write([{"id": "b", "answer": "y"}])
    lines = out.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b"]

    out.write_text("garbage line\n" + json.dumps({"id": "a"}) + "\n")
    with pytest.raises(PredictInputError, match=r"out\.jsonl:1: not a prediction record"):
        ResumableJsonlWriter(str(out))


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_predict_folder_with_corrupt_image_batched_equals_single(tiny, image_dir, tmp_path):
    model, image_processor, _ = tiny
    items = list_items(str(image_dir), QUESTION)
    out_b3 = tmp_path / "b3.jsonl"
    counts = predict(model, image_processor, items, str(out_b3), batch_size=3,
                     settings=GenerationSettings(**SETTINGS), progress=False)
    assert counts == {"answered": 5, "errors": 1, "skipped": 0}
    recs = _read(out_b3)
    assert [r["id"] for r in recs] == [it.id for it in items]  # input order, no duplicates
    bad = [r for r in recs if "error" in r]
    assert len(bad) == 1 and bad[0]["id"] == "d.png" and "d.png" in bad[0]["error"] and "answer" not in bad[0]
    good = [r for r in recs if "error" not in r]
    assert all(isinstance(r["answer"], str) and r["question"] == QUESTION for r in good)
    assert len({r["answer"] for r in good}) > 1, "answers do not depend on the image"

    # left-padded batches give the same greedy answers as one image at a time
    out_b1 = tmp_path / "b1.jsonl"
    predict(model, image_processor, items, str(out_b1), batch_size=1, settings=GenerationSettings(**SETTINGS),
            progress=False)
    assert [r.get("answer") for r in _read(out_b1)] == [r.get("answer") for r in recs]


def test_interrupted_run_resumes_without_duplicates(tiny, image_dir, tmp_path, monkeypatch):
    model, image_processor, _ = tiny
    items = list_items(str(image_dir), QUESTION)
    settings = GenerationSettings(**SETTINGS)
    reference = tmp_path / "reference.jsonl"
    predict(model, image_processor, items, str(reference), batch_size=2, settings=settings, progress=False)

    out = tmp_path / "answers.jsonl"
    real_generate = model.generate
    calls = {"n": 0}

    def dying_generate(samples, **kwargs):  # the process "dies" in the second batch
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_generate(samples, **kwargs)

    monkeypatch.setattr(model, "generate", dying_generate)
    with pytest.raises(KeyboardInterrupt):
        predict(model, image_processor, items, str(out), batch_size=2, settings=settings, progress=False)
    monkeypatch.setattr(model, "generate", real_generate)
    first = _read(out)
    assert [r["id"] for r in first] == ["a.png", "b.jpg"]
    with open(out, "a") as f:  # and left half a line behind
        f.write('{"id": "d.png", "err')

    counts = predict(model, image_processor, items, str(out), batch_size=2, settings=settings, progress=False)
    assert counts == {"answered": 3, "errors": 1, "skipped": 2}
    assert _read(out) == _read(reference)

    counts = predict(model, image_processor, items, str(out), batch_size=2, settings=settings, progress=False)
    assert counts == {"answered": 0, "errors": 0, "skipped": 6}
    with pytest.raises(PredictInputError, match="already answers id 'a.png'"):
        predict(model, image_processor, list_items(str(image_dir), "Another question?"), str(out),
                settings=settings, progress=False)


def test_predict_command_line(tiny, image_dir, tmp_path, capsys):
    _, _, cfg = tiny
    out = tmp_path / "cli.jsonl"
    argv = ["--cfg-path", cfg, "--images", str(image_dir), "--question", QUESTION, "--out", str(out),
            "--batch-size", "4", "--no-progress", "--conf", "max_new_tokens=3"]
    assert predict_main(argv) == 0
    assert "5 answered, 1 unreadable, 0 already done" in capsys.readouterr().out
    assert len(_read(out)) == 6
    assert predict_main(argv) == 0
    assert "0 answered, 0 unreadable, 6 already done" in capsys.readouterr().out
    assert len(_read(out)) == 6
    assert predict_main(argv[:-2] + ["--conf", "top_p=3"]) == 2
    assert "top_p=3.0 is out of range" in capsys.readouterr().err
