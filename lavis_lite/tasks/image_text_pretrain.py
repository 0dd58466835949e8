"""Image-text pretraining (BLIP-2 stage 1, MiniGPT4-Qwen's projection training).

Training is the base loop. Evaluation is loss-based: held-out loss (and token accuracy when the
model reports ``n_correct``), so ``valid_splits`` pick the best checkpoint by it.
``deepspeed_image_text_pretrain`` is the name MiniGPT4-Qwen's configs use; in lavis_lite the
runner, not the task, decides how steps are taken, so it is the same task.
"""
from __future__ import annotations

from lavis_lite.common.registry import registry
from lavis_lite.tasks.base_task import BaseTask


@registry.register_task("image_text_pretrain")
class ImageTextPretrainTask(BaseTask):
    pass


@registry.register_task("deepspeed_image_text_pretrain")
class DeepSpeedImageTextPretrainTask(ImageTextPretrainTask):
    """Alias kept for MiniGPT4-Qwen configs."""
