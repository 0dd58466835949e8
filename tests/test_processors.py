"""Processors: shapes, dtypes, value ranges, determinism, config handling, RGB conversion, text clean-up."""
import pytest
import torch
from PIL import Image

import lavis_lite  # noqa: F401  (registers processors)
from lavis_lite.common.registry import registry
from lavis_lite.processors import load_processor
from lavis_lite.processors.image_processors import CLIP_MEAN, CLIP_STD

IMAGE_PROCS = ["blip_image_train", "blip_image_eval", "blip2_image_train", "blip2_image_eval"]


def _bounds(mean=CLIP_MEAN, std=CLIP_STD):
    lo = torch.tensor([(0 - m) / s for m, s in zip(mean, std)]).view(3, 1, 1)
    hi = torch.tensor([(1 - m) / s for m, s in zip(mean, std)]).view(3, 1, 1)
    return lo, hi


def _gradient_image(w=40, h=30):
    img = Image.new("RGB", (w, h))
    img.putdata([(x * 6 % 256, y * 8 % 256, (x * y) % 256) for y in range(h) for x in range(w)])
    return img


@pytest.mark.parametrize("name", IMAGE_PROCS)
def test_image_processor_shape_dtype_range(name):
    proc = load_processor(name, {"image_size": 24})
    out = proc(_gradient_image())
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    lo, hi = _bounds()
    # bicubic may overshoot a little at edges; ToTensor clamps to [0, 1] before normalising
    assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
    assert out.std() > 0.1  # not a constant tensor


def test_eval_normalisation_values_and_determinism():
    proc = load_processor("blip2_image_eval", {"image_size": 16})
    img = Image.new("RGB", (50, 20), (255, 0, 128))
    out = proc(img)
    expect = torch.tensor([(1.0 - CLIP_MEAN[0]) / CLIP_STD[0], (0.0 - CLIP_MEAN[1]) / CLIP_STD[1],
                           (128 / 255 - CLIP_MEAN[2]) / CLIP_STD[2]]).view(3, 1, 1).expand(3, 16, 16)
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=0)
    grad = _gradient_image()
    assert torch.equal(proc(grad), proc(grad))


