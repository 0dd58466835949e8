"""CLIP through the real ``open_clip`` library, registered as LAVIS registers it: ``clip_feature_extractor``
(alias ``clip``) with types ViT-B-32, ViT-B-16, ViT-L-14, ViT-L-14-336, RN50 and a random-init ``tiny``.

    model, vis_processors, _ = load_model_and_preprocess("clip_feature_extractor", "tiny", is_eval=True)
    image = vis_processors["eval"](pil_image).unsqueeze(0)
    f = model.extract_features({"image": image, "text_input": ["a red circle", "a blue square"]})
    similarity = f.image_embeds_proj @ f.text_embeds_proj.t()           # cosine similarities
    classifier = model.zero_shot_classifier(["circle", "square"], ["a photo of a {}."])   # [dim, n_classes]
    logits = model.zero_shot_logits(image, classifier)                   # [n_images, n_classes]

The model object *is* open_clip's ``CLIP`` (built by ``open_clip.create_model``, then given this class's
methods through a subclass of both), so parameter names are open_clip's and LAVIS's -- an open_clip
checkpoint loads key for key -- and ``encode_image`` / ``encode_text`` are open_clip's own code.

Weights: ``model.pretrained`` names a local open_clip checkpoint file (``.pt`` / ``.bin`` /
``.safetensors`` state dict, or OpenAI's TorchScript release file). Nothing is downloaded; an unset or
missing path is an error naming the key. open_clip is imported on first use, not with lavis_lite.
"""
from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lavis_lite.common.registry import registry
from lavis_lite.models.base_model import BaseModel, CheckpointMismatchError
from lavis_lite.models.llm import resolve_local_path

logger = logging.getLogger(__name__)

# Our open_clip architectures (the tiny test model), registered with open_clip on first use.
OPEN_CLIP_CONFIG_DIR = Path(__file__).with_name("open_clip_configs")
CONFIG_KEYS = frozenset({"arch", "model_type", "preprocess", "checkpoint", "open_clip_name", "quick_gelu",
                         "pretrained", "load_pretrained", "precision", "partial_load"})
# Scale of LAVIS's zero-shot logits (``100.0 * image_features @ classifier``).
ZERO_SHOT_LOGIT_SCALE = 100.0
# Non-tensor entries of OpenAI's TorchScript release files.
_OPENAI_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class ClipOutputFeatures:
    """LAVIS's ClipOutputFeatures: ``*_embeds`` as open_clip encodes them [N, dim], ``*_embeds_proj``
    the same L2-normalised (what similarities use)."""
    image_embeds: torch.Tensor | None = None
    image_embeds_proj: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    text_embeds_proj: torch.Tensor | None = None


def import_open_clip():
    """open_clip with our architectures registered; a clear error when it is not installed."""
    try:
        import open_clip
    except ImportError as err:
        raise ImportError("clip_feature_extractor needs the open_clip library: "
                          "pip install 'lavis-lite[clip]' (package open_clip_torch)") from err
    ours = {p.stem for p in OPEN_CLIP_CONFIG_DIR.glob("*.json")}
    if not ours <= set(open_clip.list_models()):
        open_clip.add_model_config(OPEN_CLIP_CONFIG_DIR)
    return open_clip


_MIXED_CLASSES: dict[tuple[type, type], type] = {}


def _mixed_class(ours: type, clip_cls: type) -> type:
    """``ours`` + open_clip's model class, made once per pair. The open_clip model built by
    open_clip's factory is switched to it: same object and weights, our methods added."""
    key = (ours, clip_cls)
    if key not in _MIXED_CLASSES:
        _MIXED_CLASSES[key] = type(ours.__name__, (ours, clip_cls),
                                   {"__module__": ours.__module__, "__qualname__": ours.__qualname__})
    return _MIXED_CLASSES[key]


