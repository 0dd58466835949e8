"""``gpt_dialogue``: GPT-2 that reads projected video features before the dialogue text.

transformers' ``GPT2LMHeadModel`` is built from a config (random init; ``lm_path`` may name
a local pretrained GPT-2 directory). A linear map projects each video frame (visual and
audio features concatenated) to the embedding width; the frames are prepended to the
token embeddings. Loss = LM cross-entropy on the answer tokens + ``video_loss_weight`` x
MSE of predicting each next frame's features from the hidden state of the current one
(the AVSD tutorial's auxiliary loss).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from lavis_lite.common.checkpoint import WEIGHTS_NAME
from lavis_lite.common.registry import registry
from lavis_lite.models.base_model import BaseModel

from .processors import IGNORE_INDEX
from .tokenizer import BOS, EOS, PAD, load_dialogue_tokenizer, special_token_ids


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding (the same rule transformers' generate uses)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


@registry.register_model("gpt_dialogue")
class GPTDialogue(BaseModel):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny": "configs/models/gpt_dialogue_tiny.yaml",
        "base": "configs/models/gpt_dialogue_base.yaml",
    }
    DEFAULT_MODEL_TYPE = "tiny"

    def __init__(self, lm, tokenizer, video_feature_dim: int, video_loss_weight: float = 1.0):
        super().__init__()
        self.lm, self.tokenizer = lm, tokenizer
        self.video_feature_dim, self.video_loss_weight = int(video_feature_dim), float(video_loss_weight)
        width = lm.config.n_embd
        self.video_proj = nn.Linear(self.video_feature_dim, width)
        self.video_head = nn.Linear(width, self.video_feature_dim)  # predicts the next frame's features
        self.ids = special_token_ids(tokenizer)

    @classmethod
    def from_config(cls, cfg):
        from transformers import GPT2Config, GPT2LMHeadModel

        tokenizer = load_dialogue_tokenizer(cfg.get("tokenizer_path", None))
        ids = special_token_ids(tokenizer)
        if cfg.get("lm_path", None):
            lm = GPT2LMHeadModel.from_pretrained(cfg.lm_path, local_files_only=True)
            lm.resize_token_embeddings(len(tokenizer))
        else:
            config = GPT2Config(
                vocab_size=len(tokenizer), n_positions=cfg.get("n_positions", 256), n_embd=cfg.get("n_embd", 64),
                n_layer=cfg.get("n_layer", 2), n_head=cfg.get("n_head", 2),
                resid_pdrop=cfg.get("dropout", 0.1), embd_pdrop=cfg.get("dropout", 0.1),
                attn_pdrop=cfg.get("dropout", 0.1),
                bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD],
            )
            lm = GPT2LMHeadModel(config)
        if cfg.get("video_feature_dim", None) is None:
            raise KeyError("gpt_dialogue config needs 'video_feature_dim' (width of the concatenated features)")
        model = cls(lm, tokenizer, cfg.video_feature_dim, cfg.get("video_loss_weight", 1.0))
        if cfg.get("checkpoint", None):  # e.g. a trained checkpoint for evaluate.py
            path = os.path.expanduser(str(cfg.checkpoint))
            model.load_checkpoint(os.path.join(path, WEIGHTS_NAME) if os.path.isdir(path) else path)
        return model

    # ---- inputs -----------------------------------------------------------
    def _check_video(self, video_fts: torch.Tensor) -> None:
        if video_fts.ndim != 3 or video_fts.shape[-1] != self.video_feature_dim:
            raise ValueError(
                f"video_fts must be [batch, frames, {self.video_feature_dim}] (model.video_feature_dim), "
                f"got {tuple(video_fts.shape)}; set model.video_feature_dim to the width of the "
                f"concatenated visual+audio features"
            )

    def _joint_inputs(self, samples: dict, ids_key: str, types_key: str, mask_key: str):
        """Prepend projected video frames to token embeddings: (embeds, token types, mask)."""
        video_fts = samples["video_fts"].to(self.device, dtype=self.video_proj.weight.dtype)
        self._check_video(video_fts)
        ids = samples[ids_key].to(self.device)
        embeds = torch.cat([self.video_proj(video_fts), self.lm.transformer.wte(ids)], dim=1)
        types = torch.cat([samples["video_token_type_ids"], samples[types_key]], dim=1).to(self.device)
        mask = torch.cat([samples["video_mask"], samples[mask_key]], dim=1).to(self.device)
        longest = int(mask.sum(1).max())
        if longest > self.lm.config.n_positions:
            raise ValueError(f"a sample has {longest} positions (frames + tokens) but model.n_positions is "
                             f"{self.lm.config.n_positions}; lower the processors' max_frames / max_length")
        return embeds, types, mask

    # ---- training -----------------------------------------------------------
    def forward(self, samples: dict) -> dict:
        embeds, types, mask = self._joint_inputs(samples, "input_ids", "token_type_ids", "attention_mask")
        n_frames = samples["video_fts"].shape[1]
        hidden = self.lm.transformer(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types,
                                     position_ids=positions_from_mask(mask)).last_hidden_state
        # LM loss on the answer tokens only (the text part; labels are -100 elsewhere).
        logits = self.lm.lm_head(hidden[:, n_frames:])
        labels = samples["labels"].to(self.device)
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        supervised = shift_labels != IGNORE_INDEX
        n_tokens = int(supervised.sum())
        token_nll = F.cross_entropy(shift_logits.transpose(1, 2).float(), shift_labels,
                                    ignore_index=IGNORE_INDEX, reduction="none")  # [B, L-1], 0 where ignored
        lm_loss = token_nll.sum() / max(n_tokens, 1)
        n_correct = int(((shift_logits.argmax(-1) == shift_labels) & supervised).sum())
        video_loss = self.video_loss(hidden[:, :n_frames], samples["video_fts"], samples["video_mask"])
        loss = lm_loss + self.video_loss_weight * video_loss
        return {"loss": loss, "n_tokens": n_tokens, "n_correct": n_correct,
                "lm_loss": lm_loss.detach(), "video_loss": video_loss.detach(),
                # per sample, for evaluation records: summed answer-token NLL and answer tokens
                "answer_nll": token_nll.detach().sum(1), "answer_tokens": supervised.sum(1)}

    def video_loss(self, video_hidden: torch.Tensor, video_fts: torch.Tensor, video_mask: torch.Tensor):
        """MSE between the prediction at frame t and the features of frame t+1 (both real)."""
        if video_fts.shape[1] < 2:
            return video_hidden.sum() * 0.0
        target = video_fts[:, 1:].to(video_hidden.device, dtype=torch.float32)
        valid = video_mask[:, 1:].to(video_hidden.device).bool()
        pred = self.video_head(video_hidden[:, :-1]).float()
        err = ((pred - target) ** 2).mean(-1)
        return (err * valid).sum() / valid.sum().clamp(min=1)

    # ---- inference ------------------------------------------------------------
    @torch.no_grad()
    def generate(self, samples: dict, num_beams: int = 1, max_new_tokens: int = 30, min_length: int = 1,
                 top_p: float = 0.9, temperature: float = 1.0, repetition_penalty: float = 1.0,
                 do_sample: bool = False) -> list[str]:
        """Answer the last question of each sample (from ``prompt_ids``, left-padded)."""
        embeds, types, mask = self._joint_inputs(samples, "prompt_ids", "prompt_token_type_ids", "prompt_mask")
        room = self.lm.config.n_positions - int(mask.sum(1).max())
        if max_new_tokens > room:
            raise ValueError(f"max_new_tokens={max_new_tokens} does not fit: the longest prompt leaves {room} of "
                             f"model.n_positions={self.lm.config.n_positions} positions")
        kwargs = dict(top_p=top_p, temperature=temperature) if do_sample else {}
        out = self.lm.generate(
            inputs_embeds=embeds, attention_mask=mask, token_type_ids=types,
            num_beams=num_beams, max_new_tokens=max_new_tokens, min_new_tokens=min_length,
            repetition_penalty=repetition_penalty, do_sample=do_sample,
            eos_token_id=self.ids[EOS], pad_token_id=self.ids[PAD], **kwargs,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
