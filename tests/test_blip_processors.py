"""BLIP's processors match LAVIS's transforms: train = RandomResizedCrop(scale (0.5, 1), bicubic) +
flip + RandomAugment(2, 5); eval = bicubic resize + CLIP mean/std; BLIP-2's train processor has no
RandomAugment."""
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from lavis_lite.processors import load_processor
from lavis_lite.processors.image_processors import CLIP_MEAN, CLIP_STD
from lavis_lite.processors.randaugment import BLIP_AUGS, RandomAugment, _apply


def _image(w=40, h=40):
    img = Image.new("RGB", (w, h))
    img.putdata([(x * 6 % 256, y * 8 % 256, (x * y) % 256) for y in range(h) for x in range(w)])
    return img


def test_blip_train_pipeline_as_lavis():
    steps = load_processor("blip_image_train", {"image_size": 24}).transform.transforms
    crop, flip, aug = steps[0], steps[1], steps[2]
    assert isinstance(crop, transforms.RandomResizedCrop) and crop.scale == (0.5, 1.0)
    assert crop.interpolation == InterpolationMode.BICUBIC and crop.size == (24, 24)
    assert isinstance(flip, transforms.RandomHorizontalFlip)
    assert isinstance(aug, RandomAugment) and (aug.n, aug.m, aug.prob) == (2, 5.0, 0.5)
    assert aug.augs == BLIP_AUGS
    norm = steps[-1]
    assert tuple(norm.mean) == CLIP_MEAN and tuple(norm.std) == CLIP_STD
    assert not any(isinstance(s, RandomAugment) for s in load_processor("blip2_image_train", {}).transform.transforms)
    assert load_processor("blip_image_train", {"randaugment": False}).randaugment is None
    assert load_processor("blip_image_train", {"randaugment": {"n": 3, "m": 9}}).randaugment.n == 3
    with pytest.raises(KeyError, match="unknown keys"):
        load_processor("blip_image_train", {"randaugment": {"N": 3}})


@pytest.mark.parametrize("backend", ["pil", "tensor"])
def test_blip_train_is_seedable_and_random(backend):
    proc = load_processor("blip_image_train", {"image_size": 24, "resize_backend": backend})
    img = _image()
    torch.manual_seed(3)
    a = proc(img)
    torch.manual_seed(3)
    assert torch.equal(a, proc(img)) and a.shape == (3, 24, 24)
    assert any(not torch.equal(a, proc(img)) for _ in range(5))


def test_randaugment_ops_change_the_image_as_lavis_levels_say():
    img = _image()
    base = transforms.functional.pil_to_tensor(img)
    changed = {name: not torch.equal(base, transforms.functional.pil_to_tensor(_apply(name, img, 5.0)))
               for name in BLIP_AUGS}
    # at magnitude 5 LAVIS's enhance factor is 5/10*1.8+0.1 = 1.0: Brightness and Sharpness are no-ops
    assert changed == {"Identity": False, "AutoContrast": True, "Brightness": False, "Sharpness": False,
                       "Equalize": True, "ShearX": True, "ShearY": True, "TranslateX": True, "TranslateY": True,
                       "Rotate": True}
    assert not torch.equal(base, transforms.functional.pil_to_tensor(_apply("Brightness", img, 9.0)))
    # TranslateX by 5 px (m=5): columns shift by exactly 5, the gap filled with grey 128
    torch.manual_seed(0)
    moved = transforms.functional.pil_to_tensor(_apply("TranslateX", img, 5.0))
    shifted_right = torch.equal(moved[:, :, 5:], base[:, :, :-5]) and (moved[:, :, :5] == 128).all()
    shifted_left = torch.equal(moved[:, :, :-5], base[:, :, 5:]) and (moved[:, :, -5:] == 128).all()
    assert shifted_right or shifted_left
    with pytest.raises(ValueError, match="unknown RandomAugment ops"):
        RandomAugment(augs=["Solarize"])


def test_blip_eval_is_bicubic_resize_with_clip_norm():
    proc = load_processor("blip_image_eval", {"image_size": 16})
    resize = proc.transform.transforms[0]
    assert resize.interpolation == InterpolationMode.BICUBIC and tuple(resize.size) == (16, 16)
    out = proc(Image.new("RGB", (30, 20), (255, 0, 0)))
    torch.testing.assert_close(out[0], torch.full((16, 16), (1 - CLIP_MEAN[0]) / CLIP_STD[0]))


def test_blip_text_processors():
    cap = load_processor("blip_caption", {"prompt": "a picture of "})
    assert cap("A Red CIRCLE.  On the left!") == "a picture of a red circle on the left"
    assert load_processor("blip_question", {})("What colour is it?") == "what colour is it?"
