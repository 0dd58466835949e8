"""LAVIS's image data sets: load_dataset(name) over tiny stand-ins in each real layout (tests/zoo_layouts.py)."""
import itertools

import pytest
import torch
from omegaconf import OmegaConf
from zoo_layouts import LAYOUTS, make_layout

import lavis_lite  # noqa: F401
from lavis_lite.common.registry import registry
from lavis_lite.datasets.builders import BaseDatasetBuilder, dataset_zoo, load_dataset
from lavis_lite.datasets.datasets import DataError

ZOO = ["coco_retrieval", "flickr30k", "nocaps", "ok_vqa", "aok_vqa", "gqa", "vg_caption", "vg_vqa", "sbu_caption",
       "conceptual_caption_3m", "conceptual_caption_12m", "laion400M", "snli_ve", "imagenet"]


def _load(name, tmp_path):
    """load_dataset(name); coco_retrieval's LAVIS md5 sums are lifted (the stand-ins are not LAVIS's files)."""
    if name != "coco_retrieval":
        return load_dataset(name)
    run = tmp_path / "no_md5.yaml"
    run.write_text("datasets:\n  coco_retrieval:\n    build_info:\n      annotations:\n"
                   "        train: {md5: null}\n        val: {md5: null}\n        test: {md5: null}\n")
    return load_dataset(name, cfg_path=str(run))


def test_every_zoo_name_is_registered_with_a_default_yaml_and_card():
    import os
    names = dataset_zoo.get_names()
    assert set(ZOO) <= set(names) and set(LAYOUTS) == set(ZOO)
    root = registry.get_path("library_root")
    for name in ZOO:
        cls = registry.get_builder_class(name)
        assert issubclass(cls, BaseDatasetBuilder) and cls.name == name
        assert cls.default_config_path().endswith(f"configs/datasets/{name}/defaults.yaml")
        assert "build_info" in cls.default_config()
        assert os.path.isfile(os.path.join(root, "docs", "dataset_cards", f"{name}.md")), name


def test_lavis_urls_and_md5s_in_default_yamls():
    cfg = registry.get_builder_class("coco_retrieval").default_config().build_info.annotations
    assert cfg.test.url.endswith("/datasets/coco_karpathy_test.json")
    assert cfg.test.md5 == "3ff34b0ef2db02d01c37399f6a2a6cd1" and cfg.train.md5 == "aa31ac474cf6250ebb81d18348a07ed8"
    ok = registry.get_builder_class("ok_vqa").default_config().build_info.annotations.test
    assert len(ok.url) == len(ok.storage) == 4 and ok.storage[1] == "okvqa/annotations/answer_list.json"
    gqa = registry.get_builder_class("gqa")
    assert gqa.default_config("balanced_testdev").build_info.annotations.val.url.endswith(
        "gqa/testdev_balanced_questions.json")


@pytest.mark.parametrize("name", ZOO)
def test_load_dataset_over_real_layout(name, cache_root, tmp_path):
    splits = make_layout(name, cache_root)
    out = _load(name, tmp_path)
    assert set(out) == set(splits)
    for split, ds in out.items():
        assert ds.name == name
        if isinstance(ds, torch.utils.data.IterableDataset):
            torch.manual_seed(0)  # the stream's shuffle order follows torch's seed
            ds.first_samples = list(itertools.islice(iter(ds), 16))
            sample = ds.first_samples[0]
        else:
            sample = ds[0]
        assert sample["image"].shape == (3, 224, 224), (name, split)
        CHECKS[name](split, ds, sample)


def _caption_pairs(split, ds, s):
    assert set(s) == {"image", "text_input", "image_id"} and s["text_input"].startswith("web photo")


def _retrieval(split, ds, s):
    if split == "train":
        assert set(s) == {"image", "text_input", "image_id", "instance_id"}
        assert [ds[i]["image_id"] for i in range(3)] == [0, 0, 1] and s["text_input"] == "a red box on a table"
        return
    assert set(s) == {"image", "index", "image_id", "instance_id"} and s["index"] == 0
    assert ds.text == ["a red box", "a box on a table", "another box", "a second box", "box two"]
    assert ds.img2txt == {0: [0, 1], 1: [2, 3, 4]} and ds.txt2img == {0: 0, 1: 0, 2: 1, 3: 1, 4: 1}
    assert len(ds.image) == 2 and ds.image[1].endswith(".jpg")
    batch = ds.collater([ds[0], ds[1]])
    assert batch["index"].tolist() == [0, 1] and batch["image"].shape == (2, 3, 224, 224)


