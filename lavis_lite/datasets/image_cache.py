"""In-memory cache of processed images (``run.image_memory_cache``): decode and transform an image once
per process, hand out the same tensor after.

For a small image data set read many times with a deterministic transform (the CPU demo's stage 1 reads
~3,000 32-px PNGs for 16 epochs while its ViT trains, so the frozen-feature cache cannot serve it),
opening, decoding and transforming each image every epoch is a large share of the step. This cache keeps
the transform's output per image path, bounded by ``max_gb``; past the bound, images are still
decoded, not stored, and the refusals are counted and logged once.

* Only deterministic transforms: a random augmentation must differ per epoch, so caching it is an error
  naming the split (``feature_cache.is_deterministic_transform``).
* A split that reads the frozen-feature cache has nothing to decode: naming it here too is an error.
* Per process: each DataLoader worker fills its own copy, so with ``num_workers > 0`` the cache only
  pays off when workers persist across epochs; the memory is then held once per worker.
* The tensors handed out are shared: datasets and collators must not modify them in place (torch's
  default collate stacks them into a new batch tensor).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass
class MemoryCacheSettings:
    splits: tuple[str, ...] = ("train",)
    max_gb: float = 2.0


def memory_cache_settings(run_cfg) -> MemoryCacheSettings | None:
    """``run.image_memory_cache``: absent / false -> None; true -> the defaults; a mapping with ``enabled``
    (default true), ``splits`` and ``max_gb``. Unknown keys are an error."""
    value = run_cfg.get("image_memory_cache", None) if hasattr(run_cfg, "get") else None
    if value is None or value is False:
        return None
    if value is True:
        return MemoryCacheSettings()
    try:
        opts = dict(value)
    except (TypeError, ValueError):
        raise ValueError(f"run.image_memory_cache must be true/false or a mapping, got {value!r}") from None
    unknown = sorted(set(opts) - {"enabled", "splits", "max_gb"})
    if unknown:
        raise ValueError(f"run.image_memory_cache: unknown keys {unknown} (known: enabled, splits, max_gb)")
    if not opts.get("enabled", True):
        return None
    splits = opts.get("splits", ["train"])
    if isinstance(splits, str):
        splits = [splits]
    max_gb = float(opts.get("max_gb", 2.0))
    if max_gb <= 0:
        raise ValueError(f"run.image_memory_cache.max_gb must be > 0, got {max_gb}")
    return MemoryCacheSettings(tuple(str(s) for s in splits), max_gb)


class ProcessedImageCache:
    """Path -> processed image tensor of one process, at most ``max_bytes`` of tensor storage.
    ``processor``: the image processor the tensors come from; a dataset whose processor is another one
    (a copy made with another transform) reads around the cache (base_dataset.read_image)."""

    def __init__(self, max_bytes: int, name: str = "", processor=None):
        self.max_bytes, self.name, self.processor = int(max_bytes), name, processor
        self.store: dict[str, object] = {}
        self.bytes = self.hits = self.misses = self.refused = 0

    def get_or_load(self, path: str, load):
        image = self.store.get(path)
        if image is not None:
            self.hits += 1
            return image
        image = load()
        self.misses += 1
        size = _nbytes(image)
        if self.bytes + size <= self.max_bytes:
            self.store[path] = image
            self.bytes += size
        else:
            if self.refused == 0:
                logger.warning("image memory cache %s is full (%.2f GB): further images are decoded every time "
                               "(raise run.image_memory_cache.max_gb)", self.name, self.bytes / 2 ** 30)
            self.refused += 1
        return image

    def stats(self) -> dict:
        return {"images": len(self.store), "bytes": self.bytes, "hits": self.hits, "misses": self.misses,
                "refused": self.refused}

    def __getstate__(self):  # a spawned worker starts empty: copying the parent's tensors costs more
        return {"max_bytes": self.max_bytes, "name": self.name, "processor": self.processor}

    def __setstate__(self, state):
        self.__init__(state["max_bytes"], state["name"], state["processor"])


def _nbytes(image) -> int:
    if hasattr(image, "element_size") and hasattr(image, "numel"):
        return int(image.element_size() * image.numel())
    return 0  # not a tensor (no processor): counted as free, still cached


def attach_memory_caches(run_cfg, datasets: dict) -> dict:
    """Give the configured splits of every image dataset a :class:`ProcessedImageCache`; returns
    ``{"name/split": cache}``. Datasets without ``read_image`` (e.g. WebDataset streams) are left alone
    and logged; a random transform or a split that reads the feature cache is an error."""
    from lavis_lite.common.feature_cache import is_deterministic_transform

    settings = memory_cache_settings(run_cfg)
    if settings is None:
        return {}
    caches = {}
    for name, by_split in datasets.items():
        for split in settings.splits:
            dataset = by_split.get(split)
            if dataset is None:
                continue
            where = f"{name}/{split}"
            if getattr(dataset, "feature_cache", None) is not None:
                raise ValueError(f"run.image_memory_cache: {where} reads the frozen-feature cache (run.feature_cache); "
                                 "it decodes no images. Leave it out of run.image_memory_cache.splits")
            if not hasattr(dataset, "image_path") or not hasattr(dataset, "read_image"):
                logger.info("image memory cache: %s is not a map-style image dataset; left as is", where)
                continue
            processor = getattr(dataset, "vis_processor", None)
            if processor is not None and not is_deterministic_transform(processor):
                raise ValueError(f"run.image_memory_cache: {where} uses a random image transform "
                                 f"({type(processor).__name__}); caching it would repeat one augmentation "
                                 "every epoch. Use a deterministic processor or leave the split out")
            cache = ProcessedImageCache(int(settings.max_gb * 2 ** 30), where, processor)
            dataset.memory_cache = cache
            caches[where] = cache
            logger.info("image memory cache: %s keeps up to %.1f GB of processed images", where, settings.max_gb)
    return caches
