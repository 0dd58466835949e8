"""BLIP / BLIP-2 image processors: PIL image (any mode) -> float tensor [3, S, S], CLIP-normalised."""
from __future__ import annotations

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


class BlipImageBaseProcessor(BaseProcessor):
    def __init__(self, image_size: int = 224, mean=None, std=None):
        super().__init__()
        self.image_size = int(image_size)
        self.mean = tuple(mean) if mean is not None else CLIP_MEAN
        self.std = tuple(std) if std is not None else CLIP_STD
        self.normalize = transforms.Normalize(self.mean, self.std)

    def __call__(self, item):
        if not isinstance(item, Image.Image):
            raise TypeError(f"{type(self).__name__} expects a PIL image, got {type(item).__name__}")
        return self.transform(to_rgb(item))


@registry.register_processor("blip_image_train")
@registry.register_processor("blip2_image_train")
class BlipImageTrainProcessor(BlipImageBaseProcessor):
    """RandomResizedCrop (bicubic, scale (min_scale, max_scale)) + optional horizontal flip.

    ``hflip: False`` for data whose answers depend on left/right (the demo's position questions).
    """

    def __init__(self, image_size=224, mean=None, std=None, min_scale=0.5, max_scale=1.0, hflip=True):
        super().__init__(image_size, mean, std)
        if not 0 < min_scale <= max_scale <= 1.0:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got ({min_scale}, {max_scale})")
        self.min_scale, self.max_scale, self.hflip = float(min_scale), float(max_scale), bool(hflip)
        steps = [transforms.RandomResizedCrop(self.image_size, scale=(self.min_scale, self.max_scale),
                                              interpolation=InterpolationMode.BICUBIC)]
        if self.hflip:
            steps.append(transforms.RandomHorizontalFlip())
        steps += [transforms.ToTensor(), self.normalize]
        self.transform = transforms.Compose(steps)

    @classmethod
    def from_config(cls, cfg=None):
        return cls(image_size=cfg_get(cfg, "image_size", 224), mean=cfg_get(cfg, "mean", None),
                   std=cfg_get(cfg, "std", None), min_scale=cfg_get(cfg, "min_scale", 0.5),
                   max_scale=cfg_get(cfg, "max_scale", 1.0), hflip=cfg_get(cfg, "hflip", True))


@registry.register_processor("blip_image_eval")
@registry.register_processor("blip2_image_eval")
class BlipImageEvalProcessor(BlipImageBaseProcessor):
    """Deterministic: bicubic resize to (image_size, image_size)."""

    def __init__(self, image_size=224, mean=None, std=None):
        super().__init__(image_size, mean, std)
        self.transform = transforms.Compose([
            transforms.Resize((self.image_size, self.image_size), interpolation=InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            self.normalize,
        ])

    @classmethod
    def from_config(cls, cfg=None):
        return cls(image_size=cfg_get(cfg, "image_size", 224), mean=cfg_get(cfg, "mean", None),
                   std=cfg_get(cfg, "std", None))
