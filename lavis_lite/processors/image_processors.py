"""BLIP / BLIP-2 image processors: PIL image (any mode) -> float tensor [3, S, S], CLIP-normalised.

``resize_backend`` picks who resamples: ``pil`` (default; Pillow's bicubic, what BLIP-2 / MiniGPT4-Qwen
were trained with) or ``tensor`` (torch's uint8 antialiased bicubic on the decoded pixels, ~9x faster
on CPU for a 640x480 photo; it rounds differently, so about 0.2% of the output pixels differ from
Pillow's by one level of 255 -- hence opt-in, and a different feature-cache namespace).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from lavis_lite.common.registry import registry
from lavis_lite.processors.base_processor import BaseProcessor, cfg_get

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(image: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are laid over ``background``
    (a plain ``convert("RGB")`` would show whatever colour hides under alpha 0)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, background + (255,))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image.convert("RGB")  # L, 1, I, F, CMYK, YCbCr, P without transparency


RESIZE_BACKENDS = ("pil", "tensor")


class PILToUint8Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W] (a channels-last view: torch's uint8 antialiased
    resize has a vectorised kernel for that layout)."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TensorResize:
    """Antialiased resize of a uint8 [3, H, W] tensor to ``size`` with torch's interpolate."""

    def __init__(self, size: tuple[int, int], interpolation: str = "bicubic"):
        self.size, self.interpolation = (int(size[0]), int(size[1])), interpolation

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) == self.size:
            return image.contiguous()
        out = torch.nn.functional.interpolate(image[None], size=self.size, mode=self.interpolation, antialias=True)
        return out[0].contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, interpolation={self.interpolation}, antialias=True)"


class TensorRandomResizedCrop(transforms.RandomResizedCrop):
    """RandomResizedCrop (same crop sampling) whose resize is :class:`TensorResize`'s uint8 kernel.
    (torchvision's own tensor path resamples bicubic in float without Pillow's clamping between
    passes, which lands up to several levels away from Pillow; this stays within one.)"""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        top, left, height, width = self.get_params(image, self.scale, self.ratio)
        crop = image[..., top:top + height, left:left + width]
        return TensorResize(tuple(self.size), self.interpolation.value)(crop)


def _check_backend(resize_backend: str) -> str:
    if resize_backend not in RESIZE_BACKENDS:
        raise ValueError(f"resize_backend must be one of {RESIZE_BACKENDS}, got {resize_backend!r}")
    return resize_backend


class BlipImageBaseProcessor(BaseProcessor):
    def __init__(self, image_size: int = 224, mean=None, std=None, resize_backend: str = "pil"):
        super().__init__()
        self.image_size = int(image_size)
        self.mean = tuple(mean) if mean is not None else CLIP_MEAN
        self.std = tuple(std) if std is not None else CLIP_STD
        self.resize_backend = _check_backend(resize_backend)
        self.normalize = transforms.Normalize(self.mean, self.std)

    def __call__(self, item):
        if not isinstance(item, Image.Image):
            raise TypeError(f"{type(self).__name__} expects a PIL image, got {type(item).__name__}")
        return self.transform(to_rgb(item))


@registry.register_processor("blip2_image_train")
class BlipImageTrainProcessor(BlipImageBaseProcessor):
    """RandomResizedCrop (bicubic, scale (min_scale, max_scale)) + optional horizontal flip
    (+ LAVIS's RandomAugment with ``randaugment: True`` or ``{n, m}``; BLIP-2's processor has none).

    ``hflip: False`` for data whose answers depend on left/right (the demo's position questions).
    """
    DEFAULT_RANDAUGMENT = False

    def __init__(self, image_size=224, mean=None, std=None, min_scale=0.5, max_scale=1.0, hflip=True,
                 resize_backend="pil", randaugment=None):
        super().__init__(image_size, mean, std, resize_backend)
        if not 0 < min_scale <= max_scale <= 1.0:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got ({min_scale}, {max_scale})")
        self.min_scale, self.max_scale, self.hflip = float(min_scale), float(max_scale), bool(hflip)
        tensor = self.resize_backend == "tensor"
        crop = TensorRandomResizedCrop if tensor else transforms.RandomResizedCrop
        steps = [PILToUint8Tensor()] if tensor else []
        steps.append(crop(self.image_size, scale=(self.min_scale, self.max_scale),
                          interpolation=InterpolationMode.BICUBIC))
        if self.hflip:
            steps.append(transforms.RandomHorizontalFlip())
        self.randaugment = _randaugment(self.DEFAULT_RANDAUGMENT if randaugment is None else randaugment)
        if self.randaugment is not None:
            steps.append(self.randaugment)
        steps += [transforms.ConvertImageDtype(torch.float32) if tensor else transforms.ToTensor(), self.normalize]
        self.transform = transforms.Compose(steps)

    @classmethod
    def from_config(cls, cfg=None):
        return cls(image_size=cfg_get(cfg, "image_size", 224), mean=cfg_get(cfg, "mean", None),
                   std=cfg_get(cfg, "std", None), min_scale=cfg_get(cfg, "min_scale", 0.5),
                   max_scale=cfg_get(cfg, "max_scale", 1.0), hflip=cfg_get(cfg, "hflip", True),
                   resize_backend=cfg_get(cfg, "resize_backend", "pil"), randaugment=cfg_get(cfg, "randaugment", None))


@registry.register_processor("blip_image_train")
class BlipV1ImageTrainProcessor(BlipImageTrainProcessor):
    """BLIP's (LAVIS BlipImageTrainProcessor): as blip2_image_train plus RandomAugment(2, 5) after the
    flip (``randaugment: False`` turns it off, ``{n, m}`` changes it)."""
    DEFAULT_RANDAUGMENT = True


def _randaugment(spec):
    from omegaconf import OmegaConf
    from lavis_lite.processors.randaugment import RandomAugment
    if spec is False or spec is None:
        return None
    if spec is True:
        return RandomAugment(2, 5)
    spec = OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else dict(spec)
    unknown = sorted(set(spec) - {"n", "m", "augs"})
    if unknown:
        raise KeyError(f"randaugment: unknown keys {unknown}; known: n, m, augs")
    return RandomAugment(**spec)


@registry.register_processor("blip_image_eval")
@registry.register_processor("blip2_image_eval")
class BlipImageEvalProcessor(BlipImageBaseProcessor):
    """Deterministic: bicubic resize to (image_size, image_size)."""

    def __init__(self, image_size=224, mean=None, std=None, resize_backend="pil"):
        super().__init__(image_size, mean, std, resize_backend)
        size = (self.image_size, self.image_size)
        if self.resize_backend == "tensor":
            steps = [PILToUint8Tensor(), TensorResize(size), transforms.ConvertImageDtype(torch.float32)]
        else:
            steps = [transforms.Resize(size, interpolation=InterpolationMode.BICUBIC), transforms.ToTensor()]
        self.transform = transforms.Compose(steps + [self.normalize])

    @classmethod
    def from_config(cls, cfg=None):
        return cls(image_size=cfg_get(cfg, "image_size", 224), mean=cfg_get(cfg, "mean", None),
                   std=cfg_get(cfg, "std", None), resize_backend=cfg_get(cfg, "resize_backend", "pil"))
