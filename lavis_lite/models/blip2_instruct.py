"""InstructBLIP (LAVIS's ``blip2_vicuna_instruct`` and ``blip2_t5_instruct``): BLIP-2 whose Q-Former also
reads the instruction — its BERT tokens join the learned queries in the Q-Former's self-attention (queries
and text see each other; only the queries cross-attend to the image and reach the LLM).

* ``blip2_vicuna_instruct``: decoder-only (Vicuna / LLaMA). Each row is [queries; instruction tokens;
  answer tokens + eos; padding]; only the answer is supervised. As LAVIS, a tokenizer without a pad token
  gets ``[PAD]`` and ``</s>`` as bos / eos / unk.
* ``blip2_t5_instruct``: the instruction goes to the T5 encoder after the queries, the answer is decoded.

A batch without ``text_output`` (captions) takes the model's ``prompt`` as instruction and ``text_input``
as the answer. Parameter names are LAVIS's (``Qformer`` keeps its text side, no ``cls``; ``llm_proj`` /
``t5_proj``; ``llm_model`` / ``t5_model``), so the released "trimmed" checkpoints load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from lavis_lite.common.registry import registry
from lavis_lite.models.blip2_llm_base import Blip2LLMBase, as_text_list, generation_kwargs, vision_kwargs
from lavis_lite.models.blip2_opt import lemmatize
from lavis_lite.models.blip2_t5 import T5Seq2SeqMixin


def instruction_and_answer(samples: dict, batch: int, prompt: str) -> tuple[list[str], list[str]]:
    if samples.get("text_output") is not None:
        return (as_text_list(samples["text_input"], batch, "text_input"),
                as_text_list(samples["text_output"], batch, "text_output"))
    return [prompt] * batch, as_text_list(samples["text_input"], batch, "text_input")


def prepend_bos_as_lavis(tokenizer) -> None:
    """LAVIS adds ``[PAD]`` and makes ``</s>`` bos / eos / unk of the (slow) LLaMA tokenizer, so prompts start
    with ``</s>``; a fast tokenizer's template must be told the new bos."""
    from tokenizers import processors

    tokenizer.add_special_tokens({"pad_token": "[PAD]", "bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>"})
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, bos_id)])
    first = tokenizer("a").input_ids[0]
    if first != tokenizer.bos_token_id:
        raise RuntimeError(f"the LLM tokenizer starts prompts with id {first}, not bos {tokenizer.bos_token_id}")


def lavis_llama_tokenizer(tokenizer) -> None:
    if tokenizer.pad_token is None:
        prepend_bos_as_lavis(tokenizer)


class InstructMixin:
    def instruction_inputs(self, samples: dict, instructions: list[str]) -> torch.Tensor:
        return self.image_inputs(samples, instruction=instructions)


