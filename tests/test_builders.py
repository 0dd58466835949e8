"""Builders: default and overridden configs with cache_root in tmp_path, fetching with md5, zoo, Config."""
import hashlib
import json

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import lavis_lite  # noqa: F401
from lavis_lite.common.config import Config, ConfigError
from lavis_lite.common.registry import registry
from lavis_lite.datasets.builders import dataset_zoo, load_dataset
from lavis_lite.datasets.builders.base_dataset_builder import resolve_storage
from lavis_lite.datasets.datasets import CaptionDataset, CaptionEvalDataset, InstructionDataset

NAMES = ["minigpt4_instruction", "llava_instruction", "llava_pretrain", "coco_caption", "coco_vqa",
         "instruction", "caption", "vqa", "wds_instruction", "wds_image_text"]


def _dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _coco_layout(root):
    """The files coco_caption's default YAML expects, under cache_root."""
    img = root / "coco" / "images" / "val2014"
    img.mkdir(parents=True)
    for i in (1, 2):
        Image.new("RGB", (12, 12), (i * 60, 0, 0)).save(img / f"COCO_val2014_00000000000{i}.jpg")
    ann = root / "coco" / "annotations"
    _dump(ann / "coco_karpathy_train.json", [
        {"image": "val2014/COCO_val2014_000000000001.jpg", "caption": "a dark square", "image_id": "coco_1"},
        {"image": "val2014/COCO_val2014_000000000001.jpg", "caption": "a square", "image_id": "coco_1"},
        {"image": "val2014/COCO_val2014_000000000002.jpg", "caption": "a red square", "image_id": "coco_2"}])
    for split in ("val", "test"):
        _dump(ann / f"coco_karpathy_{split}.json",
              [{"image": "val2014/COCO_val2014_000000000002.jpg", "caption": ["a red square"]}])


def test_zoo_lists_every_builder():
    names = dataset_zoo.get_names()
    assert set(NAMES) <= set(names)
    for name in NAMES:
        cls = registry.get_builder_class(name)
        assert cls.name == name
        assert cls.default_config_path().endswith(f"configs/datasets/{name}/defaults.yaml")
        cfg = cls.default_config()
        assert "build_info" in cfg and "vis_processor" in cfg


def test_one_parameterised_builder_class():
    from lavis_lite.datasets.builders import BaseDatasetBuilder
    a, b = registry.get_builder_class("llava_instruction"), registry.get_builder_class("minigpt4_instruction")
    assert a is not b and a.__bases__ == b.__bases__ == (BaseDatasetBuilder,)
    assert a.train_dataset_cls is InstructionDataset
    cap = registry.get_builder_class("coco_caption")
    assert cap.train_dataset_cls is CaptionDataset and cap.eval_dataset_cls is CaptionEvalDataset
    with pytest.raises(KeyError, match="Unknown dataset type"):
        cap.default_config_path("nope")


def test_default_config_with_cache_root(cache_root):
    _coco_layout(cache_root)
    builder = registry.get_builder_class("coco_caption")()  # cfg None -> default YAML
    assert builder.config.build_info.annotations.train.storage == "coco/annotations/coco_karpathy_train.json"
    datasets = builder.build_datasets()
    assert set(datasets) == {"train", "val", "test"}
    train, val = datasets["train"], datasets["val"]
    assert train.ann_paths == [str(cache_root / "coco" / "annotations" / "coco_karpathy_train.json")]
    assert train.vis_root == str(cache_root / "coco" / "images")
    s = train[0]
    assert s["image"].shape == (3, 224, 224) and s["text_input"] == "a dark square"
    assert [train[i]["image_id"] for i in range(3)] == [0, 0, 1]
    assert val[0]["image_id"] == 2
    assert val.gt_path == str(cache_root / "coco" / "annotations" / "coco_karpathy_val_gt.json")
    assert type(builder.vis_processors["train"]).__name__ == "BlipImageTrainProcessor"
    assert type(builder.vis_processors["eval"]).__name__ == "BlipImageEvalProcessor"


def test_relative_storage_under_cache_root(cache_root, tmp_path):
    assert resolve_storage("a/b.json") == str(cache_root / "a" / "b.json")
    assert resolve_storage(str(tmp_path / "x.json")) == str(tmp_path / "x.json")


def test_overridden_config_fetches_with_md5(cache_root, tmp_path):
    src = _dump(tmp_path / "remote" / "train.json", [{"image": "a.png", "instruction": "q", "output": "a"}])
    Image.new("RGB", (6, 6)).save(tmp_path / "a.png")
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    cfg = OmegaConf.merge(registry.get_builder_class("instruction").default_config(), {
        "build_info": {"annotations": {"train": {"url": src.as_uri(), "storage": "mine/train.json", "md5": md5}},
                       "images": {"storage": str(tmp_path)}},
        "vis_processor": {"train": {"name": "blip2_image_eval", "image_size": 16}}})
    datasets = registry.get_builder_class("instruction")(cfg).build_datasets()
    stored = cache_root / "mine" / "train.json"
    assert stored.read_bytes() == src.read_bytes()  # fetched into cache_root
    assert datasets["train"][0]["image"].shape == (1, 3, 16, 16)
    # the eval processor falls back to a deterministic resize of the train size
    assert datasets["train"].vis_processor.image_size == 16


def test_md5_mismatch(cache_root, tmp_path):
    src = _dump(tmp_path / "train.json", [{"instruction": "q", "output": "a"}])
    cfg = OmegaConf.merge(registry.get_builder_class("instruction").default_config(), {
        "build_info": {"annotations": {"train": {"url": src.as_uri(), "storage": "m/train.json", "md5": "0" * 32}}}})
    with pytest.raises(ValueError, match="md5 mismatch"):
        registry.get_builder_class("instruction")(cfg).build_datasets()
    # an already stored file is checked too
    cfg.build_info.annotations.train = {"storage": str(src), "md5": "1" * 32}
    with pytest.raises(ValueError, match=r"md5 mismatch .*train\.json"):
        registry.get_builder_class("instruction")(cfg).build_datasets()


