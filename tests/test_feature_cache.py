"""Frozen-feature cache: keys, invalidation, atomic concurrent writes, corruption reporting."""
import multiprocessing as mp
import os

import pytest
import torch
from torch import nn

from lavis_lite.common.feature_cache import (FeatureCache, FeatureCacheError, describe_transform,
                                             is_deterministic_transform, modules_fingerprint)


def make_images(tmp_path, n):
    paths = []
    for i in range(n):
        p = tmp_path / "images" / f"img{i}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(f"fake image {i}".encode())
        paths.append(str(p))
    return paths


def fake_features(path, shape=(4, 8)):
    g = torch.Generator().manual_seed(sum(path.encode()))
    return torch.randn(*shape, generator=g)


def test_put_get_roundtrip_and_missing(tmp_path):
    paths = make_images(tmp_path, 3)
    cache = FeatureCache(tmp_path / "cache", "qformer", "eval-224", "w1")
    assert cache.get(paths[0]) is None and not cache.has(paths[0])
    for p in paths:
        cache.put(p, fake_features(p))
    assert len(cache) == 3
    for p in paths:
        torch.testing.assert_close(cache.get(p), fake_features(p), atol=0, rtol=0)
    stacked = cache.get_many(paths)
    assert stacked.shape == (3, 4, 8)
    with pytest.raises(FeatureCacheError, match="img9"):
        cache.get_many([str(tmp_path / "images" / "img9.png")])


def test_storage_dtype_bf16(tmp_path):
    p = make_images(tmp_path, 1)[0]
    cache = FeatureCache(tmp_path / "c", "vit", "t", "w", dtype="bf16")
    cache.put(p, fake_features(p))
    got = cache.get(p)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), fake_features(p).bfloat16().float())


def test_invalidated_when_transform_weights_or_image_change(tmp_path):
    p = make_images(tmp_path, 1)[0]
    root = tmp_path / "cache"
    base = FeatureCache(root, "qformer", "Resize(224)", "weights-A")
    base.put(p, fake_features(p))
    assert FeatureCache(root, "qformer", "Resize(224)", "weights-A").get(p) is not None
    assert FeatureCache(root, "qformer", "Resize(364)", "weights-A").get(p) is None  # transform changed
    assert FeatureCache(root, "qformer", "Resize(224)", "weights-B").get(p) is None  # weights changed
    assert FeatureCache(root, "vit", "Resize(224)", "weights-A").get(p) is None  # other stage
    with open(p, "ab") as f:  # the image itself changed
        f.write(b" edited")
    os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10_000_000))
    assert base.get(p) is None
    newer = FeatureCache(root, "qformer", "Resize(364)", "weights-A")
    assert base.namespace in newer.stale_namespaces()
    assert base.namespace in newer.remove_stale()
    assert not os.path.exists(base.dir)


def test_weights_fingerprint_follows_every_byte():
    torch.manual_seed(0)
    vit, proj = nn.Linear(4, 4), nn.Linear(4, 2)
    fp = modules_fingerprint({"visual_encoder": vit, "llm_proj": proj})
    assert fp == modules_fingerprint({"visual_encoder": vit, "llm_proj": proj})
    with torch.no_grad():
        vit.weight[1, 2] += 1e-6
    assert fp != modules_fingerprint({"visual_encoder": vit, "llm_proj": proj})
    assert modules_fingerprint({"a": vit.bfloat16()}) != modules_fingerprint({"a": vit.float()})


def test_transform_description_and_determinism():
    from torchvision import transforms as T
    eval_tf = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize((0.5,), (0.5,))])
    train_tf = T.Compose([T.RandomResizedCrop(224), T.ToTensor()])
    assert describe_transform(eval_tf) == describe_transform(
        T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize((0.5,), (0.5,))]))
    assert "224" in describe_transform(eval_tf)
    assert describe_transform(eval_tf) != describe_transform(T.Compose([T.Resize((364, 364)), T.ToTensor()]))
    assert is_deterministic_transform(eval_tf) and not is_deterministic_transform(train_tf)


def test_corrupt_or_foreign_entry_raises_clearly(tmp_path):
    a, b = make_images(tmp_path, 2)
    cache = FeatureCache(tmp_path / "c", "proj", "t", "w")
    cache.put(a, fake_features(a))
    with open(cache.entry_path(a), "r+b") as f:
        f.truncate(20)
    with pytest.raises(FeatureCacheError, match="unreadable"):
        cache.get(a)
    cache.put(b, fake_features(b))
    os.makedirs(os.path.dirname(cache.entry_path(a)), exist_ok=True)
    os.replace(cache.entry_path(b), cache.entry_path(a))
    with pytest.raises(FeatureCacheError, match="holds image"):
        cache.get(a)


def _writer(root, paths, rounds, worker):
    cache = FeatureCache(root, "qformer", "t", "w")
    for r in range(rounds):
        for p in (paths if worker % 2 == 0 else reversed(paths)):
            cache.put(p, fake_features(p, shape=(32, 256)))  # 32 KB per entry: writes take a while


def test_two_processes_writing_the_same_entries_at_once(tmp_path):
    paths = make_images(tmp_path, 24)
    root = str(tmp_path / "cache")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(root, paths, 4, w)) for w in range(2)]
    for p in procs:
        p.start()
    # read while they write: every entry seen is either absent or complete and correct
    cache = FeatureCache(root, "qformer", "t", "w")
    seen = 0
    while any(p.is_alive() for p in procs):
        for p in paths:
            got = cache.get(p)
            if got is not None:
                torch.testing.assert_close(got, fake_features(p, shape=(32, 256)), atol=0, rtol=0)
                seen += 1
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(cache) == len(paths)
    for p in paths:
        torch.testing.assert_close(cache.get(p), fake_features(p, shape=(32, 256)), atol=0, rtol=0)
    leftovers = [f for _, _, files in os.walk(cache.dir) for f in files if f.startswith(".tmp-")]
    assert leftovers == []
