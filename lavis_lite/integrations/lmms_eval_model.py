"""lavis_lite models as an lmms-eval model (``--model lavis_lite``), so lmms-eval's benchmarks (MME,
MMBench, POPE, ...) run on them:

    lmms-eval --model lavis_lite --model_args cfg_path=JOB_OR_EXPORT_OR_YAML,device=cuda \\
        --tasks mme,pope --batch_size 4 --output_path results/
    lmms-eval --model lavis_lite --model_args name=minigpt4qwen,model_type=tiny --tasks ...

lmms-eval finds the name through the ``lmms_eval.models`` entry-point group that pyproject.toml
declares (installed with lavis_lite); :func:`register` does the same by hand for a source checkout that
is not installed. This module imports lmms_eval; nothing in lavis_lite imports this module.

Model args (``--model_args k=v,k=v``):
- ``cfg_path``: a model YAML, run YAML, export folder or training job folder (as the chat CLI's
  ``--cfg-path``); or ``name`` + ``model_type`` of a registered model (``load_model_and_preprocess``).
- ``checkpoint``: weights loaded over the model (file, export or job folder).
- ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (lmms-eval's ``--device``); under a multi-process
  launch (``accelerate launch`` / ``torchrun``) each rank takes ``cuda:LOCAL_RANK``.
- ``batch_size`` (lmms-eval's ``--batch_size``), ``max_new_tokens`` (when a task sets none; default 128),
  ``options``: model config overrides ``key=value`` separated by ``;`` or spaces.

Requests: ``generate_until`` (batched, one group of equal generation settings at a time; ``until`` cuts
the answer at the first stop string), ``loglikelihood`` (the continuation as the assistant's reply to the
context, scored as lmms-eval's own llava / qwen_vl models score it: the mean token loss, lower is likelier;
needs a chat model with MiniGPT4-Qwen's layout) and ``generate_until_multi_round``. Visuals must be images (PIL or paths); video or audio is an error.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from lavis_lite.inference_utils import ImageLoadError, open_image
from lavis_lite.models.chatml import IMAGE_MARK

logger = logging.getLogger(__name__)

MODEL_ID = "lavis_lite"
CLASS_PATH = f"{__name__}.LavisLite"
# Placeholders other lmms-eval models expect in prompts; ours is IMAGE_MARK.
FOREIGN_IMAGE_MARKS = ("<image>",)
DEFAULT_MAX_NEW_TOKENS = 128
MAX_ROUNDS = 64
# lmms-eval generation kwargs -> ours; anything else is reported once, never silently dropped.
_USED_GEN_KWARGS = {"max_new_tokens", "temperature", "top_p", "num_beams", "do_sample", "until",
                    "repetition_penalty", "min_new_tokens"}


def manifest():
    """The entry-point payload (group ``lmms_eval.models``): ``lavis_lite`` -> :class:`LavisLite`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


def register() -> None:
    """Make ``lavis_lite`` resolvable in this process without the installed entry point."""
    from lmms_eval import models

    models.MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)
    models.AVAILABLE_MODELS[MODEL_ID] = CLASS_PATH.rsplit(".", 1)[-1]


def _split_options(options) -> list[str]:
    if not options:
        return []
    if isinstance(options, (list, tuple)):
        return [str(o) for o in options]
    return [o for o in re.split(r"[;\s]+", str(options)) if o]


