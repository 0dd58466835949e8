"""Conversations -> tensors on the data side: the chat_template processor and ChatCollator in DataLoader
workers, per-record conversation errors following on_error, per-epoch truncation counts, true lengths."""
import json
import logging

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import lavis_lite  # noqa: F401
from lavis_lite.datasets.datasets import InstructionDataset
from lavis_lite.datasets.datasets.errors import DataError
from lavis_lite.datasets.model_wiring import attach_chat_processors
from lavis_lite.models.conversation_encoder import IGNORE_INDEX
from lavis_lite.models.minigpt4qwen import Minigpt4Qwen
from lavis_lite.processors import load_processor

LONG = "a red circle on a white background near the left edge of the picture " * 4
RECORDS = [
    {"id": "short", "image": "red.png", "instruction": "<ImageHere> What colour?", "output": "red"},
    {"id": "long", "image": "red.png", "instruction": "<ImageHere> Describe it.", "output": LONG},
    {"id": "text", "instruction": "Say hi.", "output": "hi"},
    {"id": "two", "image": ["red.png", "blue.png"], "instruction": "<ImageHere> vs <ImageHere>?", "output": "no"},
    {"id": "multi", "image": "blue.png", "instruction": ["<ImageHere> Colour?", "Shape?"],
     "output": ["blue", "a square " * 12]},
]


class DropMarks:
    """A text processor that (wrongly) deletes image marks: the record's conversation breaks only
    after text processing, so only load_sample can find it."""

    def __call__(self, text):
        return text.replace("<ImageHere>", "") if "vs" in text else text


@pytest.fixture()
def data(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name, rgb in {"red.png": (255, 0, 0), "blue.png": (0, 0, 255)}.items():
        Image.new("RGB", (32, 32), rgb).save(d / name)
    path = tmp_path / "recs.json"
    path.write_text(json.dumps(RECORDS))
    return d, str(path)


def _dataset(data, text=None, on_error="raise"):
    img_dir, path = data
    vis = load_processor("blip2_image_eval", {"image_size": 32})
    text = text or load_processor("base_instruction", {"max_words": 100})
    return InstructionDataset(vis, text, vis_root=str(img_dir), ann_paths=[path], on_error=on_error)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Minigpt4Qwen.from_pretrained("tiny", max_txt_len=80).eval()


def _wire(model, ds):
    assert attach_chat_processors(model, {"d": {"train": ds}}) == 1
    return ds


def test_worker_batches_equal_the_in_process_path(data, model):
    """Tokenised in two DataLoader workers: the same tensors (and loss) as the model's own collation of the
    raw samples; labels give n_tokens without the model."""
    ds = _wire(model, _dataset(data))
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=ds.collater)
    batch = next(iter(loader))
    raw = [ds[i] for i in range(5)]
    ref = model.collate_conversations({"conversations": [s["conversations"] for s in raw],
                                       "n_images": [s["n_images"] for s in raw],
                                       "image": torch.cat([s["image"] for s in raw if s["image"] is not None])})
    for key in ("input_ids", "labels", "attention_mask", "position_ids", "image"):
        assert torch.equal(batch[key], ref[key]), key
    assert batch["images_per_row"] == ref["images_per_row"]
    assert batch["n_images"] == [1, 1, 0, 2, 1]
    n_tokens = int((batch["labels"] != IGNORE_INDEX).sum())
    out = model(batch)
    assert out["n_tokens"] == n_tokens == model.count_supervised_tokens(batch) > 0
    assert torch.allclose(out["loss"], model(ref)["loss"])


def test_truncation_is_counted_per_epoch_with_record_ids(data, model, caplog):
    ds = _wire(model, _dataset(data))
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=ds.collater)
    with caplog.at_level(logging.WARNING):
        batch = next(iter(loader))
        report = ds.skip_report()
    enc = {ds.record_id(i): ds.chat_processor(*ds.conversation_of(i)) for i in range(5)}
    truncated = sorted(k for k, e in enc.items() if e.truncated)
    assert truncated == ["long", "multi"]
    assert report["truncated_samples"] == 2
    assert report["cut_supervised_tokens"] == sum(enc[k].cut_tokens for k in truncated) > 0
    assert sorted(report["first_truncated"]) == truncated
    assert "truncated 2 sample(s) to max_txt_len=80" in caplog.text and "long" in caplog.text
    assert batch["truncation"]["samples"] == 2
    # the long first reply kept its start and its supervision
    assert (enc["long"].labels != IGNORE_INDEX).sum() > 0 and len(enc["long"]) == 80
    # counts restart every epoch; the main process counts too (num_workers=0)
    assert ds.skip_report()["truncated_samples"] == 0
    ds.collater([ds[i] for i in range(5)])
    assert ds.skip_report()["truncated_samples"] == 2


def test_conversation_errors_are_per_record_and_follow_on_error(data, model, caplog):
    ds = _dataset(data, text=DropMarks())
    with pytest.raises(DataError, match=r"recs.json record 3: ConversationError: 2 image\(s\) but only 0"):
        ds[3]
    skipping = _wire(model, _dataset(data, text=DropMarks(), on_error="skip"))
    skipping.policy.max_skip_fraction = 0.5
    with caplog.at_level(logging.WARNING):
        batch = skipping.collater([skipping[i] for i in range(5)])
    assert "skipping bad sample" in caplog.text and "record 3" in caplog.text
    assert skipping.skip_report()["skipped"] == 1
    assert batch["input_ids"].shape[0] == 5  # the bad record was replaced by the next good one
    assert model(batch)["n_tokens"] > 0


def test_true_lengths_for_length_grouping(data, model):
    ds = _dataset(data)
    assert ds.sample_lengths() is None  # no processor: the runner falls back to estimates
    _wire(model, ds)
    lengths = ds.sample_lengths()
    assert lengths == [int(ds.collater([ds[i]])["attention_mask"].sum()) for i in range(5)]
    assert lengths[1] == 80 and lengths[2] < lengths[0] < lengths[3]
    assert ds.sample_lengths() is lengths  # computed once
