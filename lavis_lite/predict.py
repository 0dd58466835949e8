"""Batch prediction: one question about every image of a folder or a JSONL list.

    python -m lavis_lite.predict --cfg-path <model yaml | run yaml | export folder> \
        --images DIR_OR_JSONL --question "Describe the image." --out answers.jsonl \
        [--checkpoint PATH] [--batch-size 8] [--device cpu] [--conf key=value ...]

Input: a folder (every image file below it, sorted; id = path relative to the folder) or a
JSONL file with one ``{"image": PATH, "id"?: str, "question"?: str}`` per line (relative
paths are relative to the JSONL file; a record's question overrides ``--question``).

Output: one JSON line per input: ``{"id", "image", "question", "answer"}``, or ``"error"``
instead of ``"answer"`` for an image that cannot be read. The file is written batch by
batch; running the same command again skips ids already in it (a half-written last line
from an interrupted run is dropped), so an interrupted run resumes without duplicates.
"""
from __future__ import annotations

import argparse
import shlex
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from lavis_lite.inference_utils import (IMAGE_EXTENSIONS, GenerationSettings, ImageLoadError, add_model_arguments,
                                        load_image_tensor)

logger = logging.getLogger(__name__)


class PredictInputError(ValueError):
    """A problem with the --images input or an existing --out file, naming file and line."""


@dataclass
class PredictItem:
    id: str
    image: str  # path as given (absolute for folder input)
    question: str


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------
def list_items(images: str, question: str | None) -> list[PredictItem]:
    """Items from a folder of images or a JSONL list; ids must be unique."""
    images = os.path.expanduser(images)
    if os.path.isdir(images):
        if not question:
            raise PredictInputError("--question is required when --images is a folder")
        items = [PredictItem(rel, os.path.join(images, rel), question) for rel in _image_files(images)]
        if not items:
            raise PredictInputError(f"Folder {images!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return items
    if not os.path.isfile(images):
        raise PredictInputError(f"--images {images!r} is neither a folder nor a file")
    return _read_jsonl_items(images, question)


def _image_files(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


def _read_jsonl_items(path: str, question: str | None) -> list[PredictItem]:
    base = os.path.dirname(os.path.abspath(path))
    items, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise PredictInputError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(rec, dict) or not rec.get("image"):
                raise PredictInputError(f"{path}:{lineno}: record has no 'image' key")
            q = rec.get("question") or question
            if not q:
                raise PredictInputError(f"{path}:{lineno}: no 'question' in the record and no --question given")
            item_id = str(rec.get("id", rec["image"]))
            if item_id in seen:
                raise PredictInputError(f"{path}:{lineno}: duplicate id {item_id!r}")
            seen.add(item_id)
            image = rec["image"] if os.path.isabs(rec["image"]) else os.path.join(base, rec["image"])
            items.append(PredictItem(item_id, image, q))
    if not items:
        raise PredictInputError(f"{path} holds no records")
    return items


# ---------------------------------------------------------------------------------------
# Resumable output
# ---------------------------------------------------------------------------------------
class ResumableJsonlWriter:
    """Appends one JSON line per result and knows which ids a previous run already wrote.

    A last line without its newline (the process died mid-write) is cut off before
    appending; a broken line elsewhere is an error, since it means the file is not ours.
    """

    def __init__(self, path: str):
        self.path = os.path.expanduser(path)
        self.done: dict[str, dict] = {}
        if os.path.exists(self.path):
            self._load_existing()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def _load_existing(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        keep = data.rfind(b"\n") + 1  # bytes up to the last complete line
        if keep < len(data):
            logger.warning("%s: dropping a half-written last line from an interrupted run", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(keep)
        for lineno, line in enumerate(data[:keep].decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self.done[str(rec["id"])] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                raise PredictInputError(f"{self.path}:{lineno}: not a prediction record; "
                                        "refusing to append to it (choose another --out)") from None

    def write(self, records: Iterable[dict]) -> None:
        for rec in records:
            self._file.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self.done[str(rec["id"])] = rec
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------
def _batches(items: list[PredictItem], size: int) -> Iterator[list[PredictItem]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict(model, image_processor, items: list[PredictItem], out_path: str, batch_size: int = 8,
            settings: GenerationSettings | None = None, progress: bool = True) -> dict:
    """Answer every item not yet in ``out_path``; returns counts of what this call did."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from tqdm import tqdm

    settings = settings or GenerationSettings()
    counts = {"answered": 0, "errors": 0, "skipped": 0}
    with ResumableJsonlWriter(out_path) as writer:
        for item in items:
            prev = writer.done.get(item.id)
            if prev is not None and prev.get("question") != item.question:
                raise PredictInputError(
                    f"{out_path} already answers id {item.id!r} for question {prev.get('question')!r}, "
                    f"not {item.question!r}; choose another --out")
        todo = [it for it in items if it.id not in writer.done]
        counts["skipped"] = len(items) - len(todo)
        bar = tqdm(total=len(todo), desc="predict", unit="img", disable=not progress, file=sys.stderr)
        for batch in _batches(todo, batch_size):
            ok, tensors, records = [], [], []
            for item in batch:
                try:
                    tensors.append(load_image_tensor(item.image, image_processor))
                    ok.append(item)
                except ImageLoadError as err:
                    records.append({"id": item.id, "image": item.image, "question": item.question,
                                    "error": str(err)})
            if ok:
                answers = _generate(model, tensors, [it.question for it in ok], settings)
                records += [{"id": it.id, "image": it.image, "question": it.question, "answer": ans}
                            for it, ans in zip(ok, answers)]
            order = {it.id: i for i, it in enumerate(batch)}
            writer.write(sorted(records, key=lambda r: order[r["id"]]))
            counts["answered"] += len(ok)
            counts["errors"] += len(batch) - len(ok)
            bar.update(len(batch))
        bar.close()
    return counts


@torch.inference_mode()
def _generate(model, tensors: list[torch.Tensor], questions: list[str], settings) -> list[str]:
    samples = {"image": torch.stack(tensors).to(model.device), "n_images": [1] * len(tensors),
               "prompt": list(questions)}
    answers = model.generate(samples, **settings.as_kwargs())
    if len(answers) != len(questions):
        raise RuntimeError(f"model.generate returned {len(answers)} answers for {len(questions)} samples")
    return [a.strip() for a in answers]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lavis_lite.predict", description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="folder of images or JSONL list")
    parser.add_argument("--question", default=None, help="question asked about every image")
    parser.add_argument("--out", required=True, help="output JSONL (resumed when it exists)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return add_model_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lavis_lite.inference_utils import load_model_from_cfg, settings_from_args

    settings = settings_from_args(args)
    if settings is None:
        return 2
    try:
        items = list_items(args.images, args.question)
    except (ValueError, PredictInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model, image_processor, _ = load_model_from_cfg(args.cfg_path, args.checkpoint, args.device, args.options)
    try:
        counts = predict(model, image_processor, items, args.out, args.batch_size, settings,
                         progress=not args.no_progress)
    except PredictInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # every finished answer is already in --out; the same command skips them and goes on
        again = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        print(f"\ninterrupted: the answers so far are in {args.out}. To resume, run the same command again:\n"
              f"  python -m lavis_lite.predict {again}", file=sys.stderr)
        return 130
    print(f"{args.out}: {counts['answered']} answered, {counts['errors']} unreadable, "
          f"{counts['skipped']} already done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
