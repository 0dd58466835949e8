"""Bad input: every kind gives an error naming the annotation file and record index (on_error: raise),
or is skipped, counted and reported (on_error: skip), with a threshold that aborts. Multi-worker
DataLoaders surface the error instead of dying silently or hanging."""
import json
import re

import pytest
import torch
from PIL import Image

import lavis_lite  # noqa: F401
from lavis_lite.datasets.datasets import CaptionDataset, DataError, InstructionDataset, VQADataset
from lavis_lite.processors import load_processor

GOOD = {"image": "ok.png", "instruction": "<ImageHere> Colour?", "output": "red"}


@pytest.fixture()
def root(tmp_path):
    img = Image.new("RGB", (16, 16), (255, 0, 0))
    img.save(tmp_path / "ok.png")
    img.save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return tmp_path


def _ann(root, records, name="ann.json"):
    path = root / name
    path.write_text(json.dumps(records) if name.endswith(".json") else records)
    return str(path)


def _dataset(root, path, mode="raise", frac=0.5, cls=InstructionDataset):
    vis = load_processor("blip2_image_eval", {"image_size": 8})
    return cls(vis, None, vis_root=str(root), ann_paths=[path], on_error=mode, max_skip_fraction=frac)


def _names_record(path, index):
    return re.escape(path) + rf" record {index}\b"


# ---- bad images: detected while loading the sample ------------------------------------------------
@pytest.mark.parametrize("image, why", [("missing.png", "not found"), ("truncated.png", "truncated|decode"),
                                        ("corrupt.png", "decode|identify")])
def test_bad_image_raise(root, image, why):
    path = _ann(root, [GOOD, {**GOOD, "image": image}, GOOD])
    ds = _dataset(root, path)
    ds[0]
    with pytest.raises(DataError, match=_names_record(path, 1)) as info:
        ds[1]
    assert re.search(why, str(info.value))


@pytest.mark.parametrize("image", ["missing.png", "truncated.png", "corrupt.png"])
def test_bad_image_skip(root, image):
    path = _ann(root, [GOOD, {**GOOD, "image": image}, {**GOOD, "output": "third"}, GOOD])
    ds = _dataset(root, path, mode="skip")
    sample = ds[1]  # replaced by the next good record
    assert sample["conversations"][1]["value"] == "third"
    for i in range(len(ds)):
        ds[i]
    report = ds.skip_report()
    assert report["skipped"] == 2 and report["seen"] == 7  # index 1 fails twice (direct + as ds[1] again)
    assert ds.skip_report()["seen"] == 0  # reset per epoch


# ---- bad records: detected while reading the annotation file -------------------------------------
BAD_RECORDS = {
    "missing_key": ({"image": "ok.png", "instruction": "q"}, "missing key 'output'"),
    "no_keys": ({"image": "ok.png"}, "missing key"),
    "wrong_type": ({"image": "ok.png", "instruction": 5, "output": "a"}, "'instruction' must be a string"),
    "wrong_image_type": ({"image": [1, 2], "instruction": "q", "output": "a"}, "'image' must be a string"),
    "not_an_object": (["a", "list"], "expected a JSON object"),
    "no_assistant_turn": ({"image": "ok.png", "conversations": [{"from": "human", "value": "hi"}]},
                          "no assistant turn"),
    "empty_output": ({"image": "ok.png", "instruction": "q", "output": ""}, "no assistant turn"),
    "tag_mismatch": ({"image": "ok.png", "instruction": "<ImageHere><ImageHere> q", "output": "a"},
                     "2 <ImageHere> tags but the record has 1 images"),
    "bad_role": ({"conversations": [{"from": "bot", "value": "x"}, {"from": "gpt", "value": "y"}]}, "'from'"),
}


@pytest.mark.parametrize("kind", list(BAD_RECORDS))
def test_bad_record_raise(root, kind):
    record, why = BAD_RECORDS[kind]
    path = _ann(root, [GOOD, GOOD, record])
    with pytest.raises(DataError, match=_names_record(path, 2)) as info:
        _dataset(root, path)
    assert why in str(info.value)


@pytest.mark.parametrize("kind", list(BAD_RECORDS))
def test_bad_record_skip(root, kind):
    path = _ann(root, [GOOD, GOOD, BAD_RECORDS[kind][0], GOOD])
    ds = _dataset(root, path, mode="skip")
    assert len(ds) == 3 and ds.policy.load_skipped == 1
    assert ds.source_of(2) == (path, 3)
    assert ds.skip_report()["skipped_at_load"] == 1


