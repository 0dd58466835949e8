"""Dataset readers on small fixture files: instruction (MiniGPT4-Qwen + LLaVA), captions, VQA, collaters."""
import json

import pytest
import torch
from PIL import Image

import lavis_lite  # noqa: F401
from lavis_lite.datasets.datasets import (
    CaptionDataset,
    CaptionEvalDataset,
    InstructionDataset,
    VQADataset,
    VQAEvalDataset,
    collate_instruction,
)
from lavis_lite.processors import load_processor

COLOURS = {"red.png": (255, 0, 0), "green.png": (0, 255, 0), "blue.png": (0, 0, 255)}


@pytest.fixture()
def img_dir(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name, rgb in COLOURS.items():
        Image.new("RGB", (10, 10), rgb).save(d / name)
    return d


def _write(path, records, jsonl=False):
    with open(path, "w") as f:
        if jsonl:
            f.write("\n".join(json.dumps(r) for r in records) + "\n")
        else:
            json.dump(records, f)
    return str(path)


def _procs():
    # mean 0 / std 1 keeps pixel values readable: red -> channel 0 is 1.0
    vis = load_processor("blip2_image_eval", {"image_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]})
    return vis, load_processor("base_instruction", {"max_words": 50})


def _colour_of(t):
    return tuple(int(round(v)) for v in t.mean(dim=(1, 2)).tolist())


def test_minigpt4_records(tmp_path, img_dir):
    recs = [
        {"image": "red.png", "instruction": "What colour?", "output": "red", "question_type": "colour"},
        {"image": ["green.png", "blue.png"], "instruction": "Compare <ImageHere> with <ImageHere>.", "output": "no"},
        {"image": "blue.png", "instruction": ["<ImageHere> Colour?", "Shape?"], "output": ["blue", "square"]},
    ]
    ds = InstructionDataset(*_procs(), vis_root=str(img_dir), ann_paths=[_write(tmp_path / "a.json", recs)])
    assert len(ds) == 3
    s0 = ds[0]
    assert s0["image"].shape == (1, 3, 8, 8) and s0["n_images"] == 1
    # tag prepended when absent
    assert s0["conversations"] == [{"from": "human", "value": "<ImageHere>\nWhat colour?"}, {"from": "gpt", "value": "red"}]
    assert s0["question_type"] == "colour" and s0["instance_id"] == "0"
    s1 = ds[1]
    assert s1["conversations"][0]["value"] == "Compare <ImageHere> with <ImageHere>."  # placed by the text
    assert [_colour_of(t) for t in s1["image"]] == [(0, 1, 0), (0, 0, 1)]
    s2 = ds[2]
    assert [t["from"] for t in s2["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert [t["value"] for t in s2["conversations"]] == ["<ImageHere> Colour?", "blue", "Shape?", "square"]


def test_llava_records_and_jsonl(tmp_path, img_dir):
    recs = [
        {"id": "x1", "image": "red.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red square."},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "x2", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]},
    ]
    ds = InstructionDataset(*_procs(), vis_root=str(img_dir), ann_paths=[_write(tmp_path / "l.jsonl", recs, jsonl=True)])
    s0, s1 = ds[0], ds[1]
    assert s0["conversations"][0]["value"] == "<ImageHere>\nWhat is it?"
    assert s0["instance_id"] == "x1" and len(s0["conversations"]) == 4
    assert s1["n_images"] == 0 and s1["image"] is None  # text-only record
    batch = ds.collater([s1])
    assert batch["image"].shape == (0, 3, 8, 8) and batch["n_images"] == [0]
    assert "question_type" not in batch


def test_instruction_collater_order(tmp_path, img_dir):
    recs = [
        {"image": ["green.png", "blue.png"], "instruction": "<ImageHere><ImageHere> Same?", "output": "no"},
        {"instruction": "No image here.", "output": "ok"},
        {"image": "red.png", "instruction": "Colour?", "output": "red", "question_type": "colour"},
    ]
    ds = InstructionDataset(*_procs(), vis_root=str(img_dir), ann_paths=[_write(tmp_path / "c.json", recs)])
    batch = ds.collater([ds[i] for i in range(3)])
    assert set(batch) == {"image", "n_images", "conversations", "instance_id", "question_type"}
    assert batch["image"].shape == (3, 3, 8, 8)
    assert [_colour_of(t) for t in batch["image"]] == [(0, 1, 0), (0, 0, 1), (1, 0, 0)]
    assert batch["n_images"] == [2, 0, 1]
    assert batch["question_type"] == [None, None, "colour"]
    assert batch["instance_id"] == ["0", "1", "2"]
    assert all(isinstance(c, list) and isinstance(c[0], dict) for c in batch["conversations"])
    # the collater also works through a DataLoader
    dl = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=ds.collater)
    assert [b["n_images"] for b in dl] == [[2, 0], [1]]


def test_collate_instruction_function_empty_batch():
    batch = collate_instruction([{"image": None, "n_images": 0, "conversations": [], "instance_id": "a"}], image_size=5)
    assert batch["image"].shape == (0, 3, 5, 5)


def test_instruction_text_processor_applied_to_human_turns_only(tmp_path, img_dir):
    recs = [{"image": "red.png", "instruction": "one two three four five", "output": "a b c d e f"}]
    vis, _ = _procs()
    ds = InstructionDataset(vis, load_processor("base_instruction", {"max_words": 3}), vis_root=str(img_dir),
                            ann_paths=[_write(tmp_path / "t.json", recs)])
    conv = ds[0]["conversations"]
    assert conv[0]["value"] == "<ImageHere>\none two"  # the tag counts as a word
    assert conv[1]["value"] == "a b c d e f"


def test_caption_train_ids_and_collate(tmp_path, img_dir):
    recs = [{"image": "red.png", "caption": "A red square.", "image_id": "coco_7"},
            {"image": "red.png", "caption": "Red!", "image_id": "coco_7"},
            {"image": "blue.png", "caption": "A blue square."}]
    vis, _ = _procs()
    ds = CaptionDataset(vis, load_processor("blip_caption", {"prompt": "a photo of "}), vis_root=str(img_dir),
                        ann_paths=[_write(tmp_path / "cap.json", recs)])
    samples = [ds[i] for i in range(3)]
    assert samples[0]["text_input"] == "a photo of a red square"
    assert samples[0]["image_id"] == samples[1]["image_id"] != samples[2]["image_id"]
    batch = ds.collater(samples)
    assert set(batch) == {"image", "text_input", "image_id"}
    assert batch["image"].shape == (3, 3, 8, 8)
    assert batch["image_id"].dtype == torch.long and batch["image_id"].tolist() == [0, 0, 1]


def test_caption_eval(tmp_path, img_dir):
    recs = [{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": ["a", "b"]},
            {"image": "red.png", "caption": ["x"], "image_id": 42}]
    (img_dir / "val2014").mkdir()
    Image.new("RGB", (4, 4)).save(img_dir / "val2014" / "COCO_val2014_000000391895.jpg")
    ds = CaptionEvalDataset(_procs()[0], None, vis_root=str(img_dir), ann_paths=[_write(tmp_path / "v.json", recs)],
                            gt_path="/somewhere/val_gt.json")
    batch = ds.collater([ds[0], ds[1]])
    assert set(batch) == {"image", "image_id", "instance_id"}
    assert batch["image_id"] == [391895, 42] and batch["instance_id"] == ["0", "1"]
    assert ds.gt_path == "/somewhere/val_gt.json"
    assert [a["caption"] for a in ds.annotation] == [["a", "b"], ["x"]]


def test_vqa_train_and_eval(tmp_path, img_dir):
    recs = [{"question_id": 5, "image": "red.png", "question": "What COLOUR is it?",
             "answer": ["red", "red", "red", "pink"]},
            {"question_id": 6, "image": "blue.png", "question": "Colour?", "answer": "blue"}]
    vis, _ = _procs()
    qproc = load_processor("blip_question")
    ds = VQADataset(vis, qproc, vis_root=str(img_dir), ann_paths=[_write(tmp_path / "q.json", recs)])
    s = ds[0]
    assert s["text_input"] == "what colour is it?" and s["question_id"] == 5
    assert s["answers"] == ["red", "pink"] and s["weights"] == [0.75, 0.25]
    batch = ds.collater([ds[0], ds[1]])
    assert batch["answers"] == ["red", "pink", "blue"]
    torch.testing.assert_close(batch["weights"], torch.tensor([0.75, 0.25, 1.0]))
    assert batch["n_answers"].tolist() == [2, 1] and batch["question_id"] == [5, 6]
    ev = VQAEvalDataset(vis, qproc, vis_root=str(img_dir), ann_paths=[_write(
        tmp_path / "qe.json", [{"question_id": 9, "image": "red.png", "question": "Q?"}])])
    eb = ev.collater([ev[0]])
    assert eb["question_id"] == [9] and "answers" not in eb and eb["image"].shape == (1, 3, 8, 8)


def test_set_processors_and_instance_ids_from_several_files(tmp_path, img_dir):
    a = _write(tmp_path / "a.json", [{"image": "red.png", "instruction": "q", "output": "a"}])
    b = _write(tmp_path / "b.json", [{"image": "blue.png", "instruction": "q", "output": "a"}])
    ds = InstructionDataset(None, None, vis_root=str(img_dir), ann_paths=[a, b])
    assert len(ds) == 2 and [ds.annotation[i]["instance_id"] for i in range(2)] == ["0", "1"]
    assert ds.source_of(1) == (b, 0)
    vis, txt = _procs()
    ds.set_processors(vis, txt)
    assert ds[1]["image"].shape == (1, 3, 8, 8)