@registry.register_model("blip2_vicuna_instruct")
class Blip2VicunaInstruct(InstructMixin, Blip2LLMBase):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "vicuna7b": "configs/models/blip2/blip2_instruct_vicuna7b.yaml",
        "vicuna13b": "configs/models/blip2/blip2_instruct_vicuna13b.yaml",
        "tiny": "configs/models/blip2/blip2_instruct_vicuna_tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "vicuna7b"
    LLM_FAMILY = "llama"
    ARCH_NAME = "blip2_vicuna_instruct"

    def __init__(self, vit_model="eva_clip_g", vit_checkpoint=None, img_size=224, drop_path_rate=0.0,
                 use_grad_checkpoint=False, vit_precision="fp16", vit_sizes=None, freeze_vit=True,
                 ln_vision_eps=1e-5, num_query_token=32, cross_attention_freq=2, qformer_config=None,
                 tokenizer_vocab="bert-base-uncased", q_former_model=None, llm_model=None, llm_config=None,
                 tokenizer=None, llm_dtype="fp16", prompt="", max_txt_len=128, max_output_txt_len=256,
                 apply_lemmatizer=False, qformer_text_input=True, vision_attn_implementation="sdpa"):
        super().__init__()
        if not qformer_text_input:
            raise ValueError("blip2_vicuna_instruct: qformer_text_input false is plain BLIP-2; use blip2_opt-style "
                             "models for that")
        self.llm_model, self.llm_tokenizer, self.llm_proj = self._init_llm_side(
            llm_model, "llm_model", llm_config, tokenizer, llm_dtype, "Vicuna", vision_kwargs(locals()),
            prepare_tokenizer=lavis_llama_tokenizer)
        self._init_text_side(prompt, max_txt_len, apply_lemmatizer, q_former_model, max_output_txt_len)

    @property
    def llm_proj_layer(self) -> nn.Linear:
        return self.llm_proj

    def _rows(self, instructions: list[str], answers: list[str]):
        """Per row: instruction tokens, answer tokens (+eos, without a leading bos), then padding."""
        tok = self.llm_tokenizer
        tok.padding_side, tok.truncation_side = "right", "left"
        inp = tok(instructions, return_tensors="pt", padding="longest", truncation=True, max_length=self.max_txt_len)
        tok.truncation_side = "right"
        out = tok([a + tok.eos_token for a in answers], return_tensors="pt", padding="longest", truncation=True,
                  max_length=self.max_output_txt_len)
        skip = 1 if tok.bos_token_id is not None and bool((out.input_ids[:, 0] == tok.bos_token_id).all()) else 0
        ids, mask, input_lens = [], [], []
        for i in range(len(instructions)):
            n = int(inp.attention_mask[i].sum())
            input_lens.append(n)
            ids.append(torch.cat([inp.input_ids[i, :n], out.input_ids[i, skip:], inp.input_ids[i, n:]]))
            mask.append(torch.cat([inp.attention_mask[i, :n], out.attention_mask[i, skip:], inp.attention_mask[i, n:]]))
        return torch.stack(ids).to(self.device), torch.stack(mask).to(self.device), input_lens

    def forward(self, samples: dict) -> dict:
        if "text_input" not in samples:
            raise KeyError(f"{type(self).__name__}.forward needs samples['text_input']; got keys {sorted(samples)}")
        batch = samples["image"].shape[0]
        instructions, answers = instruction_and_answer(samples, batch, self.prompt)
        inputs_llm = self.instruction_inputs(samples, instructions)
        ids, mask, input_lens = self._rows(instructions, answers)
        targets = ids.masked_fill(ids == self.llm_tokenizer.pad_token_id, -100)
        for i, n in enumerate(input_lens):
            targets[i, :n] = -100  # the instruction is context
        targets = torch.cat([torch.full(inputs_llm.shape[:2], -100, dtype=torch.long, device=self.device), targets], 1)
        embeds = self.llm_model.get_input_embeddings()(ids)
        inputs_embeds = torch.cat([inputs_llm.to(embeds.dtype), embeds], dim=1)
        attention_mask = torch.cat([torch.ones(inputs_llm.shape[:2], dtype=mask.dtype, device=self.device), mask], 1)
        with self.maybe_autocast():
            outputs = self.llm_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=targets)
        return {"loss": outputs.loss, "n_tokens": int((targets[:, 1:] != -100).sum())}

    @torch.no_grad()
    def generate(self, samples: dict, use_nucleus_sampling=False, num_beams=5, max_length=256, min_length=1,
                 top_p=0.9, repetition_penalty=1.5, length_penalty=1.0, num_captions=1, temperature=1.0,
                 **kwargs) -> list[str]:
        batch = samples["image"].shape[0]
        prompt = samples.get("prompt")
        prompts = as_text_list(self.prompt if prompt is None else prompt, batch, "prompt")
        inputs_llm = self.instruction_inputs(samples, prompts)
        tok = self.llm_tokenizer
        tok.padding_side = "left"
        tokens = tok(prompts, return_tensors="pt", padding="longest").to(self.device)
        embeds = self.llm_model.get_input_embeddings()(tokens.input_ids)
        inputs_embeds = torch.cat([inputs_llm.to(embeds.dtype), embeds], dim=1)
        attention_mask = torch.cat([torch.ones(inputs_llm.shape[:2], dtype=tokens.attention_mask.dtype,
                                               device=self.device), tokens.attention_mask], 1)
        kwargs.pop("n_images", None)
        gen = generation_kwargs(use_nucleus_sampling, num_beams, max_length, min_length, top_p, repetition_penalty,
                                length_penalty, num_captions, temperature, **kwargs)
        with self.maybe_autocast():
            out = self.llm_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **gen)
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def predict_answers(self, samples: dict, num_beams=5, inference_method="generate", max_len=10, min_len=1,
                        num_ans_candidates=128, answer_list=None, prompt="", length_penalty=0, **kwargs):
        if inference_method != "generate":
            raise ValueError(f"{type(self).__name__} answers by generation only; got inference_method={inference_method!r}")
        questions = as_text_list(samples["text_input"], samples["image"].shape[0], "text_input")
        prompts = [prompt.format(q) for q in questions] if prompt else questions
        answers = self.generate({**samples, "prompt": prompts}, num_beams=num_beams, max_length=max_len,
                                min_length=min_len, length_penalty=length_penalty, repetition_penalty=1.0)
        if self._apply_lemmatizer or samples.get("apply_lemmatizer"):
            answers = lemmatize(answers)
        return answers


