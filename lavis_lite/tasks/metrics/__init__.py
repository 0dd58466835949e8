"""Pure metric code used by the evaluation tasks (no model, no torch)."""
from lavis_lite.tasks.metrics.caption_eval import coco_caption_eval, score_captions  # noqa: F401
from lavis_lite.tasks.metrics.vqa_eval import normalize_answer, vqa_accuracy, vqa_score  # noqa: F401
