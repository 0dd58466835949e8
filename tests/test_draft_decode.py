"""Image processor ``decode: draft`` (JPEG DCT-scaled decoding, opt-in): the default stays bit-exact, the
draft path stays close to the full decode and never decodes below what the transform resizes to, non-JPEG
and small images fall back to the full decode, bad values are named."""
import io
import json
import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import lavis_lite  # noqa: F401  (registers processors)
from lavis_lite.common.feature_cache import describe_transform
from lavis_lite.datasets.datasets.base_dataset import load_image
from lavis_lite.processors import load_processor
from lavis_lite.processors.image_processors import CLIP_STD

EVAL, TRAIN = "blip2_image_eval", "blip2_image_train"


def _photo_file(folder, w, h, fmt="JPEG", mode="RGB", seed=0, name=None):
    """A photo-like image (smooth colour field + mild noise) written as ``fmt``."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.clip(np.asarray(base, dtype=np.float32) + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr).convert(mode)
    path = folder / (name or f"img_{w}x{h}_{mode}.{ 'jpg' if fmt == 'JPEG' else fmt.lower()}")
    img.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return str(path)


def _full_decode(path):
    """What the loader did before the switch existed: open, load every pixel, RGB."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


def _levels(a, b):
    """Absolute difference of two CLIP-normalised tensors in 0..255 pixel levels."""
    return ((a - b) * torch.tensor(CLIP_STD).view(3, 1, 1) * 255).abs()


# ---- the default is unchanged -----------------------------------------------------------------------
@pytest.mark.parametrize("name,cfg", [(EVAL, {}), (EVAL, {"decode": "full"}), (EVAL, {"resize_backend": "tensor"}),
                                      (TRAIN, {}), (TRAIN, {"decode": "full"})])
def test_default_and_full_decode_are_bit_exact_with_the_old_loader(tmp_path, name, cfg):
    path = _photo_file(tmp_path, 640, 480)
    proc = load_processor(name, {"image_size": 56, **cfg})
    assert proc.decode == "full"
    img = load_image(path, proc)
    assert img.size == (640, 480) and np.array_equal(np.asarray(img), np.asarray(_full_decode(path)))
    torch.manual_seed(0)
    a = proc(img)
    torch.manual_seed(0)
    assert torch.equal(a, proc(_full_decode(path)))


def test_full_decode_keeps_the_feature_cache_description():
    """The cache namespace of existing (full-decode) features must not move: the description is the one
    describe_transform gave every processor before (class name + its Compose)."""
    for name in (EVAL, TRAIN, "clip_image_eval"):
        proc = load_processor(name, {"image_size": 32})
        assert describe_transform(proc) == f"{type(proc).__name__}({proc.transform!r})"
    full = load_processor(EVAL, {"image_size": 32})
    draft = load_processor(EVAL, {"image_size": 32, "decode": "draft"})
    assert describe_transform(draft) != describe_transform(full)  # features of one never serve the other
    assert describe_transform(draft).endswith("decode=draft")


# ---- draft decoding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("image_size,drafted", [(224, (320, 240)), (100, (160, 120)), (56, (80, 60)),
                                                (320, (640, 480))])
def test_draft_decodes_at_the_smallest_scale_covering_the_output(tmp_path, image_size, drafted):
    path = _photo_file(tmp_path, 640, 480)
    proc = load_processor(EVAL, {"image_size": image_size, "decode": "draft"})
    img = load_image(path, proc)
    assert img.size == drafted and img.mode == "RGB"
    assert min(img.size) >= image_size  # the resize never upsamples


@pytest.mark.parametrize("backend", ["pil", "tensor"])
@pytest.mark.parametrize("size", [(640, 480), (1000, 750), (480, 640)])
def test_draft_output_is_close_to_the_full_decode(tmp_path, backend, size):
    path = _photo_file(tmp_path, *size)
    full = load_processor(EVAL, {"image_size": 224, "resize_backend": backend})
    draft = load_processor(EVAL, {"image_size": 224, "resize_backend": backend, "decode": "draft"})
    assert load_image(path, draft).size != size  # it did draft
    a, b = full(load_image(path, full)), draft(load_image(path, draft))
    assert a.shape == b.shape == (3, 224, 224) and b.dtype == torch.float32
    levels = _levels(a, b)
    # stated tolerance (docs/performance.md), for smooth photo content: mean under one level of 255, 99.9%
    # of the values within 6 (measured 0.34-0.66 and 2-3; hard edges differ more, up to ~40 at single pixels)
    assert levels.mean() < 1.0, levels.mean()
    assert torch.quantile(levels.flatten(), 0.999) <= 6.0
    assert levels.mean() > 0  # not the full decode in disguise


def test_draft_grayscale_jpeg_becomes_rgb(tmp_path):
    path = _photo_file(tmp_path, 640, 480, mode="L")
    proc = load_processor(EVAL, {"image_size": 224, "decode": "draft"})
    img = load_image(path, proc)
    assert img.size == (320, 240) and img.mode == "RGB"
    a = load_processor(EVAL, {"image_size": 224})(_full_decode(path))
    assert _levels(a, proc(img)).mean() < 1.0


# ---- fallbacks: identical results ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt,size", [("PNG", (640, 480)), ("WEBP", (640, 480)), ("JPEG", (300, 200)),
                                      ("JPEG", (447, 480)), ("JPEG", (224, 224))])