def _nocaps(split, ds, s):
    assert set(s) == {"image", "image_id", "instance_id"} and s["image_id"] == 0 and ds[1]["image_id"] == 1
    if split == "val":  # from the official references (gt_path)
        assert ds.gt_path.endswith("nocaps/annotations/nocaps_val_4500_captions.json")
        assert ds.domains() == {0: "in-domain", 1: "near-domain"}
    else:  # from the records
        assert ds.domains() == {1: "out-domain"}


def _ok_vqa(split, ds, s):
    assert {"image", "text_input", "question_id", "instance_id", "answers", "weights"} <= set(s)
    if split == "train":
        assert s["answers"] == ["red", "crimson"] and s["weights"] == pytest.approx([0.6, 0.4])
        return
    assert len(ds.ann_paths) == 1 and ds.ann_paths[0].endswith("vqa_val_eval.json")
    assert ds.answer_list == ["apple", "red", "crimson"]
    assert ds.coco_fmt_qust_file.endswith("OpenEnded_mscoco_val2014_questions.json")
    assert ds.coco_fmt_anno_file.endswith("mscoco_val2014_annotations.json")


def _aok_vqa(split, ds, s):
    assert s["text_input"] == "what is the man holding?"
    if split == "train":
        assert s["answers"] == ["racket", "tennis racket"] and s["weights"] == pytest.approx([0.7, 0.3])
        return
    assert s["choices"] == ["a bat", "a racket", "a cup", "a phone"]
    assert ds.answer_list == ["racket", "bat", "tennis racket"]
    batch = ds.collater([s])
    if split == "val":
        assert batch["correct_choice_idx"] == [1] and batch["direct_answers"][0][:1] == ["racket"]
    else:  # the test split has no answers
        assert s["correct_choice_idx"] is None and s["direct_answers"] is None and "answers" not in batch


def _gqa(split, ds, s):
    assert s["question_id"] == f"{split}_1"
    if split == "train":
        assert s["answers"] == ["yes"] and s["weights"] == [1.0]
    else:
        assert s["answer"] == ("yes" if split == "val" else None)


def _vg_vqa(split, ds, s):
    assert [ds[i]["question_id"] for i in range(2)] == ["vg_0", "vg_1"] and s["answers"] == ["clock"]


def _vg_caption(split, ds, s):
    assert set(s) == {"image", "text_input", "image_id"} and s["text_input"] == "a clock on a tower"


def _laion(split, ds, s):
    assert {"image", "text_input", "image_id"} <= set(s)
    texts = {x["text_input"] for x in ds.first_samples}
    # dict captions and LAVIS's capfilt caption lists (one of the first two drawn) both read
    assert texts & {"a capfilt caption", "a second caption"} and any(t.startswith("shard") for t in texts)
    assert len(ds.urls) == 3 * 16 * 119


def _snli_ve(split, ds, s):
    expected = {"train": 2, "val": 1, "test": 0}[split]  # entailment / neutral / contradiction
    assert s["label"] == expected and s["image_id"] == "1000092795" and ds.classnames[2] == "entailment"
    assert ds.collater([s, ds[1]])["label"].tolist() == [expected, 2]


def _imagenet(split, ds, s):
    assert [ds[i]["label"] for i in range(3)] == [0, 1, 999]
    assert len(ds.classnames) == 1000 and ds.classnames[0] == "tench" and ds.classnames[999] == "toilet paper"
    assert len(ds.templates) == 80 and ds.prompts()[0][0] == "a bad photo of a tench."
    assert ds.collater([s, ds[2]])["label"].tolist() == [0, 999]


CHECKS = {"coco_retrieval": _retrieval, "flickr30k": _retrieval, "nocaps": _nocaps, "ok_vqa": _ok_vqa,
          "aok_vqa": _aok_vqa, "gqa": _gqa, "vg_caption": _vg_caption, "vg_vqa": _vg_vqa,
          "sbu_caption": _caption_pairs, "conceptual_caption_3m": _caption_pairs,
          "conceptual_caption_12m": _caption_pairs, "laion400M": _laion, "snli_ve": _snli_ve, "imagenet": _imagenet}


def test_coco_retrieval_checks_lavis_md5(cache_root):
    make_layout("coco_retrieval", cache_root)
    with pytest.raises(ValueError, match=r"md5 mismatch for .*coco_karpathy_train\.json"):
        load_dataset("coco_retrieval")


def test_missing_annotation_without_public_url_points_at_the_card(cache_root):
    with pytest.raises(FileNotFoundError, match=r"ve_train\.json does not exist.*dataset_cards/snli_ve\.md"):
        load_dataset("snli_ve")


