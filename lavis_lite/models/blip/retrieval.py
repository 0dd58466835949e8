"""BLIP image-text retrieval (registered "blip_retrieval"; types coco, flickr, tiny) and image-text
matching (registered "blip_image_text_matching"; types base, large, tiny).

BlipRetrieval is LAVIS's: ITC against momentum features and feature queues (momentum distillation with
weight ``alpha``, ramped up over the first ``2 * iters_per_epoch`` steps), plus ITM on the positive pairs
and one hard negative image and text per pair (drawn by ITC similarity, never of the same image id).
Parameter and buffer names are LAVIS's: ``visual_encoder_m``, ``text_encoder_m``, ``vision_proj_m``,
``text_proj_m`` (frozen momentum copies), ``image_queue``, ``text_queue``, ``idx_queue``, ``queue_ptr``.
For evaluation the ``retrieval`` task ranks by the [CLS] features and re-ranks the top ``k_test`` by ITM.

BlipITM scores a pair: ``forward({"image", "text_input"}, match_head="itm")`` -> ITM logits [B, 2];
``match_head="itc"`` -> cosine similarity of the [CLS] features [B_img, B_txt].
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from lavis_lite.common.registry import registry
from lavis_lite.models import blip2_losses as L
from lavis_lite.models.blip.feature_extractor import BlipEncoderPair

MOMENTUM_PARTS = (("visual_encoder", "visual_encoder_m"), ("text_encoder", "text_encoder_m"),
                  ("vision_proj", "vision_proj_m"), ("text_proj", "text_proj_m"))


@registry.register_model("blip_retrieval")
class BlipRetrieval(BlipEncoderPair):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "coco": "configs/models/blip/blip_retrieval_coco.yaml",
        "flickr": "configs/models/blip/blip_retrieval_flickr.yaml",
        "tiny": "configs/models/blip/blip_retrieval_tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "coco"
    DROPPABLE_KEYS = (r"text_decoder\.",)  # fine-tuning starts from the pretrain file

    def __init__(self, queue_size: int = 57600, alpha: float = 0.4, momentum: float = 0.995,
                 negative_all_rank: bool = False, alpha_warmup_steps: int = 0, **kwargs):
        super().__init__(with_itm_head=True, **kwargs)
        for name, copy_name in MOMENTUM_PARTS:
            setattr(self, copy_name, copy.deepcopy(getattr(self, name)))
            for p in getattr(self, copy_name).parameters():
                p.requires_grad_(False)
        embed_dim = self.vision_proj.out_features
        self.register_buffer("image_queue", F.normalize(torch.randn(embed_dim, queue_size), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(embed_dim, queue_size), dim=0))
        self.register_buffer("idx_queue", torch.full((1, queue_size), -100, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.queue_size, self.alpha, self.momentum = int(queue_size), float(alpha), float(momentum)
        # LAVIS gathers ITM negatives over all ranks for COCO; here negatives come from the gathered
        # batch either way (blip2_losses), so the flag only documents the released config.
        self.negative_all_rank = bool(negative_all_rank)
        self.alpha_warmup_steps = int(alpha_warmup_steps)
        self._steps = 0

    def train(self, mode: bool = True):
        super().train(mode)
        for _, copy_name in MOMENTUM_PARTS:  # the momentum copies never drop out
            getattr(self, copy_name).eval()
        return self

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for name, copy_name in MOMENTUM_PARTS:
            for p, p_m in zip(getattr(self, name).parameters(), getattr(self, copy_name).parameters()):
                p_m.mul_(self.momentum).add_(p.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def _enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, ids: torch.Tensor) -> None:
        image_feat, text_feat, ids = L.gather_no_grad(image_feat), L.gather_no_grad(text_feat), L.gather_no_grad(ids)
        n, ptr = image_feat.shape[0], int(self.queue_ptr)
        if self.queue_size % n:
            raise ValueError(f"queue_size {self.queue_size} must be a multiple of the global batch size {n}")
        self.image_queue[:, ptr:ptr + n] = image_feat.T
        self.text_queue[:, ptr:ptr + n] = text_feat.T
        self.idx_queue[:, ptr:ptr + n] = ids.T
        self.queue_ptr[0] = (ptr + n) % self.queue_size

    def _alpha(self, samples: dict) -> float:
        if all(k in samples for k in ("epoch", "iters", "num_iters_per_epoch")):  # LAVIS's ramp
            step, ramp = samples["epoch"] * samples["num_iters_per_epoch"] + samples["iters"], \
                2 * samples["num_iters_per_epoch"]
        else:
            step, ramp = self._steps, self.alpha_warmup_steps
        return self.alpha * (min(1.0, step / ramp) if ramp > 0 else 1.0)

    def forward(self, samples: dict) -> dict:
        self.require(samples, "image", "text_input", who="BlipRetrieval.forward")
        alpha = self._alpha(samples)
        self._steps += 1
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        image_embeds = self.encode_image(samples["image"])
        image_feat = self.image_feature(image_embeds[:, 0])
        tokens = self.tokenize(samples["text_input"], padding="max_length")
        text_feat = F.normalize(self.text_proj(self.encode_text(tokens)[:, 0]), dim=-1)
        batch = image_feat.shape[0]
        ids = self.image_ids(samples, batch).view(-1, 1)
        idx_all = torch.cat([ids.t(), self.idx_queue.clone().detach()], dim=1)
        pos = (ids == idx_all).float()
        sim_targets = pos / pos.sum(1, keepdim=True)

        with torch.no_grad():
            self._momentum_update()
            image_feat_m = F.normalize(self.vision_proj_m(self.visual_encoder_m(samples["image"].to(self.device))[:, 0]),
                                       dim=-1)
            image_feat_m_all = torch.cat([image_feat_m.t(), self.image_queue.clone().detach()], dim=1)
            text_m = self.text_encoder_m(tokens.input_ids, attention_mask=tokens.attention_mask, return_dict=True)
            text_feat_m = F.normalize(self.text_proj_m(text_m.last_hidden_state[:, 0]), dim=-1)
            text_feat_m_all = torch.cat([text_feat_m.t(), self.text_queue.clone().detach()], dim=1)
            i2t_targets = alpha * F.softmax(image_feat_m @ text_feat_m_all / self.temp, dim=1) + (1 - alpha) * sim_targets
            t2i_targets = alpha * F.softmax(text_feat_m @ image_feat_m_all / self.temp, dim=1) + (1 - alpha) * sim_targets
        sim_i2t = image_feat @ text_feat_m_all / self.temp
        sim_t2i = text_feat @ image_feat_m_all / self.temp
        loss_itc = (-(F.log_softmax(sim_i2t, dim=1) * i2t_targets).sum(1).mean()
                    - (F.log_softmax(sim_t2i, dim=1) * t2i_targets).sum(1).mean()) / 2
        self._enqueue(image_feat_m, text_feat_m, ids)

        loss_itm = self._itm_loss(image_embeds, image_feat, text_feat, tokens, ids.view(-1))
        loss = loss_itc + loss_itm
        return {"loss": loss, "loss_itc": loss_itc.detach(), "loss_itm": loss_itm.detach(), "n_tokens": batch}

    def _itm_loss(self, image_embeds, image_feat, text_feat, tokens, ids):
        batch = image_embeds.shape[0]
        ids_all = L.gather_no_grad(ids)
        positives = L.same_id_mask(ids, ids_all)
        with torch.no_grad():
            sim_i2t = image_feat @ L.gather_no_grad(text_feat).t() / self.temp
            sim_t2i = text_feat @ L.gather_no_grad(image_feat).t() / self.temp
        neg_image_idx, neg_text_idx = L.sample_hard_negatives(sim_i2t, sim_t2i, positives)
        input_ids_all, atts_all = L.gather_no_grad(tokens.input_ids), L.gather_no_grad(tokens.attention_mask)
        image_all = L.gather_with_grad(image_embeds)
        # [positive pairs | (negative image, text) | (image, negative text)]
        input_ids = torch.cat([tokens.input_ids, tokens.input_ids, input_ids_all[neg_text_idx]])
        atts = torch.cat([tokens.attention_mask, tokens.attention_mask, atts_all[neg_text_idx]])
        images = torch.cat([image_embeds, image_all[neg_image_idx], image_embeds])
        logits = self.itm_head(self.multimodal(images, input_ids, atts)[:, 0])
        return F.cross_entropy(logits, L.itm_labels(batch, logits.device))


@registry.register_model("blip_image_text_matching")
class BlipITM(BlipEncoderPair):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "base": "configs/models/blip/blip_itm_base.yaml",
        "large": "configs/models/blip/blip_itm_large.yaml",
        "tiny": "configs/models/blip/blip_itm_tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "base"
    # It reads the retrieval files, which also hold the momentum encoders and queues.
    DROPPABLE_KEYS = (r".*_m\.", r"(image|text|idx)_queue$", r"queue_ptr$")

    def __init__(self, **kwargs):
        super().__init__(with_itm_head=True, **kwargs)

    @torch.no_grad()
    def forward(self, samples: dict, match_head: str = "itm") -> torch.Tensor:
        self.require(samples, "image", "text_input", who="BlipITM.forward")
        image_embeds = self.encode_image(samples["image"])
        tokens = self.tokenize(samples["text_input"])
        if match_head == "itm":
            return self.itm_head(self.multimodal(image_embeds, tokens.input_ids, tokens.attention_mask)[:, 0])
        if match_head == "itc":
            text_feat = F.normalize(self.text_proj(self.encode_text(tokens)[:, 0]), dim=-1)
            return self.image_feature(image_embeds[:, 0]) @ text_feat.t()
        raise ValueError(f"match_head must be 'itm' or 'itc', got {match_head!r}")
