"""Image classification from an ImageFolder layout (``<root>/<class folder>/<image>``), e.g. ImageNet.

Classes are the sub-folders in sorted order (torchvision's ImageFolder order, so ImageNet's wnid
folders ``n01440764`` ... map to the usual 0..999 labels); images are found recursively, sorted.
``classnames`` (human-readable, one per folder in that order) and ``templates`` (prompts with ``{}``
for the class name, e.g. CLIP's 80 ImageNet prompts) are what zero-shot classifiers need; without
``classnames`` the folder names are used. An empty class folder still counts as a class.
Samples: ``{"image", "label", "image_id", "instance_id"}`` (``image_id``: the path under the root).
"""
from __future__ import annotations

import os

import torch

from lavis_lite.datasets.datasets.base_dataset import BaseDataset
from lavis_lite.datasets.datasets.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def scan_image_folder(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class folder names, [(image path under root, label)]) in ImageFolder order."""
    if not root or not os.path.isdir(root):
        raise DataError(f"image folder not found: {root} (expected <root>/<class folder>/<image files>)")
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not folders:
        raise DataError(f"{root}: no class sub-folders (expected <root>/<class folder>/<image files>)")
    items = []
    for label, folder in enumerate(folders):
        for dirpath, dirnames, filenames in sorted(os.walk(os.path.join(root, folder), followlinks=True)):
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    items.append((os.path.relpath(os.path.join(dirpath, name), root), label))
    return folders, items


class ImageFolderDataset(BaseDataset):
    def __init__(self, vis_processor=None, text_processor=None, vis_root=None, ann_paths=(),
                 classnames=None, templates=None, **kwargs):
        if ann_paths:
            raise DataError(f"ImageFolderDataset reads its labels from the folders under {vis_root}; "
                            f"annotation files {list(ann_paths)} are not used")
        self.folder_names, self._items = scan_image_folder(vis_root)
        classnames = list(classnames) if classnames is not None else list(self.folder_names)
        if len(classnames) != len(self.folder_names):
            raise DataError(f"{vis_root}: {len(self.folder_names)} class folders but {len(classnames)} class "
                            f"names; the names must list one class per folder, in sorted folder order")
        self.classnames = classnames
        self.templates = list(templates) if templates is not None else ["{}"]
        bad = [t for t in self.templates if "{}" not in t]
        if bad:
            raise DataError(f"prompt templates need a '{{}}' for the class name: {bad[:3]}")
        super().__init__(vis_processor, text_processor, vis_root, (), **kwargs)

    def iter_records(self):
        for index, (path, label) in enumerate(self._items):
            yield self.vis_root, index, {"image": path, "label": label}

    def describe_source(self) -> str:
        return f"image folder {self.vis_root}"

    def parse_record(self, record: dict) -> dict:
        return {"image": record["image"], "label": record["label"], "image_id": record["image"]}

    def load_sample(self, index: int) -> dict:
        ann = self.annotation[index]
        return {"image": self.read_image(ann["image"]), "label": ann["label"], "image_id": ann["image_id"],
                "instance_id": ann["instance_id"]}

    def collater(self, samples):
        return {"image": torch.stack([s["image"] for s in samples]),
                "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
                "image_id": [s["image_id"] for s in samples],
                "instance_id": [s["instance_id"] for s in samples]}

    def prompts(self) -> list[list[str]]:
        """Per class, every template filled with its name (the prompt ensemble)."""
        return [[t.format(name) for t in self.templates] for name in self.classnames]
