"""BaseDatasetBuilder: build_info -> files on disk -> {split: Dataset} with processors.

A builder's config (its default YAML ``configs/datasets/<name>/defaults.yaml`` merged with the run
YAML's ``datasets.<name>``) looks like LAVIS's::

    data_type: images
    on_error: raise            # or skip (bad records are skipped, counted and reported)
    max_skip_fraction: 0.05    # skip mode aborts above this share of bad records
    build_info:
      annotations:
        train: {url: https://.../train.json, storage: coco/annotations/train.json, md5: ...}
        val:   {url: ..., storage: ..., gt: coco/annotations/val_gt.json}   # + gt_url, gt_md5: fetched too
      images: {storage: coco/images/}
    vis_processor: {train: {name: blip2_image_train, image_size: 224}, eval: {name: blip2_image_eval}}
    text_processor: {train: {name: blip_caption}, eval: {name: blip_caption}}

Relative storage paths live under ``cache_root`` (configs/default.yaml ``env.cache_root``, or the
``LAVIS_LITE_CACHE_ROOT`` environment variable). ``url`` and ``storage`` may be lists (several files).
"""
from __future__ import annotations

import logging
import os
import sys

from omegaconf import DictConfig, ListConfig, OmegaConf

from lavis_lite.common import dist_utils
from lavis_lite.common.config import ConfigError, resolve_config_path
from lavis_lite.common.download import fetch_on_main
from lavis_lite.common.registry import registry

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def cache_root() -> str:
    return os.path.expanduser(os.environ.get("LAVIS_LITE_CACHE_ROOT") or registry.get_path("cache_root"))


def resolve_storage(path: str) -> str:
    """Absolute paths stay; relative ones are taken under cache_root."""
    path = os.path.expanduser(str(path))
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(cache_root(), path))


def as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]


class BaseDatasetBuilder:
    """Subclasses (see ``register_dataset_builder``) set ``name``, ``DATASET_CONFIG_DICT`` and the
    dataset classes; nothing else is dataset specific."""

    DATASET_CONFIG_DICT: dict[str, str] = {"default": None}
    train_dataset_cls = None
    eval_dataset_cls = None
    name: str | None = None

    def __init__(self, cfg=None):
        if cfg is None:
            cfg = self.default_config()
        elif isinstance(cfg, dict):
            cfg = OmegaConf.create(cfg)
        self.config = cfg
        self.data_type = cfg.get("data_type", "images")
        self.vis_processors: dict = {"train": None, "eval": None}
        self.text_processors: dict = {"train": None, "eval": None}

    @classmethod
    def default_config_path(cls, type: str = "default") -> str:
        if type not in cls.DATASET_CONFIG_DICT or cls.DATASET_CONFIG_DICT[type] is None:
            raise KeyError(f"Unknown dataset type {type!r} for {cls.__name__}; "
                           f"available types: {sorted(k for k, v in cls.DATASET_CONFIG_DICT.items() if v)}")
        return resolve_config_path(cls, cls.DATASET_CONFIG_DICT[type])

    @classmethod
    def default_config(cls, type: str = "default") -> DictConfig:
        path = cls.default_config_path(type)
        datasets = OmegaConf.load(path).get("datasets", None) or {}
        section = datasets.get(cls.name) if cls.name else None
        if section is None and len(datasets) == 1:
            section = next(iter(datasets.values()))
        if section is None:
            raise ConfigError(f"{path} has no 'datasets.{cls.name}' section")
        return section

    # ---- the three steps -------------------------------------------------------------
    def build_datasets(self) -> dict:
        """Fetch annotations (rank 0; the others wait), build processors, then the splits."""
        self.fetch_annotations()
        self.build_processors()
        return self.build()

    def _split_infos(self) -> dict:
        build_info = self.config.get("build_info", None)
        annotations = build_info.get("annotations", None) if build_info is not None else None
        if not annotations:
            raise ConfigError(f"dataset {self.name!r}: 'build_info.annotations' is empty; give each split's "
                              f"annotation 'storage' (and optional 'url') in the run YAML under datasets.{self.name}")
        unknown = [s for s in annotations if s not in SPLITS]
        if unknown:
            raise ConfigError(f"dataset {self.name!r}: unknown split(s) {unknown} in build_info.annotations; "
                              f"expected {list(SPLITS)}")
        return {s: annotations[s] for s in SPLITS if s in annotations and annotations[s] is not None}

    def fetch_annotations(self) -> None:
        """Put every split's annotation files at their storage path; check md5 when given.

        Rank 0 decides what is missing and broadcasts it, so every rank takes the same barriers
        even when rank 0 has already written a file the others have not looked for yet."""
        jobs = []  # (split, target, url, md5)
        for split, info in self._split_infos().items():
            storages = as_list(info.get("storage", None))
            urls = as_list(info.get("url", None))
            md5s = as_list(info.get("md5", None))
            if not storages:
                raise ConfigError(f"dataset {self.name!r}: build_info.annotations.{split}.storage is missing")
            for key, values in (("urls", urls), ("md5s", md5s)):
                if values and len(values) != len(storages):
                    raise ConfigError(f"dataset {self.name!r}: build_info.annotations.{split} has {len(values)} "
                                      f"{key} but {len(storages)} storage paths")
            for k, storage in enumerate(storages):
                jobs.append((split, resolve_storage(storage), urls[k] if urls else None, md5s[k] if md5s else None))
            if info.get("gt", None) and info.get("gt_url", None):  # ground truth with a source: fetched too
                jobs.append((split, resolve_storage(info.gt), info.gt_url, info.get("gt_md5", None)))
        missing = dist_utils.broadcast_object([not os.path.isfile(target) for _, target, _, _ in jobs])
        for (split, target, url, md5), is_missing in zip(jobs, missing):
            if is_missing:
                if url is None:
                    raise FileNotFoundError(f"dataset {self.name!r} split {split!r}: annotation file {target} "
                                            f"does not exist and no url is given to fetch it (how to make it: "
                                            f"docs/dataset_cards/{self.name}.md)")
                # Every rank calls it: rank 0 downloads (resumable, md5 checked before the atomic
                # rename), the others wait at its barrier and share its error.
                fetch_on_main(url, target, md5=md5)
            elif md5:
                got = dist_utils.md5sum(target)
                if got != md5:
                    raise ValueError(f"dataset {self.name!r} split {split!r}: md5 mismatch for {target}: "
                                     f"expected {md5}, got {got}")

    def build_processors(self) -> None:
        for attr, key in (("vis_processors", "vis_processor"), ("text_processors", "text_processor")):
            section = self.config.get(key, None) or {}
            procs = getattr(self, attr)
            for split in ("train", "eval"):
                proc_cfg = section.get(split, None)
                procs[split] = self._build_processor(proc_cfg) if proc_cfg is not None else None
        if self.vis_processors["train"] is None and self.vis_processors["eval"] is None and self.data_type == "images":
            logger.warning("dataset %r sets no vis_processor; using blip2_image_eval at 224 px", self.name)
            self.vis_processors["eval"] = self._build_processor({"name": "blip2_image_eval"})
        # One side given: the other falls back to a deterministic resize of the same size.
        for split, other in (("train", "eval"), ("eval", "train")):
            if self.vis_processors[split] is None and self.vis_processors[other] is not None:
                size = getattr(self.vis_processors[other], "image_size", 224)
                if split == "eval":
                    self.vis_processors[split] = self._build_processor({"name": "blip2_image_eval", "image_size": size})
                else:
                    self.vis_processors[split] = self.vis_processors[other]

    @staticmethod
    def _build_processor(cfg):
        cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
        if "name" not in cfg:
            raise ConfigError(f"processor config {OmegaConf.to_container(cfg)} has no 'name'")
        return registry.get_processor_class(cfg.name).from_config(cfg)

    def images_root(self) -> str | None:
        build_info = self.config.build_info
        section = build_info.get(self.data_type, None)
        storage = section.get("storage", None) if section is not None else None
        return resolve_storage(storage) if storage else None

    def build(self) -> dict:
        vis_root = self.images_root()
        if vis_root is not None and not os.path.isdir(vis_root):
            logger.warning("dataset %r: images folder %s does not exist", self.name, vis_root)
        datasets = {}
        for split, info in self._split_infos().items():
            is_train = split == "train"
            cls = self.train_dataset_cls if is_train else (self.eval_dataset_cls or self.train_dataset_cls)
            if cls is None:
                raise ConfigError(f"builder {type(self).__name__} sets no train_dataset_cls for split {split!r}")
            kwargs = dict(
                vis_processor=self.vis_processors["train" if is_train else "eval"],
                text_processor=self.text_processors["train" if is_train else "eval"],
                vis_root=vis_root,
                ann_paths=[resolve_storage(p) for p in as_list(info.storage)],
                on_error=self.config.get("on_error", "raise"),
                max_skip_fraction=float(self.config.get("max_skip_fraction", 0.05)),
            )
            datasets[split] = cls(**_accepted_kwargs(cls, kwargs))
            datasets[split].name = self.name
            if info.get("gt", None):  # ground truth for evaluation (captioning reads dataset.gt_path)
                datasets[split].gt_path = resolve_storage(info.gt)
        return datasets