def test_missing_annotation_without_url(cache_root):
    with pytest.raises(FileNotFoundError, match=r"coco_karpathy_train\.json does not exist"):
        # default URLs stripped: nothing may be downloaded in tests
        cfg = registry.get_builder_class("coco_caption").default_config()
        for split in cfg.build_info.annotations.values():
            split.url = None
        registry.get_builder_class("coco_caption")(cfg).build_datasets()


def test_generic_builder_needs_paths_from_run_yaml(cache_root):
    with pytest.raises(ConfigError, match="run YAML"):
        registry.get_builder_class("instruction")().build_datasets()


def test_load_dataset_with_cfg_and_vis_path(cache_root, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (6, 6), (0, 0, 255)).save(imgs / "b.png")
    ann = _dump(tmp_path / "ann" / "val.json", [{"image": "b.png", "conversations": [
        {"from": "human", "value": "<image> colour?"}, {"from": "gpt", "value": "blue"}]}])
    run = tmp_path / "run.yaml"
    run.write_text(f"datasets:\n  instruction:\n    build_info:\n      annotations:\n"
                   f"        val: {{storage: {ann}}}\n")
    out = load_dataset("instruction", cfg_path=str(run), vis_path=str(imgs))
    assert set(out) == {"val"}
    batch = out["val"].collater([out["val"][0]])
    assert batch["image"].shape == (1, 3, 224, 224) and batch["conversations"][0][1]["value"] == "blue"


def test_config_layering_uses_builder_default(cache_root, tmp_path):
    run_yaml = OmegaConf.create({"datasets": {"my_data": {"builder": "coco_caption", "on_error": "skip",
                                                          "vis_processor": {"train": {"image_size": 32}}}}})
    merged = Config.build_dataset_config(run_yaml, None, "run.yaml").datasets.my_data
    assert merged.builder == "coco_caption" and merged.on_error == "skip"
    assert merged.vis_processor.train.name == "blip2_image_train" and merged.vis_processor.train.image_size == 32
    assert merged.build_info.images.storage == "coco/images/"
    _coco_layout(cache_root)
    ds = registry.get_builder_class(merged.builder)(merged).build_datasets()
    assert ds["train"].policy.on_error == "skip"
    assert ds["train"][0]["image"].shape == (3, 32, 32)


def test_unknown_split_rejected(cache_root, tmp_path):
    cfg = OmegaConf.merge(registry.get_builder_class("vqa").default_config(),
                          {"build_info": {"annotations": {"dev": {"storage": "x.json"}}}})
    with pytest.raises(ConfigError, match="unknown split"):
        registry.get_builder_class("vqa")(cfg).build_datasets()


def test_batches_feed_a_dataloader(cache_root):
    _coco_layout(cache_root)
    train = load_dataset("coco_caption")["train"]
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=3, collate_fn=train.collater)))
    assert batch["image"].shape == (3, 3, 224, 224) and batch["image_id"].tolist() == [0, 0, 1]


def test_builders_and_datasets_pickle(cache_root):
    """DataLoader workers under spawn pickle the dataset; builder classes resolve by qualified name."""
    import pickle
    for name in NAMES:
        cls = registry.get_builder_class(name)
        assert pickle.loads(pickle.dumps(cls)) is cls
    _coco_layout(cache_root)
    train = load_dataset("coco_caption")["train"]
    clone = pickle.loads(pickle.dumps(train))
    assert torch.equal(clone[0]["image"], train[0]["image"]) and clone[0]["image_id"] == 0


def _two_rank_worker(rank, port, cache_root, src_uri, md5, out_dir):
    import os
    import torch.distributed as dist
    os.environ["LAVIS_LITE_CACHE_ROOT"] = cache_root
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        import lavis_lite  # noqa: F401
        from lavis_lite.common.registry import registry as reg
        from omegaconf import OmegaConf as OC
        cls = reg.get_builder_class("instruction")
        cfg = OC.merge(cls.default_config(), {"build_info": {"annotations": {
            "train": {"url": src_uri, "storage": "shared/train.json", "md5": md5}}}})
        ds = cls(cfg).build_datasets()["train"]
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
            f.write(str(len(ds)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_fetch_once_and_agree(tmp_path):
    """Rank 0 fetches into cache_root, rank 1 waits; both build the same split, nobody hangs."""
    import socket
    import torch.multiprocessing as mp
    src = _dump(tmp_path / "remote" / "train.json", [{"instruction": f"q{i}", "output": "a"} for i in range(5)])
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_rank_worker, args=(port, str(tmp_path / "cache"), src.as_uri(), md5, str(tmp_path)),
             nprocs=2, join=True)
    assert (tmp_path / "cache" / "shared" / "train.json").read_bytes() == src.read_bytes()
    assert (tmp_path / "rank0.txt").read_text() == (tmp_path / "rank1.txt").read_text() == "5"


def test_gt_path_on_any_split(cache_root, tmp_path):
    ann = _dump(tmp_path / "val.json", [{"instruction": "q", "output": "a"}])
    cfg = OmegaConf.merge(registry.get_builder_class("instruction").default_config(), {
        "build_info": {"annotations": {"val": {"storage": str(ann), "gt": "gt/val_gt.json"}}}})
    ds = registry.get_builder_class("instruction")(cfg).build_datasets()["val"]
    assert ds.gt_path == str(cache_root / "gt" / "val_gt.json")
