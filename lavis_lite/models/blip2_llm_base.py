"""What LAVIS's BLIP-2 language models share (blip2_opt, blip2_t5, blip2_vicuna_instruct, blip2_t5_instruct):
the vision side and Q-Former from :class:`Blip2Base`, a frozen Hugging Face LLM of one of three families,
its tokenizer, the image -> query-embedding path and LAVIS's generation arguments.

LLM families (``transformers`` classes, nothing re-implemented):

* ``opt``   — ``OPTForCausalLM`` (facebook/opt-*); tiny: ``OPTConfig`` + lavis_lite/assets/tiny_opt_tokenizer;
* ``t5``    — ``T5ForConditionalGeneration`` (google/flan-t5-*); tiny: ``T5Config`` + tiny_t5_tokenizer;
* ``llama`` — ``LlamaForCausalLM`` (Vicuna); tiny: ``LlamaConfig`` + tiny_llama_tokenizer.

The LLM comes from a local folder (``opt_model`` / ``t5_model`` / ``llm_model``, LAVIS's key names) or, for
tests and key maps, random-init from ``llm_config``. Nothing is downloaded.
"""
from __future__ import annotations

import inspect
import logging
import os

import torch
from omegaconf import OmegaConf
from torch import nn

from lavis_lite.models import llm as llm_utils
from lavis_lite.models.attention import set_attn_implementation
from lavis_lite.models.base_model import load_state_dict_file
from lavis_lite.models.blip2 import Blip2Base

logger = logging.getLogger(__name__)

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
LLM_FAMILIES = {
    "opt": {"config": "OPTConfig", "model": "OPTForCausalLM", "seq2seq": False, "name": "OPT"},
    "t5": {"config": "T5Config", "model": "T5ForConditionalGeneration", "seq2seq": True, "name": "T5"},
    "llama": {"config": "LlamaConfig", "model": "LlamaForCausalLM", "seq2seq": False, "name": "LLaMA"},
}


def plain(cfg) -> dict:
    if cfg is None:
        return {}
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


def load_llm_tokenizer(folder: str | None, family: str, key: str):
    """The tokenizer in ``folder`` (a local LLM or tokenizer folder), or the family's shipped tiny one."""
    from transformers import AutoTokenizer

    if folder is None:
        return AutoTokenizer.from_pretrained(os.path.join(ASSETS, f"tiny_{family}_tokenizer"))
    return AutoTokenizer.from_pretrained(llm_utils.resolve_local_path(folder, key, want_dir=True))


def build_language_model(family: str, folder: str | None, config: dict | None, tokenizer, dtype: str = "fp32",
                         key: str = "llm_model"):
    """The frozen LLM from a local folder, or random-init from ``config`` (token ids default to the tokenizer's)."""
    import transformers

    if family not in LLM_FAMILIES:
        raise ValueError(f"Unknown LLM family {family!r}; expected one of {sorted(LLM_FAMILIES)}")
    spec = LLM_FAMILIES[family]
    model_cls = getattr(transformers, spec["model"])
    torch_dtype = llm_utils.dtype_of(dtype)
    if folder:
        path = llm_utils.resolve_local_path(folder, key, want_dir=True)
        return model_cls.from_pretrained(path, dtype=torch_dtype)
    if not config:
        raise ValueError(f"Set model.{key} to a local folder holding the {family} LLM, or give model.llm_config "
                         f"for a random-init one (the tiny types)")
    cfg = {k: v for k, v in dict(config).items() if v is not None}  # null: the default below / transformers'
    cfg.setdefault("vocab_size", len(tokenizer))
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            cfg.setdefault(name, value)
    if family == "t5":
        cfg.setdefault("decoder_start_token_id", tokenizer.pad_token_id)
    model = model_cls(getattr(transformers, spec["config"])(**cfg))
    return model.to(torch_dtype)