def _accepted_kwargs(cls, kwargs: dict) -> dict:
    """A LAVIS-style dataset takes (vis_processor, text_processor, vis_root, ann_paths) only: pass it
    just the arguments its __init__ names (all of them when it takes **kwargs)."""
    import inspect
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    dropped = [k for k in kwargs if k not in params]
    if dropped and kwargs.get("on_error", "raise") != "raise":
        logger.warning("%s.__init__ takes no %s: on_error=%r does not apply to it", cls.__name__, dropped,
                       kwargs["on_error"])
    return {k: v for k, v in kwargs.items() if k in params}


def register_dataset_builder(name: str, train_dataset_cls, eval_dataset_cls=None, config_path: str | None = None,
                             base: type = BaseDatasetBuilder, module: str | None = None,
                             config_types: dict[str, str] | None = None) -> type:
    """Register ``name`` as a builder: ``base`` parameterised with a default YAML and dataset classes
    (one line per data set instead of one copy-pasted class per data set). ``config_types`` adds
    named variants of the default YAML (chosen with ``type:`` in the run YAML's dataset section).

    Assign the result to a module-level name equal to ``<CamelName>Builder`` in ``module`` (default:
    the caller's module) so the class can be pickled and found by its qualified name."""
    qualname = "".join(part.capitalize() for part in name.split("_")) + "Builder"
    module = module or sys._getframe(1).f_globals.get("__name__", base.__module__)
    cls = type(qualname, (base,), {
        "name": name,
        "train_dataset_cls": train_dataset_cls,
        "eval_dataset_cls": eval_dataset_cls or train_dataset_cls,
        "DATASET_CONFIG_DICT": {"default": config_path or f"configs/datasets/{name}/defaults.yaml",
                                **(config_types or {})},
        "__module__": module,
        "__qualname__": qualname,
        "__doc__": f"Builder {name!r}: {train_dataset_cls.__name__} / {(eval_dataset_cls or train_dataset_cls).__name__}.",
    })
    return registry.register_builder(name)(cls)