@registry.register_model("blip2_t5_instruct")
class Blip2T5Instruct(InstructMixin, T5Seq2SeqMixin, Blip2LLMBase):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "flant5xl": "configs/models/blip2/blip2_instruct_flant5xl.yaml",
        "flant5xxl": "configs/models/blip2/blip2_instruct_flant5xxl.yaml",
        "tiny": "configs/models/blip2/blip2_instruct_flant5_tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "flant5xl"
    LLM_FAMILY = "t5"
    ARCH_NAME = "blip2_t5_instruct"
    input_truncation_side = "left"

    def __init__(self, vit_model="eva_clip_g", vit_checkpoint=None, img_size=224, drop_path_rate=0.0,
                 use_grad_checkpoint=False, vit_precision="fp16", vit_sizes=None, freeze_vit=True,
                 ln_vision_eps=1e-5, num_query_token=32, cross_attention_freq=2, qformer_config=None,
                 tokenizer_vocab="bert-base-uncased", q_former_model=None, t5_model=None, llm_config=None,
                 tokenizer=None, llm_dtype="bf16", prompt="", max_txt_len=128, max_output_txt_len=256,
                 apply_lemmatizer=False, qformer_text_input=True, vision_attn_implementation="sdpa"):
        super().__init__()
        if not qformer_text_input:
            raise ValueError("blip2_t5_instruct: qformer_text_input false is plain BLIP-2; use blip2_t5")
        self.t5_model, self.t5_tokenizer, self.t5_proj = self._init_llm_side(
            t5_model, "t5_model", llm_config, tokenizer, llm_dtype, "Flan-T5", vision_kwargs(locals()))
        self._init_text_side(prompt, max_txt_len, apply_lemmatizer, q_former_model, max_output_txt_len)

    @property
    def llm_proj_layer(self) -> nn.Linear:
        return self.t5_proj

    def forward(self, samples: dict) -> dict:
        if "text_input" not in samples:
            raise KeyError(f"{type(self).__name__}.forward needs samples['text_input']; got keys {sorted(samples)}")
        instructions, answers = instruction_and_answer(samples, samples["image"].shape[0], self.prompt)
        inputs_t5 = self.instruction_inputs(samples, instructions)
        return self._t5_loss(inputs_t5, instructions, answers, self.max_output_txt_len)

    @torch.no_grad()
    def generate(self, samples: dict, use_nucleus_sampling=False, num_beams=5, max_length=256, min_length=1,
                 top_p=0.9, repetition_penalty=1.5, length_penalty=1.0, num_captions=1, temperature=1.0,
                 **kwargs) -> list[str]:
        prompt = samples.get("prompt")
        prompts = as_text_list(self.prompt if prompt is None else prompt, samples["image"].shape[0], "prompt")
        inputs_t5 = self.instruction_inputs(samples, prompts)
        kwargs.pop("n_images", None)
        gen = generation_kwargs(use_nucleus_sampling, num_beams, max_length, min_length, top_p, repetition_penalty,
                                length_penalty, num_captions, temperature, **kwargs)
        return self._t5_generate(inputs_t5, prompts, **gen)

    @torch.no_grad()
    def predict_answers(self, samples: dict, num_beams=5, inference_method="generate", max_len=10, min_len=1,
                        num_ans_candidates=128, answer_list=None, prompt="", length_penalty=-1, **kwargs):
        if inference_method != "generate":
            raise ValueError(f"{type(self).__name__} answers by generation only; got inference_method={inference_method!r}")
        questions = as_text_list(samples["text_input"], samples["image"].shape[0], "text_input")
        prompts = [prompt.format(q) for q in questions] if prompt else questions
        answers = self.generate({**samples, "prompt": prompts}, num_beams=num_beams, max_length=max_len,
                                min_length=min_len, length_penalty=length_penalty, repetition_penalty=1.0)
        if self._apply_lemmatizer or samples.get("apply_lemmatizer"):
            answers = lemmatize(answers)
        return answers
