"""Processors of the AVSD example: video features and dialogue text.

``gpt_video_ft``: ``(feature_root, video_id) -> {"video_fts": [T, D], "token_type_ids": [T]}``
loads ``<feature_root>/<name>/<video_id>.npy`` for every configured visual and audio
stream, cuts them to the shortest, concatenates them along the feature axis.

``gpt_dialogue``: ``annotation -> {"input_ids", "token_type_ids", "labels", "prompt_length"}``
for the sequence ``<bos> caption summary | <speaker1> q | <speaker2> a | ... | <speaker1> q |
<speaker2> answer <eos>``; token types name the speaker of each segment and labels are
set on the answer (and its ``<eos>``) only. ``prompt_length`` ends just after the answer's
``<speaker2>``, which is where generation starts.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from omegaconf import OmegaConf

from lavis_lite.common.registry import registry
from lavis_lite.processors.base_processor import BaseProcessor

from .tokenizer import BOS, CAPTION, EOS, PAD, SPEAKER1, SPEAKER2, VIDEO, load_dialogue_tokenizer, special_token_ids

IGNORE_INDEX = -100


def pad_sequences(seqs: list[torch.Tensor], value, side: str = "right") -> torch.Tensor:
    """Stack 1-D or 2-D tensors of different lengths (dim 0) into [B, Lmax, ...]."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
    longest = max(len(s) for s in seqs)
    out = seqs[0].new_full((len(seqs), longest, *seqs[0].shape[1:]), value)
    for i, s in enumerate(seqs):
        if side == "right":
            out[i, :len(s)] = s
        else:
            out[i, longest - len(s):] = s
    return out


def lengths_to_mask(lengths: list[int], side: str = "right") -> torch.Tensor:
    """[B, Lmax] long mask, 1 on real positions."""
    longest = max(lengths)
    steps = torch.arange(longest).unsqueeze(0)
    lengths_t = torch.tensor(lengths).unsqueeze(1)
    mask = steps < lengths_t if side == "right" else steps >= longest - lengths_t
    return mask.long()


def _as_list(value) -> list[str]:
    if value in (None, "none", ""):
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


