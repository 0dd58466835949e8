"""The bundled demo data: layout, determinism, answers re-derived from drawn parameters and pixels,
COCO ground truth, and batches the models accept."""
import hashlib
import json
import os
import time
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

import lavis_lite  # noqa: F401
from lavis_lite.datasets import demo
from lavis_lite.datasets.builders import load_dataset

N = 120


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    demo.generate(str(out), n=N, seed=0)
    return out


def _load(path):
    with open(path) as f:
        return json.load(f)


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            p = os.path.join(dirpath, name)
            h.update(os.path.relpath(p, root).encode())
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_layout(demo_dir):
    for split, n in (("train", N - 24), ("val", 12), ("test", 12)):
        assert len(_load(demo_dir / "instruction" / f"{split}.json")) == n
        assert len(_load(demo_dir / "llava" / f"{split}.json")) == n
        for sub in ("caption", "vqa"):
            assert (demo_dir / sub / f"{split}.json").is_file()
        assert (demo_dir / "caption" / f"{split}_gt.json").is_file()
        assert any(p.suffix == ".png" for p in (demo_dir / "images" / split).iterdir())
    shards = sorted(p.name for p in (demo_dir / "shards").glob("*.tar"))
    assert shards[:4] == ["test-000000.tar", "train-000000.tar", "train-000001.tar", "train-000002.tar"]


def test_deterministic_given_seed(tmp_path, demo_dir):
    demo.generate(str(tmp_path / "a"), n=N, seed=0)
    assert _digest(tmp_path / "a") == _digest(demo_dir)
    demo.generate(str(tmp_path / "b"), n=N, seed=1)
    assert _load(tmp_path / "b" / "instruction" / "train.json") != _load(demo_dir / "instruction" / "train.json")


# ---- independent re-derivation of every answer ------------------------------------------------------
RGB = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40)}
BG = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}


def _shape_from_pixels(img, s):
    """square: near its bbox corner is filled; circle: far left of the centre row is filled; else triangle."""
    cx, cy, h = s["cx"], s["cy"], s["size"] / 2
    filled = lambda x, y: img.getpixel((int(round(x)), int(round(y)))) == RGB[s["colour"]]  # noqa: E731
    if filled(cx - 0.9 * h, cy - 0.9 * h):
        return "square"
    return "circle" if filled(cx - 0.78 * h, cy) else "triangle"


def _check_image(path, params, size):
    img = Image.open(path).convert("RGB")
    assert img.size == (size, size)
    assert img.getpixel((0, 0)) == BG[params["background"]]
    for s in params["shapes"]:
        assert img.getpixel((s["cx"], s["cy"])) == RGB[s["colour"]]
        assert _shape_from_pixels(img, s) == s["shape"]


def _expected(kind, params, size):
    s0 = params[0]["shapes"][0]
    if kind == "colour":
        return s0["colour"]
    if kind == "shape":
        return s0["shape"]
    if kind == "count":
        return str(len(params[0]["shapes"]))
    if kind == "position":
        assert params[0]["layout"] == "position"
        dx, dy = s0["cx"] - size / 2, s0["cy"] - size / 2
        return ("left" if dx < 0 else "right") if abs(dx) >= abs(dy) else ("top" if dy < 0 else "bottom")
    if kind == "describe":
        return s0["colour"] + " " + s0["shape"]  # contained in the description
    if kind.startswith("compare_"):  # "reasoned": both values in the fixed order, then the verdict
        key = kind.split("_")[1]
        a, b = params[0]["shapes"][0][key], params[1]["shapes"][0][key]
        order = ("red", "green", "blue", "yellow") if key == "colour" else ("circle", "square", "triangle")
        a, b = sorted((a, b), key=order.index)
        verdict = "yes" if a == b else "no"
        return f"{a} and {b}, so {verdict}." if key == "colour" else f"a {a} and a {b}, so {verdict}."
    raise AssertionError(kind)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_answers_match_drawn_parameters_and_pixels(demo_dir, split):
    for rec in _load(demo_dir / "instruction" / f"{split}.json"):
        images = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        assert len(images) == len(rec["params"])
        for path, params in zip(images, rec["params"]):
            _check_image(demo_dir / "images" / path, params, 32)
        outputs = rec["output"] if isinstance(rec["output"], list) else [rec["output"]]
        instructions = rec["instruction"] if isinstance(rec["instruction"], list) else [rec["instruction"]]
        assert len(outputs) == len(instructions) == len(rec["turn_types"])
        assert instructions[0].count("<ImageHere>") == len(images)
        for kind, out in zip(rec["turn_types"], outputs):
            want = _expected(kind, rec["params"], 32)
            assert (want in out) if kind == "describe" else (out == want), (rec["id"], kind, out, want)
        assert rec["question_type"] in {"colour", "shape", "count", "position", "describe", "compare"}


