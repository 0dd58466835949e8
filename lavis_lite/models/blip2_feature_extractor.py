"""BLIP-2 feature extraction (registered "blip2_feature_extractor"), LAVIS's entry point for image,
text and multimodal embeddings and image-text similarity:

    model, vis_processors, txt_processors = load_model_and_preprocess(
        "blip2_feature_extractor", "tiny", is_eval=True)
    image = vis_processors["eval"](pil_image).unsqueeze(0)
    text = txt_processors["eval"]("a red circle")
    img = model.extract_features({"image": image}, mode="image")
    txt = model.extract_features({"text_input": [text]}, mode="text")
    sim = image_text_similarity(img, txt)            # [n_images, n_texts], max over the queries
    mm = model.extract_features({"image": image, "text_input": [text]})   # .multimodal_embeds

The model is Blip2Qformer itself (same weights, same types, same YAMLs); this name only gives the
feature-extraction use its own entry and the similarity helpers.
"""
from __future__ import annotations

import torch

from lavis_lite.common.registry import registry
from lavis_lite.models.blip2_qformer import Blip2Qformer, BlipOutputFeatures


def image_text_similarity(image_features: BlipOutputFeatures, text_features: BlipOutputFeatures) -> torch.Tensor:
    """Cosine similarity of every image with every text, [n_images, n_texts].

    As LAVIS's example (``image_embeds_proj @ text_embeds_proj[:, 0].t()``, then the max): each
    image has one projected feature per query; the best-matching query counts.
    """
    if image_features.image_embeds_proj is None:
        raise ValueError("image features lack image_embeds_proj: extract them with mode='image'")
    if text_features.text_embeds_proj is None:
        raise ValueError("text features lack text_embeds_proj: extract them with mode='text'")
    text = text_features.text_embeds_proj[:, 0].to(image_features.image_embeds_proj)
    return torch.einsum("iqd,td->itq", image_features.image_embeds_proj, text).max(-1).values


@registry.register_model("blip2_feature_extractor")
class Blip2FeatureExtractor(Blip2Qformer):
    PRETRAINED_MODEL_CONFIG_DICT = Blip2Qformer.PRETRAINED_MODEL_CONFIG_DICT
    DEFAULT_MODEL_TYPE = "pretrain"

    @torch.no_grad()
    def similarity(self, image: torch.Tensor, texts) -> torch.Tensor:
        """Image-text similarity for a batch of processed images and a list of texts, [n_images, n_texts]."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return image_text_similarity(self.extract_features({"image": image}, mode="image"),
                                     self.extract_features({"text_input": texts}, mode="text"))