def test_caption_and_vqa_records_checked(root):
    cap = _ann(root, [{"image": "ok.png", "caption": "a"}, {"image": "ok.png", "caption": 3}], "cap.json")
    with pytest.raises(DataError, match=_names_record(cap, 1)):
        _dataset(root, cap, cls=CaptionDataset)
    vqa = _ann(root, [{"image": "ok.png", "question": "q?", "question_id": 1, "answer": ["a"]},
                      {"image": "ok.png", "question": "q?", "answer": ["a"]}], "vqa.json")
    with pytest.raises(DataError, match=_names_record(vqa, 1) + ".*question_id"):
        _dataset(root, vqa, cls=VQADataset)
    assert len(_dataset(root, vqa, mode="skip", cls=VQADataset)) == 1


# ---- malformed files and empty splits --------------------------------------------------------------
@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_malformed_json_file(root, mode):
    path = root / "broken.json"
    path.write_text('[{"image": "ok.png", "instruction": "q", "output": "a"},')
    with pytest.raises(DataError, match=re.escape(str(path)) + ": malformed annotation file"):
        _dataset(root, str(path), mode=mode)


def test_json_not_a_list(root):
    path = _ann(root, {"image": "ok.png"})
    with pytest.raises(DataError, match="expected a list of records"):
        _dataset(root, path)


def test_malformed_jsonl_line(root):
    lines = json.dumps(GOOD) + "\n{not json\n" + json.dumps(GOOD) + "\n"
    path = _ann(root, lines, name="ann.jsonl")
    with pytest.raises(DataError, match=_names_record(path, 1) + ": line 2 is not valid JSON"):
        _dataset(root, path)
    ds = _dataset(root, path, mode="skip", frac=0.5)
    assert len(ds) == 2 and ds.policy.load_skipped == 1


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_empty_split(root, mode):
    path = _ann(root, [])
    with pytest.raises(DataError, match="empty split: " + re.escape(path)):
        _dataset(root, path, mode=mode)


def test_missing_annotation_file(root):
    with pytest.raises(DataError, match="annotation file not found: .*nope.json"):
        _dataset(root, str(root / "nope.json"))


# ---- thresholds ------------------------------------------------------------------------------------
def test_load_time_threshold_aborts(root):
    path = _ann(root, [GOOD, {"image": "ok.png"}, GOOD, GOOD])  # 25% bad
    assert len(_dataset(root, path, mode="skip", frac=0.3)) == 3
    with pytest.raises(DataError, match=r"1 of 4 records are bad \(25.0% > max_skip_fraction 20.0%\)"):
        _dataset(root, path, mode="skip", frac=0.2)


def test_runtime_threshold_aborts(root):
    path = _ann(root, [GOOD, {**GOOD, "image": "missing.png"}, GOOD, GOOD])
    ds = _dataset(root, path, mode="skip", frac=0.1)
    with pytest.raises(DataError, match=r"of \d+ samples were bad .*max_skip_fraction 10.0%"):
        for _ in range(3):
            for i in range(len(ds)):
                ds[i]


def test_bad_policy_value(root):
    with pytest.raises(ValueError, match="on_error"):
        _dataset(root, _ann(root, [GOOD]), mode="ignore")


# ---- multi-worker DataLoaders ------------------------------------------------------------------------
def test_worker_error_surfaces_with_file_and_record(root):
    records = [GOOD] * 7 + [{**GOOD, "image": "corrupt.png"}] + [GOOD] * 4
    path = _ann(root, records)
    ds = _dataset(root, path)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=ds.collater, timeout=60)
    batches = iter(loader)
    try:
        with pytest.raises(DataError, match=_names_record(path, 7)):
            for _ in batches:
                pass
    finally:
        batches._shutdown_workers()  # the traceback keeps the iterator alive; stop its workers now


def test_workers_skip_and_count(root):
    records = [GOOD] * 14 + [{**GOOD, "image": "missing.png"}, {**GOOD, "image": "truncated.png"}]
    path = _ann(root, records)
    ds = _dataset(root, path, mode="skip", frac=0.2)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=ds.collater, timeout=60)
    sizes = [len(b["n_images"]) for b in loader]
    assert sizes == [4, 4, 4, 4]  # bad samples were replaced, batches keep their size
    report = ds.skip_report()  # counted in the workers, visible here
    assert report["skipped"] >= 2 and report["seen"] >= 16
