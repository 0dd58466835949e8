"""BLIP-2 stage 1 (registered "blip2", alias "blip2_qformer"): the Q-Former learns, from a frozen
(or, in the tiny demo, trainable) image encoder, the visual features that matter for text.

Three losses as in LAVIS's Blip2Qformer, each switchable in YAML (``losses: {itc, itm, itg}``):
- ITC: query outputs vs the text's [CLS] feature, max over queries, learnable clamped temperature,
  features all-gathered with gradients, positives by image id (lavis_lite.models.blip2_losses);
- ITM: queries and text attend to each other (bidirectional mask); hard negatives drawn from the ITC
  similarities, never a pair showing the same image; a 2-way head on the mean of the query outputs;
- ITG: the text generated causally, conditioned on the queries (reusing the queries' cached keys and
  values; queries never see the text).

Parameter names are LAVIS's and the released blip2_pretrained*.pth's (visual_encoder, ln_vision,
query_tokens, Qformer.bert.*, Qformer.cls.*, vision_proj, text_proj, itm_head, temp).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from lavis_lite.common.registry import registry
from lavis_lite.models import blip2_losses as L
from lavis_lite.models.attention import set_attn_implementation
from lavis_lite.models.base_model import load_state_dict_file
from lavis_lite.models.bert_tokenizer import TextIdsMemo, init_bert_tokenizer
from lavis_lite.models.blip2 import Blip2Base

logger = logging.getLogger(__name__)

LOSS_NAMES = ("itc", "itm", "itg")
# Keys of a model YAML section that are not constructor arguments.
@dataclass
class BlipOutputFeatures:
    """LAVIS's unified feature output. ``image_embeds`` are the Q-Former's query outputs,
    ``image_embeds_frozen`` the image encoder's (after ln_vision); ``*_proj`` are normalised."""
    image_embeds: torch.Tensor | None = None
    image_embeds_proj: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    text_embeds_proj: torch.Tensor | None = None
    multimodal_embeds: torch.Tensor | None = None
    image_embeds_frozen: torch.Tensor | None = None


def _plain(cfg) -> dict:
    if cfg is None:
        return {}
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


