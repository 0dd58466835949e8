"""MiniGPT4-Qwen: frozen EVA-ViT-G -> BLIP-2 Q-Former (learned queries) -> linear projection -> Qwen.

Each ``<ImageHere>`` in a user turn becomes ``num_query_token`` image-token ids (see chatml.py); their
input embeddings are replaced by the projected query outputs of that image. The image path runs in
stages so a frozen-feature cache can enter at any of them::

    pixels --visual_encoder+ln_vision--> "vit" --Qformer(query_tokens)--> "qformer" --llm_proj--> "proj"

``samples["image_features"]`` holds features of stage ``samples.get("image_features_stage")`` (default:
:meth:`frozen_feature_stage`, the highest stage whose weights are all frozen);
:meth:`extract_frozen_features` computes them for a cache.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from lavis_lite.common.registry import registry
from lavis_lite.models.attention import set_attn_implementation
from lavis_lite.models.blip2 import Blip2Base
from lavis_lite.models.chatml import DEFAULT_SYSTEM, IGNORE_INDEX, IMAGE_MARK, ChatMLPreprocessor
from lavis_lite.models import llm as llm_utils
from lavis_lite.models.packing import arrange_batch
from lavis_lite.models.shared_prefix import can_share_prefix, forward_with_shared_prefix, shared_prefix_length

logger = logging.getLogger(__name__)

STAGES = ("pixels", "vit", "qformer", "proj")
# Keys of a model YAML section that are not constructor arguments.
@registry.register_model("minigpt4qwen")
class Minigpt4Qwen(Blip2Base):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "qwen7b_chat": "configs/models/minigpt4qwen/minigpt4qwen_qwen7b_chat.yaml",
        "qwen14b_chat": "configs/models/minigpt4qwen/minigpt4qwen_qwen14b_chat.yaml",
        "qwen2.5_7b_instruct": "configs/models/minigpt4qwen/minigpt4qwen_qwen2.5_7b_instruct.yaml",
        "tiny": "configs/models/minigpt4qwen/minigpt4qwen_tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "qwen7b_chat"

    def __init__(self, vit_model="eva_clip_g", vit_checkpoint=None, img_size=224, drop_path_rate=0.0,
                 use_grad_checkpoint=False, vit_precision="fp16", vit_sizes=None, freeze_vit=True,
                 unfreeze_pos_embed=False, num_query_token=32, cross_attention_freq=2, qformer_config=None,
                 q_former_model=None, freeze_qformer=True, freeze_queries=True, freeze_proj=False,
                 llm_family="qwen2", llm_model=None, llm_config=None, tokenizer=None, image_token=None,
                 llm_dtype="fp32", llm_device_map=None, freeze_llm=True, llm_grad_checkpoint=False,
                 get_lora=False, lora_r=8, lora_alpha=16, lora_dropout=0.05, lora_target_modules=None,
                 lora_include_mlp=False, max_txt_len=512, system_message=DEFAULT_SYSTEM,
                 enable_autocast=False, autocast_dtype="bf16", packing=False, pad_to_max_txt_len=False,
                 preprocess_cache_size=100_000, fast_tokenize=True, share_prefix=True,
                 vision_attn_implementation="sdpa"):
        super().__init__()
        if not llm_model and not llm_config:  # fail before building a 1B-parameter ViT
            raise ValueError("Set model.llm_model to a local folder with the LLM (e.g. Qwen-7B-Chat), or give "
                             "model.llm_config for a random-init Qwen2 (the tiny model)")
        # Check user-set folders first too: a typo should not cost building the ViT.
        if llm_model:
            llm_model = llm_utils.resolve_local_path(llm_model, "llm_model", want_dir=True)
        if tokenizer:
            tokenizer = llm_utils.resolve_local_path(tokenizer, "tokenizer", want_dir=True)
        self.freeze_vit, self.unfreeze_pos_embed = bool(freeze_vit), bool(unfreeze_pos_embed)
        self.freeze_qformer, self.freeze_queries = bool(freeze_qformer), bool(freeze_queries)
        self.freeze_proj, self.freeze_llm = bool(freeze_proj), bool(freeze_llm)
        self.enable_autocast = bool(enable_autocast)
        # Batch layout for the LLM (models/packing.py): several conversations per row, or the
        # published recipe's padding to max_txt_len (benchmarks); default pads to the longest sample.
        self.packing, self.pad_to_max_txt_len = bool(packing), bool(pad_to_max_txt_len)
        # Frozen LLM: run the tokens all rows start with once per batch (models/shared_prefix.py).
        self.share_prefix = bool(share_prefix)
        self.autocast_dtype = llm_utils.dtype_of(autocast_dtype)

        if vit_checkpoint:
            vit_checkpoint = llm_utils.resolve_local_path(vit_checkpoint, "vit_checkpoint", want_dir=False)
        self.visual_encoder, self.ln_vision = self.init_vision_encoder(
            vit_model, img_size, drop_path_rate, use_grad_checkpoint, vit_precision, vit_checkpoint,
            **dict(vit_sizes or {}))
        self.Qformer, self.query_tokens = self.init_Qformer(
            num_query_token, self.visual_encoder.num_features, cross_attention_freq, qformer_config)
        self.num_query_token = int(num_query_token)
        for module in (self.visual_encoder, self.Qformer):
            set_attn_implementation(module, vision_attn_implementation)

        self.llm_family = llm_family
        image_token = image_token or llm_utils.family_info(llm_family)["image_token"]
        # The tokenizer lives beside the LLM weights unless given; neither set -> the shipped tiny tokenizer.
        self.llm_tokenizer = llm_utils.load_tokenizer(tokenizer or llm_model, llm_family,
                                                      "tokenizer" if tokenizer else "llm_model")
        llm_utils.ensure_image_token(self.llm_tokenizer, image_token, llm_family)
        self.llm_model = llm_utils.build_llm(llm_model, llm_config, self.llm_tokenizer, llm_family, llm_dtype,
                                             llm_device_map)
        self.llm_proj = nn.Linear(self.Qformer.config.hidden_size, self.llm_model.config.hidden_size)
        self.chatml = ChatMLPreprocessor(self.llm_tokenizer, image_token, num_query_token, max_txt_len,
                                         system_message, llm_utils.pad_token_id(self.llm_tokenizer, llm_family),
                                         cache_size=preprocess_cache_size, fast_tokenize=fast_tokenize)
        self.image_token_id = self.chatml.image_token_id

        if q_former_model:
            path = q_former_model if "://" in str(q_former_model) else \
                llm_utils.resolve_local_path(q_former_model, "q_former_model")  # file or runner checkpoint folder
            self.load_from_pretrained(path)
        self._apply_freezing()
        if llm_grad_checkpoint:
            llm_utils.enable_grad_checkpointing(self.llm_model)
        if get_lora:
            self.llm_model = llm_utils.apply_lora(self.llm_model, llm_family, lora_r, lora_alpha, lora_dropout,
                                                  lora_target_modules, lora_include_mlp)
        logger.info("Minigpt4Qwen: %s", self.show_n_params())

    # ---- construction ------------------------------------------------------
    @classmethod
    def from_config(cls, cfg):
        model = cls(**cls.constructor_kwargs(cfg))
        model.partial_load = bool(cfg.get("partial_load", False))  # a checkpoint lacking trainable keys raises
        if cfg.get("checkpoint"):
            model.load_checkpoint(llm_utils.resolve_local_path(cfg["checkpoint"], "checkpoint", want_dir=False))
        return model

    def _apply_freezing(self) -> None:
        def freeze(module_or_param, flag: bool):
            params = [module_or_param] if isinstance(module_or_param, nn.Parameter) else module_or_param.parameters()
            for p in params:
                p.requires_grad_(not flag)

        freeze(self.visual_encoder, self.freeze_vit)
        freeze(self.ln_vision, self.freeze_vit)
        if self.freeze_vit and self.unfreeze_pos_embed:
            self.visual_encoder.pos_embed.requires_grad_(True)
        freeze(self.Qformer, self.freeze_qformer)
        freeze(self.query_tokens, self.freeze_queries)
        freeze(self.llm_proj, self.freeze_proj)
        freeze(self.llm_model, self.freeze_llm)
        self.train(self.training)

    def train(self, mode: bool = True):
        """Frozen vision parts stay in eval mode (no dropout / drop path), as in LAVIS."""
        super().train(mode)
        if self.freeze_vit:
            self.visual_encoder.eval()
        if self.freeze_qformer:
            self.Qformer.eval()
        return self

    @property
    def tokenizer(self):
        return self.llm_tokenizer

    # ---- image path --------------------------------------------------------
    def frozen_feature_stage(self) -> str | None:
        """The highest stage ("vit", "qformer", "proj") whose weights are all frozen, or None."""
        if not self.freeze_vit or self.unfreeze_pos_embed:
            return None
        if not (self.freeze_qformer and self.freeze_queries):
            return "vit"
        return "proj" if self.freeze_proj else "qformer"

    def encode_image(self, image: torch.Tensor | None = None, features: torch.Tensor | None = None,
                     stage: str = "pixels", upto: str = "proj") -> torch.Tensor:
        """Images [N,3,H,W] (or ``features`` of ``stage``) -> output of stage ``upto``; by default the
        projected query embeddings [N, Q, D_llm]."""
        for name in (stage, upto):
            if name not in STAGES:
                raise ValueError(f"image feature stage must be one of {STAGES}, got {name!r}")
        if STAGES.index(upto) < STAGES.index(stage):
            raise ValueError(f"cannot go from stage {stage!r} back to {upto!r}")
        x = image if features is None else features
        if x is None:
            raise ValueError("encode_image needs an image tensor or features")
        at = STAGES.index(stage)
        last = STAGES.index(upto)
        if at < 1 <= last:
            x = self.vit_features(x)
        if at < 2 <= last:
            x = self.query_output(x)
        if at < 3 <= last:
            x = self.llm_proj(x.to(self.device, self.llm_proj.weight.dtype))
        return x

    def vit_features(self, image: torch.Tensor) -> torch.Tensor:
        """Stage "vit": ln_vision(visual_encoder(image)), in ln_vision's dtype (fp32)."""
        out = self.visual_encoder(image.to(self.device, self.visual_encoder.cls_token.dtype))
        return self.ln_vision(out.to(self.ln_vision.weight.dtype))

    def query_output(self, vit_features: torch.Tensor) -> torch.Tensor:
        """Stage "qformer": the Q-Former outputs of the learned queries over the ViT features."""
        vit_features = vit_features.to(self.device, self.ln_vision.weight.dtype)
        queries = self.query_tokens.expand(vit_features.shape[0], -1, -1)
        return self.Qformer.bert(query_embeds=queries, encoder_hidden_states=vit_features).last_hidden_state

    @torch.no_grad()
    def extract_frozen_features(self, image: torch.Tensor) -> tuple[torch.Tensor, str]:
        """(features, stage) of the highest frozen stage, for the frozen-feature cache."""
        stage = self.frozen_feature_stage()
        if stage is None:
            raise ValueError("No frozen image stage (freeze_vit is off or pos_embed is trainable)")
        return self.encode_image(image, stage="pixels", upto=stage), stage

    def _image_embeds(self, samples: dict, n_images: list[int], used: list[int]) -> torch.Tensor | None:
        """Projected embeddings of the images whose placeholders survived truncation, in batch order."""
        total = sum(n_images)
        if "image_features" in samples and samples["image_features"] is not None:
            source, stage = samples["image_features"], samples.get("image_features_stage") or self.frozen_feature_stage()
            if stage is None:
                raise ValueError("samples['image_features'] given but no stage is frozen; set image_features_stage")
        else:
            source, stage = samples.get("image"), "pixels"
        if total == 0:
            return None
        if source is None:
            raise ValueError(f"the batch has {total} image(s) (n_images={n_images}) but no 'image' or 'image_features'")
        if source.shape[0] != total:
            raise ValueError(f"n_images={n_images} adds up to {total} images but the batch holds {source.shape[0]}")
        if used != n_images:  # trailing rounds dropped by truncation took their images with them
            offsets = torch.tensor([0] + n_images[:-1]).cumsum(0).tolist()
            keep = [o + j for o, u in zip(offsets, used) for j in range(u)]
            source = source[torch.tensor(keep, dtype=torch.long, device=source.device)]
            if source.shape[0] == 0:
                return None
        return self.encode_image(features=source, stage=stage)

    def _splice(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None, used: list[int]) -> torch.Tensor:
        embed = self.llm_model.get_input_embeddings()
        inputs_embeds = embed(input_ids)
        slots = input_ids == self.image_token_id
        counts = slots.sum(1).tolist()
        for i, (got, n) in enumerate(zip(counts, used)):
            if got != n * self.num_query_token:
                raise ValueError(f"sample {i}: {got} image-token positions for {n} image(s) x "
                                 f"{self.num_query_token} queries")
        if image_embeds is None:
            return inputs_embeds
        return inputs_embeds.masked_scatter(slots[..., None], image_embeds.to(inputs_embeds.dtype))

    # ---- training ------------------------------------------------------------
    def preprocess(self, conversations, n_images=None, **kwargs):
        """ChatML ids / labels / attention_mask for a batch (see chatml.ChatMLPreprocessor)."""
        return self.chatml(conversations, n_images, **kwargs)

    def count_supervised_tokens(self, samples: dict) -> int:
        """Supervised next-token targets of a micro-batch, known before its forward: DeepSpeed's stepper
        uses it to weight accumulated micro-batches by tokens (the preprocess cache makes it cheap)."""
        conversations = samples["conversations"]
        n_images = list(samples.get("n_images") or [1] * len(conversations))
        return int((self.preprocess(conversations, n_images).labels[:, 1:] != IGNORE_INDEX).sum())

    def _decoder(self):
        """The LLM without its head (transformers' ``get_decoder``), or None."""
        decoder = self.llm_model.get_decoder() if hasattr(self.llm_model, "get_decoder") else None
        return decoder if decoder is not self.llm_model else None

    def _supervised_logits(self, inputs_embeds, attention_mask, labels, position_ids=None, prefix_len=0):
        """Logits only where a next token is supervised (saves the [B, L, vocab] tensor).
        ``prefix_len``: leading positions shared by every row, run once (see shared_prefix.py)."""
        decoder, head = self._decoder(), self.llm_model.get_output_embeddings()
        hidden = logits = None
        if prefix_len:
            hidden = forward_with_shared_prefix(decoder, inputs_embeds, attention_mask, prefix_len)
        elif decoder is not None and head is not None:
            hidden = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False).last_hidden_state
        else:
            logits = self.llm_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                    position_ids=position_ids, use_cache=False).logits
        targets = labels[:, prefix_len + 1:]  # output position j predicts token prefix_len + j + 1
        select = targets != IGNORE_INDEX
        if hidden is not None:
            return head(hidden[:, :-1][select]), targets[select]
        return logits[:, :-1][select], targets[select]

    def _shared_prefix_len(self, batch) -> int:
        if not self.share_prefix or self.packing or self.llm_model.get_output_embeddings() is None:
            return 0
        if not can_share_prefix(self.llm_model, self._decoder()):
            return 0
        n = shared_prefix_length(batch.input_ids, batch.attention_mask, self.image_token_id)
        return n if n < batch.input_ids.shape[1] - 1 else 0

    def forward(self, samples: dict) -> dict:
        conversations = samples["conversations"]
        n_images = list(samples.get("n_images") or [1] * len(conversations))
        batch = self.preprocess(conversations, n_images).to(self.device)
        image_embeds = self._image_embeds(samples, n_images, batch.n_images_used)
        with self.maybe_autocast(self.autocast_dtype, enabled=self.enable_autocast):
            inputs_embeds = self._splice(batch.input_ids, image_embeds, batch.n_images_used)
            layout = arrange_batch(inputs_embeds, batch.attention_mask, batch.labels, batch.lengths,
                                   self.chatml.max_txt_len, self.packing, self.pad_to_max_txt_len,
                                   getattr(self.llm_model.config, "_attn_implementation", "sdpa"))
            logits, targets = self._supervised_logits(**layout, prefix_len=self._shared_prefix_len(batch))
        n_tokens = int(targets.numel())
        logits = logits.float()
        if n_tokens == 0:
            loss = inputs_embeds.sum() * 0.0  # keeps the graph (and DDP) intact
            n_correct = 0
        else:
            loss = F.cross_entropy(logits, targets, reduction="sum") / n_tokens
            n_correct = int((logits.argmax(-1) == targets).sum())
        return {"loss": loss, "n_tokens": n_tokens, "n_correct": n_correct}

    # ---- inference -------------------------------------------------------------
    def _generation_conversations(self, samples: dict, n_images: list[int]):
        if samples.get("conversations") is not None:
            return samples["conversations"]
        if samples.get("prompt") is None:
            raise KeyError("generate needs samples['conversations'] or samples['prompt']")
        prompts = [samples["prompt"]] if isinstance(samples["prompt"], str) else list(samples["prompt"])
        convs = []
        for text, n in zip(prompts, n_images):
            if n and IMAGE_MARK not in text:
                text = IMAGE_MARK * n + "\n" + text
            convs.append([{"from": "human", "value": text}])
        return convs

    @torch.no_grad()
    def generate(self, samples: dict, num_beams=1, max_new_tokens=30, min_length=1, top_p=0.9, temperature=1.0,
                 repetition_penalty=1.0, do_sample=False, streamer=None, **kwargs) -> list[str]:
        image = samples.get("image") if samples.get("image") is not None else samples.get("image_features")
        batch_size = len(samples["conversations"]) if samples.get("conversations") is not None else \
            (1 if isinstance(samples.get("prompt"), str) else len(samples.get("prompt") or []))
        n_images = samples.get("n_images")
        if n_images is None:
            n_images = [0] * batch_size if image is None else [image.shape[0] // max(batch_size, 1)] * batch_size
        n_images = list(n_images)
        convs = self._generation_conversations(samples, n_images)
        batch = self.preprocess(convs, n_images, add_generation_prompt=True, padding_side="left").to(self.device)
        image_embeds = self._image_embeds(samples, n_images, batch.n_images_used)
        inputs_embeds = self._splice(batch.input_ids, image_embeds, batch.n_images_used)
        eos = [self.chatml.im_end] + [i for i in [self.chatml.pad_token_id] if i != self.chatml.im_end]
        gen = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_length, num_beams=num_beams,
                   do_sample=do_sample, repetition_penalty=repetition_penalty, eos_token_id=eos,
                   pad_token_id=self.chatml.pad_token_id, streamer=streamer, **kwargs)
        gen.setdefault("suppress_tokens", [self.image_token_id])  # placeholders are inputs, never outputs
        if do_sample:
            gen.update(top_p=top_p, temperature=temperature)
        with self.maybe_autocast(self.autocast_dtype, enabled=self.enable_autocast):
            out = self.llm_model.generate(inputs_embeds=inputs_embeds, attention_mask=batch.attention_mask, **gen)
        texts = self.llm_tokenizer.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def chat(self, images, question: str, history=None, streamer=None, **gen_kwargs):
        """One chat turn: ``images`` (None, [3,H,W] or [N,3,H,W]: every image of the conversation so far,
        in order) -> (answer, history). New images get their ``<ImageHere>`` before this question."""
        history = list(history or [])
        if images is not None and images.dim() == 3:
            images = images[None]
        n = 0 if images is None else images.shape[0]
        marked = sum(t["value"].count(IMAGE_MARK) for t in history if t["from"] in ("human", "user"))
        marked += question.count(IMAGE_MARK)
        if n > marked:
            question = IMAGE_MARK * (n - marked) + "\n" + question
        conv = history + [{"from": "human", "value": question}]
        samples = {"image": images, "n_images": [n], "conversations": [conv]}
        answer = self.generate(samples, streamer=streamer, **gen_kwargs)[0]
        return answer, conv + [{"from": "gpt", "value": answer}]

    @torch.no_grad()
    def extract_features(self, samples: dict, mode: str = "image") -> dict:
        """LAVIS-style features: ``image_embeds`` (ln_vision(ViT) tokens), ``query_output`` (Q-Former
        query outputs) and ``image_embeds_proj`` (their projection into the LLM space)."""
        if mode != "image":
            raise ValueError(f"Minigpt4Qwen extracts image features only; got mode={mode!r}")
        vit = self.vit_features(samples["image"])
        query = self.query_output(vit)
        return {"image_embeds": vit, "query_output": query, "image_embeds_proj": self.llm_proj(query)}
