"""Processors: one sample in -> one tensor or string out. Importing registers them."""
from lavis_lite.processors.base_processor import BaseProcessor  # noqa: F401
from lavis_lite.processors.image_processors import (  # noqa: F401
    BlipImageEvalProcessor,
    BlipImageTrainProcessor,
    to_rgb,
)
from lavis_lite.processors import clip_processors  # noqa: F401
from lavis_lite.processors.text_processors import (  # noqa: F401
    BaseInstructionProcessor,
    BlipCaptionProcessor,
    BlipQuestionProcessor,
)


def load_processor(name: str, cfg=None):
    """``load_processor("blip2_image_eval", {"image_size": 32})`` -> processor instance."""
    from omegaconf import OmegaConf
    from lavis_lite.common.registry import registry
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    return registry.get_processor_class(name).from_config(cfg)
