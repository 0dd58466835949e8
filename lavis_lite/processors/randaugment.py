"""LAVIS's ``RandomAugment`` (BLIP's training augmentation), on PIL images or uint8 tensors.

Each call picks ``n`` operations at random (with replacement) from ``augs`` and applies each with
probability 0.5 at magnitude ``m`` (of 10), with LAVIS's level -> argument maps:
Brightness / Sharpness factor ``m / 10 * 1.8 + 0.1``; ShearX/Y ``m / 10 * 0.3`` (a shear factor, random
sign); TranslateX/Y ``m / 10 * 10`` pixels (random sign); Rotate ``m / 10 * 30`` degrees (random sign);
geometric ops fill with grey (128). LAVIS implements the ops with OpenCV; here torchvision's functional
ops (the same operations; resampling may differ by a level or so at edges). Randomness is torch's, so
``torch.manual_seed`` (and the data loader's per-worker seeds) make it reproducible.
"""
from __future__ import annotations

import math

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

MAX_LEVEL = 10.0
FILL = [128, 128, 128]
BLIP_AUGS = ("Identity", "AutoContrast", "Brightness", "Sharpness", "Equalize", "ShearX", "ShearY",
             "TranslateX", "TranslateY", "Rotate")


def _signed(value: float) -> float:
    return -value if torch.rand(()) < 0.5 else value


def _affine(img, angle=0.0, translate=(0, 0), shear=(0.0, 0.0)):
    return TF.affine(img, angle=angle, translate=list(translate), scale=1.0, shear=list(shear),
                     interpolation=InterpolationMode.NEAREST, fill=FILL)


def _apply(name: str, img, level: float):
    if name == "Identity":
        return img
    if name == "AutoContrast":
        return TF.autocontrast(img)
    if name == "Equalize":
        return TF.equalize(img)
    if name in ("Brightness", "Sharpness"):
        factor = level / MAX_LEVEL * 1.8 + 0.1
        return TF.adjust_brightness(img, factor) if name == "Brightness" else TF.adjust_sharpness(img, factor)
    if name in ("ShearX", "ShearY"):
        degrees = math.degrees(math.atan(_signed(level / MAX_LEVEL * 0.3)))
        return _affine(img, shear=(degrees, 0.0) if name == "ShearX" else (0.0, degrees))
    if name in ("TranslateX", "TranslateY"):
        offset = int(round(_signed(level / MAX_LEVEL * 10.0)))
        return _affine(img, translate=(offset, 0) if name == "TranslateX" else (0, offset))
    if name == "Rotate":
        return TF.rotate(img, _signed(level / MAX_LEVEL * 30.0), interpolation=InterpolationMode.NEAREST, fill=FILL)
    raise ValueError(f"unknown RandomAugment op {name!r}; known: {BLIP_AUGS}")


class RandomAugment:
    def __init__(self, n: int = 2, m: float = 5, augs=BLIP_AUGS, prob: float = 0.5):
        unknown = sorted(set(augs) - set(BLIP_AUGS))
        if unknown:
            raise ValueError(f"unknown RandomAugment ops {unknown}; known: {list(BLIP_AUGS)}")
        if not 0 <= m <= MAX_LEVEL:
            raise ValueError(f"RandomAugment magnitude m must be in [0, {MAX_LEVEL:g}], got {m}")
        self.n, self.m, self.augs, self.prob = int(n), float(m), tuple(augs), float(prob)

    def __call__(self, img):
        for i in torch.randint(len(self.augs), (self.n,)).tolist():
            if torch.rand(()) < self.prob:
                img = _apply(self.augs[i], img, self.m)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, m={self.m:g}, augs={list(self.augs)}, prob={self.prob})"