def generation_kwargs(use_nucleus_sampling=False, num_beams=5, max_length=30, min_length=1, top_p=0.9,
                      repetition_penalty=1.0, length_penalty=1.0, num_captions=1, temperature=1.0,
                      max_new_tokens=None, do_sample=None, **extra) -> dict:
    """LAVIS's generate arguments (``use_nucleus_sampling``, ``max_length``, ``num_captions``) and this
    project's (``do_sample``, ``max_new_tokens``) -> transformers ``generate`` arguments. Lengths count
    generated tokens only (what LAVIS's ``max_length`` meant: the prompt lives in ``inputs_embeds``)."""
    sample = bool(use_nucleus_sampling if do_sample is None else do_sample)
    out = dict(do_sample=sample, num_beams=int(num_beams),
               max_new_tokens=int(max_new_tokens if max_new_tokens is not None else max_length),
               min_new_tokens=int(min_length), repetition_penalty=float(repetition_penalty),
               length_penalty=float(length_penalty), num_return_sequences=int(num_captions))
    if sample:
        out.update(top_p=float(top_p), temperature=float(temperature))
    out.update(extra)
    return out


def as_text_list(value, batch_size: int, name: str) -> list[str]:
    """A str (repeated over the batch) or a list of ``batch_size`` strings."""
    if isinstance(value, str):
        return [value] * batch_size
    texts = list(value)
    if len(texts) != batch_size:
        raise ValueError(f"samples[{name!r}] holds {len(texts)} texts for a batch of {batch_size} images")
    return texts


def vision_kwargs(constructor_locals: dict) -> dict:
    """The :meth:`Blip2LLMBase.init_vision_and_qformer` arguments among a constructor's ``locals()``
    (the constructors keep LAVIS's explicit keyword lists, which the YAML keys are checked against)."""
    names = inspect.signature(Blip2LLMBase.init_vision_and_qformer).parameters
    return {k: constructor_locals[k] for k in names if k != "self" and k in constructor_locals}