@registry.register_model("blip2")
@registry.register_model("blip2_qformer")
class Blip2Qformer(Blip2Base):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain": "configs/models/blip2/blip2_pretrain.yaml",
        "tiny": "configs/models/blip2/blip2_tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "pretrain"

    def __init__(self, vit_model: str = "eva_clip_g", vit_checkpoint: str | None = None, img_size: int = 224,
                 drop_path_rate: float = 0.0, use_grad_checkpoint: bool = False, vit_precision: str = "fp16",
                 vit_sizes: dict | None = None, freeze_vit: bool = True, num_query_token: int = 32,
                 cross_attention_freq: int = 2, qformer_config: dict | None = None, embed_dim: int = 256,
                 max_txt_len: int = 32, tokenizer_vocab: str | None = "tiny", losses: dict | None = None,
                 load_pretrained: bool = False, pretrained: str | None = None,
                 vision_attn_implementation: str = "sdpa"):
        super().__init__()
        if tokenizer_vocab is None:
            raise ValueError("model.tokenizer_vocab is not set: give the path of a local bert-base-uncased "
                             "vocab.txt (or its folder), or 'tiny' for the small shipped vocab")
        self.tokenizer = init_bert_tokenizer(tokenizer_vocab)
        losses = {name: True for name in LOSS_NAMES} | dict(losses or {})
        unknown = sorted(set(losses) - set(LOSS_NAMES))
        if unknown:
            raise KeyError(f"Unknown Blip2Qformer losses {unknown}; known: {list(LOSS_NAMES)}")
        if not any(losses.values()):
            raise ValueError("Blip2Qformer: every loss is switched off (model.losses)")
        self.losses = {k: bool(v) for k, v in losses.items()}

        # Image encoder (EVA-ViT-G at full size; ``vit_sizes`` override its sizes for the tiny model).
        self.visual_encoder, self.ln_vision = self.init_vision_encoder(
            vit_model, img_size, drop_path_rate, use_grad_checkpoint, vit_precision, vit_checkpoint,
            **_plain(vit_sizes))
        self.freeze_vit = bool(freeze_vit)
        if self.freeze_vit:
            for module in (self.visual_encoder, self.ln_vision):
                for p in module.parameters():
                    p.requires_grad_(False)
            logger.info("freeze vision encoder")

        # Q-Former with its text side; the vocabulary includes [DEC] (30523 for bert-base-uncased).
        qcfg = _plain(qformer_config)
        if qcfg.get("vocab_size") is None:
            qcfg["vocab_size"] = len(self.tokenizer)
        if len(self.tokenizer) > qcfg["vocab_size"]:
            raise ValueError(f"Q-Former vocab_size {qcfg['vocab_size']} is smaller than the tokenizer "
                             f"({len(self.tokenizer)} tokens with [DEC]); fix model.qformer_config.vocab_size")
        self.Qformer, self.query_tokens = self.init_Qformer(
            num_query_token, self.visual_encoder.num_features, cross_attention_freq, qcfg, text_input=True)
        hidden = self.Qformer.config.hidden_size
        self.vision_proj = nn.Linear(hidden, embed_dim)
        self.text_proj = nn.Linear(hidden, embed_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.temp = nn.Parameter(0.07 * torch.ones([]))
        self.max_txt_len = max_txt_len
        self._freeze_unused_heads()
        if load_pretrained:
            if not pretrained:
                raise ValueError("model.load_pretrained is True but model.pretrained (a checkpoint path) is not set")
            self.load_from_pretrained(pretrained)
        for module in (self.visual_encoder, self.Qformer):
            set_attn_implementation(module, vision_attn_implementation)  # models/attention.py

    def _freeze_unused_heads(self) -> None:
        """Heads whose loss is off get no gradient: they stay out of the optimizer's work and of
        trainable-weights checkpoints, and DDP does not wait for their gradients."""
        unused = []
        if not self.losses["itc"]:  # ITM samples negatives from these similarities without gradient
            unused += [self.vision_proj, self.text_proj, self.temp]
        if not self.losses["itm"]:
            unused.append(self.itm_head)
        if not self.losses["itg"]:
            unused.append(self.Qformer.cls)
        for part in unused:
            for p in ([part] if isinstance(part, nn.Parameter) else part.parameters()):
                p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        model = cls(**cls.constructor_kwargs(cfg))
        model.partial_load = bool(cfg.get("partial_load", False))  # a checkpoint lacking trainable keys raises
        if cfg.get("checkpoint"):
            model.load_checkpoint(cfg["checkpoint"])
        return model

    def load_checkpoint(self, path_or_state, **kwargs):
        """As BaseModel's, accepting released BLIP-2 files, which store the LM-head bias twice
        (``Qformer.cls.predictions.decoder.bias`` is a tied alias of ``...predictions.bias``)."""
        state = load_state_dict_file(path_or_state) if isinstance(path_or_state, (str, os.PathLike)) \
            else dict(path_or_state)
        alias = "Qformer.cls.predictions.decoder.bias"
        if alias in state and alias not in self.state_dict():
            bias = state.pop(alias)
            state.setdefault("Qformer.cls.predictions.bias", bias)
        return super().load_checkpoint(state, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_vit:  # a frozen encoder stays in eval mode (no drop path)
            self.visual_encoder.eval()
        return self

    # ---- encoders ---------------------------------------------------------------
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image encoder output after ln_vision, [B, 1 + patches, C], in float32."""
        with self.maybe_autocast():
            embeds = self.visual_encoder(image.to(self.device, self.visual_encoder.cls_token.dtype))
        return self.ln_vision(embeds.float())

    def encode_queries(self, image_embeds: torch.Tensor, use_cache: bool = False):
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        return self.Qformer.bert(query_embeds=queries, encoder_hidden_states=image_embeds,
                                 encoder_attention_mask=atts, use_cache=use_cache)

    def tokenize(self, texts, padding="longest"):
        if isinstance(texts, str):
            texts = [texts]
        memo = self.__dict__.get("_text_ids")
        if memo is None or memo.tokenizer is not self.tokenizer or memo.max_length != self.max_txt_len:
            memo = self._text_ids = TextIdsMemo(self.tokenizer, self.max_txt_len)  # each text tokenised once
        return memo.encode(list(texts), padding).to(self.device)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.Qformer.bert(input_ids, attention_mask=attention_mask).last_hidden_state

    def _multimodal(self, image_embeds, input_ids, attention_mask) -> torch.Tensor:
        """Query outputs of queries and text attending to each other (the ITM view), [B, Q, H]."""
        queries = self.query_tokens.expand(input_ids.shape[0], -1, -1)
        query_atts = torch.ones(queries.shape[:-1], dtype=attention_mask.dtype, device=attention_mask.device)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.Qformer.bert(input_ids, query_embeds=queries,
                                attention_mask=torch.cat([query_atts, attention_mask], dim=1),
                                encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts)
        return out.last_hidden_state[:, :queries.shape[1]]

    # ---- training ---------------------------------------------------------------
    def forward(self, samples: dict) -> dict:
        for key in ("image", "text_input"):
            if key not in samples:
                raise KeyError(f"Blip2Qformer.forward needs samples[{key!r}]; got keys {sorted(samples)}")
        image, texts = samples["image"], list(samples["text_input"])
        batch = image.shape[0]
        if len(texts) != batch:
            raise ValueError(f"Blip2Qformer: {batch} images but {len(texts)} texts in the batch")
        rank, world = L.rank_and_world()
        if "image_id" in samples and samples["image_id"] is not None:
            image_ids = L.image_ids_to_tensor(samples["image_id"], self.device)
        else:  # every sample its own image
            image_ids = torch.arange(batch, device=self.device) + rank * batch
        L.clamp_temperature_(self.temp)

        image_embeds = self.encode_image(image)
        query_output = self.encode_queries(image_embeds, use_cache=self.losses["itg"])
        # Equal lengths on every rank so token ids can be all-gathered for ITM negatives.
        tokens = self.tokenize(texts, padding="max_length" if world > 1 else "longest")
        zero = image_embeds.new_zeros(())
        out = {"loss_itc": zero, "loss_itm": zero, "loss_itg": zero}

        if self.losses["itc"] or self.losses["itm"]:
            image_feats = F.normalize(self.vision_proj(query_output.last_hidden_state), dim=-1)
            text_feat = F.normalize(self.text_proj(self.encode_text(tokens.input_ids, tokens.attention_mask)[:, 0]),
                                    dim=-1)
            image_ids_all = L.gather_no_grad(image_ids)
            positives = L.same_id_mask(image_ids, image_ids_all)
            sim_i2t, sim_t2i = L.itc_similarities(image_feats, text_feat, L.gather_with_grad(image_feats),
                                                  L.gather_with_grad(text_feat), self.temp)
            if self.losses["itc"]:
                out["loss_itc"] = L.itc_loss(sim_i2t, sim_t2i, L.itc_targets(positives))
            if self.losses["itm"]:
                out["loss_itm"] = self._itm_loss(image_embeds, tokens, sim_i2t, sim_t2i, positives)
        if self.losses["itg"]:
            out["loss_itg"] = self._itg_loss(tokens, query_output.past_key_values)
        out["loss"] = out["loss_itc"] + out["loss_itm"] + out["loss_itg"]
        # ITC/ITM are per-sample losses: the runner weights micro-batches by samples.
        out["n_tokens"] = batch
        return out

    def _itm_loss(self, image_embeds, tokens, sim_i2t, sim_t2i, positives):
        batch = image_embeds.shape[0]
        ids_world = L.gather_no_grad(tokens.input_ids)
        atts_world = L.gather_no_grad(tokens.attention_mask)
        image_world = L.gather_with_grad(image_embeds)
        neg_image_idx, neg_text_idx = L.sample_hard_negatives(sim_i2t, sim_t2i, positives)
        # [positive pairs | (negative image, text) | (image, negative text)]
        input_ids = torch.cat([tokens.input_ids, tokens.input_ids, ids_world[neg_text_idx]])
        atts = torch.cat([tokens.attention_mask, tokens.attention_mask, atts_world[neg_text_idx]])
        images = torch.cat([image_embeds, image_world[neg_image_idx], image_embeds])
        logits = self.itm_head(self._multimodal(images, input_ids, atts)).mean(dim=1)
        return F.cross_entropy(logits, L.itm_labels(batch, logits.device))

    def _itg_loss(self, tokens, query_past):
        decoder_ids = tokens.input_ids.clone()
        decoder_ids[:, 0] = self.tokenizer.bos_token_id  # [CLS] -> [DEC]
        labels = decoder_ids.masked_fill(decoder_ids == self.tokenizer.pad_token_id, -100)
        query_atts = torch.ones(decoder_ids.shape[0], self.query_tokens.shape[1], dtype=tokens.attention_mask.dtype,
                                device=decoder_ids.device)
        lm = self.Qformer(decoder_ids, attention_mask=torch.cat([query_atts, tokens.attention_mask], dim=1),
                          past_key_values=query_past, labels=labels)
        return lm.loss

    # ---- features / scoring -------------------------------------------------------
    @torch.no_grad()
    def extract_features(self, samples: dict, mode: str = "multimodal") -> BlipOutputFeatures:
        """LAVIS's unified interface: mode "image" (samples["image"]), "text" (samples["text_input"])
        or "multimodal" (both)."""
        if mode not in ("image", "text", "multimodal"):
            raise ValueError(f"extract_features mode must be 'image', 'text' or 'multimodal', got {mode!r}")
        needs = {"image": ["image"], "text": ["text_input"], "multimodal": ["image", "text_input"]}[mode]
        for key in needs:
            if samples.get(key) is None:
                raise KeyError(f"extract_features(mode={mode!r}) needs samples[{key!r}]")
        feats = BlipOutputFeatures()
        if mode in ("image", "multimodal"):
            frozen = self.encode_image(samples["image"].to(self.device))
            feats.image_embeds_frozen = frozen
            if mode == "image":
                feats.image_embeds = self.encode_queries(frozen).last_hidden_state
                feats.image_embeds_proj = F.normalize(self.vision_proj(feats.image_embeds), dim=-1)
        if mode in ("text", "multimodal"):
            tokens = self.tokenize(samples["text_input"])
            if mode == "text":
                feats.text_embeds = self.encode_text(tokens.input_ids, tokens.attention_mask)
                feats.text_embeds_proj = F.normalize(self.text_proj(feats.text_embeds), dim=-1)
            else:
                feats.multimodal_embeds = self._multimodal(frozen, tokens.input_ids, tokens.attention_mask)
        return feats

    @torch.no_grad()
    def itm_scores(self, image_embeds_frozen: torch.Tensor, texts) -> torch.Tensor:
        """ITM "match" logit for each (image, text) pair, [B] (LAVIS's compute_itm)."""
        tokens = self.tokenize(texts)
        logits = self.itm_head(self._multimodal(image_embeds_frozen.to(self.device), tokens.input_ids,
                                                tokens.attention_mask)).mean(dim=1)
        return logits[:, 1]
