"""Tiny stand-ins for LAVIS's image data sets, in each one's real layout under a cache_root.

``make_layout(name, root)`` writes the annotation files (record formats as LAVIS distributes them)
and images at the storage paths of ``configs/datasets/<name>/defaults.yaml``, and returns the splits
it wrote. Used by tests/test_dataset_zoo.py.
"""
from __future__ import annotations

import io
import json
import os
import tarfile

from PIL import Image


def _image(path, colour=(200, 30, 30), fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (10, 8), colour).save(path, format=fmt)


def _json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def _karpathy(root, ann_dir, names, img_dir, img_names):
    """train: one record per caption; val/test: one per image with a caption list."""
    for name in img_names:
        _image(os.path.join(root, img_dir, name))
    _json(os.path.join(root, ann_dir, names["train"]), [
        {"image": img_names[0], "caption": "A red box on a table.", "image_id": "img_1"},
        {"image": img_names[0], "caption": "a box", "image_id": "img_1"},
        {"image": img_names[1], "caption": "Another box.", "image_id": "img_2"}])
    for split in ("val", "test"):
        _json(os.path.join(root, ann_dir, names[split]), [
            {"image": img_names[0], "caption": ["a red box", "a box on a table"]},
            {"image": img_names[1], "caption": ["another box", "a second box", "box two"]}])


def coco_retrieval(root):
    imgs = ["val2014/COCO_val2014_000000000001.jpg", "val2014/COCO_val2014_000000000002.jpg"]
    _karpathy(root, "coco/annotations", {s: f"coco_karpathy_{s}.json" for s in ("train", "val", "test")},
              "coco/images", imgs)
    return ("train", "val", "test")


def flickr30k(root):
    imgs = ["flickr30k-images/1000092795.jpg", "flickr30k-images/10002456.jpg"]
    _karpathy(root, "flickr30k/annotations", {s: f"{s}.json" for s in ("train", "val", "test")},
              "flickr30k/images", imgs)
    return ("train", "val", "test")


def nocaps(root):
    """LAVIS's records (val without domains), plus the official val references with the domains."""
    names = ["0013ea2087020901.jpg", "00223f2c1d8e9b9a.jpg"]
    for split in ("val", "test"):
        for name in names:
            _image(os.path.join(root, "nocaps/images", split, name))
        records = [{"image": f"{split}/{name}", "img_id": i} for i, name in enumerate(names)]
        if split == "test":
            records[1]["domain"] = "out-domain"
        _json(os.path.join(root, "nocaps/annotations", f"nocaps_{split}.json"), records)
    _json(os.path.join(root, "nocaps/annotations/nocaps_val_4500_captions.json"), {
        "images": [{"id": i, "file_name": name, "domain": domain}
                   for i, (name, domain) in enumerate(zip(names, ("in-domain", "near-domain")))],
        "annotations": [{"image_id": i, "id": i, "caption": f"a photo {i}"} for i in range(2)]})
    return ("val", "test")


def _coco_images(root, names):
    for name in names:
        _image(os.path.join(root, "coco/images", name))


def ok_vqa(root):
    img = "val2014/COCO_val2014_000000000042.jpg"
    _coco_images(root, [img])
    ann = os.path.join(root, "okvqa/annotations")
    answers = ["red"] * 6 + ["crimson"] * 4
    _json(os.path.join(ann, "okvqa_train.json"), [
        {"question_id": 4200, "question": "What colour is this fruit?", "answer": answers, "image": img,
         "dataset": "okvqa"}])
    _json(os.path.join(ann, "vqa_val_eval.json"), [
        {"question_id": 4201, "question": "What is it?", "answer": ["apple"] * 10, "image": img}])
    _json(os.path.join(ann, "answer_list.json"), ["apple", "red", "crimson"])
    _json(os.path.join(ann, "OpenEnded_mscoco_val2014_questions.json"),
          {"questions": [{"question_id": 4201, "image_id": 42, "question": "What is it?"}]})
    _json(os.path.join(ann, "mscoco_val2014_annotations.json"), {"annotations": [
        {"question_id": 4201, "image_id": 42, "answer_type": "other", "question_type": "what is",
         "answers": [{"answer": "apple", "answer_id": i + 1} for i in range(10)]}]})
    return ("train", "test")


def aok_vqa(root):
    img = "val2017/000000000139.jpg"
    _coco_images(root, [img])
    ann = os.path.join(root, "aokvqa/annotations")
    base = {"image_id": 139, "image": img, "question": "What is the man holding?",
            "choices": ["a bat", "a racket", "a cup", "a phone"], "difficult_direct_answer": False}
    full = {**base, "correct_choice_idx": 1, "direct_answers": ["racket"] * 7 + ["tennis racket"] * 3,
            "rationales": ["He plays tennis."]}
    _json(os.path.join(ann, "aokvqa_v1p0_train.json"), [{**full, "split": "train", "question_id": "q_tr"}])
    _json(os.path.join(ann, "aokvqa_v1p0_val.json"), [{**full, "split": "val", "question_id": "q_val"}])
    _json(os.path.join(ann, "aokvqa_v1p0_test.json"), [{**base, "split": "test", "question_id": "q_test"}])
    _json(os.path.join(ann, "specialized_vocab_train_lavis.json"), ["racket", "bat", "tennis racket"])
    return ("train", "val", "test")