def test_bad_records_are_named(cache_root, tmp_path):
    make_layout("aok_vqa", cache_root)
    path = cache_root / "aokvqa/annotations/aokvqa_v1p0_val.json"
    path.write_text(path.read_text().replace('"correct_choice_idx": 1', '"correct_choice_idx": 7'))
    with pytest.raises(DataError, match=r"aokvqa_v1p0_val\.json record 0: 'correct_choice_idx' must index"):
        load_dataset("aok_vqa")
    make_layout("snli_ve", cache_root)
    (cache_root / "snli/annotations/ve_dev.json").write_text('[{"image": "1", "sentence": "s", "label": "maybe"}]')
    with pytest.raises(DataError, match=r"ve_dev\.json record 0: 'label' must be one of"):
        load_dataset("snli_ve")


def test_imagenet_class_names_must_match_folders(cache_root, tmp_path):
    make_layout("imagenet", cache_root)
    (cache_root / "imagenet/val/n99999999").mkdir()  # 1001 folders, 1000 names
    with pytest.raises(DataError, match=r"1001 class folders but 1000 class names"):
        load_dataset("imagenet")
    run = tmp_path / "run.yaml"
    run.write_text(OmegaConf.to_yaml({"datasets": {"imagenet": {"classnames": None, "templates": ["a {}"]}}}))
    ds = load_dataset("imagenet", cfg_path=str(run))["val"]
    assert ds.classnames[-1] == "n99999999" and ds.prompts()[0] == ["a n00000000"]


def test_gqa_testdev_type(cache_root, tmp_path):
    from lavis_lite.common.config import Config
    make_layout("gqa", cache_root)
    ann = cache_root / "gqa/annotations"
    (ann / "testdev_balanced_questions.json").write_text((ann / "val_balanced_questions.json").read_text())
    run = tmp_path / "run.yaml"
    run.write_text("datasets:\n  gqa:\n    type: balanced_testdev\nrun: {task: vqa}\nmodel: {arch: x}\n")
    cfg = Config.build_dataset_config(OmegaConf.load(run), None, str(run)).datasets.gqa
    assert cfg.build_info.annotations.val.storage == "gqa/annotations/testdev_balanced_questions.json"
    val = registry.get_builder_class("gqa")(cfg).build_datasets()["val"]
    assert val.ann_paths[0].endswith("testdev_balanced_questions.json") and val[0]["answer"] == "yes"


def test_zoo_eval_splits_feed_the_existing_tasks(cache_root, tmp_path):
    """Retrieval eval splits give the retrieval task LAVIS's maps; OK-VQA's eval split hands the
    VQA task only its record file (the answer list and official files are separate attributes)."""
    from lavis_lite.tasks.retrieval import retrieval_ground_truth
    from lavis_lite.tasks.vqa import load_vqa_annotations
    make_layout("flickr30k", cache_root)
    test = load_dataset("flickr30k")["test"]
    image_ids, texts, img2txt, txt2img = retrieval_ground_truth(test)
    assert texts == test.text and img2txt == [test.img2txt[i] for i in range(len(test.image))]
    assert txt2img == [test.txt2img[t] for t in range(len(test.text))]
    assert image_ids == [str(test[i]["image_id"]) for i in range(len(test))] == ["1000092795", "10002456"]
    make_layout("ok_vqa", cache_root)
    ok = load_dataset("ok_vqa")["test"]
    assert load_vqa_annotations(ok.ann_paths) == {4201: {"answers": ["apple"] * 10}}


def test_skip_mode_counts_a_bad_image(cache_root, tmp_path):
    make_layout("imagenet", cache_root)
    (cache_root / "imagenet/val/n00000001/ILSVRC2012_val_00000002.JPEG").write_bytes(b"not a jpeg")
    run = tmp_path / "run.yaml"
    run.write_text("datasets:\n  imagenet: {on_error: skip, max_skip_fraction: 0.5}\n")
    ds = load_dataset("imagenet", cfg_path=str(run))["val"]
    assert ds[1]["label"] == 999  # the next good image stands in
    assert ds.skip_report()["skipped"] == 1
    with pytest.raises(DataError, match=r"ILSVRC2012_val_00000002\.JPEG"):
        load_dataset("imagenet")["val"][1]


def test_lavis_builder_class_names_import():
    from lavis_lite.datasets.builders import COCORetrievalBuilder, Flickr30kBuilder, ImageNetBuilder, OKVQABuilder
    assert COCORetrievalBuilder is registry.get_builder_class("coco_retrieval")
    assert OKVQABuilder is registry.get_builder_class("ok_vqa") and ImageNetBuilder.name == "imagenet"
    assert Flickr30kBuilder.__qualname__ == "Flickr30kBuilder"
    assert set(registry.get_builder_class("gqa").DATASET_CONFIG_DICT) == {"default", "balanced_val", "balanced_testdev"}