class LavisLite(lmms):
    """An lmms-eval "simple" model over a lavis_lite model's ``generate`` (docs/contracts.md)."""

    is_simple = True

    def __init__(self, cfg_path: str | None = None, name: str | None = None, model_type: str | None = None,
                 checkpoint: str | None = None, device: str | None = None, batch_size: int | str = 1,
                 max_batch_size: int | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 options: str | None = None, **unknown) -> None:
        super().__init__()
        if unknown:
            raise TypeError(f"unknown lavis_lite model_args {sorted(unknown)}; known: cfg_path, name, model_type, "
                            "checkpoint, device, batch_size, max_new_tokens, options")
        if (cfg_path is None) == (name is None):
            raise ValueError("lavis_lite model_args need exactly one of cfg_path=... or name=...(,model_type=...)")
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        if self._world_size > 1 and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        self.batch_size_per_gpu = max(1, int(batch_size if str(batch_size) != "auto" else 1))
        self.default_max_new_tokens = int(max_new_tokens)
        self._model, self._image_processor = self._load(cfg_path, name, model_type, checkpoint, device,
                                                        _split_options(options))
        self._device = self._model.device
        self._reported_kwargs: set[str] = set()

    @staticmethod
    def _load(cfg_path, name, model_type, checkpoint, device, options):
        from lavis_lite.inference_utils import load_model_from_cfg, load_weights, resolve_device

        if cfg_path is not None:
            model, processor, _ = load_model_from_cfg(cfg_path, checkpoint=checkpoint, device=device, options=options)
            return model, processor
        if options:
            raise ValueError("options=... applies to cfg_path=...; with name=... use a model YAML instead")
        from lavis_lite.models import load_model_and_preprocess

        model, vis_processors, _ = load_model_and_preprocess(name, model_type, is_eval=True)
        if checkpoint:
            load_weights(model, checkpoint)
        return model.to(resolve_device(device)).eval(), vis_processors["eval"]

    # ---- lmms-eval's properties ---------------------------------------------------
    @property
    def model(self):
        return self._model

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ---- inputs --------------------------------------------------------------------
    def _visuals(self, request_args) -> list:
        """The request's images as processed tensors [3, S, S]."""
        doc_to_visual, doc_id, task, split = request_args[-4:]
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else None
        return self._process_visuals(visuals, f"{task}/{split}/{doc_id}")

    def _process_visuals(self, visuals, where: str) -> list:
        from PIL import Image

        if visuals is None:
            return []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        out = []
        for visual in visuals:
            if isinstance(visual, Image.Image):
                image = visual
            elif isinstance(visual, (str, os.PathLike)):
                try:
                    image = open_image(visual)
                except ImageLoadError as err:
                    raise ValueError(f"lmms-eval request {where}: {err} (lavis_lite takes images only; "
                                     "video and audio inputs are not supported)") from None
            else:
                raise TypeError(f"lmms-eval request {where}: a visual of type {type(visual).__name__}; "
                                "lavis_lite takes PIL images or image paths only")
            out.append(self._image_processor(image))
        return out

    @staticmethod
    def _prompt(context: str, n_images: int) -> str:
        """The user message: other models' ``<image>`` marks become ours when they match the image count
        (else they are dropped); missing marks go in front, as ``generate``'s prompt path places them."""
        text = context
        for mark in FOREIGN_IMAGE_MARKS:
            if mark in text:
                text = text.replace(mark, IMAGE_MARK) if text.count(mark) == n_images else text.replace(mark, "")
        have = text.count(IMAGE_MARK)
        if have > n_images:
            raise ValueError(f"prompt has {have} {IMAGE_MARK} marks for {n_images} image(s): {context[:200]!r}")
        if have < n_images:
            text = IMAGE_MARK * (n_images - have) + "\n" + text.lstrip("\n")
        return text

    def _generation_settings(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        gen_kwargs = dict(gen_kwargs or {})
        ignored = sorted(set(gen_kwargs) - _USED_GEN_KWARGS - self._reported_kwargs)
        if ignored:
            logger.warning("lavis_lite ignores lmms-eval generation kwargs %s", ignored)
            self._reported_kwargs.update(ignored)
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        do_sample = bool(gen_kwargs.get("do_sample", False)) or temperature > 0
        settings = {"max_new_tokens": int(gen_kwargs.get("max_new_tokens") or self.default_max_new_tokens),
                    "num_beams": int(gen_kwargs.get("num_beams") or 1),
                    "min_length": int(gen_kwargs.get("min_new_tokens") or 1),
                    "repetition_penalty": float(gen_kwargs.get("repetition_penalty") or 1.0),
                    "do_sample": do_sample}
        if do_sample:
            settings.update(temperature=temperature or 1.0, top_p=float(gen_kwargs.get("top_p") or 1.0))
        return settings, until

    @staticmethod
    def _cut(text: str, until: list[str]) -> str:
        for stop in until:
            if stop and stop in text:
                text = text.split(stop, 1)[0]
        return text.strip()

    @torch.no_grad()
    def _generate(self, items: list[tuple[str, list]], gen_kwargs: dict) -> list[str]:
        """(context, image tensors) pairs with one set of generation settings -> answers."""
        settings, until = self._generation_settings(gen_kwargs)
        images = [img for _, imgs in items for img in imgs]
        samples = {"image": torch.stack(images).to(self.device) if images else None,
                   "n_images": [len(imgs) for _, imgs in items],
                   "conversations": [[{"from": "human", "value": self._prompt(ctx, len(imgs))}] for ctx, imgs in items]}
        return [self._cut(t, until) for t in self.model.generate(samples, **settings)]

    # ---- lmms-eval's API -------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):  # equal settings batch together
            groups.setdefault(repr(sorted((request.args[1] or {}).items())), []).append(i)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="lavis_lite generate")
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                items = [(requests[i].args[0], self._visuals(requests[i].args)) for i in chunk]
                gen_kwargs = requests[chunk[0]].args[1]
                for i, answer in zip(chunk, self._generate(items, gen_kwargs)):
                    results[i] = answer
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], gen_kwargs), answer)
                bar.update(len(chunk))
        bar.close()
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Each round re-prompts with the context the task's ``doc_to_text`` builds from the earlier
        answers (lmms-eval's multi-round protocol), until it signals the end."""
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="lavis_lite multi-round"):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            where = f"{task}/{split}/{doc_id}"
            visuals, rounds, info = doc_to_visual(doc), [], None
            for round_idx in range(MAX_ROUNDS):
                if round_idx:
                    visuals, context, done, previous, info = doc_to_text(
                        doc, previous_output=list(rounds), round_idx=round_idx, previous_round_info=info)
                    rounds = list(previous)
                    if done:
                        break
                rounds.append(self._generate([(context, self._process_visuals(visuals, where))], gen_kwargs)[0])
            else:
                raise RuntimeError(f"{where}: no end signal from doc_to_text after {MAX_ROUNDS} rounds")
            results.append(list(rounds))  # a list of str: lmms-eval 0.7 would stringify a tuple
        return results

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        out = []
        for request in tqdm(requests, disable=self.rank != 0, desc="lavis_lite loglikelihood"):
            context, continuation = request.args[0], request.args[1]
            if callable(continuation):  # output_type loglikelihood passes doc_to_target
                doc_id, task, split = request.args[-3:]
                continuation = continuation(self.task_dict[task][split][doc_id])
            images = self._visuals(request.args) if len(request.args) >= 6 else []
            logprobs, greedy = self.continuation_logprobs(context, str(continuation), images)
            # lmms-eval's convention, as its llava / qwen_vl / llava_hf models: the mean token loss
            # (multiple_choice picks the argmin), not the summed log-probability its docstring names.
            out.append((float(-logprobs.mean()), greedy))
        return out

    @torch.no_grad()
    def continuation_logprobs(self, context: str, continuation: str, images: list) -> tuple[torch.Tensor, bool]:
        """(log-probability of each of ``continuation``'s tokens as the assistant's reply to ``context``,
        whether greedy decoding would produce exactly those tokens)."""
        model = self.model
        needed = ("preprocess", "_image_embeds", "_splice", "llm_model", "llm_tokenizer")
        if not all(hasattr(model, attr) for attr in needed):
            raise NotImplementedError(f"loglikelihood needs a chat model with {needed}; {type(model).__name__} "
                                      "has no such layout (generate_until tasks still work)")
        n = len(images)
        conv = [{"from": "human", "value": self._prompt(context, n)}]
        batch = model.preprocess([conv], [n], add_generation_prompt=True).to(model.device)
        target = model.llm_tokenizer(continuation, add_special_tokens=False).input_ids
        if not target:
            raise ValueError(f"loglikelihood: the continuation {continuation!r} has no tokens")
        ids = torch.cat([batch.input_ids, torch.tensor([target], device=model.device)], dim=1)
        samples = {"image": torch.stack(images).to(model.device) if images else None}
        image_embeds = model._image_embeds(samples, [n], batch.n_images_used)
        with model.maybe_autocast(model.autocast_dtype, enabled=model.enable_autocast):
            embeds = model._splice(ids, image_embeds, batch.n_images_used)
            logits = model.llm_model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), use_cache=False).logits
        start = batch.input_ids.shape[1]
        logprobs = logits[0, start - 1:-1].float().log_softmax(-1)
        wanted = ids[0, start:]
        return logprobs.gather(-1, wanted[:, None])[:, 0].cpu(), bool((logprobs.argmax(-1) == wanted).all())

    def get_model_info(self) -> dict[str, Any]:
        return {"model_class": type(self.model).__name__, "n_params": self.model.n_params()
                if hasattr(self.model, "n_params") else None}
