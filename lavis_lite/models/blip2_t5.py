"""BLIP-2 with a frozen Flan-T5 (LAVIS's ``blip2_t5``): EVA-ViT-G -> Q-Former -> ``t5_proj`` -> T5.

Encoder-decoder loss as LAVIS: the projected queries are prepended to the encoder's input embeddings of
``text_input``, and the decoder learns ``text_output``. A batch without ``text_output`` (captions) puts the
model's ``prompt`` on the encoder side and learns ``text_input`` on the decoder side — the prompt is
context, never a target. ``generate`` encodes the queries + ``samples["prompt"]`` (or ``prompt``);
``predict_answers`` formats questions with LAVIS's VQA prompt (``"Question: {} Short answer:"``).

Parameter names are LAVIS's: ``visual_encoder``, ``ln_vision``, ``Qformer`` (no text side), ``query_tokens``,
``t5_proj``, ``t5_model`` (transformers' ``T5ForConditionalGeneration``, frozen; bf16 in LAVIS).
"""
from __future__ import annotations

import torch
from torch import nn

from lavis_lite.common.registry import registry
from lavis_lite.models.blip2_llm_base import Blip2LLMBase, as_text_list, generation_kwargs, vision_kwargs
from lavis_lite.models.blip2_opt import lemmatize


class T5Seq2SeqMixin:
    """Encoder-decoder loss and generation shared by blip2_t5 and blip2_t5_instruct."""

    input_truncation_side = "right"  # InstructBLIP keeps the end of a long instruction

    def _t5_encoder_inputs(self, inputs_t5: torch.Tensor, texts: list[str]):
        self.t5_tokenizer.truncation_side = self.input_truncation_side
        tokens = self.t5_tokenizer(texts, padding="longest", truncation=True, max_length=self.max_txt_len,
                                   return_tensors="pt").to(self.device)
        embeds = self.t5_model.get_input_embeddings()(tokens.input_ids)
        inputs_embeds = torch.cat([inputs_t5.to(embeds.dtype), embeds], dim=1)
        atts = torch.cat([torch.ones(inputs_t5.shape[:2], dtype=tokens.attention_mask.dtype, device=self.device),
                          tokens.attention_mask], dim=1)
        return inputs_embeds, atts

    def _t5_loss(self, inputs_t5: torch.Tensor, encoder_texts: list[str], targets_text: list[str],
                 max_output_len: int) -> dict:
        inputs_embeds, atts = self._t5_encoder_inputs(inputs_t5, encoder_texts)
        self.t5_tokenizer.truncation_side = "right"
        out = self.t5_tokenizer(targets_text, padding="longest", truncation=True, max_length=max_output_len,
                                return_tensors="pt").to(self.device)
        targets = out.input_ids.masked_fill(out.input_ids == self.t5_tokenizer.pad_token_id, -100)
        with self.maybe_autocast(torch.bfloat16):
            outputs = self.t5_model(inputs_embeds=inputs_embeds, attention_mask=atts,
                                    decoder_attention_mask=out.attention_mask, labels=targets)
        return {"loss": outputs.loss, "n_tokens": int((targets != -100).sum())}

    def _t5_generate(self, inputs_t5: torch.Tensor, prompts: list[str], **gen) -> list[str]:
        inputs_embeds, atts = self._t5_encoder_inputs(inputs_t5, prompts)
        with self.maybe_autocast(torch.bfloat16):
            out = self.t5_model.generate(inputs_embeds=inputs_embeds, attention_mask=atts, **gen)
        return [t.strip() for t in self.t5_tokenizer.batch_decode(out, skip_special_tokens=True)]


