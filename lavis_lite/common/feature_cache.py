"""Frozen-feature cache: compute the frozen vision stages once per image, read them from disk after.

When the ViT (and possibly the Q-Former and the projection) are frozen and the image transform is
deterministic, their output for an image never changes during training, yet a naive loop decodes,
transforms and encodes every image in every epoch. This cache stores that output on disk.

Layout: ``root/<namespace>/<aa>/<key>.safetensors``, one small safetensors file per image, read
through a memory map (safetensors ``safe_open``).

* ``namespace`` = hash(stage name, transform description, weights fingerprint of the frozen
  stages, storage dtype). Change any of them and the cache misses: stale features are never read.
  ``manifest.json`` in the namespace says in words what it holds.
* ``key`` = hash(absolute image path, file size, modification time): an edited image misses too.
* Writes go to a unique temporary file in the same directory, are flushed and then renamed over the
  final name (``os.replace`` is atomic on POSIX), so any number of DataLoader workers and ranks can
  write the same or different entries at once: a reader sees a complete file or none, never a torn one.
  Each file repeats its image path in the safetensors metadata, checked on read.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid

import torch

logger = logging.getLogger(__name__)

STAGES = ("vit", "qformer", "proj")  # output of ln_vision(ViT), of the Q-Former queries, of llm_proj
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Names of torchvision / processor transforms that draw random numbers.
_RANDOM_TRANSFORM_WORDS = ("Random", "ColorJitter", "AutoAugment", "RandAugment", "TrivialAugment",
                           "AugMix", "GaussianBlur", "ElasticTransform")


class FeatureCacheError(RuntimeError):
    """A cache entry is unreadable, belongs to another image, or a required entry is missing."""


def _hash(*parts: str, n: int = 20) -> str:
    h = hashlib.blake2b(digest_size=n)
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


# ---- what the cache is keyed on ------------------------------------------------------------------
def describe_transform(transform) -> str:
    """A deterministic text description of an image transform (processor or torchvision Compose).

    A processor may define ``describe()``; otherwise its ``repr`` is used (torchvision transforms print
    their parameters), with object addresses removed so the description is stable across runs. A
    processor that decodes JPEGs other than in full (``decode: draft``) has that appended: its pixels
    differ, so its features get their own namespace (``full`` keeps the old description and caches).
    """
    if transform is None:
        return "none"
    if hasattr(transform, "describe"):
        return str(transform.describe())
    text = repr(transform)
    inner = getattr(transform, "transform", None)  # lavis-style processors keep a Compose here
    if inner is not None:
        text = f"{type(transform).__name__}({inner!r})"
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
    decode = getattr(transform, "decode", "full")
    return text if decode == "full" else f"{text} decode={decode}"


def is_deterministic_transform(transform) -> bool:
    """False when the description names a random augmentation (its output differs per epoch)."""
    text = describe_transform(transform)
    return not any(word in text for word in _RANDOM_TRANSFORM_WORDS)


def tensors_fingerprint(named_tensors) -> str:
    """Hash of names, shapes, dtypes and every byte of the given (name, tensor) pairs."""
    h = hashlib.blake2b(digest_size=20)
    for name, t in named_tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\0".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)  # numpy has no bfloat16; the bytes are what matter
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def modules_fingerprint(modules: dict) -> str:
    """Fingerprint of several named modules / parameters (``{"visual_encoder": module, ...}``)."""
    pairs = []
    for prefix in sorted(modules):
        m = modules[prefix]
        if m is None:
            continue
        if isinstance(m, torch.Tensor):
            pairs.append((prefix, m))
        else:
            pairs.extend((f"{prefix}.{k}", v) for k, v in sorted(m.state_dict().items()))
    return tensors_fingerprint(pairs)


# ---- the cache -----------------------------------------------------------------------------------
class FeatureCache:
    def __init__(self, root: str, stage: str, transform_description: str, weights_fingerprint: str,
                 dtype: str = "fp32", durable: bool = False):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.durable = durable
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.stage, self.transform, self.weights, self.dtype = stage, transform_description, weights_fingerprint, dtype
        self.namespace = _hash(stage, transform_description, weights_fingerprint, dtype, n=12)
        self.dir = os.path.join(self.root, self.namespace)
        os.makedirs(self.dir, exist_ok=True)
        self._write_manifest()

    def __repr__(self) -> str:
        return f"FeatureCache(dir={self.dir!r}, stage={self.stage!r}, dtype={self.dtype!r})"

    def _write_manifest(self) -> None:
        path = os.path.join(self.dir, "manifest.json")
        if os.path.isfile(path):
            return
        info = {"stage": self.stage, "transform": self.transform, "weights_fingerprint": self.weights,
                "dtype": self.dtype, "format": "one safetensors file per image, tensor 'features'"}
        self._atomic_write_bytes(path, json.dumps(info, indent=1).encode())

    def _atomic_write_bytes(self, path: str, data: bytes) -> None:
        d = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=f".{os.getpid()}.{uuid.uuid4().hex[:6]}")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if self.durable:  # only guards against power loss; concurrency needs just the rename
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    # keys
    @staticmethod
    def image_identity(image_path: str) -> str:
        path = os.path.abspath(os.path.expanduser(str(image_path)))
        try:
            st = os.stat(path)
            return f"{path}|{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            return f"{path}|missing"  # e.g. a webdataset member: the path alone is the key

    def entry_path(self, image_path: str) -> str:
        key = _hash(self.image_identity(image_path))
        return os.path.join(self.dir, key[:2], key + ".safetensors")

    # reads and writes
    def has(self, image_path: str) -> bool:
        return os.path.isfile(self.entry_path(image_path))

    def put(self, image_path: str, features: torch.Tensor) -> str:
        from safetensors.torch import save

        path = self.entry_path(image_path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = save({"features": features.detach().to("cpu", _DTYPES[self.dtype]).contiguous()},
                    metadata={"image": os.path.abspath(os.path.expanduser(str(image_path))), "stage": self.stage})
        self._atomic_write_bytes(path, data)
        return path

    def get(self, image_path: str) -> torch.Tensor | None:
        """The cached features of ``image_path``, or None when absent. A corrupt entry raises."""
        from safetensors import safe_open

        path = self.entry_path(image_path)
        if not os.path.isfile(path):
            return None
        try:
            with safe_open(path, framework="pt") as f:  # memory-mapped
                meta = f.metadata() or {}
                tensor = f.get_tensor("features")
        except Exception as err:
            raise FeatureCacheError(f"cache entry {path} for image {image_path!r} is unreadable ({err}); "
                                    f"delete it or the directory {self.dir}") from err
        want = os.path.abspath(os.path.expanduser(str(image_path)))
        if meta.get("image") != want:
            raise FeatureCacheError(f"cache entry {path} holds image {meta.get('image')!r}, not {want!r}")
        return tensor

    def get_many(self, image_paths: list[str]) -> torch.Tensor:
        """Stack the entries of several images; a missing one raises naming the image."""
        out = []
        for p in image_paths:
            t = self.get(p)
            if t is None:
                raise FeatureCacheError(f"no cached features for image {p!r} in {self.dir}; run "
                                        "`python -m lavis_lite.tools.cache_features --cfg-path ...` first")
            out.append(t)
        return torch.stack(out) if out else torch.empty(0)

    def __len__(self) -> int:
        n = 0
        for sub in os.listdir(self.dir):
            full = os.path.join(self.dir, sub)
            if os.path.isdir(full):
                n += sum(1 for f in os.listdir(full) if f.endswith(".safetensors") and not f.startswith(".tmp-"))
        return n

    def stale_namespaces(self) -> list[str]:
        """Other namespaces under the same root: features of older transforms or weights."""
        return sorted(d for d in os.listdir(self.root)
                      if d != self.namespace and os.path.isfile(os.path.join(self.root, d, "manifest.json")))

    def remove_stale(self) -> list[str]:
        removed = self.stale_namespaces()
        for d in removed:
            shutil.rmtree(os.path.join(self.root, d), ignore_errors=True)
        return removed


# ---- datasets read the cache instead of decoding images ------------------------------------------
class CachedImagesMixin:
    """Put before a dataset class: ``read_image`` returns cached features; the collated batch carries
    them as ``"image_features"`` (docs/contracts.md) instead of ``"image"``."""

    feature_cache: FeatureCache

    def read_image(self, rel: str) -> torch.Tensor:
        path = self.image_path(rel)
        features = self.feature_cache.get(path)
        if features is None:
            raise FeatureCacheError(f"no cached features for image {path!r} in {self.feature_cache.dir}; run "
                                    "`python -m lavis_lite.tools.cache_features --cfg-path ...` first")
        return features

    def collater(self, samples: list[dict]) -> dict:
        batch = super().collater(samples)
        if "image" in batch:
            image = batch.pop("image")
            n_images = batch.get("n_images")
            if n_images is not None and sum(n_images) == 0:  # keep the feature shape, not [0, 3, H, W]
                image = torch.zeros(0, 0, 0)
            batch["image_features"] = image
        return batch

    def __reduce__(self):  # the class is made at run time: pickle (spawned workers) rebuilds it
        base = type(self)._uncached_class
        plain = base.__new__(base)
        plain.__dict__.update({k: v for k, v in self.__dict__.items() if k != "feature_cache"})
        return attach_feature_cache, (plain, self.feature_cache)


def attach_feature_cache(dataset, cache: FeatureCache):
    """A shallow copy of ``dataset`` (a BaseDataset with ``image_path`` / ``read_image``) that reads
    ``cache`` instead of decoding and transforming images. The original dataset is unchanged."""
    if not hasattr(dataset, "image_path") or not hasattr(dataset, "read_image"):
        raise TypeError(f"{type(dataset).__name__} has no image_path/read_image; it cannot read a feature cache")
    base = getattr(type(dataset), "_uncached_class", type(dataset))  # re-wrapping wraps the original
    cached_cls = type(f"Cached{base.__name__}", (CachedImagesMixin, base), {"_uncached_class": base})
    out = cached_cls.__new__(cached_cls)
    out.__dict__.update(dataset.__dict__)  # shallow: records and processors are shared, not copied
    out.feature_cache = cache
    return out


def dataset_image_paths(dataset) -> list[str]:
    """Every distinct image path of a BaseDataset's records (``images`` list or ``image`` string), in order."""
    seen, paths = set(), []
    for i, ann in enumerate(dataset.annotation):
        rels = ann.get("images")
        if rels is None:
            rels = ann.get("image")
            rels = [] if rels is None else rels if isinstance(rels, list) else [rels]
        for rel in rels:
            path = dataset.image_path(rel)
            if path not in seen:
                seen.add(path)
                paths.append(path)
    return paths


def copy_with_processor(dataset, vis_processor):
    """A shallow copy of a BaseDataset with another image processor (records are shared)."""
    cls = type(dataset)
    out = cls.__new__(cls)
    out.__dict__.update(dataset.__dict__)
    out.vis_processor = vis_processor
    return out
