"""The BLIP family (LAVIS's names): blip_caption, blip_vqa, blip_feature_extractor, blip_retrieval,
blip_image_text_matching. Importing this package registers them."""
from lavis_lite.models.blip import caption, feature_extractor, retrieval, vqa  # noqa: F401