class Blip2LLMBase(Blip2Base):
    """Subclasses set ``LLM_FAMILY`` and call :meth:`init_vision_and_qformer` then build their LLM."""

    LLM_FAMILY = "opt"

    # ---- construction ---------------------------------------------------------------------------
    def init_vision_and_qformer(self, vit_model="eva_clip_g", vit_checkpoint=None, img_size=224,
                                drop_path_rate=0.0, use_grad_checkpoint=False, vit_precision="fp16",
                                vit_sizes=None, freeze_vit=True, ln_vision_eps=1e-5, num_query_token=32,
                                cross_attention_freq=2, qformer_config=None, qformer_text_input=False,
                                tokenizer_vocab="tiny", vision_attn_implementation="sdpa"):
        """visual_encoder, ln_vision (eps from the source: LAVIS 1e-5, Hugging Face post_layernorm 1e-6),
        Qformer (+ BERT tokenizer and text side for InstructBLIP, without the LM head ``cls``), query_tokens."""
        if vit_checkpoint:
            vit_checkpoint = llm_utils.resolve_local_path(vit_checkpoint, "vit_checkpoint", want_dir=False)
        self.visual_encoder, self.ln_vision = self.init_vision_encoder(
            vit_model, img_size, drop_path_rate, use_grad_checkpoint, vit_precision, vit_checkpoint,
            **plain(vit_sizes))
        self.ln_vision.eps = float(ln_vision_eps)
        self.freeze_vit = bool(freeze_vit)
        if self.freeze_vit:
            for p in self.visual_encoder.parameters():
                p.requires_grad_(False)  # LAVIS freezes the ViT only; ln_vision keeps training
        qcfg = plain(qformer_config)
        self.qformer_text_input = bool(qformer_text_input)
        if self.qformer_text_input:
            from lavis_lite.models.bert_tokenizer import init_bert_tokenizer

            self.tokenizer = init_bert_tokenizer(tokenizer_vocab, truncation_side="left")
            if qcfg.get("vocab_size") is None:
                qcfg["vocab_size"] = len(self.tokenizer)
            if len(self.tokenizer) > qcfg["vocab_size"]:
                raise ValueError(f"Q-Former vocab_size {qcfg['vocab_size']} is smaller than the tokenizer "
                                 f"({len(self.tokenizer)} tokens with [DEC]); fix model.qformer_config.vocab_size")
        elif qcfg.get("vocab_size") is None:
            qcfg["vocab_size"] = 30522  # unused without text input
        self.Qformer, self.query_tokens = self.init_Qformer(
            num_query_token, self.visual_encoder.num_features, cross_attention_freq, qcfg,
            text_input=self.qformer_text_input)
        self.Qformer.cls = None  # LAVIS drops the LM head of the stage-2 Q-Former
        for module in (self.visual_encoder, self.Qformer):
            set_attn_implementation(module, vision_attn_implementation)
        self.num_query_token = int(num_query_token)

    def _init_llm_side(self, folder, key, llm_config, tokenizer, llm_dtype, holding: str, vision: dict,
                       prepare_tokenizer=None):
        """The language side around the vision side, in LAVIS's order: check that an LLM is given (before
        building a 1B-parameter ViT), its tokenizer (``prepare_tokenizer`` may amend it), then
        ``init_vision_and_qformer(**vision)``, the frozen LLM and the Q-Former -> LLM projection.
        Returns (llm, tokenizer, proj): the caller stores them under LAVIS's names (``opt_model`` /
        ``opt_tokenizer`` / ``opt_proj``, ``t5_*``, ``llm_*``), LLM before projection as in LAVIS."""
        if not folder and not llm_config:
            raise ValueError(f"Set model.{key} to a local folder holding {holding}, or give model.llm_config for a "
                             f"random-init {LLM_FAMILIES[self.LLM_FAMILY]['name']} (the tiny type)")
        llm_tokenizer = self.init_llm_tokenizer(folder, key, tokenizer)
        if prepare_tokenizer is not None:
            prepare_tokenizer(llm_tokenizer)
        self.init_vision_and_qformer(**vision)
        llm = self.build_llm(folder, key, llm_config, llm_tokenizer, llm_dtype)
        proj = nn.Linear(self.Qformer.config.hidden_size, llm.config.hidden_size)
        return llm, llm_tokenizer, proj

    def _init_text_side(self, prompt, max_txt_len, apply_lemmatizer, q_former_model, max_output_txt_len=None):
        """LAVIS's text settings, then the initial vision + Q-Former weights (``q_former_model``)."""
        self.max_txt_len = int(max_txt_len)
        if max_output_txt_len is not None:
            self.max_output_txt_len = int(max_output_txt_len)
        self.prompt = prompt or ""
        self._apply_lemmatizer = bool(apply_lemmatizer)
        self.load_initial_weights(q_former_model)

    def init_llm_tokenizer(self, folder, key, tokenizer):
        """The LLM tokenizer: ``tokenizer`` if set, else the one beside the weights, else the tiny one."""
        return load_llm_tokenizer(tokenizer or folder, self.LLM_FAMILY, "tokenizer" if tokenizer else key)

    def build_llm(self, folder, key, llm_config, tokenizer, llm_dtype):
        model = build_language_model(self.LLM_FAMILY, folder, plain(llm_config) or None, tokenizer, llm_dtype, key)
        rows = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            model.resize_token_embeddings(len(tokenizer))
            logger.info("resized LLM embeddings from %d to %d rows for added tokens", rows, len(tokenizer))
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def load_initial_weights(self, q_former_model=None):
        """``q_former_model``: a BLIP-2 stage-1 file, a LAVIS .pth, a runner checkpoint folder or a Hugging
        Face BLIP-2 / InstructBLIP folder (vision + Q-Former + queries taken from it)."""
        if not q_former_model:
            return None
        from lavis_lite.models import hf_blip2_convert as hf

        if hf.is_hf_folder(q_former_model):
            return hf.load_hf_into(self, q_former_model, parts=("vision", "qformer"))
        path = q_former_model if "://" in str(q_former_model) else \
            llm_utils.resolve_local_path(q_former_model, "q_former_model")
        return self.load_from_pretrained(path)

    @classmethod
    def from_config(cls, cfg):
        model = cls(**cls.constructor_kwargs(cfg))
        model.load_checkpoint_from_config(cfg)  # LAVIS's pretrained / finetuned keys, when a YAML sets them
        if cfg.get("checkpoint"):
            model.load_checkpoint(cfg["checkpoint"])
        return model

    def load_checkpoint(self, path_or_state, **kwargs):
        """As BaseModel's; also a Hugging Face BLIP-2 / InstructBLIP folder (converted on the fly), and
        released LAVIS files that store the Q-Former LM-head bias alias."""
        from lavis_lite.models import hf_blip2_convert as hf

        if isinstance(path_or_state, (str, os.PathLike)) and hf.is_hf_folder(path_or_state):
            return hf.load_hf_into(self, path_or_state)
        state = load_state_dict_file(path_or_state) if isinstance(path_or_state, (str, os.PathLike)) \
            else dict(path_or_state)
        return super().load_checkpoint(state, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_vit:  # a frozen encoder stays in eval mode (no drop path), as in LAVIS
            self.visual_encoder.eval()
        return self

    # ---- image -> queries -----------------------------------------------------------------------
    def vit_features(self, image: torch.Tensor) -> torch.Tensor:
        """ln_vision(visual_encoder(image)), in ln_vision's dtype."""
        with self.maybe_autocast():
            out = self.visual_encoder(image.to(self.device, self.visual_encoder.cls_token.dtype))
        return self.ln_vision(out.to(self.ln_vision.weight.dtype))

    def query_output(self, image_embeds: torch.Tensor, instruction: list[str] | None = None) -> torch.Tensor:
        """Q-Former outputs of the learned queries [B, Q, H]; with ``instruction`` (InstructBLIP) its BERT
        tokens join the queries in self-attention."""
        image_embeds = image_embeds.to(self.device, self.ln_vision.weight.dtype)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        if instruction is None:
            return self.Qformer.bert(query_embeds=queries, encoder_hidden_states=image_embeds,
                                     encoder_attention_mask=image_atts).last_hidden_state
        text = self.tokenizer(list(instruction), padding="longest", truncation=True, max_length=self.max_txt_len,
                              return_tensors="pt").to(self.device)
        return self.qformer_with_text(image_embeds, text.input_ids, text.attention_mask)

    def qformer_with_text(self, image_embeds, input_ids, attention_mask) -> torch.Tensor:
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        query_atts = torch.ones(queries.shape[:-1], dtype=attention_mask.dtype, device=attention_mask.device)
        out = self.Qformer.bert(input_ids, query_embeds=queries, attention_mask=torch.cat([query_atts, attention_mask], 1),
                                encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts)
        return out.last_hidden_state[:, :queries.shape[1]]

    @property
    def llm_proj_layer(self) -> nn.Linear:  # opt_proj / t5_proj / llm_proj
        raise NotImplementedError

    def image_inputs(self, samples: dict, instruction: list[str] | None = None) -> torch.Tensor:
        """Projected query embeddings [B, Q, D_llm] of ``samples["image"]``."""
        if samples.get("image") is None:
            raise KeyError(f"{type(self).__name__} needs samples['image']; got keys {sorted(samples)}")
        query = self.query_output(self.vit_features(samples["image"]), instruction)
        proj = self.llm_proj_layer
        return proj(query.to(proj.weight.dtype))

    @torch.no_grad()
    def extract_features(self, samples: dict, mode: str = "image") -> dict:
        """``image_embeds`` (ln_vision(ViT)), ``query_output`` and ``image_embeds_proj`` (in the LLM space)."""
        if mode != "image":
            raise ValueError(f"{type(self).__name__} extracts image features only; got mode={mode!r}")
        vit = self.vit_features(samples["image"])
        instruction = samples.get("prompt") if self.qformer_text_input else None
        if isinstance(instruction, str):
            instruction = [instruction] * vit.shape[0]
        query = self.query_output(vit, instruction)
        return {"image_embeds": vit, "query_output": query, "image_embeds_proj": self.llm_proj_layer(query)}
