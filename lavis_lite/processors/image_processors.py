"""BLIP / BLIP-2 image processors: PIL image (any mode) -> float tensor [3, S, S], CLIP-normalised.

``resize_backend`` picks who resamples: ``pil`` (default; Pillow's bicubic, what BLIP-2 / MiniGPT4-Qwen
were trained with) or ``tensor`` (torch's uint8 antialiased bicubic on the decoded pixels, ~9x faster
on CPU for a 640x480 photo; it rounds differently, so about 0.2% of the output pixels differ from
Pillow's by one level of 255 -- hence opt-in, and a different feature-cache namespace).

``decode`` picks how much of a JPEG is decoded: ``full`` (default; every pixel, bit-exact with the
published pipeline) or ``draft`` (libjpeg's DCT scaling, PIL ``Image.draft``: the file is decoded at
1/2, 1/4 or 1/8 scale, the smallest that still covers what the transform resizes to, so the resize
never upsamples). Draft pixels are not the full decode's (the DCT downscale is a box-like filter before
the bicubic): opt-in, and a different feature-cache namespace. Non-JPEG files and images too small to
scale decode in full, with identical results. The loader calls :meth:`prepare_decode` on the lazily
opened image before it is loaded (``base_dataset.load_image`` and the other dataset readers).
"""
from __future__ import annotations

import math

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
DECODES = ("full", "draft")