@registry.register_model("blip2_t5")
class Blip2T5(T5Seq2SeqMixin, Blip2LLMBase):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_flant5xl": "configs/models/blip2/blip2_pretrain_flant5xl.yaml",
        "pretrain_flant5xxl": "configs/models/blip2/blip2_pretrain_flant5xxl.yaml",
        "caption_coco_flant5xl": "configs/models/blip2/blip2_caption_flant5xl.yaml",
        "tiny": "configs/models/blip2/blip2_t5_tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "pretrain_flant5xl"
    LLM_FAMILY = "t5"
    ARCH_NAME = "blip2_t5"
    VQA_PROMPT = "Question: {} Short answer:"

    def __init__(self, vit_model="eva_clip_g", vit_checkpoint=None, img_size=224, drop_path_rate=0.0,
                 use_grad_checkpoint=False, vit_precision="fp16", vit_sizes=None, freeze_vit=True,
                 ln_vision_eps=1e-5, num_query_token=32, cross_attention_freq=2, qformer_config=None,
                 q_former_model=None, t5_model=None, llm_config=None, tokenizer=None, llm_dtype="bf16",
                 prompt="", max_txt_len=32, apply_lemmatizer=False, vision_attn_implementation="sdpa"):
        super().__init__()
        self.t5_model, self.t5_tokenizer, self.t5_proj = self._init_llm_side(
            t5_model, "t5_model", llm_config, tokenizer, llm_dtype, "Flan-T5 (e.g. google/flan-t5-xl)",
            vision_kwargs(locals()))
        self._init_text_side(prompt, max_txt_len, apply_lemmatizer, q_former_model)

    @property
    def llm_proj_layer(self) -> nn.Linear:
        return self.t5_proj

    def forward(self, samples: dict) -> dict:
        if "text_input" not in samples:
            raise KeyError(f"Blip2T5.forward needs samples['text_input']; got keys {sorted(samples)}")
        inputs_t5 = self.image_inputs(samples)
        batch = inputs_t5.shape[0]
        if samples.get("text_output") is not None:  # LAVIS: input text -> output text
            encoder = as_text_list(samples["text_input"], batch, "text_input")
            decoder = as_text_list(samples["text_output"], batch, "text_output")
        else:  # captions: the prompt is encoder context, the caption the target
            encoder = [self.prompt] * batch
            decoder = as_text_list(samples["text_input"], batch, "text_input")
        return self._t5_loss(inputs_t5, encoder, decoder, self.max_txt_len)

    @torch.no_grad()
    def generate(self, samples: dict, use_nucleus_sampling=False, num_beams=5, max_length=30, min_length=1,
                 top_p=0.9, repetition_penalty=1.0, length_penalty=1.0, num_captions=1, temperature=1.0,
                 **kwargs) -> list[str]:
        inputs_t5 = self.image_inputs(samples)
        prompt = samples.get("prompt")
        prompts = as_text_list(self.prompt if prompt is None else prompt, inputs_t5.shape[0], "prompt")
        kwargs.pop("n_images", None)
        gen = generation_kwargs(use_nucleus_sampling, num_beams, max_length, min_length, top_p, repetition_penalty,
                                length_penalty, num_captions, temperature, **kwargs)
        return self._t5_generate(inputs_t5, prompts, **gen)

    @torch.no_grad()
    def predict_answers(self, samples: dict, num_beams=5, inference_method="generate", max_len=10, min_len=1,
                        num_ans_candidates=128, answer_list=None, prompt="", length_penalty=-1, **kwargs):
        if inference_method != "generate":
            raise ValueError(f"{type(self).__name__} answers by generation only; got inference_method={inference_method!r}")
        inputs_t5 = self.image_inputs(samples)
        questions = as_text_list(samples["text_input"], inputs_t5.shape[0], "text_input")
        prompts = [prompt.format(q) for q in questions] if prompt else questions
        answers = self._t5_generate(inputs_t5, prompts,
                                    **generation_kwargs(False, num_beams, max_len, min_len, length_penalty=length_penalty))
        if self._apply_lemmatizer or samples.get("apply_lemmatizer"):
            answers = lemmatize(answers)
        return answers
