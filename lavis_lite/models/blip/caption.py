"""BLIP image captioning (registered "blip_caption"; types base_coco, large_coco, tiny).

As LAVIS's BlipCaption: ViT -> ``text_decoder`` (BERT LM cross-attending to every image token).
Training: the caption (which the ``blip_caption`` text processor prefixes with the prompt
``"a picture of "``) starts with ``[DEC]`` instead of ``[CLS]``; the prompt's tokens and padding are
masked out of the targets; cross-entropy with label smoothing 0.1.
Generation starts from ``[DEC] a picture of``, stops at ``[SEP]``, and returns the text after the prompt;
``max_length`` / ``min_length`` count the prompt's tokens, as in LAVIS.
"""
from __future__ import annotations

import torch

from lavis_lite.common.registry import registry
from lavis_lite.models.blip.base import BlipBase
from lavis_lite.models.blip.text import build_text_decoder, init_blip_tokenizer, text_config


@registry.register_model("blip_caption")
class BlipCaption(BlipBase):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "base_coco": "configs/models/blip/blip_caption_base_coco.yaml",
        "large_coco": "configs/models/blip/blip_caption_large_coco.yaml",
        "tiny": "configs/models/blip/blip_caption_tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "base_coco"
    # Fine-tuning starts from the pretrain file, which also holds the ITC/ITM text encoder.
    DROPPABLE_KEYS = BlipBase.PRETRAIN_EXTRAS + (r"text_encoder\.",)

    def __init__(self, vit_type: str = "base", image_size: int = 384, vit_grad_ckpt: bool = False,
                 vit_ckpt_layer: int = 0, drop_path_rate: float | None = None, vit_sizes: dict | None = None,
                 med_config: dict | None = None, tokenizer_vocab: str | None = "bert-base-uncased",
                 prompt: str = "a picture of ", max_txt_len: int = 40, label_smoothing: float = 0.1):
        super().__init__()
        self.tokenizer = init_blip_tokenizer(tokenizer_vocab)
        self.visual_encoder = self.build_vit(vit_type, image_size, vit_grad_ckpt, vit_ckpt_layer, drop_path_rate,
                                             vit_sizes)
        self.text_decoder = build_text_decoder(text_config(med_config, self.tokenizer, self.visual_encoder.num_features,
                                                           label_smoothing))
        self.prompt = prompt
        self.prompt_length = len(self.tokenizer(self.prompt).input_ids) - 1  # [CLS]/[DEC] + prompt words
        self.max_txt_len = max_txt_len

    # ---- training ---------------------------------------------------------------
    def forward(self, samples: dict) -> dict:
        self.require(samples, "image", "text_input", who="BlipCaption.forward")
        texts = list(samples["text_input"])
        if self.prompt and not all(t.startswith(self.prompt) for t in texts):
            bad = next(t for t in texts if not t.startswith(self.prompt))
            raise ValueError(f"BlipCaption: caption {bad!r} does not start with the prompt {self.prompt!r}; "
                             f"set the text processor's prompt (blip_caption, prompt: {self.prompt!r}) as LAVIS does")
        image_embeds = self.encode_image(samples["image"])
        text = self.tokenize(texts)
        input_ids = text.input_ids.clone()
        input_ids[:, 0] = self.tokenizer.bos_token_id
        targets = input_ids.masked_fill(input_ids == self.tokenizer.pad_token_id, -100)
        targets[:, :self.prompt_length] = -100
        out = self.text_decoder(input_ids, attention_mask=text.attention_mask, encoder_hidden_states=image_embeds,
                                labels=targets, return_dict=True)
        supervised = targets[:, 1:] != -100
        n_correct = ((out.logits[:, :-1].argmax(-1) == targets[:, 1:]) & supervised).sum()
        return {"loss": out.loss, "n_tokens": int(supervised.sum()), "n_correct": int(n_correct)}

    # ---- generation -------------------------------------------------------------
    @torch.no_grad()
    def generate(self, samples: dict, use_nucleus_sampling: bool = False, num_beams: int = 3, max_length: int = 30,
                 min_length: int = 10, top_p: float = 0.9, repetition_penalty: float = 1.0, num_captions: int = 1,
                 max_new_tokens: int | None = None, do_sample: bool | None = None, temperature: float = 1.0,
                 **unused) -> list[str]:
        """LAVIS's signature; ``max_new_tokens`` / ``do_sample`` / ``temperature`` (lavis_lite's task options)
        are accepted too. ``samples["prompt"]`` (one string for the batch, optional) replaces the model's prompt."""
        self.require(samples, "image", who="BlipCaption.generate")
        unknown = sorted(set(unused) - {"n_images"})
        if unknown:
            raise TypeError(f"BlipCaption.generate got unknown arguments {unknown}")
        prompt = self._batch_prompt(samples.get("prompt"))
        sample = bool(use_nucleus_sampling or do_sample)
        image_embeds = self.encode_image(samples["image"]).repeat_interleave(num_captions, dim=0)
        ids = self.tokenizer([prompt] * image_embeds.shape[0], return_tensors="pt").input_ids.to(self.device)
        ids[:, 0] = self.tokenizer.bos_token_id
        ids = ids[:, :-1]  # drop [SEP]: generation continues the prompt
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        lengths = {"max_new_tokens": max_new_tokens} if max_new_tokens else {"max_length": max_length}
        out = self.text_decoder.generate(
            input_ids=ids, encoder_hidden_states=image_embeds, encoder_attention_mask=atts,
            eos_token_id=self.tokenizer.sep_token_id, pad_token_id=self.tokenizer.pad_token_id,
            do_sample=sample, num_beams=1 if sample else num_beams, top_p=top_p if sample else None,
            temperature=temperature if sample else None, repetition_penalty=repetition_penalty, min_length=min_length, **lengths)
        return self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)

    def _batch_prompt(self, prompts) -> str:
        if not prompts:
            return self.prompt
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(set(prompts)) != 1:
            raise ValueError(f"BlipCaption.generate: one prompt per batch, got {sorted(set(prompts))[:3]}")
        return prompts[0]