def test_non_jpeg_and_too_small_images_decode_in_full(tmp_path, fmt, size):
    path = _photo_file(tmp_path, *size, fmt=fmt)
    full = load_processor(EVAL, {"image_size": 224})
    draft = load_processor(EVAL, {"image_size": 224, "decode": "draft"})
    img = load_image(path, draft)
    assert img.size == size and np.array_equal(np.asarray(img), np.asarray(_full_decode(path)))
    assert torch.equal(draft(img), full(load_image(path, full)))


def test_an_already_loaded_image_is_left_alone(tmp_path):
    path = _photo_file(tmp_path, 640, 480)
    proc = load_processor(EVAL, {"image_size": 224, "decode": "draft"})
    with Image.open(path) as img:
        img.load()
        proc.prepare_decode(img)  # too late to draft: nothing may change
        assert img.size == (640, 480)


# ---- train processor: the random crop stays >= the output size ------------------------------------------
def test_train_draft_keeps_the_smallest_crop_at_the_output_size(tmp_path):
    path = _photo_file(tmp_path, 320, 240)
    proc = load_processor(TRAIN, {"image_size": 32, "min_scale": 0.5, "decode": "draft"})
    img = load_image(path, proc)
    assert img.size == (80, 60)  # 1/4: the smallest possible crop (area 0.5, ratio 3/4 or 4/3) is ~42 px
    torch.manual_seed(0)
    for _ in range(300):
        _, _, h, w = proc.crop.get_params(img, proc.crop.scale, proc.crop.ratio)
        assert min(h, w) >= 32 - 1  # the crop sampler rounds to whole pixels
    torch.manual_seed(0)
    assert proc(img).shape == (3, 32, 32)


def test_train_draft_at_coco_size_and_default_scale_decodes_in_full(tmp_path):
    """At 640x480 with min_scale 0.5 the smallest crop is ~340 px: half of it would be under 224, so the
    train processor does not draft (same pixels, same crops as the full decode)."""
    path = _photo_file(tmp_path, 640, 480)
    draft = load_processor(TRAIN, {"image_size": 224, "decode": "draft"})
    full = load_processor(TRAIN, {"image_size": 224})
    img = load_image(path, draft)
    assert img.size == (640, 480)
    torch.manual_seed(1)
    a = draft(img)
    torch.manual_seed(1)
    assert torch.equal(a, full(load_image(path, full)))
    # a narrower scale range lets it draft: min_scale 0.9 -> smallest crop ~465 px -> 1/2 is 232 >= 224
    narrow = load_processor(TRAIN, {"image_size": 224, "min_scale": 0.9, "decode": "draft"})
    assert load_image(path, narrow).size == (320, 240)


# ---- config: YAML, errors, pickling, the dataset path ------------------------------------------------------
def test_decode_from_yaml_and_unknown_value_is_named():
    cfg = OmegaConf.create("name: blip2_image_train\nimage_size: 32\ndecode: draft\nresize_backend: tensor\n")
    proc = load_processor(cfg.name, cfg)
    assert proc.decode == "draft" and proc.resize_backend == "tensor"
    for name in (EVAL, TRAIN):
        with pytest.raises(ValueError, match=r"decode must be one of \('full', 'draft'\), got 'fast'"):
            load_processor(name, {"decode": "fast"})


def test_draft_processor_pickles(tmp_path):
    path = _photo_file(tmp_path, 640, 480)
    proc = pickle.loads(pickle.dumps(load_processor(EVAL, {"image_size": 224, "decode": "draft"})))
    assert proc.decode == "draft" and load_image(path, proc).size == (320, 240)


def test_instruction_dataset_and_byte_readers_use_the_processors_decode(tmp_path):
    from lavis_lite.datasets.datasets.instruction_datasets import InstructionDataset
    from lavis_lite.inference_utils import load_image_tensor

    path = _photo_file(tmp_path, 640, 480, name="a.jpg")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"image": "a.jpg", "conversations": [
        {"from": "human", "value": "<ImageHere> what?"}, {"from": "gpt", "value": "this."}]}]))
    outs = {}
    for decode in ("full", "draft"):
        proc = load_processor(EVAL, {"image_size": 224, "decode": decode})
        ds = InstructionDataset(vis_processor=proc, vis_root=str(tmp_path), ann_paths=[str(ann)])
        outs[decode] = ds[0]["image"][0]
        assert torch.equal(load_image_tensor(path, proc), outs[decode])  # inference reads the same way
    assert torch.equal(outs["full"], load_processor(EVAL, {"image_size": 224})(_full_decode(path)))
    expected = load_processor(EVAL, {"image_size": 224})(_draft_by_hand(path))
    assert torch.equal(outs["draft"], expected)


def _draft_by_hand(path):
    with open(path, "rb") as f:
        img = Image.open(io.BytesIO(f.read()))
    img.draft("RGB", (224, 224))
    img.load()
    assert img.size == (320, 240)
    return img.convert("RGB")


# ---- the tensor backend's one-buffer normalisation -------------------------------------------------------
def test_uint8_normalisation_is_bit_identical_to_torchvision():
    from torchvision import transforms

    from lavis_lite.processors.image_processors import CLIP_MEAN, Uint8ToNormalizedFloat
    every_level = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).repeat(3, 1, 1)
    for mean, std in ((CLIP_MEAN, CLIP_STD), ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))):
        ref = transforms.Compose([transforms.ConvertImageDtype(torch.float32), transforms.Normalize(mean, std)])
        got = Uint8ToNormalizedFloat(mean, std)(every_level)
        assert got.dtype == torch.float32 and torch.equal(got, ref(every_level))
    with pytest.raises(ValueError, match="std"):
        Uint8ToNormalizedFloat(CLIP_MEAN, (0.2, 0.0, 0.3))