def gqa(root):
    _image(os.path.join(root, "gqa/images/n161313.jpg"))
    ann = os.path.join(root, "gqa/annotations")
    for split in ("train", "val", "test"):
        rec = {"image": "n161313.jpg", "question": "Is the sky blue?", "question_id": f"{split}_1",
               "answer": "yes", "fullAnswer": "Yes, the sky is blue."}
        if split == "test":
            rec.pop("answer"), rec.pop("fullAnswer")
        _json(os.path.join(ann, f"{split}_balanced_questions.json"), [rec])
    return ("train", "val", "test")


def vg_caption(root):
    _image(os.path.join(root, "vg/images/VG_100K/1.jpg"))
    _json(os.path.join(root, "vg/annotations/vg_caption.json"), [
        {"image": "VG_100K/1.jpg", "caption": "a clock on a tower", "image_id": 1, "dataset": "vg"}])
    return ("train",)


def vg_vqa(root):
    _image(os.path.join(root, "vg/images/VG_100K/1.jpg"))
    _json(os.path.join(root, "vg/annotations/vg_qa.json"), [
        {"image": "VG_100K/1.jpg", "question": "What is on the tower?", "answer": "clock", "dataset": "vg"},
        {"image": "VG_100K/1.jpg", "question": "What colour is it?", "answer": "white", "dataset": "vg"}])
    return ("train",)


def _pairs(root, ann, img_dir, names):
    for name in names:
        _image(os.path.join(root, img_dir, name))
    _json(os.path.join(root, ann), [{"image": n, "caption": f"web photo number {i}"} for i, n in enumerate(names)])
    return ("train",)


def sbu_caption(root):
    return _pairs(root, "sbu_captions/annotations/sbu.json", "sbu_captions/images", ["4385058960_b0f291553e.jpg"])


def conceptual_caption_3m(root):
    return _pairs(root, "conceptual_caption/annotations/cc3m.json", "conceptual_caption/images",
                  ["00000/000000001.jpg", "00000/000000002.jpg"])


def conceptual_caption_12m(root):
    return _pairs(root, "conceptual_caption/annotations/cc12m.json", "conceptual_caption/images_12m",
                  ["00000/000000001.jpg"])


def snli_ve(root):
    for iid in ("1000092795", "10002456"):
        _image(os.path.join(root, "flickr30k/images/flickr30k-images", f"{iid}.jpg"))
    labels = {"train": "entailment", "dev": "neutral", "test": "contradiction"}
    for split, label in labels.items():
        _json(os.path.join(root, f"snli/annotations/ve_{split}.json"), [
            {"image": "1000092795", "sentence": "Two men are outside.", "label": label},
            {"image": "10002456", "sentence": "Workers are on a building.", "label": "entailment"}])
    return ("train", "val", "test")


def laion400M(root, samples_per_shard=4):
    """Every shard path of the default brace pattern exists: two real tiny tars, the rest symlinks
    to them (cheap, and each still reads as a real shard)."""
    import braceexpand
    pattern = ("laion400m/laion115m_capfilt_20220817/{part0/part0,part1/part1,part2/part2}"
               "_node{00..15}_shard{000000..000118}.tar")
    paths = [os.path.join(root, p) for p in braceexpand.braceexpand(pattern)]
    for folder in {os.path.dirname(p) for p in paths}:
        os.makedirs(folder, exist_ok=True)
    for k, path in enumerate(paths):
        if k < 2:
            with tarfile.open(path, "w") as tar:
                for j in range(samples_per_shard):
                    key = f"{k:05d}{j:04d}"
                    buf = io.BytesIO()
                    Image.new("RGB", (10, 8), (40 * j, 90, 10 * k)).save(buf, format="JPEG")
                    caption = ["a capfilt caption", "a second caption"] if j % 2 else {"caption": f"shard {k} sample {j}"}
                    for ext, data in (("jpg", buf.getvalue()), ("json", json.dumps(caption).encode())):
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        else:
            os.symlink(paths[k % 2], path)
    return ("train",)


def imagenet(root, n_classes=1000):
    """1000 wnid-style class folders (sorted order = label order); images in three of them."""
    val = os.path.join(root, "imagenet/val")
    for c in range(n_classes):
        os.makedirs(os.path.join(val, f"n{c:08d}"), exist_ok=True)
    _image(os.path.join(val, "n00000000", "ILSVRC2012_val_00000001.JPEG"), fmt="JPEG")
    _image(os.path.join(val, "n00000001", "ILSVRC2012_val_00000002.JPEG"), fmt="JPEG")
    _image(os.path.join(val, "n00000999", "ILSVRC2012_val_00000003.JPEG"), fmt="JPEG")
    return ("val",)


LAYOUTS = {f.__name__: f for f in (coco_retrieval, flickr30k, nocaps, ok_vqa, aok_vqa, gqa, vg_caption, vg_vqa,
                                   sbu_caption, conceptual_caption_3m, conceptual_caption_12m, laion400M,
                                   snli_ve, imagenet)}


def make_layout(name: str, root) -> tuple[str, ...]:
    return LAYOUTS[name](str(root))
