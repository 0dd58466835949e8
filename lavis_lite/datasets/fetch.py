"""Fetch a data set's annotation files ahead of time (resumable, md5-checked; images are never fetched).

    python -m lavis_lite.datasets.fetch coco_retrieval ok_vqa [--cfg-path RUN.yaml]

Prints each split's files and whether they are in place; exits non-zero when one is still missing
(a data set without a public URL: its card says how to make the file).
"""
from __future__ import annotations

import argparse
import os
import sys

from lavis_lite.common.registry import registry
from lavis_lite.datasets.builders.base_dataset_builder import as_list, resolve_storage
from lavis_lite.datasets.builders.dataset_zoo import load_dataset_config


def fetch(name: str, cfg_path: str | None = None) -> dict[str, list[str]]:
    """Run the builder's fetch step only; ``{split: [annotation paths]}``."""
    builder = registry.get_builder_class(name)(load_dataset_config(name, cfg_path))
    builder.fetch_annotations()
    annotations = (builder.config.get("build_info", None) or {}).get("annotations", None) or {}
    out = {}
    for split, info in annotations.items():
        if info is not None:
            out[split] = [resolve_storage(p) for p in as_list(info.get("storage", None))]
            if info.get("gt", None):
                out[split].append(resolve_storage(info.gt))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="registered data set names (python -m lavis_lite datasets)")
    parser.add_argument("--cfg-path", default=None, help="a run YAML whose datasets.<name> overrides the default")
    args = parser.parse_args(argv)
    failed = 0
    for name in args.names:
        try:
            files = fetch(name, args.cfg_path)
        except (OSError, ValueError, KeyError) as err:
            print(f"{name}: FAILED: {err}", file=sys.stderr)
            failed += 1
            continue
        for split, paths in files.items():
            for path in paths:
                print(f"{name} {split}: {path}{'' if os.path.isfile(path) else '  (missing)'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
