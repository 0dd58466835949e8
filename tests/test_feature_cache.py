"""Frozen-feature cache: keys, invalidation, atomic concurrent writes, corruption reporting."""
import json
import multiprocessing as mp
import os
import time

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
    ctx = mp.get_context("fork")  # separate processes like DataLoader workers (fork: no re-import of torch)
    procs = [ctx.Process(target=_writer, args=(root, paths, 3, w)) for w in range(2)]
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
        time.sleep(0.01)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(cache) == len(paths)
    for p in paths:
        torch.testing.assert_close(cache.get(p), fake_features(p, shape=(32, 256)), atol=0, rtol=0)
    leftovers = [f for _, _, files in os.walk(cache.dir) for f in files if f.startswith(".tmp-")]
    assert leftovers == []


# ---- with the tiny model and the project's dataset ------------------------------------------------
@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from lavis_lite.datasets.demo import generate
    out = tmp_path_factory.mktemp("demo")
    generate(str(out), n=40, seed=0, size=32, n_shards=1)
    return out


def _tiny_model():
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen
    torch.manual_seed(0)
    return Minigpt4Qwen.from_pretrained("tiny").train()


def _dataset(demo_dir, processor):
    from lavis_lite.datasets.datasets.instruction_datasets import InstructionDataset
    return InstructionDataset(vis_processor=processor, vis_root=str(demo_dir / "images"),
                              ann_paths=[str(demo_dir / "instruction" / "train.json")])


def test_cached_features_give_the_same_loss_as_images(demo_dir, tmp_path):
    """Eval transform: loss from cached Q-Former outputs equals the loss from decoded images (fp32,
    tolerance 1e-6); gradients of the trainable projection match too."""
    from lavis_lite.common.feature_cache import attach_feature_cache
    from lavis_lite.datasets.feature_cache_run import cache_for_model, fill_cache
    from lavis_lite.processors.image_processors import BlipImageEvalProcessor

    model = _tiny_model()
    processor = BlipImageEvalProcessor(image_size=32)
    raw = _dataset(demo_dir, processor)
    cache = cache_for_model(model, processor, tmp_path / "cache")
    assert cache.stage == model.frozen_feature_stage() == "qformer"
    assert fill_cache(model, raw, cache, batch_size=8) == len(cache) > 0
    assert fill_cache(model, raw, cache, batch_size=8) == 0  # nothing left to compute
    cached = attach_feature_cache(raw, cache)
    idx = [i for i in range(len(raw)) if raw.annotation[i]["images"]][:6]
    batch_raw = raw.collater([raw[i] for i in idx])
    batch_cached = cached.collater([cached[i] for i in idx])
    assert "image" not in batch_cached and batch_cached["image_features"].shape[1:] == (8, 64)
    assert batch_cached["n_images"] == batch_raw["n_images"]
    results = []
    for batch in (batch_raw, batch_cached):
        model.zero_grad(set_to_none=True)
        out = model(batch)
        out["loss"].backward()
        results.append((out["loss"].item(), out["n_tokens"], model.llm_proj.weight.grad.clone()))
    assert results[0][1] == results[1][1] > 0
    assert abs(results[0][0] - results[1][0]) <= 1e-6
    torch.testing.assert_close(results[0][2], results[1][2], atol=1e-6, rtol=1e-5)
    # pickling (spawned DataLoader workers) keeps the cache attached
    import pickle
    again = pickle.loads(pickle.dumps(cached))
    assert again.feature_cache.dir == cache.dir and "image_features" in again.collater([again[idx[0]]])


def test_model_cache_invalidated_by_weights_and_transform(demo_dir, tmp_path):
    from lavis_lite.datasets.feature_cache_run import cache_for_model
    from lavis_lite.processors.image_processors import BlipImageEvalProcessor, BlipImageTrainProcessor

    model = _tiny_model()
    p32 = BlipImageEvalProcessor(image_size=32)
    first = cache_for_model(model, p32, tmp_path)
    assert cache_for_model(model, p32, tmp_path).namespace == first.namespace
    assert cache_for_model(model, BlipImageEvalProcessor(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3),
                           tmp_path).namespace != first.namespace
    with torch.no_grad():
        model.Qformer.bert.encoder.layer[0].output_query.dense.bias[0] += 0.01  # a frozen stage weight
    assert cache_for_model(model, p32, tmp_path).namespace != first.namespace
    with torch.no_grad():
        model.llm_proj.weight[0, 0] += 1.0  # trains, not part of the cached stage
    second = cache_for_model(model, p32, tmp_path)
    model.llm_proj.weight.data[0, 0] -= 5.0
    assert cache_for_model(model, p32, tmp_path).namespace == second.namespace
    with pytest.raises(ValueError, match="random"):
        cache_for_model(model, BlipImageTrainProcessor(image_size=32), tmp_path)
    model.freeze_vit = False
    with pytest.raises(ValueError, match="no frozen image stage"):
        cache_for_model(model, p32, tmp_path)


