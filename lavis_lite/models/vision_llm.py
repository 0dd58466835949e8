"""Vision side + Q-Former + projection + any causal LM: the pieces MiniGPT-4 and MiniGPT4-Qwen share.

frozen EVA-ViT-G -> BLIP-2 Q-Former (learned queries) -> linear projection -> chat LLM. Subclasses
(minigpt4qwen.py, minigpt4.py) set the model types, the projection's released name and defaults.

Text never reaches the model as strings in training: the ``chat_template`` processor and the
``ChatCollator`` (data side, DataLoader workers) give ``input_ids``, ``labels``, ``attention_mask``,
``position_ids`` and the images whose placeholder runs the ids hold (docs/contracts.md). Each run of
``num_query_token`` image-token ids gets the projected query outputs of its image. The image path runs
in stages so a frozen-feature cache can enter at any of them::

    pixels --visual_encoder+ln_vision--> "vit" --Qformer(query_tokens)--> "qformer" --proj--> "proj"

``samples["image_features"]`` holds features of stage ``samples.get("image_features_stage")`` (default:
:meth:`frozen_feature_stage`); :meth:`feature_stage_modules` declares which modules each stage depends
on (the feature cache fingerprints them). Raw conversations (``{"conversations", "image"}``) are still
accepted by ``forward`` and go through the same processor and collator in-process.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from lavis_lite.models.attention import set_attn_implementation
from lavis_lite.models.blip2 import Blip2Base
from lavis_lite.models.conversation_encoder import IGNORE_INDEX
from lavis_lite.models import llm as llm_utils
from lavis_lite.models.frozen_llm import FrozenLLMOptions, supervised_hidden, unsupported_reason
from lavis_lite.models.packing import additive_mask, block_causal_mask
from lavis_lite.models.shared_prefix import can_share_prefix, forward_with_shared_prefix, shared_prefix_length
from lavis_lite.processors.chat_processor import ChatTemplateProcessor, place_new_images, prompt_conversations

logger = logging.getLogger(__name__)

STAGES = ("pixels", "vit", "qformer", "proj")


class VisionLLMBase(Blip2Base):
    PROJ_NAME = "llm_proj"

    def __init__(self, vit_model="eva_clip_g", vit_checkpoint=None, img_size=224, drop_path_rate=0.0,
                 use_grad_checkpoint=False, vit_precision="fp16", vit_sizes=None, freeze_vit=True,
                 unfreeze_pos_embed=False, num_query_token=32, cross_attention_freq=2, qformer_config=None,
                 q_former_model=None, freeze_qformer=True, freeze_queries=True, freeze_proj=False,
                 llm_family="qwen2", chat_template=None, llm_model=None, llm_config=None, tokenizer=None, image_token=None,
                 llm_dtype="fp32", llm_device_map=None, freeze_llm=True, llm_grad_checkpoint=False,
                 get_lora=False, lora_r=8, lora_alpha=16, lora_dropout=0.05, lora_target_modules=None,
                 lora_include_mlp=False, max_txt_len=512, system_message=None,
                 enable_autocast=False, autocast_dtype="bf16", packing=False, pad_to_max_txt_len=False,
                 preprocess_cache_size=100_000, fast_tokenize=True, share_prefix=True,
                 vision_attn_implementation="sdpa", frozen_llm=None, cpu_onednn_linear=False):
        super().__init__()
        if not llm_model and not llm_config:  # fail before building a 1B-parameter ViT
            raise ValueError("Set model.llm_model to a local folder with the LLM, or give model.llm_config for a "
                             "random-init model of the family (the tiny types)")
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
        # Run the tokens all rows start with once per batch, frozen or trained LLM (models/shared_prefix.py).
        self.share_prefix = bool(share_prefix)
        # Frozen LLM: a training forward that skips what the loss cannot see (models/frozen_llm.py).
        self.frozen_llm = FrozenLLMOptions.from_config(frozen_llm)
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
        # The projection keeps the released checkpoints' name (llm_proj / llama_proj: PROJ_NAME).
        setattr(self, self.PROJ_NAME, nn.Linear(self.Qformer.config.hidden_size, self.llm_model.config.hidden_size))
        self.chat_processor = ChatTemplateProcessor(
            self.llm_tokenizer, chat_template or llm_utils.family_info(llm_family)["template"], image_token,
            num_query_token, max_txt_len, system_message, llm_utils.pad_token_id(self.llm_tokenizer, llm_family),
            cache_size=preprocess_cache_size, fast_tokenize=fast_tokenize)
        self.image_token_id = self.chat_processor.image_token_id

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
        if cpu_onednn_linear:  # CPU fp32 Linear layers (frozen or trained) through oneDNN (models/onednn_linear.py)
            from lavis_lite.models.onednn_linear import use_onednn_linear
            use_onednn_linear(self, True)
        logger.info("%s: %s", type(self).__name__, self.show_n_params())

    # ---- construction ------------------------------------------------------
    @classmethod
    def from_config(cls, cfg):
        model = cls(**cls.constructor_kwargs(cfg))
        model.partial_load = bool(cfg.get("partial_load", False))  # a checkpoint lacking trainable keys raises
        if cfg.get("checkpoint"):
            # a weights file, an export folder, or a checkpoint / job folder of our runners (DeepSpeed ones
            # consolidated): the next stage of a pipeline can start from the last one without an export step
            from lavis_lite.inference_utils import load_weights
            load_weights(model, llm_utils.resolve_local_path(cfg["checkpoint"], "checkpoint"))
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
        freeze(self.proj, self.freeze_proj)
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

    @property
    def proj(self) -> nn.Linear:
        return getattr(self, self.PROJ_NAME)

    @property
    def chatml(self):
        """The conversation encoder (older name; the processor is ``chat_processor``)."""
        return self.chat_processor.encoder

    def batch_layout(self) -> dict:
        """How the collator lays out rows for this model (model.packing / pad_to_max_txt_len)."""
        return {"packing": self.packing, "pad_to_max": self.pad_to_max_txt_len}

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
            x = self.proj(x.to(self.device, self.proj.weight.dtype))
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


    def feature_stage_modules(self) -> dict[str, tuple[str, ...]]:
        """Attribute names (released names) of the modules whose weights determine each cacheable stage:
        the feature cache fingerprints exactly these, so it needs no knowledge of the model's layout."""
        vision = ("visual_encoder", "ln_vision")
        return {"vit": vision, "qformer": vision + ("Qformer", "query_tokens"),
                "proj": vision + ("Qformer", "query_tokens", self.PROJ_NAME)}

    def _image_embeds(self, samples: dict, expected, used: list[int] | None = None) -> torch.Tensor | None:
        """Projected embeddings of the batch's images (those whose placeholder runs are in the ids).
        ``expected``: how many; or, as older callers pass it, images per sample with ``used`` = images kept
        per sample (the kept ones are selected here)."""
        if isinstance(expected, (list, tuple)):
            n_images, used = list(expected), list(expected if used is None else used)
            key = "image_features" if samples.get("image_features") is not None else "image"
            if used != n_images and samples.get(key) is not None:
                offsets = [sum(n_images[:i]) for i in range(len(n_images))]
                keep = [o + j for o, u in zip(offsets, used) for j in range(u)]
                samples = {**samples, key: samples[key][torch.tensor(keep, dtype=torch.long,
                                                                     device=samples[key].device)]}
            expected = sum(used)
        if samples.get("image_features") is not None:
            source, stage = samples["image_features"], samples.get("image_features_stage") or self.frozen_feature_stage()
            if stage is None:
                raise ValueError("samples['image_features'] given but no stage is frozen; set image_features_stage")
        else:
            source, stage = samples.get("image"), "pixels"
        if expected == 0:
            return None
        if source is None:
            raise ValueError(f"the batch has {expected} image placeholder run(s) but no 'image' or 'image_features'")
        if source.shape[0] != expected:
            raise ValueError(f"the token ids hold {expected} image placeholder run(s) but the batch holds "
                             f"{source.shape[0]} image(s)")
        return self.encode_image(features=source, stage=stage)

    def _splice(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None,
                per_row: list[int] | None = None) -> torch.Tensor:
        inputs_embeds = self.llm_model.get_input_embeddings()(input_ids)
        slots = input_ids == self.image_token_id
        if per_row is not None:
            for i, (got, n) in enumerate(zip(slots.sum(1).tolist(), per_row)):
                if got != n * self.num_query_token:
                    raise ValueError(f"row {i}: {got} image-token positions for {n} image(s) x "
                                     f"{self.num_query_token} queries")
        if image_embeds is None:
            return inputs_embeds
        return inputs_embeds.masked_scatter(slots[..., None], image_embeds.to(inputs_embeds.dtype))

    # ---- raw conversations -> the collator's batch (in-process; training uses DataLoader workers) ----
    def collate_conversations(self, samples: dict) -> dict:
        """``{"conversations", "n_images", "image" | "image_features"}`` -> the ChatCollator batch."""
        from lavis_lite.datasets.chat_collator import ChatCollator

        conversations = samples["conversations"]
        n_images = list(samples.get("n_images") or [1] * len(conversations))
        if len(n_images) != len(conversations):
            raise ValueError(f"n_images has {len(n_images)} entries for {len(conversations)} conversations")
        key = "image_features" if samples.get("image_features") is not None else "image"
        images = samples.get(key)
        if images is not None and sum(n_images) and images.shape[0] != sum(n_images):
            raise ValueError(f"n_images={n_images} adds up to {sum(n_images)} images but the batch holds "
                             f"{images.shape[0]}")
        encoded = self.chat_processor.encode(conversations, n_images)
        offsets = [sum(n_images[:i]) for i in range(len(n_images))]
        items = [{"encoded": e, "n_images": n, key: images[o:o + n] if images is not None and n else None}
                 for e, n, o in zip(encoded, n_images, offsets)]
        batch = ChatCollator.for_model(self)(items)
        if samples.get("image_features_stage") is not None:
            batch["image_features_stage"] = samples["image_features_stage"]
        return batch

    def preprocess(self, conversations, n_images=None, **kwargs):
        """ids / labels / attention_mask of conversations, padded (conversation_encoder.ChatBatch)."""
        return self.chatml(conversations, n_images, **kwargs)

    def count_supervised_tokens(self, samples: dict) -> int:
        """Supervised next-token targets of a micro-batch, known before its forward."""
        labels = samples["labels"] if "labels" in samples else self.collate_conversations(samples)["labels"]
        return int((labels[:, 1:] != IGNORE_INDEX).sum())

    # ---- training ------------------------------------------------------------
    def _decoder(self):
        """The LLM without its head (transformers' ``get_decoder``), or None."""
        decoder = self.llm_model.get_decoder() if hasattr(self.llm_model, "get_decoder") else None
        return decoder if decoder is not self.llm_model else None

    def _supervised_logits(self, inputs_embeds, attention_mask, labels, position_ids=None, prefix_len=0,
                           grad_cols=None):
        """Logits only where a next token is supervised (saves the [B, L, vocab] tensor).
        ``prefix_len``: leading positions shared by every row, run once (see shared_prefix.py);
        ``grad_cols``: columns holding image tokens (the frozen-LLM path's layer-0 skip)."""
        decoder, head = self._decoder(), self.llm_model.get_output_embeddings()
        hidden = logits = None
        if (self.frozen_llm.enabled and position_ids is None and head is not None and attention_mask is not None
                and attention_mask.dim() == 2 and unsupported_reason(self.llm_model, decoder) is None):
            hidden, targets = supervised_hidden(decoder, inputs_embeds, attention_mask, labels, prefix_len,
                                                grad_cols, self.frozen_llm)
            return head(hidden), targets
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

    def _shared_prefix_len(self, input_ids, attention_mask, labels, packed: bool) -> int:
        if not self.share_prefix or packed or self.llm_model.get_output_embeddings() is None:
            return 0
        if not can_share_prefix(self.llm_model, self._decoder()):
            return 0
        n = shared_prefix_length(input_ids, attention_mask, self.image_token_id, labels)
        return n if n < input_ids.shape[1] - 1 else 0

    def _attention(self, batch: dict, dtype: torch.dtype):
        """(attention mask, position ids) for the LLM: packed rows get the block-diagonal mask (or, with
        flash attention, only the restarting positions); padded rows the 2-D mask."""
        if batch.get("segment_ids") is None:
            return batch["attention_mask"], None
        impl = str(getattr(self.llm_model.config, "_attn_implementation", "sdpa"))
        if impl.startswith("flash"):
            return None, batch["position_ids"]  # varlen from the restarting position ids
        mask = block_causal_mask(batch["segment_ids"])
        return (additive_mask(mask, dtype) if impl == "eager" else mask), batch["position_ids"]

    def forward(self, samples: dict) -> dict:
        """Training / validation loss. ``samples``: the collator's batch (or raw conversations)."""
        if "input_ids" not in samples:
            samples = {k: v.to(self.device) if torch.is_tensor(v) else v
                       for k, v in self.collate_conversations(samples).items()}
        input_ids, labels = samples["input_ids"], samples["labels"]
        per_row = list(samples.get("images_per_row") or [0] * input_ids.shape[0])
        if samples.get("all_images"):  # evaluation batch: every image, the first per_row[i] of row i in the ids
            image_embeds = self._image_embeds(samples, list(samples["n_images"]), per_row)
        else:
            image_embeds = self._image_embeds(samples, sum(per_row))
        with self.maybe_autocast(self.autocast_dtype, enabled=self.enable_autocast):
            inputs_embeds = self._splice(input_ids, image_embeds, per_row)
            attention_mask, position_ids = self._attention(samples, inputs_embeds.dtype)
            prefix = self._shared_prefix_len(input_ids, samples["attention_mask"], labels,
                                             samples.get("segment_ids") is not None)
            logits, targets = self._supervised_logits(inputs_embeds, attention_mask, labels, position_ids, prefix,
                                                      (input_ids == self.image_token_id).any(0))
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
        return prompt_conversations(samples["prompt"], n_images)

    def generation_kwargs(self) -> dict:
        """Stop at the template's end of turn (token ids, or its text when it is not one token)."""
        proc = self.chat_processor
        stop = proc.stop_token_ids() + [i for i in [proc.pad_token_id] if i not in proc.stop_token_ids()]
        kwargs = {"eos_token_id": stop, "pad_token_id": proc.pad_token_id}
        if proc.encoder.eot_id is None:  # e.g. MiniGPT-4's "###"
            kwargs.update(stop_strings=[proc.template.eot], tokenizer=self.llm_tokenizer)
        return kwargs

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
        batch = self.chat_processor.generation_batch(convs, n_images).to(self.device)
        image_embeds = self._image_embeds(samples, sum(batch.n_images_used))
        inputs_embeds = self._splice(batch.input_ids, image_embeds, batch.n_images_used)
        gen = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_length, num_beams=num_beams,
                   do_sample=do_sample, repetition_penalty=repetition_penalty, streamer=streamer,
                   **self.generation_kwargs(), **kwargs)
        gen.setdefault("suppress_tokens", [self.image_token_id])  # placeholders are inputs, never outputs
        if do_sample:
            gen.update(top_p=top_p, temperature=temperature)
        with self.maybe_autocast(self.autocast_dtype, enabled=self.enable_autocast):
            out = self.llm_model.generate(inputs_embeds=inputs_embeds, attention_mask=batch.attention_mask, **gen)
        texts = self.llm_tokenizer.batch_decode(out, skip_special_tokens=True)
        eot = self.chat_processor.template.eot
        return [t.split(eot)[0].strip() if self.chat_processor.encoder.eot_id is None else t.strip() for t in texts]

    def chat(self, images, question: str, history=None, streamer=None, **gen_kwargs):
        """One chat turn: ``images`` (None, [3,H,W] or [N,3,H,W]: every image of the conversation so far,
        in order) -> (answer, history). New images get their ``<ImageHere>`` before this question."""
        history = list(history or [])
        if images is not None and images.dim() == 3:
            images = images[None]
        n = 0 if images is None else images.shape[0]
        conv = history + [{"from": "human", "value": place_new_images(history, question, n)}]
        samples = {"image": images, "n_images": [n], "conversations": [conv]}
        answer = self.generate(samples, streamer=streamer, **gen_kwargs)[0]
        return answer, conv + [{"from": "gpt", "value": answer}]

    @torch.no_grad()
    def extract_features(self, samples: dict, mode: str = "image") -> dict:
        """LAVIS-style features: ``image_embeds`` (ln_vision(ViT) tokens), ``query_output`` (Q-Former
        query outputs) and ``image_embeds_proj`` (their projection into the LLM space)."""
        if mode != "image":
            raise ValueError(f"this model extracts image features only; got mode={mode!r}")
        vit = self.vit_features(samples["image"])
        query = self.query_output(vit)
        return {"image_embeds": vit, "query_output": query, "image_embeds_proj": self.proj(query)}
