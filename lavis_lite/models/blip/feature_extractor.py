"""BLIP features (registered "blip_feature_extractor"; types base, tiny).

As LAVIS's BlipFeatureExtractor: ``extract_features(samples, mode)`` returns ``BlipOutputFeatures``:

* "image": ``image_embeds`` (ViT output, [B, 1 + patches, width]) and ``image_embeds_proj``
  (``vision_proj`` of every token, L2-normalised, [B, 1 + patches, embed_dim]);
* "text": ``text_embeds`` (text encoder without cross-attention, [B, L, H]) and ``text_embeds_proj``;
* "multimodal": ``multimodal_embeds`` ([ENC] + text, cross-attending to the image, [B, L, H]).

The image-text similarity is ``image_embeds_proj[:, 0] @ text_embeds_proj[:, 0].t()``. ``forward``
trains the two projections and encoders with BLIP's in-batch image-text contrastive loss (ITC,
learnable temperature ``temp``, positives by image id), so the extractor can be fine-tuned on its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lavis_lite.common.registry import registry
from lavis_lite.models import blip2_losses as L
from lavis_lite.models.blip.base import BlipBase
from lavis_lite.models.blip.text import build_text_encoder, init_blip_tokenizer, text_config
from lavis_lite.models.blip2_qformer import BlipOutputFeatures

MODES = ("image", "text", "multimodal")


class BlipEncoderPair(BlipBase):
    """ViT + text encoder + ITC projections (+ ITM head): the pieces feature extraction, retrieval and
    image-text matching share."""

    def __init__(self, vit_type: str = "base", image_size: int = 224, vit_grad_ckpt: bool = False,
                 vit_ckpt_layer: int = 0, drop_path_rate: float | None = None, vit_sizes: dict | None = None,
                 med_config: dict | None = None, tokenizer_vocab: str | None = "bert-base-uncased",
                 embed_dim: int = 256, max_txt_len: int = 35, with_itm_head: bool = False):
        super().__init__()
        self.tokenizer = init_blip_tokenizer(tokenizer_vocab)
        self.visual_encoder = self.build_vit(vit_type, image_size, vit_grad_ckpt, vit_ckpt_layer, drop_path_rate,
                                             vit_sizes)
        self.text_encoder = build_text_encoder(text_config(med_config, self.tokenizer,
                                                           self.visual_encoder.num_features))
        text_width = self.text_encoder.config.hidden_size
        self.vision_proj = nn.Linear(self.visual_encoder.num_features, embed_dim)
        self.text_proj = nn.Linear(text_width, embed_dim)
        self.itm_head = nn.Linear(text_width, 2) if with_itm_head else None
        self.temp = nn.Parameter(0.07 * torch.ones([]))
        self.max_txt_len = max_txt_len

    # ---- encoders ---------------------------------------------------------------------
    def image_feature(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(image_embeds), dim=-1)

    def encode_text(self, tokens) -> torch.Tensor:
        return self.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask, return_dict=True).last_hidden_state

    def multimodal(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """[ENC] + text cross-attending to the image: [B, L, H]."""
        ids = input_ids.clone()
        ids[:, 0] = self.tokenizer.enc_token_id
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        return self.text_encoder(ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                                 encoder_attention_mask=atts, return_dict=True).last_hidden_state

    @torch.no_grad()
    def extract_features(self, samples: dict, mode: str = "multimodal") -> BlipOutputFeatures:
        if mode not in MODES:
            raise ValueError(f"extract_features mode must be one of {MODES}, got {mode!r}")
        needs = {"image": ("image",), "text": ("text_input",), "multimodal": ("image", "text_input")}[mode]
        self.require(samples, *needs, who=f"extract_features(mode={mode!r})")
        feats = BlipOutputFeatures()
        if mode in ("image", "multimodal"):
            feats.image_embeds = self.encode_image(samples["image"])
            # What ITM re-ranking consumes (lavis_lite's retrieval task); for BLIP the ViT output itself.
            feats.image_embeds_frozen = feats.image_embeds
            if mode == "image":
                feats.image_embeds_proj = self.image_feature(feats.image_embeds)
        if mode in ("text", "multimodal"):
            tokens = self.tokenize(samples["text_input"])
            if mode == "text":
                feats.text_embeds = self.encode_text(tokens)
                feats.text_embeds_proj = F.normalize(self.text_proj(feats.text_embeds), dim=-1)
            else:
                feats.multimodal_embeds = self.multimodal(feats.image_embeds, tokens.input_ids, tokens.attention_mask)
        return feats

    @torch.no_grad()
    def itm_scores(self, image_embeds: torch.Tensor, texts) -> torch.Tensor:
        """ITM "match" logit of each (image, text) pair, [B] (the retrieval task's re-ranking)."""
        if self.itm_head is None:
            raise ValueError(f"{type(self).__name__} has no ITM head")
        tokens = self.tokenize(texts)
        hidden = self.multimodal(image_embeds.to(self.device), tokens.input_ids, tokens.attention_mask)
        return self.itm_head(hidden[:, 0])[:, 1]

    # The retrieval task ranks by the [CLS] feature only (BLIP), not the max over every token.
    retrieval_feature_tokens = 1

    def image_ids(self, samples: dict, batch: int) -> torch.Tensor:
        if samples.get("image_id") is not None:
            return L.image_ids_to_tensor(samples["image_id"], self.device)
        rank, _ = L.rank_and_world()
        return torch.arange(batch, device=self.device) + rank * batch


@registry.register_model("blip_feature_extractor")
class BlipFeatureExtractor(BlipEncoderPair):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "base": "configs/models/blip/blip_feature_extractor_base.yaml",
        "tiny": "configs/models/blip/blip_feature_extractor_tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "base"
    # The pretrain file it reads (model_base_capfilt_large.pth) also holds the captioning decoder, the ITM
    # head, the momentum encoders and the queues.
    DROPPABLE_KEYS = (r"text_decoder\.", r".*_m\.", r"(image|text|idx)_queue$", r"queue_ptr$", r"itm_head\.")

    def forward(self, samples: dict) -> dict:
        """In-batch ITC (BLIP's image-text contrastive loss; positives share an image id)."""
        self.require(samples, "image", "text_input", who="BlipFeatureExtractor.forward")
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        image_feat = self.image_feature(self.encode_image(samples["image"])[:, 0])
        tokens = self.tokenize(samples["text_input"])
        text_feat = F.normalize(self.text_proj(self.encode_text(tokens)[:, 0]), dim=-1)
        batch = image_feat.shape[0]
        ids = self.image_ids(samples, batch)
        positives = L.same_id_mask(ids, L.gather_no_grad(ids))
        sim_i2t, sim_t2i = L.itc_similarities(image_feat[:, None], text_feat, L.gather_with_grad(image_feat)[:, None],
                                              L.gather_with_grad(text_feat), self.temp)
        loss = L.itc_loss(sim_i2t, sim_t2i, L.itc_targets(positives, smoothing=0.0))  # BLIP: no smoothing
        return {"loss": loss, "loss_itc": loss.detach(), "n_tokens": batch}
