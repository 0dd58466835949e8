"""Builder for ImageFolder classification data (LAVIS's ``imagenet``): no annotation files.

    datasets:
      imagenet:
        build_info:
          splits: [val]                      # each split is the folder <images.storage>/<split>/
          images: {storage: imagenet/}
        classnames: configs/datasets/imagenet/classnames.txt   # a text file (one a line) or a list
        templates: configs/datasets/imagenet/templates.txt     # prompts with {} for the class name
"""
from __future__ import annotations

import os

from omegaconf import ListConfig

from lavis_lite.common.config import ConfigError, resolve_config_path
from lavis_lite.datasets.builders.base_dataset_builder import (
    SPLITS,
    BaseDatasetBuilder,
    resolve_storage,
)


class ImageFolderBuilder(BaseDatasetBuilder):
    def _splits(self) -> list[str]:
        splits = list((self.config.get("build_info", None) or {}).get("splits", None) or [])
        if not splits:
            raise ConfigError(f"dataset {self.name!r}: 'build_info.splits' is empty; list the split folders, e.g. [val]")
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise ConfigError(f"dataset {self.name!r}: unknown split(s) {unknown} in build_info.splits; "
                              f"expected some of {list(SPLITS)}")
        return splits

    def fetch_annotations(self) -> None:
        """Nothing to fetch: the labels are the folders (images are never downloaded)."""
        self._splits()

    def _text_list(self, key: str) -> list[str] | None:
        """``classnames`` / ``templates``: an inline list, or a UTF-8 file with one entry a line
        (relative paths: under the library root, like default YAMLs)."""
        value = self.config.get(key, None)
        if value is None:
            return None
        if isinstance(value, (list, tuple, ListConfig)):
            return [str(v) for v in value]
        path = str(value) if os.path.isabs(str(value)) else resolve_config_path(type(self), str(value))
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]

    def build(self) -> dict:
        root = self.images_root()
        if root is None:
            raise ConfigError(f"dataset {self.name!r}: 'build_info.{self.data_type}.storage' is missing")
        classnames, templates = self._text_list("classnames"), self._text_list("templates")
        datasets = {}
        for split in self._splits():
            is_train = split == "train"
            cls = self.train_dataset_cls if is_train else self.eval_dataset_cls
            datasets[split] = cls(
                vis_processor=self.vis_processors["train" if is_train else "eval"],
                text_processor=self.text_processors["train" if is_train else "eval"],
                vis_root=os.path.join(resolve_storage(root), split),
                classnames=classnames, templates=templates,
                on_error=self.config.get("on_error", "raise"),
                max_skip_fraction=float(self.config.get("max_skip_fraction", 0.05)),
            )
            datasets[split].name = self.name
        return datasets