def test_main_images_are_large_and_centred(demo_dir):
    for rec in _load(demo_dir / "instruction" / "train.json"):
        if rec["question_type"] in ("colour", "shape"):
            s = rec["params"][0]["shapes"][0]
            assert len(rec["params"][0]["shapes"]) == 1
            assert s["size"] >= 0.5 * 32 and abs(s["cx"] - 16) <= 3 and abs(s["cy"] - 16) <= 3


def test_question_mix(tmp_path):
    demo.generate(str(tmp_path), n=500, seed=0)
    recs = _load(tmp_path / "instruction" / "train.json")
    kinds = Counter(r["question_type"] for r in recs)
    assert set(kinds) == {"colour", "shape", "count", "position", "describe", "compare"}
    assert (kinds["colour"] + kinds["shape"]) / len(recs) > 0.55
    assert sum(len(r["turn_types"]) > 1 for r in recs) > 0  # multi-turn records exist
    assert {r["output"] for r in recs if r["question_type"] == "count"} == {"1", "2", "3"}


def test_llava_and_vqa_mirror_instruction(demo_dir):
    instr = _load(demo_dir / "instruction" / "val.json")
    llava = _load(demo_dir / "llava" / "val.json")
    for a, b in zip(instr, llava):
        assert a["id"] == b["id"] and a["image"] == b["image"]
        outs = a["output"] if isinstance(a["output"], list) else [a["output"]]
        assert [t["value"] for t in b["conversations"][1::2]] == outs
        assert b["conversations"][0]["value"].count("<image>") == len(a["params"])
    vqa = _load(demo_dir / "vqa" / "val.json")
    by_image = {a["image"]: a for a in instr if isinstance(a["image"], str)}
    assert len({q["question_id"] for q in vqa}) == len(vqa) > 0
    for q in vqa:
        rec = by_image[q["image"]]
        assert q["answer"] == [_expected(q["question_type"], rec["params"], 32)]


def test_caption_files_and_coco_ground_truth(demo_dir):
    from pycocoevalcap.bleu.bleu import Bleu
    train = _load(demo_dir / "caption" / "train.json")
    # train image_id = the content the captions state (demo.itc_id_of): both captions of an image share it,
    # and so do images with the same content (ITC positives); centred shapes keep the background in it
    params_of = {}
    for rec in _load(demo_dir / "instruction" / "train.json"):
        imgs = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        params_of.update(zip(imgs, rec["params"]))
    for r in train:
        p = params_of[r["image"]]
        assert r["image_id"] == demo.itc_id_of(p, 32)
        assert ("background" in r["image_id"]) == (p["layout"] == "centre")
    per_image = Counter(r["image"] for r in train)
    assert set(per_image.values()) == {2}
    ids = Counter(r["image_id"] for r in train)
    assert len(ids) < len(per_image) and all(n % 2 == 0 for n in ids.values())
    val = _load(demo_dir / "caption" / "val.json")
    gt = _load(demo_dir / "caption" / "val_gt.json")
    assert {i["id"] for i in gt["images"]} == {r["image_id"] for r in val}
    assert len({a["id"] for a in gt["annotations"]}) == len(gt["annotations"])
    refs = {}
    for a in gt["annotations"]:
        refs.setdefault(a["image_id"], []).append(a["caption"])
    for r in val:
        cap = r["caption"][0]
        assert cap in refs[r["image_id"]]
        # colour and shape are both in the caption
        params = None
        for rec in _load(demo_dir / "instruction" / "val.json"):
            imgs = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
            if r["image"] in imgs:
                params = rec["params"][imgs.index(r["image"])]
        s = params["shapes"][0]
        assert s["colour"] in cap and s["shape"] in cap and params["background"] in cap
        if params["layout"] == "position":
            assert f"on the {_expected('position', [params], 32)} side" in cap
        else:
            assert " side " not in cap
    score, _ = Bleu(4).compute_score(refs, {k: [v[0]] for k, v in refs.items()}, verbose=0)
    assert score[3] > 0.99


def test_image_size_option(tmp_path):
    demo.generate(str(tmp_path), n=20, seed=0, size=48)
    rec = _load(tmp_path / "instruction" / "train.json")[0]
    path = rec["image"] if isinstance(rec["image"], str) else rec["image"][0]
    _check_image(tmp_path / "images" / path, rec["params"][0], 48)
    with pytest.raises(ValueError, match="size"):
        demo.generate(str(tmp_path / "x"), n=20, size=8)