class PILToUint8Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W] (a channels-last view: torch's uint8 antialiased
    resize has a vectorised kernel for that layout)."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Uint8ToNormalizedFloat:
    """uint8 [3, H, W] -> float32 ``(x / 255 - mean) / std``: the same operations, in the same order, as
    torchvision's ``ConvertImageDtype(float32)`` + ``Normalize`` (bit-identical results, tested), in one
    buffer instead of three (the tensor backend's last step)."""

    def __init__(self, mean, std):
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must not be zero, got {self.std}")
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.to(torch.float32).div_(255.0).sub_(self._mean).div_(self._std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


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


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
    return value


def prepare_decode(processor, image: Image.Image) -> None:
    """Let ``processor`` (if it has the hook) choose a JPEG draft scale for the opened, not yet loaded
    ``image``; a no-op for other processors and for ``decode: full``."""
    hook = getattr(processor, "prepare_decode", None)
    if hook is not None:
        hook(image)


class BlipImageBaseProcessor(BaseProcessor):
    def __init__(self, image_size: int = 224, mean=None, std=None, resize_backend: str = "pil",
                 decode: str = "full"):
        super().__init__()
        self.image_size = int(image_size)
        self.mean = tuple(mean) if mean is not None else CLIP_MEAN
        self.std = tuple(std) if std is not None else CLIP_STD
        self.resize_backend = _check_choice("resize_backend", resize_backend, RESIZE_BACKENDS)
        self.decode = _check_choice("decode", decode, DECODES)
        self.normalize = transforms.Normalize(self.mean, self.std)

    def __call__(self, item):
        if not isinstance(item, Image.Image):
            raise TypeError(f"{type(self).__name__} expects a PIL image, got {type(item).__name__}")
        return self.transform(to_rgb(item))

    # ---- decode: draft ------------------------------------------------------------------------------
    def draft_covers(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) the decoded image must at least have so that the transform never upsamples: the whole
        image is resized to ``image_size`` here; a random crop overrides this."""
        return self.image_size, self.image_size

    def prepare_decode(self, image: Image.Image) -> None:
        """``decode: draft``: ask libjpeg for the smallest DCT scale (1/2, 1/4, 1/8) whose output still
        covers :meth:`draft_covers`; must run before ``image.load()``. Pillow rounds the scale down to
        one of those (or 1: then nothing changes), so the drafted size is >= the request. Non-JPEG
        images, and JPEGs already loaded, are left alone (they decode in full)."""
        if self.decode != "draft" or getattr(image, "format", None) != "JPEG" or image.tile == []:
            return
        need_w, need_h = self.draft_covers(*image.size)
        if image.width // need_w < 2 or image.height // need_h < 2:
            return  # too small to scale: full decode
        image.draft(image.mode, (need_w, need_h))  # keep the colour mode; only the scale changes


@registry.register_processor("blip2_image_train")
class BlipImageTrainProcessor(BlipImageBaseProcessor):
    """RandomResizedCrop (bicubic, scale (min_scale, max_scale)) + optional horizontal flip
    (+ LAVIS's RandomAugment with ``randaugment: True`` or ``{n, m}``; BLIP-2's processor has none).

    ``hflip: False`` for data whose answers depend on left/right (the demo's position questions).
    """
    DEFAULT_RANDAUGMENT = False

    def __init__(self, image_size=224, mean=None, std=None, min_scale=0.5, max_scale=1.0, hflip=True,
                 resize_backend="pil", randaugment=None, decode="full"):
        super().__init__(image_size, mean, std, resize_backend, decode)
        if not 0 < min_scale <= max_scale <= 1.0:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got ({min_scale}, {max_scale})")
        self.min_scale, self.max_scale, self.hflip = float(min_scale), float(max_scale), bool(hflip)
        tensor = self.resize_backend == "tensor"
        crop = TensorRandomResizedCrop if tensor else transforms.RandomResizedCrop
        steps = [PILToUint8Tensor()] if tensor else []
        self.crop = crop(self.image_size, scale=(self.min_scale, self.max_scale),
                         interpolation=InterpolationMode.BICUBIC)
        steps.append(self.crop)
        if self.hflip:
            steps.append(transforms.RandomHorizontalFlip())
        self.randaugment = _randaugment(self.DEFAULT_RANDAUGMENT if randaugment is None else randaugment)
        if self.randaugment is not None:
            steps.append(self.randaugment)
        steps += [Uint8ToNormalizedFloat(self.mean, self.std)] if tensor else [transforms.ToTensor(), self.normalize]
        self.transform = transforms.Compose(steps)

    @classmethod
    def from_config(cls, cfg=None):
        return cls(image_size=cfg_get(cfg, "image_size", 224), mean=cfg_get(cfg, "mean", None),
                   std=cfg_get(cfg, "std", None), min_scale=cfg_get(cfg, "min_scale", 0.5),
                   max_scale=cfg_get(cfg, "max_scale", 1.0), hflip=cfg_get(cfg, "hflip", True),
                   resize_backend=cfg_get(cfg, "resize_backend", "pil"), randaugment=cfg_get(cfg, "randaugment", None),
                   decode=cfg_get(cfg, "decode", "full"))

    def draft_covers(self, width: int, height: int) -> tuple[int, int]:
        """The smallest crop RandomResizedCrop can draw (area ``min_scale``, the extreme aspect ratios)
        must still be >= ``image_size`` on both sides after the draft scale (up to the crop sampler's
        rounding of one pixel): at 640x480 and min_scale 0.5 that rules out any scaling (the smallest
        crop is ~340 px), so draft decoding pays here only for larger sources (>= ~900x600 for 1/2)."""
        lo, hi = self.crop.ratio
        area = self.min_scale * width * height
        min_w = min(width, math.sqrt(area * min(lo, hi)))
        min_h = min(height, math.sqrt(area / max(lo, hi)))
        return (math.ceil(width * self.image_size / min_w), math.ceil(height * self.image_size / min_h))


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

    def __init__(self, image_size=224, mean=None, std=None, resize_backend="pil", decode="full"):
        super().__init__(image_size, mean, std, resize_backend, decode)
        size = (self.image_size, self.image_size)
        if self.resize_backend == "tensor":
            steps = [PILToUint8Tensor(), TensorResize(size), Uint8ToNormalizedFloat(self.mean, self.std)]
        else:
            steps = [transforms.Resize(size, interpolation=InterpolationMode.BICUBIC), transforms.ToTensor(),
                     self.normalize]
        self.transform = transforms.Compose(steps)

    @classmethod
    def from_config(cls, cfg=None):
        return cls(image_size=cfg_get(cfg, "image_size", 224), mean=cfg_get(cfg, "mean", None),
                   std=cfg_get(cfg, "std", None), resize_backend=cfg_get(cfg, "resize_backend", "pil"),
                   decode=cfg_get(cfg, "decode", "full"))
