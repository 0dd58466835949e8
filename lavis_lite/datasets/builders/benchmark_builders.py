"""Builders for benchmarks read from local released files (MME, MMBench, POPE, ScienceQA).

Same YAML as every builder (``configs/datasets/<name>/defaults.yaml``), with two differences:
an annotation ``storage`` may be a folder (MME's release folder, ScienceQA's data folder), and the
files are never downloaded (these benchmarks are distributed behind forms / dataset hubs): a missing
one is an error naming the path and the expected layout. ``dataset_options`` in the YAML go to the
dataset class as keyword arguments, with the split name as ``split``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from lavis_lite.common.config import ConfigError
from lavis_lite.datasets.builders.base_dataset_builder import (BaseDatasetBuilder, as_list, register_dataset_builder,
                                                               resolve_storage)
from lavis_lite.datasets.datasets.benchmark_datasets import (MMBenchDataset, MMEDataset, POPEDataset,
                                                             ScienceQADataset)

LAYOUTS = {
    "mme": "MME_Benchmark_release_version/<subtask>/[images/ + questions_answers_YES_NO/]*.txt, "
           "or lmms-lab MME *.parquet, or VLMEvalKit MME.tsv",
    "mmbench": "MMBench_DEV_EN.tsv (index, question, hint, A-D, answer, category, l2-category, image base64)",
    "pope": "coco_pope_{random,popular,adversarial}.json (JSON lines) + COCO val2014 images under "
            "build_info.images.storage",
    "scienceqa": "a folder with problems.json, pid_splits.json and images/<split>/<pid>/image.png",
}


@dataclass
class BenchmarkDatasetKeys:
    dataset_options: Any = None  # keyword arguments of the dataset class (circular, pid_split, images_only, ...)


class LocalBenchmarkBuilder(BaseDatasetBuilder):
    config_schema = BenchmarkDatasetKeys  # declared dataset keys (lavis_lite/common/run_schema.py)
    def fetch_annotations(self) -> None:
        for split, info in self._split_infos().items():
            storages = as_list(info.get("storage", None))
            if not storages:
                raise ConfigError(f"dataset {self.name!r}: build_info.annotations.{split}.storage is missing")
            if info.get("url", None):
                raise ConfigError(f"dataset {self.name!r}: benchmarks are read from local files only; "
                                  f"remove build_info.annotations.{split}.url")
            for storage in storages:
                path = resolve_storage(storage)
                if not os.path.exists(path):
                    raise FileNotFoundError(f"dataset {self.name!r} split {split!r}: {path} does not exist; "
                                            f"expected {LAYOUTS.get(self.name, 'the released files')} "
                                            "(see docs/benchmarks.md)")

    def build(self) -> dict:
        vis_root = self.images_root()
        if vis_root is not None and not os.path.isdir(vis_root):
            raise FileNotFoundError(f"dataset {self.name!r}: images folder {vis_root} does not exist")
        options = dict(self.config.get("dataset_options", None) or {})
        datasets = {}
        for split, info in self._split_infos().items():
            cls = self.train_dataset_cls
            datasets[split] = cls(vis_processor=self.vis_processors["eval"], text_processor=self.text_processors["eval"],
                                  vis_root=vis_root, ann_paths=[resolve_storage(p) for p in as_list(info.storage)],
                                  on_error=self.config.get("on_error", "raise"),
                                  max_skip_fraction=float(self.config.get("max_skip_fraction", 0.05)),
                                  split=split, **options)
            datasets[split].name = self.name
        return datasets


MmeBuilder = register_dataset_builder("mme", MMEDataset, base=LocalBenchmarkBuilder)
MmbenchBuilder = register_dataset_builder("mmbench", MMBenchDataset, base=LocalBenchmarkBuilder)
PopeBuilder = register_dataset_builder("pope", POPEDataset, base=LocalBenchmarkBuilder)
ScienceqaBuilder = register_dataset_builder("scienceqa", ScienceQADataset, base=LocalBenchmarkBuilder)