def test_cli_and_preview(tmp_path, capsys):
    demo.main(["--out", str(tmp_path / "d"), "--n", "30", "--seed", "2", "--preview", str(tmp_path / "p.png")])
    assert "'train': 24" in capsys.readouterr().out
    sheet = Image.open(tmp_path / "p.png")
    assert sheet.size[0] > 8 * 32 and len(sheet.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 4


@pytest.mark.slow
def test_default_size_is_fast(tmp_path):
    start = time.time()
    counts = demo.generate(str(tmp_path), n=4000, seed=0)
    assert counts == {"train": 3200, "val": 400, "test": 400}
    assert time.time() - start < 30


def _run_yaml(tmp_path, demo_dir, name, kind):
    run = tmp_path / f"{name}.yaml"
    run.write_text(
        f"datasets:\n  {name}:\n    build_info:\n      annotations:\n"
        f"        train: {{storage: {demo_dir}/{kind}/train.json}}\n"
        f"        val: {{storage: {demo_dir}/{kind}/val.json}}\n"
        f"      images: {{storage: {demo_dir}/images}}\n"
        "    vis_processor:\n      train: {name: blip2_image_eval, image_size: 32}\n"
        "      eval: {name: blip2_image_eval, image_size: 32}\n")
    return str(run)


def test_load_dataset_batches_feed_minigpt4qwen(tmp_path, demo_dir):
    from lavis_lite.models import load_model
    model = load_model("minigpt4qwen", "tiny")
    for kind in ("instruction", "llava"):
        splits = load_dataset("instruction", cfg_path=_run_yaml(tmp_path, demo_dir, "instruction", kind))
        assert set(splits) == {"train", "val"}
        ds = splits["train"]
        batch = ds.collater([ds[i] for i in range(6)])
        assert batch["image"].shape == (sum(batch["n_images"]), 3, 32, 32)
        torch.manual_seed(0)
        out = model(batch)
        assert torch.isfinite(out["loss"]) and out["n_tokens"] > 0


def test_caption_batches_feed_blip2_stage1(tmp_path, demo_dir):
    from lavis_lite.models import load_model
    ds = load_dataset("caption", cfg_path=_run_yaml(tmp_path, demo_dir, "caption", "caption"))["train"]
    batch = ds.collater([ds[i] for i in range(4)])
    assert batch["image_id"].tolist()[:2] == [batch["image_id"][0].item()] * 2  # one image's two captions
    # two different images with the same content get one ITC id (positives), other contents other ids
    by_content = {}
    for i, rec in enumerate(ds.annotation):
        by_content.setdefault(rec["image_id"], []).append(i)
    same = next(idx for idx in by_content.values() if len({ds.annotation[i]["image"] for i in idx}) > 1)
    other = next(idx for key, idx in by_content.items() if key != ds.annotation[same[0]]["image_id"])
    ids = [ds[i]["image_id"] for i in same] + [ds[other[0]]["image_id"]]
    assert len(set(ids[:-1])) == 1 and ids[-1] != ids[0]
    out = load_model("blip2", "tiny")(batch)
    assert torch.isfinite(out["loss"])


def _shape_pixels(path, fill):
    pixels = [tuple(c) for c in np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).tolist()]
    return [(i % 32, i // 32) for i, c in enumerate(pixels) if c == fill], set(pixels)


def test_contrast_sets_are_new_train_images_in_one_batch_group(tmp_path, demo_dir):
    out = tmp_path / "c"
    demo.generate(str(out), n=N, seed=0, contrast=("position", "count"))
    # only the stage-1 caption file and the new images change: every other file is identical
    for sub in ("instruction", "llava", "vqa"):
        for split in ("train", "val", "test"):
            assert _load(out / sub / f"{split}.json") == _load(demo_dir / sub / f"{split}.json")
    for split in ("val", "test"):
        assert _load(out / "caption" / f"{split}.json") == _load(demo_dir / "caption" / f"{split}.json")
    held_out = {p for split in ("val", "test") for r in _load(out / "instruction" / f"{split}.json")
                for p in (r["image"] if isinstance(r["image"], list) else [r["image"]])}
    params_of = {}
    for rec in _load(out / "instruction" / "train.json"):
        imgs = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        params_of.update(zip(imgs, rec["params"]))
    groups, captions = {}, {}
    for r in _load(out / "caption" / "train.json"):
        assert r["image"] not in held_out and r["image"].startswith("train/")
        captions.setdefault(r["image"], []).append(r)
        if "batch_group" in r:
            groups.setdefault(r["batch_group"], set()).add(r["image"])
    laid_out = Counter(p["layout"] for p in params_of.values())
    assert len(groups) == laid_out["position"] + laid_out["count"] > 0
    for images in groups.values():
        (orig,) = [i for i in images if i in params_of]  # one instruction image, the rest contrast images
        p = params_of[orig]
        fill, bg = demo.COLOURS[p["shapes"][0]["colour"]], demo.BACKGROUNDS[p["background"]]
        assert len(images) == (4 if p["layout"] == "position" else 3)
        assert len({captions[i][0]["image_id"] for i in images}) == len(images)  # each its own ITC id
        seen = set()
        for img in images:
            assert img == orig or "_contrast" in img
            assert {c["batch_group"] for c in captions[img]} == {captions[orig][0]["batch_group"]}
            xy, colours = _shape_pixels(out / "images" / img, fill)
            assert bg in colours and len(xy) > 20  # same background, same colour
            if p["layout"] == "position":  # where the shape's pixels are: a position of its own
                cx, cy = sum(x for x, _ in xy) / len(xy), sum(y for _, y in xy) / len(xy)
                seen.add(demo.position_of({"shapes": [{"cx": cx, "cy": cy}]}, 32))
            else:  # shapes in distinct quadrants: a count of its own
                seen.add(len({(x >= 16, y >= 16) for x, y in xy}))
        assert len(seen) == len(images)
    with pytest.raises(ValueError, match="position and count"):
        demo.generate(str(tmp_path / "bad"), n=N, contrast=("colour",))


def test_contrast_groups_reach_the_caption_dataset(tmp_path):
    demo.generate(str(tmp_path / "d"), n=N, seed=0, contrast=("position",))
    ds = load_dataset("caption", cfg_path=_run_yaml(tmp_path, tmp_path / "d", "caption", "caption"))["train"]
    keys = [r.get("batch_group") for r in ds.annotation]
    assert 0 < sum(k is not None for k in keys) < len(keys)
    assert set(Counter(k for k in keys if k is not None).values()) == {8}  # 4 images x 2 captions


def test_stage1_skip_leaves_a_kind_out_of_the_stage1_captions_only(tmp_path, demo_dir):
    demo.generate(str(tmp_path / "s"), n=N, seed=0, stage1_skip=("compare",))
    train = _load(tmp_path / "s" / "instruction" / "train.json")
    assert train == _load(demo_dir / "instruction" / "train.json")
    compare = {p for r in train if r["question_type"] == "compare" for p in r["image"]}
    captioned = {r["image"] for r in _load(tmp_path / "s" / "caption" / "train.json")}
    before = {r["image"] for r in _load(demo_dir / "caption" / "train.json")}
    assert compare and compare <= before and not compare & captioned
    assert captioned == before - compare
    # the alignment captions and the held-out caption files keep every image
    assert {r["image"] for r in _load(tmp_path / "s" / "instruction" / "captions_train.json")} >= compare
    assert _load(tmp_path / "s" / "caption" / "val.json") == _load(demo_dir / "caption" / "val.json")
    with pytest.raises(ValueError, match="unknown question types"):
        demo.generate(str(tmp_path / "bad"), n=N, stage1_skip=("multi",))


def test_compare_pairs_add_train_records_over_drawn_images_only(tmp_path, demo_dir):
    demo.generate(str(tmp_path / "c"), n=N, seed=0, compare_pairs=40)
    base, out = demo_dir, tmp_path / "c"
    train, before = _load(out / "instruction" / "train.json"), _load(base / "instruction" / "train.json")
    assert train[:len(before)] == before and len(train) == len(before) + 40
    extra = train[len(before):]
    assert [r["id"] for r in extra] == [f"train_{len(before) + j:06d}" for j in range(40)]
    kinds = Counter((r["turn_types"][0], r["output"].split(" so ")[-1][:-1]) for r in extra)
    assert set(kinds) == {(k, a) for k in ("compare_shape", "compare_colour") for a in ("yes", "no")}
    for r in extra:
        a, b = r["image"]
        assert a != b and r["question_type"] == "compare"
        assert os.path.isfile(base / "images" / a) and os.path.isfile(base / "images" / b)  # no new image
        assert all(p["layout"] == "centre" for p in r["params"])
        assert r["output"] == _expected(r["turn_types"][0], r["params"], 32)
        for path, p in zip(r["image"], r["params"]):  # the params are those the image was drawn from
            drawn = np.asarray(Image.open(base / "images" / path).convert("RGB"))
            assert np.array_equal(drawn, np.asarray(demo.draw_image(p, 32)))
    # every other file is unchanged (stage 1, the alignment captions, the held-out splits, the images)
    for rel in ("caption/train.json", "instruction/captions_train.json", "instruction/val.json",
                "instruction/test.json", "vqa/train.json"):
        assert _load(out / rel) == _load(base / rel), rel
    assert sorted(os.listdir(out / "images" / "train")) == sorted(os.listdir(base / "images" / "train"))
    llava = _load(out / "llava" / "train.json")[len(before):]
    assert [c["conversations"][1]["value"] for c in llava] == [r["output"] for r in extra]
    shard_ids = set()
    import tarfile
    for name in os.listdir(out / "shards"):
        if name.startswith("train-"):
            with tarfile.open(out / "shards" / name) as tar:
                shard_ids |= {m.name.split(".")[0] for m in tar.getmembers()}
    assert {r["id"] for r in extra} <= shard_ids
    with pytest.raises(ValueError, match="compare-pairs must be >= 0"):
        demo.generate(str(tmp_path / "bad"), n=N, compare_pairs=-1)


def test_compare_answers_reasoned_or_short(tmp_path, demo_dir):
    p = [{"shapes": [{"shape": "triangle", "colour": "blue"}]}, {"shapes": [{"shape": "circle", "colour": "blue"}]}]
    assert demo.answer_of("compare_shape", p, 32) == "a circle and a triangle, so no."  # fixed order
    assert demo.answer_of("compare_colour", p, 32) == "blue and blue, so yes."
    assert demo.answer_of("compare_shape", p, 32, "short") == "no"
    assert demo.answer_of("compare_colour", p, 32, "short") == "yes"
    demo.generate(str(tmp_path / "s"), n=N, seed=0, compare_answer="short")
    short, reasoned = (_load(d / "instruction" / "train.json") for d in (tmp_path / "s", demo_dir))
    assert len(short) == len(reasoned)
    for a, b in zip(short, reasoned):
        if a["question_type"] == "compare":
            assert b["output"].endswith(f", so {a['output']}.")
        else:
            assert a == b
    with pytest.raises(ValueError, match="compare_answer must be one of"):
        demo.generate(str(tmp_path / "bad"), n=N, compare_answer="long")


def test_centred_captions_one_keeps_one_wording_per_centred_image(tmp_path, demo_dir):
    demo.generate(str(tmp_path / "o"), n=N, seed=0, contrast=("position",), centred_captions="one")
    demo.generate(str(tmp_path / "b"), n=N, seed=0, contrast=("position",))
    one, both = (_load(tmp_path / d / "caption" / "train.json") for d in ("o", "b"))
    by_image = {}
    for c in one:
        by_image.setdefault(c["image"], []).append(c)
    layouts = {}
    for r in _load(tmp_path / "o" / "instruction" / "train.json"):
        for path, p in zip(r["image"] if isinstance(r["image"], list) else [r["image"]], r["params"]):
            layouts[path] = p["layout"]
    wordings = Counter()
    for img, caps in by_image.items():
        centred = layouts.get(img) == "centre"
        assert len(caps) == (1 if centred else 2), img  # contrast images and layouts keep both
        if centred:
            wordings["background" if " background." in caps[0]["caption"] else "picture"] += 1
    assert wordings["background"] > 0 and wordings["picture"] > 0  # both wordings still taught
    assert {(c["image"], c["caption"], c["image_id"]) for c in one} <= {(c["image"], c["caption"], c["image_id"]) for c in both}
    for rel in ("instruction/train.json", "instruction/captions_train.json", "caption/val.json"):
        assert _load(tmp_path / "o" / rel) == _load(tmp_path / "b" / rel), rel
    with pytest.raises(ValueError, match="centred_captions must be"):
        demo.generate(str(tmp_path / "bad"), n=N, centred_captions="none")


def test_generator_runs_as_a_file_without_the_package(tmp_path):
    """run_scripts/demo.sh runs the generator as a file: it must need no lavis_lite import (nor torch)."""
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lavis_lite", "datasets",
                          "demo.py")
    probe = ("import runpy, sys; sys.argv = ['demo.py', '--out', sys.argv[1], '--n', '40', '--shards', '1']; "
             "runpy.run_path(" + repr(script) + ", run_name='__main__'); "
             "assert 'torch' not in sys.modules and 'lavis_lite' not in sys.modules, sorted(m for m in sys.modules "
             "if m.startswith(('torch', 'lavis_lite')))[:5]")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "d")], capture_output=True, text=True,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert os.path.isfile(tmp_path / "d" / "instruction" / "train.json")
