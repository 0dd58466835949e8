"""CLIP image processors, as LAVIS's (lavis/processors/clip_processors.py) and open_clip's own transforms:
PIL image -> float tensor [3, S, S] normalised with OpenAI's CLIP mean/std.

- ``clip_image_train``: RandomResizedCrop(scale=(min_scale, max_scale) = (0.9, 1.0), bicubic).
- ``clip_image_eval``: bicubic resize of the shorter side to ``image_size``, then a centre crop
  (keeps the aspect ratio; BLIP's eval processor squashes the whole image instead).
"""
from __future__ import annotations

from torchvision import transforms
from torchvision.transforms import InterpolationMode

from lavis_lite.common.registry import registry
from lavis_lite.processors.base_processor import cfg_get
from lavis_lite.processors.image_processors import BlipImageBaseProcessor


@registry.register_processor("clip_image_train")
class ClipImageTrainProcessor(BlipImageBaseProcessor):
    def __init__(self, image_size=224, mean=None, std=None, min_scale=0.9, max_scale=1.0):
        super().__init__(image_size, mean, std)
        if not 0 < min_scale <= max_scale <= 1.0:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got ({min_scale}, {max_scale})")
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(self.image_size, scale=(float(min_scale), float(max_scale)),
                                         interpolation=InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            self.normalize,
        ])

    @classmethod
    def from_config(cls, cfg=None):
        return cls(image_size=cfg_get(cfg, "image_size", 224), mean=cfg_get(cfg, "mean", None),
                   std=cfg_get(cfg, "std", None), min_scale=cfg_get(cfg, "min_scale", 0.9),
                   max_scale=cfg_get(cfg, "max_scale", 1.0))


@registry.register_processor("clip_image_eval")
class ClipImageEvalProcessor(BlipImageBaseProcessor):
    def __init__(self, image_size=224, mean=None, std=None):
        super().__init__(image_size, mean, std)
        self.transform = transforms.Compose([
            transforms.Resize(self.image_size, interpolation=InterpolationMode.BICUBIC),
            transforms.CenterCrop(self.image_size),
            transforms.ToTensor(),
            self.normalize,
        ])

    @classmethod
    def from_config(cls, cfg=None):
        return cls(image_size=cfg_get(cfg, "image_size", 224), mean=cfg_get(cfg, "mean", None),
                   std=cfg_get(cfg, "std", None))
