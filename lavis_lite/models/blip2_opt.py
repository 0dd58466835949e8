"""BLIP-2 with a frozen OPT decoder (LAVIS's ``blip2_opt``): EVA-ViT-G -> Q-Former -> ``opt_proj`` -> OPT.

As LAVIS: the projected queries are prepended to the OPT input embeddings of ``text_input + "\\n"``; the
loss is next-token cross-entropy over the text, with the ``prompt``'s tokens (the caption processor puts
the prompt in front of every caption, e.g. "a photo of ") masked from the targets. ``generate`` continues
``samples["prompt"]`` (or the model's ``prompt``) after the queries and stops at "\\n";
``predict_answers`` formats each question with LAVIS's VQA prompt (default ``"Question: {} Answer:"``).

Parameter names are LAVIS's: ``visual_encoder``, ``ln_vision``, ``Qformer`` (no text side), ``query_tokens``,
``opt_proj``, ``opt_model`` (transformers' ``OPTForCausalLM``, frozen).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from lavis_lite.common.registry import registry
from lavis_lite.models.blip2_llm_base import Blip2LLMBase, as_text_list, generation_kwargs, vision_kwargs

logger = logging.getLogger(__name__)


def lemmatize(answers: list[str]) -> list[str]:
    """LAVIS's optional answer lemmatizer (spaCy ``en_core_web_sm``, only when asked for)."""
    try:
        import spacy
        nlp = spacy.load("en_core_web_sm")
    except (ImportError, OSError) as err:
        raise RuntimeError("apply_lemmatizer needs spaCy with en_core_web_sm installed") from err
    out = []
    for answer in answers:
        doc = nlp(answer)
        out.append(" ".join(t.lemma_ if t.pos_ in ("NOUN", "VERB") else t.text for t in doc))
    return out


