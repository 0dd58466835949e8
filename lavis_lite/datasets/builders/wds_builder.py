"""Builder for webdataset shards: ``build_info.shards.<split>`` holds brace-expandable shard
paths or URLs (a string or a list); relative paths live under cache_root. LAVIS's layout
``build_info.storage: <pattern>`` (laion400M) is read as the train shards.

    datasets:
      wds_instruction:
        build_info:
          shards: {train: demo/shards/train-{000000..000003}.tar}
        shuffle_buffer: 1000
        resample: True         # train: draw shards with replacement, an endless stream
"""
from __future__ import annotations

from lavis_lite.common.config import ConfigError
from lavis_lite.datasets.builders.base_dataset_builder import (
    SPLITS,
    BaseDatasetBuilder,
    as_list,
    register_dataset_builder,
    resolve_storage,
)
from lavis_lite.datasets.datasets.errors import DataError
from lavis_lite.datasets.datasets.wds_datasets import WebDatasetStream


def _expand(url: str) -> list[str]:
    import braceexpand  # a webdataset dependency
    return list(braceexpand.braceexpand(url))


class WebDatasetBuilder(BaseDatasetBuilder):
    sample_format = "instruction"

    def fetch_annotations(self) -> None:
        """Shards are streamed, not fetched; local ones must exist."""
        import os
        for split, urls in self._shard_urls().items():
            missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.isfile(u)]
            if missing:
                raise FileNotFoundError(f"dataset {self.name!r} split {split!r}: shard(s) not found: {missing[:3]}"
                                        + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))

    def _shard_urls(self) -> dict[str, list[str]]:
        build_info = self.config.get("build_info", None) or {}
        shards = build_info.get("shards", None)
        if not shards and build_info.get("storage", None):
            shards = {"train": build_info.storage}  # LAVIS's laion layout: build_info.storage = train shards
        if not shards:
            raise ConfigError(f"dataset {self.name!r}: 'build_info.shards' is empty; give each split's shard "
                              f"paths (brace expansion allowed) under datasets.{self.name}")
        out = {}
        for split in SPLITS:
            if shards.get(split, None) is None:
                continue
            urls = [u if "://" in u or u.startswith("pipe:") else resolve_storage(u)
                    for pattern in as_list(shards[split]) for u in _expand(str(pattern))]
            if not urls:
                raise DataError(f"dataset {self.name!r} split {split!r}: no shards")
            out[split] = urls
        return out

    def build(self) -> dict:
        datasets = {}
        for split, urls in self._shard_urls().items():
            is_train = split == "train"
            datasets[split] = WebDatasetStream(
                urls,
                vis_processor=self.vis_processors["train" if is_train else "eval"],
                text_processor=self.text_processors["train" if is_train else "eval"],
                sample_format=self.config.get("sample_format", self.sample_format),
                shuffle_buffer=int(self.config.get("shuffle_buffer", 1000)) if is_train else 0,
                resample=bool(self.config.get("resample", False)) and is_train,
                seed=int(self.config.get("seed", 0)),
                on_error=self.config.get("on_error", "raise"),
                max_skip_fraction=float(self.config.get("max_skip_fraction", 0.05)),
            )
            datasets[split].name = self.name
        return datasets


class ImageTextWebDatasetBuilder(WebDatasetBuilder):
    sample_format = "image_text"


WdsInstructionBuilder = register_dataset_builder("wds_instruction", WebDatasetStream, base=WebDatasetBuilder)
WdsImageTextBuilder = register_dataset_builder("wds_image_text", WebDatasetStream, base=ImageTextWebDatasetBuilder)
