"""run.image_memory_cache: processed images decoded once per process, same tensors as without it."""
import json
import pickle

import pytest
import torch
from PIL import Image

from lavis_lite.datasets.datasets import base_dataset
from lavis_lite.datasets.datasets.caption_datasets import CaptionDataset
from lavis_lite.datasets.image_cache import (ProcessedImageCache, attach_memory_caches,
                                             memory_cache_settings)
from lavis_lite.processors.image_processors import BlipImageEvalProcessor, BlipImageTrainProcessor


@pytest.fixture()
def captions(tmp_path):
    recs = []
    for i in range(4):
        Image.new("RGB", (20, 20), (60 * i, 30, 200 - 40 * i)).save(tmp_path / f"{i}.png")
        recs.append({"image": f"{i}.png", "caption": f"picture {i}", "image_id": i})
    (tmp_path / "train.json").write_text(json.dumps(recs))
    return tmp_path


def _dataset(root, processor):
    return CaptionDataset(vis_processor=processor, vis_root=str(root), ann_paths=[str(root / "train.json")])


def _count_decodes(monkeypatch):
    calls = []
    real = base_dataset.load_image
    monkeypatch.setattr(base_dataset, "load_image", lambda path, proc=None: calls.append(path) or real(path, proc))
    return calls


def test_settings_parse_and_reject_bad_values():
    assert memory_cache_settings({}) is None
    assert memory_cache_settings({"image_memory_cache": False}) is None
    assert memory_cache_settings({"image_memory_cache": {"enabled": False}}) is None
    s = memory_cache_settings({"image_memory_cache": True})
    assert s.splits == ("train",) and s.max_gb == 2.0
    s = memory_cache_settings({"image_memory_cache": {"splits": "val", "max_gb": 0.5}})
    assert s.splits == ("val",) and s.max_gb == 0.5
    with pytest.raises(ValueError, match="unknown keys \\['max_bytes'\\]"):
        memory_cache_settings({"image_memory_cache": {"max_bytes": 3}})
    with pytest.raises(ValueError, match="max_gb must be > 0"):
        memory_cache_settings({"image_memory_cache": {"max_gb": 0}})
    with pytest.raises(ValueError, match="true/false or a mapping"):
        memory_cache_settings({"image_memory_cache": 3})


def test_each_image_is_decoded_once_and_tensors_equal_the_uncached(captions, monkeypatch):
    processor = BlipImageEvalProcessor(image_size=16)
    plain, cached = _dataset(captions, processor), _dataset(captions, processor)
    caches = attach_memory_caches({"image_memory_cache": True}, {"caption": {"train": cached, "val": plain}})
    assert list(caches) == ["caption/train"] and cached.memory_cache is caches["caption/train"]
    assert "memory_cache" not in plain.__dict__  # only the named splits
    calls = _count_decodes(monkeypatch)
    for _ in range(3):  # three epochs
        for i in range(len(cached)):
            torch.testing.assert_close(cached[i]["image"], plain[i]["image"], rtol=0, atol=0)
    n = len(cached)
    assert len(calls) == n + 3 * n  # the cached dataset decoded each image once, the plain one every time
    assert caches["caption/train"].stats() == {"images": n, "bytes": n * 3 * 16 * 16 * 4, "hits": 2 * n,
                                               "misses": n, "refused": 0}


def test_full_cache_still_reads_every_image_and_counts_refusals(captions, caplog):
    processor = BlipImageEvalProcessor(image_size=16)
    ds = _dataset(captions, processor)
    ds.memory_cache = ProcessedImageCache(max_bytes=2 * 3 * 16 * 16 * 4, name="caption/train", processor=processor)
    expected = [_dataset(captions, processor)[i]["image"] for i in range(4)]
    with caplog.at_level("WARNING"):
        for _ in range(2):
            for i in range(4):
                torch.testing.assert_close(ds[i]["image"], expected[i], rtol=0, atol=0)
    st = ds.memory_cache.stats()
    assert st["images"] == 2 and st["refused"] == 4 and st["hits"] == 2
    assert sum("caption/train is full" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_random_transform_and_feature_cached_split_are_errors(captions):
    ds = _dataset(captions, BlipImageTrainProcessor(image_size=16))
    with pytest.raises(ValueError, match="caption/train uses a random image transform"):
        attach_memory_caches({"image_memory_cache": True}, {"caption": {"train": ds}})
    ds = _dataset(captions, BlipImageEvalProcessor(image_size=16))
    ds.feature_cache = object()
    with pytest.raises(ValueError, match="caption/train reads the frozen-feature cache"):
        attach_memory_caches({"image_memory_cache": {"splits": ["train"]}}, {"caption": {"train": ds}})


def test_a_pickled_dataset_starts_with_an_empty_cache(captions):
    ds = _dataset(captions, BlipImageEvalProcessor(image_size=16))
    attach_memory_caches({"image_memory_cache": {"max_gb": 1}}, {"caption": {"train": ds}})
    ds[0]
    again = pickle.loads(pickle.dumps(ds))  # a spawned DataLoader worker
    assert again.memory_cache.stats()["images"] == 0 and again.memory_cache.max_bytes == 2 ** 30
    torch.testing.assert_close(again[0]["image"], ds[0]["image"], rtol=0, atol=0)
    assert again.memory_cache.stats()["images"] == 1


def test_a_copy_with_another_processor_reads_around_the_cache(captions):
    from lavis_lite.common.feature_cache import copy_with_processor

    ds = _dataset(captions, BlipImageEvalProcessor(image_size=16))
    attach_memory_caches({"image_memory_cache": True}, {"caption": {"train": ds}})
    ds[0]
    other = copy_with_processor(ds, BlipImageEvalProcessor(image_size=8))  # shares the cache object
    assert other.memory_cache is ds.memory_cache
    assert other[0]["image"].shape == (3, 8, 8)  # its own transform, not the cached 16-px tensor
    assert ds.memory_cache.stats()["images"] == 1 and ds[0]["image"].shape == (3, 16, 16)
