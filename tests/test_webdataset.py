"""Webdataset builders on generated shards, read by a 2-worker DataLoader."""
import io
import json
import tarfile
from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import lavis_lite  # noqa: F401
from lavis_lite.common.config import ConfigError
from lavis_lite.common.registry import registry
from lavis_lite.datasets import demo
from lavis_lite.datasets.datasets import DataError

N = 80  # 64 train records in 4 shards


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("wds_demo")
    demo.generate(str(out), n=N, seed=0, n_shards=4)
    return out


def _build(name, shards, **over):
    cfg = OmegaConf.merge(registry.get_builder_class(name).default_config(), {
        "build_info": {"shards": shards},
        "vis_processor": {"train": {"name": "blip2_image_eval", "image_size": 16},
                          "eval": {"name": "blip2_image_eval", "image_size": 16}},
        **over})
    return registry.get_builder_class(name)(cfg).build_datasets()


def _loader(ds, batch_size=5):
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=2, collate_fn=ds.collater, timeout=60)


def test_instruction_shards_two_workers_each_record_once(demo_dir):
    train_ids = {r["id"] for r in json.loads((demo_dir / "instruction" / "train.json").read_text())}
    ds = _build("wds_instruction", {"train": str(demo_dir / "shards" / "train-{000000..000003}.tar"),
                                    "val": str(demo_dir / "shards" / "val-000000.tar")})
    assert set(ds) == {"train", "val"} and isinstance(ds["train"], torch.utils.data.IterableDataset)
    seen = Counter()
    for batch in _loader(ds["train"]):
        assert batch["image"].shape == (sum(batch["n_images"]), 3, 16, 16)
        assert len(batch["conversations"]) == len(batch["n_images"]) == len(batch["question_type"])
        for conv, n in zip(batch["conversations"], batch["n_images"]):
            assert conv[0]["value"].count("<ImageHere>") == n and conv[-1]["from"] == "gpt"
        seen.update(batch["instance_id"])
    assert set(seen) == train_ids and set(seen.values()) == {1}
    val_ids = [i for b in _loader(ds["val"]) for i in b["instance_id"]]
    assert len(val_ids) == 8


def test_shuffle_buffer_changes_order(demo_dir):
    shards = {"train": str(demo_dir / "shards" / "train-000000.tar")}
    plain = [i for b in _loader(_build("wds_instruction", shards, shuffle_buffer=0)["train"]) for i in b["instance_id"]]
    mixed = [i for b in _loader(_build("wds_instruction", shards, shuffle_buffer=50)["train"]) for i in b["instance_id"]]
    assert sorted(plain) == sorted(mixed) and plain != mixed


def test_image_text_shards_and_cache_root(demo_dir, monkeypatch):
    monkeypatch.setenv("LAVIS_LITE_CACHE_ROOT", str(demo_dir))
    ds = _build("wds_image_text", {"train": "shards/train-{000000..000003}.tar"})["train"]  # relative: cache_root
    n, ids = 0, []
    for batch in _loader(ds, batch_size=8):
        assert batch["image"].shape == (len(batch["text_input"]), 3, 16, 16)
        assert batch["image_id"].dtype == torch.long
        assert all(t.endswith("background") and t == t.lower() for t in batch["text_input"])  # blip_caption
        n += len(batch["text_input"])
        ids += batch["image_id"].tolist()
    assert n == N - 16 and len(set(ids)) == n


def test_resampled_stream_is_endless(demo_dir):
    ds = _build("wds_instruction", {"train": str(demo_dir / "shards" / "train-{000000..000003}.tar")},
                resample=True, shuffle_buffer=10)["train"]
    batches = iter(_loader(ds, batch_size=8))
    got = [next(batches) for _ in range(20)]  # 160 samples from 64 records
    assert sum(len(b["n_images"]) for b in got) == 160
    batches._shutdown_workers()


def test_missing_shards_and_config(demo_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="shard"):
        _build("wds_instruction", {"train": str(tmp_path / "nope-{0..1}.tar")})
    with pytest.raises(ConfigError, match="build_info.shards"):
        registry.get_builder_class("wds_instruction")().build_datasets()


def _bad_shard(path):
    good = Image.new("RGB", (8, 8), (255, 0, 0))
    buf = io.BytesIO()
    good.save(buf, format="PNG")
    members = []
    for i in range(10):
        rec = {"id": f"s{i}", "instruction": "<ImageHere> Colour?", "output": "red", "caption": "red"}
        png = buf.getvalue() if i != 3 else b"not a png at all"
        members += [(f"s{i}.0.png", png), (f"s{i}.json", json.dumps(rec).encode())]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_bad_sample_in_shard_raise(tmp_path):
    shard = _bad_shard(tmp_path / "bad.tar")
    ds = _build("wds_instruction", {"train": shard}, shuffle_buffer=0)["train"]
    batches = iter(_loader(ds, batch_size=2))
    try:
        with pytest.raises(DataError, match=r"bad\.tar sample s3"):
            for _ in batches:
                pass
    finally:
        batches._shutdown_workers()


def test_bad_sample_in_shard_skip(tmp_path):
    shard = _bad_shard(tmp_path / "bad.tar")
    ds = _build("wds_instruction", {"train": [shard, shard]}, shuffle_buffer=0, on_error="skip",
                max_skip_fraction=0.2)["train"]
    ids = [i for b in _loader(ds, batch_size=3) for i in b["instance_id"]]
    assert len(ids) == 18 and "s3" not in ids  # one shard per worker, one bad sample each
    report = ds.skip_report()
    assert report["skipped"] == 2 and report["seen"] == 20


def test_split_by_node_then_worker(demo_dir, monkeypatch):
    """Two ranks x two workers: every record read exactly once over both ranks."""
    shards = {"train": str(demo_dir / "shards" / "train-{000000..000003}.tar")}
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = _build("wds_instruction", shards)["train"]
        per_rank.append([i for b in _loader(ds) for i in b["instance_id"]])
    assert per_rank[0] and per_rank[1] and not set(per_rank[0]) & set(per_rank[1])
    assert len(per_rank[0]) + len(per_rank[1]) == N - 16


def test_shuffle_order_changes_per_epoch_and_follows_torch_seed(demo_dir):
    ds = _build("wds_instruction", {"train": str(demo_dir / "shards" / "train-{000000..000001}.tar")},
                shuffle_buffer=40)["train"]
    loader = _loader(ds)
    def epoch():
        return [i for b in loader for i in b["instance_id"]]
    torch.manual_seed(0)
    first = epoch()
    second = epoch()
    torch.manual_seed(0)
    again = epoch()
    assert sorted(first) == sorted(second) and first != second
    assert again == first