@registry.register_model("blip2_opt")
class Blip2OPT(Blip2LLMBase):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_opt2.7b": "configs/models/blip2/blip2_pretrain_opt2.7b.yaml",
        "pretrain_opt6.7b": "configs/models/blip2/blip2_pretrain_opt6.7b.yaml",
        "caption_coco_opt2.7b": "configs/models/blip2/blip2_caption_opt2.7b.yaml",
        "caption_coco_opt6.7b": "configs/models/blip2/blip2_caption_opt6.7b.yaml",
        "tiny": "configs/models/blip2/blip2_opt_tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "pretrain_opt2.7b"
    LLM_FAMILY = "opt"
    ARCH_NAME = "blip2_opt"
    VQA_PROMPT = "Question: {} Answer:"

    def __init__(self, vit_model="eva_clip_g", vit_checkpoint=None, img_size=224, drop_path_rate=0.0,
                 use_grad_checkpoint=False, vit_precision="fp16", vit_sizes=None, freeze_vit=True,
                 ln_vision_eps=1e-5, num_query_token=32, cross_attention_freq=2, qformer_config=None,
                 q_former_model=None, opt_model=None, llm_config=None, tokenizer=None, llm_dtype="fp16",
                 prompt="", max_txt_len=32, apply_lemmatizer=False, vision_attn_implementation="sdpa"):
        super().__init__()
        self.opt_model, self.opt_tokenizer, self.opt_proj = self._init_llm_side(
            opt_model, "opt_model", llm_config, tokenizer, llm_dtype, "OPT (e.g. facebook/opt-2.7b)",
            vision_kwargs(locals()))
        self.eos_token_id = self.opt_tokenizer("\n", add_special_tokens=False).input_ids[0]
        self.prompt_length = len(self.opt_tokenizer(prompt or "").input_ids)
        self._init_text_side(prompt, max_txt_len, apply_lemmatizer, q_former_model)

    @property
    def llm_proj_layer(self) -> nn.Linear:
        return self.opt_proj

    # ---- training --------------------------------------------------------------------------------
    def forward(self, samples: dict) -> dict:
        if "text_input" not in samples:
            raise KeyError(f"Blip2OPT.forward needs samples['text_input']; got keys {sorted(samples)}")
        inputs_opt = self.image_inputs(samples)
        texts = as_text_list(samples["text_input"], inputs_opt.shape[0], "text_input")
        if self.prompt:
            stray = [t for t in texts if not t.startswith(self.prompt)]
            if stray:  # masking prompt_length tokens of a text without the prompt would drop caption tokens
                raise ValueError(f"prompt {self.prompt!r} is masked from the loss, but {len(stray)} text(s) do not "
                                 f"start with it (e.g. {stray[0]!r}); give the text processor prompt: "
                                 f"'{self.prompt} ' as LAVIS's caption recipes do")
        self.opt_tokenizer.padding_side = "right"
        tokens = self.opt_tokenizer([t + "\n" for t in texts], return_tensors="pt", padding="longest",
                                    truncation=True, max_length=self.max_txt_len).to(self.device)
        targets = tokens.input_ids.masked_fill(tokens.input_ids == self.opt_tokenizer.pad_token_id, -100)
        if self.prompt:
            targets[:, :self.prompt_length] = -100  # the prompt is context, not a target
        query_targets = torch.full(inputs_opt.shape[:2], -100, dtype=torch.long, device=self.device)
        targets = torch.cat([query_targets, targets], dim=1)
        embeds = self.opt_model.get_input_embeddings()(tokens.input_ids)
        inputs_embeds = torch.cat([inputs_opt.to(embeds.dtype), embeds], dim=1)
        attention_mask = torch.cat([torch.ones(inputs_opt.shape[:2], dtype=tokens.attention_mask.dtype,
                                               device=self.device), tokens.attention_mask], dim=1)
        with self.maybe_autocast():
            outputs = self.opt_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=targets)
        return {"loss": outputs.loss, "n_tokens": int((targets[:, 1:] != -100).sum())}

    # ---- inference --------------------------------------------------------------------------------
    def _generate_from(self, inputs_opt: torch.Tensor, prompts: list[str], **gen) -> list[str]:
        self.opt_tokenizer.padding_side = "left"
        tokens = self.opt_tokenizer(prompts, return_tensors="pt", padding="longest", truncation=True,
                                    max_length=self.max_txt_len).to(self.device)
        embeds = self.opt_model.get_input_embeddings()(tokens.input_ids)
        inputs_embeds = torch.cat([inputs_opt.to(embeds.dtype), embeds], dim=1)
        attention_mask = torch.cat([torch.ones(inputs_opt.shape[:2], dtype=tokens.attention_mask.dtype,
                                               device=self.device), tokens.attention_mask], dim=1)
        with self.maybe_autocast():
            out = self.opt_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                          eos_token_id=self.eos_token_id,
                                          pad_token_id=self.opt_tokenizer.pad_token_id, **gen)
        return [t.strip() for t in self.opt_tokenizer.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def generate(self, samples: dict, use_nucleus_sampling=False, num_beams=5, max_length=30, min_length=1,
                 top_p=0.9, repetition_penalty=1.0, length_penalty=1.0, num_captions=1, temperature=1.0,
                 **kwargs) -> list[str]:
        """Captions (or continuations of ``samples["prompt"]``), ``num_captions`` per image. Beam search
        (``num_beams``) or nucleus sampling (``use_nucleus_sampling`` / ``do_sample`` with ``top_p``)."""
        inputs_opt = self.image_inputs(samples)
        prompt = samples.get("prompt")
        prompts = as_text_list(self.prompt if prompt is None else prompt, inputs_opt.shape[0], "prompt")
        kwargs.pop("n_images", None)
        gen = generation_kwargs(use_nucleus_sampling, num_beams, max_length, min_length, top_p, repetition_penalty,
                                length_penalty, num_captions, temperature, **kwargs)
        return self._generate_from(inputs_opt, prompts, **gen)

    @torch.no_grad()
    def predict_answers(self, samples: dict, num_beams=5, inference_method="generate", max_len=10, min_len=1,
                        num_ans_candidates=128, answer_list=None, prompt="", length_penalty=0, **kwargs):
        """Open-ended VQA as LAVIS: each question in ``samples["text_input"]`` formatted with ``prompt``
        (e.g. ``"Question: {} Answer:"``), answered by beam search."""
        if inference_method != "generate":
            raise ValueError(f"{type(self).__name__} answers by generation only; got inference_method={inference_method!r}")
        inputs_opt = self.image_inputs(samples)
        questions = as_text_list(samples["text_input"], inputs_opt.shape[0], "text_input")
        prompts = [prompt.format(q) for q in questions] if prompt else questions
        gen = generation_kwargs(False, num_beams, max_len, min_len, length_penalty=length_penalty)
        answers = self._generate_from(inputs_opt, prompts, **gen)
        if self._apply_lemmatizer or samples.get("apply_lemmatizer"):
            answers = lemmatize(answers)
        return answers
