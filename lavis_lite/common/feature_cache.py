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
    their parameters), with object addresses removed so the description is stable across runs.
    """
    if transform is None:
        return "none"
    if hasattr(transform, "describe"):
        return str(transform.describe())
    text = repr(transform)
    inner = getattr(transform, "transform", None)  # lavis-style processors keep a Compose here
    if inner is not None:
        text = f"{type(transform).__name__}({inner!r})"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


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


# ---- a model's frozen stages ---------------------------------------------------------------------
# Modules (released names) whose weights determine each stage's output.
STAGE_MODULES = {
    "vit": ("visual_encoder", "ln_vision"),
    "qformer": ("visual_encoder", "ln_vision", "Qformer", "query_tokens"),
    "proj": ("visual_encoder", "ln_vision", "Qformer", "query_tokens", "llm_proj"),
}


def sync_frozen_stages_from_rank0(model, stage: str) -> bool:
    """Make every rank hold rank 0's weights of the frozen stages (what DDP / DeepSpeed do anyway when
    they wrap the model), but only when the ranks' fingerprints differ — e.g. a random-init model
    built with per-rank seeds. Returns True when weights were copied. Needed before fingerprinting:
    cached features must come from the weights training will use."""
    import torch.distributed as dist

    from lavis_lite.common import dist_utils

    if dist_utils.get_world_size() < 2:
        return False
    modules = {name: getattr(model, name) for name in STAGE_MODULES[stage]}
    fingerprints = [None] * dist_utils.get_world_size()
    dist.all_gather_object(fingerprints, modules_fingerprint(modules))
    if len(set(fingerprints)) == 1:
        return False
    on_gpu = dist.get_backend() == "nccl"
    with torch.no_grad():
        for module in modules.values():
            tensors = [module] if isinstance(module, torch.Tensor) else list(module.state_dict().values())
            for t in tensors:
                buf = t.detach().to(torch.device("cuda", torch.cuda.current_device())) if on_gpu else t.detach()
                dist.broadcast(buf, src=0)
                if buf is not t:
                    t.detach().copy_(buf)
    logger.info("feature cache: frozen %s weights differed across ranks; copied rank 0's", stage)
    return True


def cache_for_model(model, transform, root: str, dtype: str = "fp32", stage: str | None = None) -> FeatureCache:
    """The cache of ``model``'s highest frozen stage (``model.frozen_feature_stage()``) under ``root``.

    Refuses a random transform: its output differs per epoch, so cached features would be wrong.
    """
    stage = stage or model.frozen_feature_stage()
    if stage is None:
        raise ValueError(f"{type(model).__name__} has no frozen image stage (freeze_vit is off or pos_embed "
                         "trains): there is nothing to cache")
    if not is_deterministic_transform(transform):
        raise ValueError(f"the image transform is random ({describe_transform(transform)}); the feature cache "
                         "needs a deterministic (eval) transform")
    modules = {name: getattr(model, name) for name in STAGE_MODULES[stage]}
    return FeatureCache(root, stage, describe_transform(transform), modules_fingerprint(modules), dtype)


def fill_cache(model, dataset, cache: FeatureCache, batch_size: int = 32, rank: int = 0, world_size: int = 1,
               progress: bool = False) -> int:
    """Compute and store the missing entries of ``dataset``'s images; returns how many were written.

    Rank ``r`` of ``world_size`` handles every ``world_size``-th image of the dataset (a split that does
    not depend on timing), skipping those already present, so several ranks fill one cache together
    (writes are atomic; overlapping work would only cost time).
    """
    from PIL import Image

    from lavis_lite.processors.image_processors import to_rgb

    paths = [p for p in dataset_image_paths(dataset)[rank::world_size] if not cache.has(p)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc=f"caching {cache.stage} features", unit="img")
    was_training = model.training
    model.eval()
    written = 0
    try:
        for s in range(0, len(paths), batch_size):
            chunk = paths[s:s + batch_size]
            pixels = []
            for p in chunk:
                with Image.open(p) as img:
                    pixels.append(dataset.vis_processor(to_rgb(img)))
            with torch.no_grad():
                features, stage = model.extract_frozen_features(torch.stack(pixels).to(model.device))
            if stage != cache.stage:
                raise FeatureCacheError(f"the model's frozen stage is {stage!r} but the cache holds {cache.stage!r}")
            for p, f in zip(chunk, features):
                cache.put(p, f)
            written += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return written


# ---- run-config switch: training reads the cache ---------------------------------------------------
def _eval_processor(cfg, name: str):
    from lavis_lite.common.registry import registry

    ds_cfg = cfg.datasets_cfg.get(name, {}) or {}
    proc_cfg = (ds_cfg.get("vis_processor", {}) or {}).get("eval")
    if proc_cfg is None:
        raise ValueError(f"datasets.{name}.vis_processor.eval is not set: the feature cache needs the dataset's "
                         "deterministic eval transform")
    return registry.get_processor_class(proc_cfg.get("name")).from_config(proc_cfg)


def feature_cache_settings(run_cfg) -> dict | None:
    """``run.feature_cache`` ({enabled, root, dtype, splits, batch_size}) or None when off."""
    fc = run_cfg.get("feature_cache", None) if run_cfg is not None else None
    if not fc or not fc.get("enabled", False):
        return None
    from lavis_lite.datasets.builders.base_dataset_builder import resolve_storage

    return {"root": resolve_storage(fc.get("root", "features")), "dtype": str(fc.get("dtype", "fp32")),
            "splits": list(fc.get("splits", ["train"])), "batch_size": int(fc.get("batch_size", 32)),
            "build_missing": bool(fc.get("build_missing", True))}


def prepare_feature_cache(cfg, model, datasets: dict, progress: bool = True, force: bool = False) -> dict:
    """Make the configured splits read the frozen-feature cache (``run.feature_cache.enabled``).

    For each dataset split in ``run.feature_cache.splits`` (default ``[train]``): the images are
    transformed with the dataset's *eval* processor (the cache needs a deterministic transform, so
    random augmentation is off while the cache is used), missing entries are computed (all ranks share
    the work, then wait for each other), and the split is replaced by a copy that reads the cache.
    Returns the new ``{name: {split: dataset}}``; without the switch (and without ``force``) it is unchanged.
    """
    from lavis_lite.common import dist_utils

    settings = feature_cache_settings(cfg.run_cfg)
    if settings is None:
        if not force:
            return datasets
        settings = feature_cache_settings({"feature_cache": {"enabled": True}})
    splits = settings["splits"]
    if cfg.run_cfg.get("evaluate", False):  # evaluation-only job: no training split needs features
        splits = [s for s in splits if s != "train"]
    out = {}
    for name, by_split in datasets.items():
        out[name] = dict(by_split)
        for split in splits:
            if split not in by_split:
                continue
            dataset = by_split[split]
            if not hasattr(dataset, "image_path"):
                logger.info("feature cache: %s/%s is not an image dataset with paths; left as is", name, split)
                continue
            processor = _eval_processor(cfg, name)
            if model.frozen_feature_stage() is not None:
                sync_frozen_stages_from_rank0(model, model.frozen_feature_stage())
            cache = cache_for_model(model, processor, settings["root"], settings["dtype"])
            dataset = copy_with_processor(dataset, processor)
            if settings["build_missing"]:
                written = fill_cache(model, dataset, cache, settings["batch_size"], dist_utils.get_rank(),
                                     dist_utils.get_world_size(), progress and dist_utils.is_main_process())
                dist_utils.barrier()
                written += fill_cache(model, dataset, cache, settings["batch_size"])  # a rank that failed midway
                logger.info("feature cache %s: %s/%s, %d new entries", cache.dir, name, split, written)
            out[name][split] = attach_feature_cache(dataset, cache)
    return out


def copy_with_processor(dataset, vis_processor):
    """A shallow copy of a BaseDataset with another image processor (records are shared)."""
    cls = type(dataset)
    out = cls.__new__(cls)
    out.__dict__.update(dataset.__dict__)
    out.vis_processor = vis_processor
    return out