@registry.register_processor("gpt_video_ft")
class GPTVideoFeatureProcessor(BaseProcessor):
    def __init__(self, visual_ft=("i3d_rgb",), audio_ft=("vggish",), max_frames: int | None = None,
                 tokenizer_path: str | None = None):
        super().__init__()
        self.visual_ft, self.audio_ft = _as_list(visual_ft), _as_list(audio_ft)
        if not self.visual_ft + self.audio_ft:
            raise ValueError("gpt_video_ft needs at least one visual_ft or audio_ft feature name")
        self.max_frames = max_frames
        self.video_type_id = special_token_ids(load_dialogue_tokenizer(tokenizer_path))[VIDEO]

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg if cfg is not None else OmegaConf.create()
        return cls(visual_ft=cfg.get("visual_ft", ["i3d_rgb"]), audio_ft=cfg.get("audio_ft", ["vggish"]),
                   max_frames=cfg.get("max_frames", None), tokenizer_path=cfg.get("tokenizer_path", None))

    def load(self, feature_root: str, name: str, video_id: str) -> np.ndarray:
        path = os.path.join(feature_root, name, f"{video_id}.npy")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Feature file {path!r} (feature {name!r} of video {video_id!r}) does not exist")
        array = np.load(path, allow_pickle=False)
        if array.ndim != 2 or len(array) == 0:
            raise ValueError(f"Feature file {path!r} must hold a non-empty [frames, dim] array, got {array.shape}")
        return array

    def __call__(self, feature_root: str, video_id: str) -> dict[str, torch.Tensor]:
        streams = [self.load(feature_root, name, video_id) for name in self.visual_ft + self.audio_ft]
        n_frames = min(len(s) for s in streams)  # streams are sampled at different rates
        if self.max_frames:
            n_frames = min(n_frames, int(self.max_frames))
        fts = np.concatenate([s[:n_frames] for s in streams], axis=1).astype(np.float32)
        return {"video_fts": torch.from_numpy(fts),
                "token_type_ids": torch.full((n_frames,), self.video_type_id, dtype=torch.long)}

    @staticmethod
    def padding(video_fts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-pad [T_i, D] arrays to [B, Tmax, D]; returns (features, mask [B, Tmax])."""
        return pad_sequences(video_fts, 0.0), lengths_to_mask([len(v) for v in video_fts])


@registry.register_processor("gpt_dialogue")
class GPTDialogueProcessor(BaseProcessor):
    def __init__(self, max_turns: int = 3, use_caption: bool = True, tokenizer_path: str | None = None,
                 max_length: int | None = None):
        super().__init__()
        if max_turns < 0:
            raise ValueError(f"max_turns must be >= 0, got {max_turns}")
        self.max_turns, self.use_caption, self.max_length = max_turns, use_caption, max_length
        self.tokenizer = load_dialogue_tokenizer(tokenizer_path)
        self.ids = special_token_ids(self.tokenizer)

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg if cfg is not None else OmegaConf.create()
        return cls(max_turns=cfg.get("max_turns", 3), use_caption=cfg.get("use_caption", True),
                   tokenizer_path=cfg.get("tokenizer_path", None), max_length=cfg.get("max_length", None))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def segments(self, ann: dict) -> list[tuple[str, list[int]]]:
        """[(speaker token, token ids)] for caption, kept history turns, question and answer."""
        caption = " ".join(t for t in (ann.get("caption", ""), ann.get("summary", "")) if t)
        segs = [(CAPTION, [self.ids[BOS]] + (self.encode(caption) if self.use_caption else []))]
        history = ann["dialog"][-self.max_turns:] if self.max_turns else []
        for turn in history:
            segs += [(SPEAKER1, self.encode(turn["question"])), (SPEAKER2, self.encode(turn["answer"]))]
        segs.append((SPEAKER1, self.encode(ann["question"])))
        segs.append((SPEAKER2, self.encode(ann["answer"]) + [self.ids[EOS]]))
        return segs

    def __call__(self, ann: dict) -> dict:
        segs = self.segments(ann)
        input_ids, types, labels = [], [], []
        for k, (speaker, ids) in enumerate(segs):
            # Every utterance opens with its speaker token, so the prompt ends with <speaker2>
            # and generated tokens inherit the answer's token type.
            piece = ids if speaker == CAPTION else [self.ids[speaker]] + ids
            input_ids += piece
            types += [self.ids[speaker]] * len(piece)
            is_answer = k == len(segs) - 1
            labels += ([IGNORE_INDEX] + ids) if is_answer else [IGNORE_INDEX] * len(piece)
        prompt_length = len(input_ids) - len(segs[-1][1])
        if self.max_length and len(input_ids) > self.max_length:
            # Drop the oldest context (after <bos>) and keep the question and answer.
            cut = len(input_ids) - self.max_length
            question_start = len(input_ids) - (len(segs[-1][1]) + 1) - (len(segs[-2][1]) + 1)
            if 1 + cut > question_start:
                raise ValueError(f"max_length {self.max_length} cannot hold <bos>, the question and the answer "
                                 f"of this turn ({len(input_ids) - question_start + 1} tokens)")
            keep = [0] + list(range(1 + cut, len(input_ids)))
            input_ids, types, labels = ([x[i] for i in keep] for x in (input_ids, types, labels))
            prompt_length -= cut
        return {"input_ids": torch.tensor(input_ids), "token_type_ids": torch.tensor(types),
                "labels": torch.tensor(labels), "prompt_length": prompt_length}

    def padding(self, seqs: list[torch.Tensor], value: int | None = None, side: str = "right") -> torch.Tensor:
        return pad_sequences(seqs, self.ids[PAD] if value is None else value, side)

    @staticmethod
    def get_attention_mask(lengths: list[int], side: str = "right") -> torch.Tensor:
        return lengths_to_mask(lengths, side)
