"""CLIP through open_clip: ``clip_feature_extractor`` (alias ``clip``). open_clip is imported on first use."""
from lavis_lite.models.clip.clip_feature_extractor import ClipFeatureExtractor, ClipOutputFeatures  # noqa: F401
