"""Evaluation splits and WebDataset instruction streams tokenise on the data side too: their batches
arrive with input_ids / labels (one conversation per row, every image kept for generation), the model's
forward does not tokenise them, and losses, token accuracy and instruction_eval records equal those of
the raw-conversation path they replace."""
import io
import json
import tarfile
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

import lavis_lite  # noqa: F401
from lavis_lite.datasets.datasets import InstructionDataset
from lavis_lite.datasets.datasets.wds_datasets import WebDatasetStream
from lavis_lite.datasets.model_wiring import attach_chat_processors
from lavis_lite.models.minigpt4qwen import Minigpt4Qwen
from lavis_lite.processors import load_processor
from lavis_lite.tasks.base_task import BaseTask
from lavis_lite.tasks.instruction_eval import InstructionEvalTask

LONG = "a red circle on a white background near the left edge of the picture " * 3
RECORDS = [
    {"id": "one", "image": "red.png", "instruction": "<ImageHere> What colour?", "output": "red"},
    {"id": "text", "instruction": "Say hi.", "output": "hi"},
    # the second image's run lies past max_txt_len: the forward uses one image, generation both
    {"id": "cut", "image": ["red.png", "blue.png"], "instruction": f"<ImageHere> {LONG} <ImageHere> Same?",
     "output": "no"},
    {"id": "multi", "image": "blue.png", "instruction": ["<ImageHere> Colour?", "Shape?"], "output": ["blue", "square"]},
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Minigpt4Qwen.from_pretrained("tiny", max_txt_len=80).eval()


@pytest.fixture()
def folder(tmp_path):
    for name, rgb in {"red.png": (255, 0, 0), "blue.png": (0, 0, 255)}.items():
        Image.new("RGB", (32, 32), rgb).save(tmp_path / name)
    (tmp_path / "recs.json").write_text(json.dumps(RECORDS))
    return tmp_path


def _dataset(folder):
    return InstructionDataset(load_processor("blip2_image_eval", {"image_size": 32}),
                              load_processor("base_instruction", {"max_words": 100}),
                              vis_root=str(folder), ann_paths=[str(folder / "recs.json")])


class NoTokenising:
    """Stands in for the processor's encode in the training process: any call is a failure."""

    def __call__(self, *args, **kwargs):
        raise AssertionError("the model tokenised a batch that should have arrived as tensors")


def test_validation_split_batches_are_tensors_with_every_image(folder, model):
    raw_ds, train_ds, val_ds = _dataset(folder), _dataset(folder), _dataset(folder)
    raw = raw_ds.collater([raw_ds[i] for i in range(4)])  # the raw-conversation batch of before
    assert attach_chat_processors(model, {"d": {"train": train_ds, "val": val_ds}}) == 2
    assert not train_ds.chat_collator.all_images and val_ds.chat_collator.all_images
    batch = next(iter(DataLoader(val_ds, batch_size=4, num_workers=1, collate_fn=val_ds.collater)))
    assert {"input_ids", "labels", "attention_mask", "position_ids"} <= set(batch) and batch["all_images"]
    assert torch.equal(batch["image"], raw["image"]) and batch["n_images"] == raw["n_images"] == [1, 0, 2, 1]
    assert batch["images_per_row"] == [1, 0, 1, 1] and batch["truncation"]["ids"] == ["cut"]
    assert batch["conversations"] == raw["conversations"] and batch["instance_id"] == raw["instance_id"]
    before = model(raw)  # tokenised in the forward
    encode, model.chat_processor.encode = model.chat_processor.encode, NoTokenising()
    try:
        after = model(batch)
        with torch.no_grad():
            records = BaseTask().valid_step(model, batch)
    finally:
        model.chat_processor.encode = encode
    assert torch.equal(after["loss"], before["loss"])
    assert after["n_tokens"] == before["n_tokens"] > 0 and after["n_correct"] == before["n_correct"]
    assert records[0]["n_tokens"] == before["n_tokens"] and records[0]["n_correct"] == before["n_correct"]


def test_instruction_eval_records_equal_the_raw_path(folder, model):
    raw_ds, val_ds = _dataset(folder), _dataset(folder)
    attach_chat_processors(model, {"d": {"val": val_ds}})
    raw = raw_ds.collater([raw_ds[i] for i in range(4)])
    batch = val_ds.collater([val_ds[i] for i in range(4)])
    task = InstructionEvalTask.setup_task(SimpleNamespace(run_cfg=OmegaConf.create({"max_new_tokens": 3})))
    with torch.no_grad():
        want, got = task.valid_step(model, raw), task.valid_step(model, batch)
    assert [r["instance_id"] for r in got] == ["one", "text", "cut", "multi"]
    assert got == want  # predictions (generated from every image), per-sample loss, tokens, correct
    assert [r["n_tokens"] > 0 for r in got] == [True, True, False, True]  # "cut" lost its reply to truncation
    packed = dict(batch, all_images=False)
    with pytest.raises(ValueError, match="evaluation batches"):
        task.valid_step(model, packed)


def _shard(path, folder):
    with tarfile.open(path, "w") as tar:
        for rec in RECORDS:
            meta = {k: v for k, v in rec.items() if k != "image"}
            images = rec.get("image", [])
            images = [images] if isinstance(images, str) else images
            members = {"json": json.dumps(meta).encode()}
            for j, name in enumerate(images):
                members[f"{j}.png" if len(images) > 1 else "png"] = (folder / name).read_bytes()
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{rec['id']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_instruction_stream_tokenises_in_the_worker(folder, model, tmp_path):
    _shard(tmp_path / "shard.tar", folder)
    vis = load_processor("blip2_image_eval", {"image_size": 32})

    def stream():
        return WebDatasetStream(str(tmp_path / "shard.tar"), vis, shuffle_buffer=0)

    plain, chat, captions = stream(), stream(), WebDatasetStream("x.tar", vis, sample_format="image_text")
    n = attach_chat_processors(model, {"w": {"train": chat, "captions": captions}})
    assert n == 1 and captions.chat_collator is None  # a caption stream is not a conversation stream
    raw = next(iter(DataLoader(plain, batch_size=4, num_workers=1, collate_fn=plain.collater)))
    batch = next(iter(DataLoader(chat, batch_size=4, num_workers=1, collate_fn=chat.collater)))
    assert batch["instance_id"] == raw["instance_id"] == ["one", "text", "cut", "multi"]
    ref = model.collate_conversations(raw)  # what the forward did with the raw stream batch
    for key in ("input_ids", "labels", "attention_mask", "position_ids", "image"):
        assert torch.equal(batch[key], ref[key]), key
    encode, model.chat_processor.encode = model.chat_processor.encode, NoTokenising()
    try:
        out = model(batch)
    finally:
        model.chat_processor.encode = encode
    assert torch.equal(out["loss"], model(raw)["loss"])
    # truncation is counted in the worker's shared tally (streams keep no record index: counts only)
    assert chat.skip_report()["truncated_samples"] == 1