def _cached_run_yaml(demo_dir, tmp_path, run_extra: str = "") -> str:
    """A run YAML training the tiny model on the demo data with the feature cache on;
    ``run_extra``: more indented ``run:`` lines."""
    return f"""
model: {{arch: minigpt4qwen, model_type: tiny}}
datasets:
  instruction:
    build_info:
      annotations: {{train: {{storage: {demo_dir}/instruction/train.json}}}}
      images: {{storage: {demo_dir}/images}}
    vis_processor:
      train: {{name: blip2_image_train, image_size: 32}}
      eval: {{name: blip2_image_eval, image_size: 32}}
run:
  task: instruction_tuning
  device: cpu
  feature_cache: {{enabled: true, root: {tmp_path}/features}}
{run_extra}"""


def test_cache_features_tool_and_run_switch(demo_dir, tmp_path):
    """`python -m lavis_lite.tools.cache_features` fills the cache; run.feature_cache.enabled makes the
    train split read it, with the loss of the eval-transformed images."""
    from lavis_lite.common.config import Config, ConfigArgs
    from lavis_lite.datasets.feature_cache_run import prepare_feature_cache
    from lavis_lite.common.registry import registry
    from lavis_lite.tools import cache_features

    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(_cached_run_yaml(demo_dir, tmp_path))  # feature_cache dtype: fp32 by default
    summary = cache_features.main(["--cfg-path", str(run_yaml), "--device", "cpu"])
    (info,) = summary["caches"].values()
    assert info["stage"] == "qformer" and info["entries"] > 0
    assert info["dir"].startswith(str(tmp_path / "features"))

    from lavis_lite.runners.runner_base import setup_seeds

    cfg = Config(ConfigArgs(cfg_path=str(run_yaml)))
    setup_seeds(cfg.run_cfg)  # what train.py does before building: same random init as the tool's
    task = registry.get_task_class(cfg.run_cfg.task).setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    cached = prepare_feature_cache(cfg, model, datasets, progress=False)["instruction"]["train"]
    assert cached.feature_cache.dir == info["dir"] and len(cached.feature_cache) == info["entries"]
    sample = cached[0]
    assert sample["image"].shape[-2:] == (8, 64)  # Q-Former outputs, not pixels
    off = Config(ConfigArgs(cfg_path=str(run_yaml), options=["run.feature_cache.enabled=false"]))
    assert prepare_feature_cache(off, model, datasets) is datasets


@pytest.mark.slow
def test_train_py_reads_the_cache(demo_dir, tmp_path):
    """build_job (train.py) with run.feature_cache.enabled trains on cached features, end to end."""
    import math

    from lavis_lite.runners.launch import build_job

    run_yaml = tmp_path / "train.yaml"
    run_yaml.write_text(_cached_run_yaml(demo_dir, tmp_path, """
  runner: runner_base
  seed: 42
  lr_sched: constant_lr
  init_lr: 1.0e-3
  max_epoch: 1
  batch_size_train: 8
  batch_size_eval: 8
  num_workers: 0
  amp: false
  progress_bar: false
  train_splits: [train]
  output_dir: {tmp}/out
""".format(tmp=tmp_path)))
    cfg, task, runner = build_job(["--cfg-path", str(run_yaml), "--job-id", "cached"])
    train_set = runner.datasets["instruction"]["train"]
    assert len(train_set.feature_cache) > 0
    batch = next(iter(runner.train_stream))
    assert "image_features" in batch and "image" not in batch
    runner.train()
    log = (tmp_path / "out" / "cached" / "log.txt").read_text()
    assert "loss" in log and "nan" not in log.lower()
    assert not math.isnan(float(task.train_step(runner.unwrapped_model, batch)["loss"].detach()))


def test_fill_cache_rank_shares_cover_everything(demo_dir, tmp_path):
    """Ranks split the images by position, not by what happens to be missing when they look, so
    ranks that start at different times still cover every image between them."""
    from lavis_lite.common.feature_cache import dataset_image_paths
    from lavis_lite.datasets.feature_cache_run import cache_for_model, fill_cache
    from lavis_lite.processors.image_processors import BlipImageEvalProcessor

    model = _tiny_model()
    processor = BlipImageEvalProcessor(image_size=32)
    dataset = _dataset(demo_dir, processor)
    cache = cache_for_model(model, processor, tmp_path)
    n = len(dataset_image_paths(dataset))
    first = fill_cache(model, dataset, cache, batch_size=4, rank=0, world_size=2)  # rank 0 runs ahead
    second = fill_cache(model, dataset, cache, batch_size=4, rank=1, world_size=2)
    assert first + second == n == len(cache)
    assert fill_cache(model, dataset, cache, batch_size=4) == 0


@pytest.mark.slow
def test_cache_features_tool_under_torchrun_two_ranks(demo_dir, tmp_path):
    """Two ranks (gloo) fill one cache together: per-rank random inits are unified to rank 0's frozen
    weights first, so both ranks end in the same namespace with every image exactly once."""
    import subprocess
    import sys
    import socket

    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(_cached_run_yaml(demo_dir, tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={port}", "-m", "lavis_lite.tools.cache_features",
                           "--cfg-path", str(run_yaml), "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    namespaces = [d for d in os.listdir(tmp_path / "features") if not d.startswith(".")]
    assert len(namespaces) == 1, namespaces  # both ranks used rank 0's weights
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    (info,) = summary["caches"].values()
    from lavis_lite.common.feature_cache import dataset_image_paths
    from lavis_lite.processors.image_processors import BlipImageEvalProcessor
    assert info["entries"] == len(dataset_image_paths(_dataset(demo_dir, BlipImageEvalProcessor(32))))
