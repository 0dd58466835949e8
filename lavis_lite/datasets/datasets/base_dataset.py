"""BaseDataset: annotation records from JSON / JSONL files, instance ids, processors, bad-input policy."""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate

from lavis_lite.datasets.datasets.errors import DataError, ErrorPolicy, record_error
from lavis_lite.processors.image_processors import prepare_decode, to_rgb

_MAX_SUBSTITUTES = 20  # skip mode: how many following records to try in place of a bad one


def read_annotation_file(path: str, policy: ErrorPolicy) -> list[tuple[int, Any]]:
    """Records of a ``.json`` (a list, or a dict with an ``annotations`` list) or ``.jsonl`` file,
    as ``(index, record)``. A JSONL line that does not parse is a bad record; a JSON file that
    does not parse is a bad file (nothing in it can be trusted) and always raises."""
    if not os.path.isfile(path):
        raise DataError(f"annotation file not found: {path}")
    if path.endswith(".jsonl"):
        records = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    records.append((len(records), json.loads(line)))
                except json.JSONDecodeError as err:
                    policy.load_total += 1
                    policy.on_bad_record(record_error(path, len(records), f"line {i + 1} is not valid JSON ({err})"))
        return records
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: malformed annotation file ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records (or a dict with an 'annotations' list), "
                        f"got {type(data).__name__}")
    return list(enumerate(data))


def decode_image(source, processor=None) -> Image.Image:
    """Open ``source`` (a path or a binary file object) and fully decode it (truncated files fail here,
    not later), as RGB. ``processor``: the image processor it is meant for, which may pick a JPEG draft
    scale first (``decode: draft``)."""
    with Image.open(source) as img:
        prepare_decode(processor, img)
        img.load()
        return to_rgb(img)


def load_image(path: str, processor=None) -> Image.Image:
    """:func:`decode_image` of a file, with errors that name it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        return decode_image(path, processor)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise OSError(f"cannot decode image {path}: {err}") from None


class BaseDataset(Dataset):
    """Subclasses implement ``parse_record`` (validate + normalise one annotation record; raise
    ``ValueError`` / ``KeyError`` / ``TypeError`` for a bad one) and ``load_sample(index)``.

    Bad input: a bad record is found while reading the files (raise: ``DataError`` naming file and
    record index; skip: dropped and counted). A bad image is found in ``__getitem__`` (raise: the
    same error, re-raised by DataLoader workers in the main process; skip: the next good record
    stands in, so batches keep their size; evaluation then sees that record twice, which result
    de-duplication by id absorbs). ``skip_report()`` gives and resets the counts over all workers;
    call it once per epoch.
    """

    def __init__(self, vis_processor=None, text_processor=None, vis_root: str | None = None,
                 ann_paths: Sequence[str] = (), on_error: str = "raise", max_skip_fraction: float = 0.05):
        self.vis_root = vis_root
        self.ann_paths = [str(p) for p in ann_paths]
        self.policy = ErrorPolicy(on_error, max_skip_fraction)
        self.annotation: list[dict] = []
        self._sources: list[tuple[str, int]] = []  # (file, index in file) per kept record
        for path, index, record in self.iter_records():
            self.policy.load_total += 1
            try:
                if not isinstance(record, dict):
                    raise TypeError(f"expected a JSON object, got {type(record).__name__}")
                parsed = self.parse_record(record)
            except (ValueError, KeyError, TypeError) as err:
                reason = f"missing key {err}" if type(err) is KeyError else str(err)
                self.policy.on_bad_record(record_error(path, index, reason))
                continue
            self.annotation.append(parsed)
            self._sources.append((path, index))
        what = self.describe_source()
        if not self.annotation:
            raise DataError(f"empty split: {what} hold no usable records")
        self.policy.check_load(what)
        self._add_instance_ids()
        self.set_processors(vis_processor, text_processor)

    # ---- subclass hooks -------------------------------------------------------
    def iter_records(self):
        """``(source, index, record)`` for every raw record; the annotation files by default
        (a folder-scanning dataset yields records it makes from the file names)."""
        for path in self.ann_paths:
            for index, record in read_annotation_file(path, self.policy):
                yield path, index, record

    def describe_source(self) -> str:
        return ", ".join(self.ann_paths) or "(no annotation files)"

    def parse_record(self, record: dict) -> dict:
        return record

    def load_sample(self, index: int) -> dict:
        raise NotImplementedError

    # ---- common API -------------------------------------------------------------
    def set_processors(self, vis_processor, text_processor) -> None:
        self.vis_processor = vis_processor
        self.text_processor = text_processor

    def _add_instance_ids(self, key: str = "instance_id") -> None:
        for idx, ann in enumerate(self.annotation):
            ann.setdefault(key, str(idx))

    def __len__(self) -> int:
        return len(self.annotation)

    def __getitem__(self, index: int):
        # Skip mode replaces a bad sample by the next good one, so batches keep their size.
        for attempt in range(_MAX_SUBSTITUTES):
            i = (index + attempt) % len(self)
            try:
                sample = self.load_sample(i)
            except Exception as err:  # noqa: BLE001 - every failure gets the file / record named
                path, rec = self._sources[i]
                named = err if isinstance(err, DataError) else record_error(path, rec, f"{type(err).__name__}: {err}")
                if not isinstance(err, DataError):
                    named.__cause__ = err
                self.policy.on_bad_sample(named, len(self))
                continue
            self.policy.on_sample_ok(len(self))
            return sample
        raise DataError(f"{self.ann_paths}: {_MAX_SUBSTITUTES} consecutive bad samples from index {index}")

    def skip_report(self, reset: bool = True) -> dict:
        """Seen / skipped counts over all workers since the last call (call once per epoch)."""
        return self.policy.report(reset)

    def source_of(self, index: int) -> tuple[str, int]:
        return self._sources[index]

    def image_path(self, rel: str) -> str:
        if not isinstance(rel, str) or not rel:
            raise TypeError(f"image path must be a non-empty string, got {rel!r}")
        return rel if os.path.isabs(rel) or self.vis_root is None else os.path.join(self.vis_root, rel)

    def read_image(self, rel: str) -> torch.Tensor:
        cache = self.__dict__.get("memory_cache")  # run.image_memory_cache (datasets/image_cache.py)
        if cache is not None and cache.processor is self.vis_processor:
            path = self.image_path(rel)
            return cache.get_or_load(path, lambda: self._decode_and_process(path))
        return self._decode_and_process(self.image_path(rel))

    def _decode_and_process(self, path: str) -> torch.Tensor:
        image = load_image(path, self.vis_processor)
        return self.vis_processor(image) if self.vis_processor is not None else image

    def process_text(self, text: str) -> str:
        return self.text_processor(text) if self.text_processor is not None else text

    def collater(self, samples: list[dict]) -> dict:
        return default_collate(samples)