class _NoRandomInitWarning(logging.Filter):
    """open_clip warns "No pretrained weights loaded" when it builds without weights; ours are loaded
    right after (or random init was asked for), so the warning would mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


@registry.register_model("clip_feature_extractor")
@registry.register_model("clip")
class ClipFeatureExtractor(BaseModel):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "ViT-B-32": "configs/models/clip/clip_vit_base32.yaml",
        "ViT-B-16": "configs/models/clip/clip_vit_base16.yaml",
        "ViT-L-14": "configs/models/clip/clip_vit_large14.yaml",
        "ViT-L-14-336": "configs/models/clip/clip_vit_large14_336.yaml",
        "RN50": "configs/models/clip/clip_resnet50.yaml",
        "tiny": "configs/models/clip/clip_tiny.yaml",
    }
    DEFAULT_MODEL_TYPE = "ViT-B-32"

    @classmethod
    def default_config_path(cls, model_type: str | None = None) -> str:
        # LAVIS maps its generic "base" type to ViT-B-32.
        return super().default_config_path("ViT-B-32" if model_type == "base" else model_type)

    # ---- construction ----------------------------------------------------------
    @classmethod
    def from_config(cls, cfg, device: str | torch.device = "cpu"):
        """Build with ``open_clip.create_model`` (no weights), then load ``pretrained`` and ``checkpoint``.
        ``device="meta"`` builds the structure only (key and shape checks)."""
        cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg or {})
        unknown = sorted(set(cfg) - CONFIG_KEYS)
        if unknown:
            raise KeyError(f"Unknown model config key(s) {unknown} for {cls.__name__}; known keys: {sorted(CONFIG_KEYS)}")
        open_clip = import_open_clip()
        name = cfg.get("open_clip_name") or cfg.get("model_type") or cls.DEFAULT_MODEL_TYPE
        if open_clip.get_model_config(name) is None:
            raise KeyError(f"model.open_clip_name = {name!r} is not an open_clip architecture; "
                           f"known: {open_clip.list_models()}")
        weights = cls._pretrained_file(cfg, name, open_clip)  # fail before the (slow) build
        checkpoint = cfg.get("checkpoint")
        if checkpoint is not None:
            checkpoint = resolve_local_path(checkpoint, "checkpoint", want_dir=False)
        quiet = _NoRandomInitWarning()
        logging.getLogger().addFilter(quiet)  # open_clip logs through the root logger
        try:  # on "meta", build there directly (open_clip would build on the CPU, then move)
            with torch.device("meta") if str(device) == "meta" else contextlib.nullcontext():
                model = open_clip.create_model(name, pretrained=None, precision=cfg.get("precision", "fp32"),
                                               device=device, force_quick_gelu=bool(cfg.get("quick_gelu", False)))
        finally:
            logging.getLogger().removeFilter(quiet)
        if type(model) is not open_clip.CLIP:  # CustomTextCLIP / CoCa name their text tower differently
            raise ValueError(f"open_clip architecture {name!r} builds {type(model).__name__}; only CLIP-layout "
                             "models (LAVIS's key names) are supported")
        model.__class__ = _mixed_class(cls, type(model))
        model.open_clip_name = name
        model.tokenizer = open_clip.get_tokenizer(name)
        model.classifier = None  # zero-shot class embeddings set by before_evaluation (LAVIS's predict)
        if weights:
            model.load_open_clip_checkpoint(weights)
        else:
            logger.info("clip_feature_extractor %s: random init (load_pretrained: False)", name)
        if checkpoint:  # a file lacking trainable parameters is refused unless partial_load is set
            model.load_checkpoint(checkpoint, partial=bool(cfg.get("partial_load", False)))
        return model

    @staticmethod
    def _pretrained_file(cfg: dict, name: str, open_clip) -> str | None:
        if not cfg.get("load_pretrained", True):
            return None
        path = cfg.get("pretrained")
        if path is None:
            raise FileNotFoundError(
                f"model.pretrained is not set: {cfg.get('model_type') or name} needs a local open_clip checkpoint "
                "file (weights are never downloaded); set model.pretrained to its path, or "
                "model.load_pretrained: False for a random init")
        if not os.path.exists(os.path.expanduser(str(path))) and str(path) in open_clip.list_pretrained_tags_by_model(name):
            raise FileNotFoundError(
                f"model.pretrained = {path!r} is an open_clip download tag; lavis_lite never downloads weights: "
                f"fetch the {name} {path} checkpoint yourself and set model.pretrained to the local file")
        return resolve_local_path(path, "pretrained", want_dir=False)

    def load_open_clip_checkpoint(self, path: str) -> None:
        """Load an open_clip checkpoint strictly (every key, every shape) with open_clip's own loader
        (it unwraps ``state_dict`` / ``module.`` and converts older layouts); OpenAI's TorchScript
        release files are read with ``torch.jit.load`` (TorchScript's restricted loader, no pickle)."""
        open_clip = import_open_clip()
        try:
            if _is_torchscript(path):
                state = torch.jit.load(path, map_location="cpu").state_dict()
                # scripted modules also store non-persistent buffers (open_clip's attn_mask)
                transient = {n for n, _ in self.named_buffers()} - set(self.state_dict())
                state = {k: v for k, v in state.items() if k not in _OPENAI_JIT_EXTRA_KEYS and k not in transient}
                self.load_state_dict(state, strict=True)
            else:
                open_clip.load_checkpoint(self, path, strict=True, weights_only=True)
        except RuntimeError as err:
            raise CheckpointMismatchError(f"model.pretrained = {path!r} does not fit open_clip "
                                          f"{self.open_clip_name}: {' '.join(str(err).split())}") from None
        logger.info("loaded open_clip %s weights from %s", self.open_clip_name, path)

    # ---- LAVIS's API -------------------------------------------------------------
    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """open_clip's tokenizer for this architecture -> LongTensor [N, context_length] on the model's device."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts).to(self.device)

    def forward(self, samples: dict) -> dict:
        """Contrastive loss of matching image/text pairs (open_clip's ClipLoss, gathered across ranks)."""
        from open_clip import ClipLoss

        from lavis_lite.models.blip2_losses import rank_and_world

        for key in ("image", "text_input"):
            if samples.get(key) is None:
                raise KeyError(f"{type(self).__name__}.forward needs samples[{key!r}]; got keys {sorted(samples)}")
        image = samples["image"].to(self.device)
        feats = self.extract_features({"image": image, "text_input": samples["text_input"]})
        rank, world = rank_and_world()
        loss = ClipLoss(rank=rank, world_size=world)(feats.image_embeds_proj, feats.text_embeds_proj,
                                                      self.logit_scale.exp())
        return {"loss": loss, "n_tokens": int(image.shape[0])}

    def extract_features(self, samples: dict, mode: str | None = None):
        """As LAVIS (no ``mode``): with both ``image`` and ``text_input`` a :class:`ClipOutputFeatures`
        [N, dim]; with one of them, that side's raw open_clip embeddings [N, dim] (a tensor, as LAVIS
        returns). ``mode="image"`` / ``"text"``: that side as ClipOutputFeatures in the BLIP feature
        extractors' layout, [N, 1, dim] (one pooled embedding per input), so code written for them --
        the ``retrieval`` task -- runs on CLIP."""
        if mode is not None:
            if mode not in ("image", "text"):
                raise ValueError(f"CLIP extracts mode='image' or mode='text' features, got mode={mode!r}")
            key = "image" if mode == "image" else "text_input"
            if samples.get(key) is None:
                raise KeyError(f"extract_features(mode={mode!r}) needs samples[{key!r}]")
            embeds = self.extract_features({key: samples[key]})[:, None]
            proj = F.normalize(embeds, dim=-1)
            return ClipOutputFeatures(image_embeds=embeds, image_embeds_proj=proj) if mode == "image" \
                else ClipOutputFeatures(text_embeds=embeds, text_embeds_proj=proj)
        image, text = samples.get("image"), samples.get("text_input")
        if image is None and text is None:
            raise KeyError("extract_features needs samples['image'] and/or samples['text_input']")
        if text is not None:
            text = self.tokenize(text)
        if image is not None:
            image = image.to(self.device)
        if image is None:
            return self.encode_text(text)
        if text is None:
            return self.encode_image(image)
        image_embeds, text_embeds = self.encode_image(image), self.encode_text(text)
        return ClipOutputFeatures(image_embeds=image_embeds, image_embeds_proj=F.normalize(image_embeds, dim=-1),
                                  text_embeds=text_embeds, text_embeds_proj=F.normalize(text_embeds, dim=-1))

    # ---- zero-shot classification -------------------------------------------------
    @torch.no_grad()
    def zero_shot_classifier(self, classnames: Sequence[str],
                             templates: Sequence[str | Callable[[str], str]] | None = None) -> torch.Tensor:
        """Class embeddings [dim, n_classes]: each class's prompts (``templates``: strings with ``{}`` or
        callables; default OpenAI's 80 ImageNet prompts) encoded, normalised, averaged, renormalised --
        open_clip's ``build_zero_shot_classifier``, LAVIS's ``zero_shot_classifier``."""
        open_clip = import_open_clip()
        classnames = [classnames] if isinstance(classnames, str) else list(classnames)
        templates = list(open_clip.OPENAI_IMAGENET_TEMPLATES if templates is None else templates)
        if not classnames or not templates:
            raise ValueError("zero_shot_classifier needs at least one class name and one template")
        prompts = []
        for template in templates:
            if isinstance(template, str):
                if "{}" not in template:
                    raise ValueError(f"template {template!r} has no '{{}}' for the class name")
                template = template.format
            elif not callable(template):
                raise TypeError(f"a template must be a str with '{{}}' or a callable, got {type(template).__name__}")
            prompts.append(template)
        return open_clip.build_zero_shot_classifier(self, self.tokenizer, classnames, prompts,
                                                    num_classes_per_batch=10, device=self.device)

    @torch.no_grad()
    def zero_shot_logits(self, image: torch.Tensor, classifier: torch.Tensor | None = None) -> torch.Tensor:
        """``100 * normalised image features @ classifier`` -> [n_images, n_classes] (LAVIS's predict)."""
        classifier = self.classifier if classifier is None else classifier
        if classifier is None:
            raise ValueError("no zero-shot classifier: pass one from zero_shot_classifier(classnames, templates)")
        features = F.normalize(self.encode_image(image.to(self.device)), dim=-1)
        return ZERO_SHOT_LOGIT_SCALE * features @ classifier.to(features)

    def predict(self, samples: dict) -> dict:
        """LAVIS's classification step: ``{"predictions": logits, "targets": samples["label"]}``."""
        return {"predictions": self.zero_shot_logits(samples["image"]), "targets": samples.get("label")}

    def before_evaluation(self, dataset=None, task_type=None, **kwargs) -> None:
        """A classification dataset (``classnames``, optional ``templates``) gets its zero-shot classifier."""
        classnames = getattr(dataset, "classnames", None)
        if classnames:
            self.classifier = self.zero_shot_classifier(classnames, getattr(dataset, "templates", None))