def test_mean_std_from_config():
    proc = load_processor("blip_image_eval", {"image_size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    out = proc(Image.new("RGB", (8, 8), (255, 255, 255)))
    torch.testing.assert_close(out, torch.ones(3, 8, 8))
    out = proc(Image.new("RGB", (8, 8), (0, 0, 0)))
    torch.testing.assert_close(out, -torch.ones(3, 8, 8))


def test_train_processor_is_random_and_seedable():
    proc = load_processor("blip2_image_train", {"image_size": 16, "min_scale": 0.3})
    img = _gradient_image()
    torch.manual_seed(0)
    a = proc(img)
    torch.manual_seed(0)
    b = proc(img)
    assert torch.equal(a, b)
    outs = [proc(img) for _ in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_train_full_scale_without_flip_equals_eval():
    """scale (1, 1) on a square image crops the whole image: the train path must then equal eval."""
    img = _gradient_image(32, 32)
    train = load_processor("blip2_image_train", {"image_size": 16, "min_scale": 1.0, "max_scale": 1.0, "hflip": False})
    ev = load_processor("blip2_image_eval", {"image_size": 16})
    for _ in range(3):
        torch.testing.assert_close(train(img), ev(img))


def test_train_flip_happens():
    img = _gradient_image(32, 32)
    train = load_processor("blip2_image_train", {"image_size": 32, "min_scale": 1.0, "max_scale": 1.0})
    ev = load_processor("blip2_image_eval", {"image_size": 32})
    plain, flipped = ev(img), ev(img.transpose(Image.FLIP_LEFT_RIGHT))
    torch.manual_seed(1)
    outs = [train(img) for _ in range(12)]
    n_flipped = sum(torch.allclose(o, flipped, atol=1e-5) for o in outs)
    n_plain = sum(torch.allclose(o, plain, atol=1e-5) for o in outs)
    assert n_flipped > 0 and n_plain > 0 and n_flipped + n_plain == 12


def test_bad_scale_config():
    with pytest.raises(ValueError, match="min_scale"):
        load_processor("blip2_image_train", {"min_scale": 0.9, "max_scale": 0.5})


@pytest.mark.parametrize("mode", ["P", "RGBA", "L", "CMYK", "LA", "1", "I"])
def test_any_mode_becomes_three_channels(mode):
    img = _gradient_image(20, 20).convert(mode)
    out = load_processor("blip2_image_eval", {"image_size": 10})(img)
    assert out.shape == (3, 10, 10) and torch.isfinite(out).all()


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    proc = load_processor("blip2_image_eval", {"image_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]})
    torch.testing.assert_close(proc(img), torch.ones(3, 8, 8))
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([255, 0, 0] * 256)
    pal.info["transparency"] = 0
    torch.testing.assert_close(proc(pal), torch.ones(3, 8, 8))


def test_image_processor_rejects_non_images():
    with pytest.raises(TypeError, match="PIL image"):
        load_processor("blip2_image_eval")(torch.zeros(3, 4, 4))


def test_blip_caption():
    proc = load_processor("blip_caption", {"prompt": "a photo of ", "max_words": 5})
    assert proc("  A Red, CIRCLE!! on (white)   background.\n") == "a photo of a red, circle on white"
    assert load_processor("blip_caption")("Two   dogs: playing; ball.") == "two dogs playing ball"


def test_blip_question():
    proc = load_processor("blip_question", {"max_words": 4})
    assert proc("What COLOUR is   the shape?") == "what colour is the"
    assert load_processor("blip_question")("Is it \"red\"?!") == "is it red?"


def test_base_instruction_keeps_case_tags_and_truncates():
    proc = load_processor("base_instruction", {"max_words": 4})
    assert proc("<ImageHere>   What colour\n\n is  the shape?") == "<ImageHere> What colour\nis"
    full = load_processor("base_instruction", {"max_words": 100})("<ImageHere>\tWhat   Colour?  ")
    assert full == "<ImageHere> What Colour?"
    assert load_processor("base_instruction", {"lower": True})("ABC") == "abc"


@pytest.mark.parametrize("name", ["blip_caption", "blip_question", "base_instruction"])
def test_text_processors_reject_non_strings(name):
    with pytest.raises(TypeError, match="string"):
        load_processor(name)(["not", "a", "string"])


def test_from_config_and_build():
    cls = registry.get_processor_class("blip2_image_eval")
    proc = cls.from_config(None)
    assert proc.image_size == 224
    rebuilt = proc.build(image_size=12)
    assert isinstance(rebuilt, cls) and rebuilt.image_size == 12
    assert rebuilt(Image.new("RGB", (3, 3))).shape == (3, 12, 12)
    for name in IMAGE_PROCS + ["blip_caption", "blip_question", "base_instruction"]:
        assert name in registry.list_processors()


@pytest.mark.parametrize("name", IMAGE_PROCS + ["blip_caption", "blip_question", "base_instruction"])
def test_processors_pickle(name):
    """Spawned DataLoader workers receive processors by pickling."""
    import pickle
    proc = load_processor(name, {"image_size": 8} if "image" in name else None)
    clone = pickle.loads(pickle.dumps(proc))
    item = Image.new("RGB", (9, 9), (10, 200, 30)) if "image" in name else "Hello  World."
    if "train" in name:
        torch.manual_seed(0)
        a = proc(item)
        torch.manual_seed(0)
        b = clone(item)
    else:
        a, b = proc(item), clone(item)
    assert torch.equal(a, b) if torch.is_tensor(a) else a == b


# ---- resize_backend: "tensor" (torch's uint8 antialiased resize) -----------------------------------
def _photo(w=160, h=120, seed=0):
    """A JPEG-decoded, photo-like image: smooth gradients plus noise."""
    import io

    import numpy as np
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None] * 255
    arr = (ramp + rng.normal(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.mark.parametrize("size", [(160, 120), (640, 480), (50, 90)])
def test_tensor_resize_backend_within_one_level_of_pil(size):
    img = _photo(*size)
    pil = load_processor("blip2_image_eval", {"image_size": 32})
    ten = load_processor("blip2_image_eval", {"image_size": 32, "resize_backend": "tensor"})
    assert ten.resize_backend == "tensor" and pil.resize_backend == "pil"
    a, b = pil(img), ten(img)
    assert b.shape == a.shape == (3, 32, 32) and b.dtype == torch.float32 and b.is_contiguous()
    levels = ((a - b) * torch.tensor(CLIP_STD).view(3, 1, 1) * 255).abs()  # back to 0..255 units
    assert levels.max() <= 1.0 + 1e-3          # rounding, never a real difference
    assert (levels > 0.5).float().mean() < 0.02  # and rarely even that


def test_tensor_resize_backend_is_exact_without_resampling():
    img = _photo(32, 32)
    pil = load_processor("blip2_image_eval", {"image_size": 32})
    ten = load_processor("blip2_image_eval", {"image_size": 32, "resize_backend": "tensor"})
    assert torch.equal(pil(img), ten(img))


def test_resize_backends_have_distinct_cache_descriptions():
    from lavis_lite.common.feature_cache import describe_transform, is_deterministic_transform
    pil = load_processor("blip2_image_eval", {"image_size": 32})
    ten = load_processor("blip2_image_eval", {"image_size": 32, "resize_backend": "tensor"})
    assert describe_transform(pil) != describe_transform(ten)  # features cached under one never serve the other
    assert is_deterministic_transform(ten)
    assert not is_deterministic_transform(load_processor("blip2_image_train", {"resize_backend": "tensor"}))


def test_unknown_resize_backend_is_named():
    with pytest.raises(ValueError, match="resize_backend.*'cv2'"):
        load_processor("blip2_image_eval", {"resize_backend": "cv2"})


def test_train_processor_tensor_backend_seedable_and_full_crop_matches_eval():
    img = _photo(64, 48)
    train = load_processor("blip2_image_train", {"image_size": 24, "resize_backend": "tensor"})
    torch.manual_seed(3)
    a = train(img)
    torch.manual_seed(3)
    assert torch.equal(a, train(img)) and a.shape == (3, 24, 24)
    lo, hi = _bounds()
    assert (a >= lo - 1e-5).all() and (a <= hi + 1e-5).all()
    # scale (1, 1) on a square image crops the whole image: then the train path equals eval
    square = _photo(48, 48)
    full = load_processor("blip2_image_train", {"image_size": 24, "min_scale": 1.0, "hflip": False,
                                                "resize_backend": "tensor"})
    ev = load_processor("blip2_image_eval", {"image_size": 24, "resize_backend": "tensor"})
    torch.testing.assert_close(full(square), ev(square))


def test_train_tensor_backend_draws_the_same_crops_as_pil_and_pickles():
    import pickle
    img = _photo(96, 64, seed=1)
    pil = load_processor("blip2_image_train", {"image_size": 32})
    ten = pickle.loads(pickle.dumps(load_processor("blip2_image_train", {"image_size": 32, "resize_backend": "tensor"})))
    for seed in range(4):
        torch.manual_seed(seed)
        a = pil(img)
        torch.manual_seed(seed)
        b = ten(img)
        levels = ((a - b) * torch.tensor(CLIP_STD).view(3, 1, 1) * 255).abs()
        assert levels.max() <= 1.0 + 1e-3  # same crop and flip, resampling rounds within one level
