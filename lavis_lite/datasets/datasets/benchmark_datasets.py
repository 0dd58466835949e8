"""Multimodal-LLM benchmarks read from their released files: MME, MMBench, POPE, ScienceQA.

Each dataset turns the benchmark's own layout into records (one per question the model answers) and
yields ``{"image", "instance_id", ...fields the task's prompt and scoring need}``; prompts are built by
the tasks (``lavis_lite/tasks/mllm_benchmarks.py``), scoring is in ``lavis_lite/tasks/metrics``.
Layouts (see docs/benchmarks.md):
  - MME: the release folder, one folder per subtask holding either ``images/`` +
    ``questions_answers_YES_NO/<image stem>.txt`` or the images and ``<image stem>.txt`` side by side;
    each txt line is ``question<TAB>Yes|No``. Or lmms-lab's ``*.parquet`` files / a VLMEvalKit ``MME.tsv``.
  - MMBench: the TSV (index, question, hint, A..D, answer, category, l2-category, image as base64).
  - POPE: ``coco_pope_{random,popular,adversarial}.json`` (JSON lines, as in the POPE repository; ``.jsonl``
    or a JSON list work too), one ``{"question_id","image","text","label"}`` per line,
    images under the builder's ``images`` storage (COCO val2014).
  - ScienceQA: the folder with ``problems.json``, ``pid_splits.json`` and ``images/<split>/<pid>/``.
"""
from __future__ import annotations

import base64
import csv
import glob
import io
import json
import math
import os
import sys

import torch

from lavis_lite.datasets.datasets.base_dataset import BaseDataset, decode_image
from lavis_lite.datasets.datasets.errors import DataError

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class BenchmarkDataset(BaseDataset):
    """A BaseDataset whose records come from ``read_records(path)`` (any file format or folder) and
    whose images are files or encoded bytes. Options of the builder's ``dataset_options`` arrive as
    keyword arguments, the split name as ``split``."""

    def __init__(self, vis_processor=None, text_processor=None, vis_root=None, ann_paths=(), on_error="raise",
                 max_skip_fraction=0.05, split="test", **options):
        self.split = split
        self.options = options
        super().__init__(vis_processor, text_processor, vis_root, ann_paths, on_error, max_skip_fraction)

    def iter_records(self):
        for path in self.ann_paths:
            if not os.path.exists(path):
                raise DataError(f"{type(self).__name__}: {path} does not exist")
            for index, record in self.read_records(path):
                yield path, index, record

    def read_records(self, path: str) -> list[tuple[int, dict]]:
        raise NotImplementedError

    def image_from_record(self, ann: dict):
        if ann.get("image_bytes") is not None:
            image = decode_image(io.BytesIO(ann["image_bytes"]), self.vis_processor)
            return self.vis_processor(image) if self.vis_processor is not None else image
        return self.read_image(ann["image"])

    fields: tuple[str, ...] = ()

    def load_sample(self, index: int) -> dict:
        ann = self.annotation[index]
        sample = {"image": self.image_from_record(ann), "instance_id": ann["instance_id"]}
        for key in self.fields:
            sample[key] = ann.get(key)
        return sample

    def collater(self, samples: list[dict]) -> dict:
        batch = {"image": torch.stack([s["image"] for s in samples]),
                 "instance_id": [s["instance_id"] for s in samples]}
        for key in self.fields:
            batch[key] = [s[key] for s in samples]
        return batch


def read_tsv(path: str) -> list[tuple[int, dict]]:
    csv.field_size_limit(sys.maxsize)  # base64 images are long fields
    with open(path, newline="", encoding="utf-8") as f:
        return list(enumerate(csv.DictReader(f, delimiter="\t")))


def _decode_base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=False)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: image is not valid base64 ({err})") from None


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() in ("", "nan", "NaN")


# ---- MME --------------------------------------------------------------------------------------
class MMEDataset(BenchmarkDataset):
    fields = ("question_id", "category", "image_name", "question", "answer")

    def read_records(self, path):
        if os.path.isdir(path):
            return list(enumerate(self._folder_records(path)))
        if path.endswith(".parquet"):
            return list(enumerate(_parquet_rows(path)))
        if path.endswith(".tsv"):
            return read_tsv(path)
        raise DataError(f"MME: {path} is neither the release folder, a .parquet nor a .tsv file")

    @staticmethod
    def _folder_records(root: str) -> list[dict]:
        records = []
        subtasks = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        for task in subtasks:
            base = os.path.join(root, task)
            qa_dir = os.path.join(base, "questions_answers_YES_NO")
            image_dir = os.path.join(base, "images") if os.path.isdir(qa_dir) else base
            qa_dir = qa_dir if os.path.isdir(qa_dir) else base
            for txt in sorted(glob.glob(os.path.join(qa_dir, "*.txt"))):
                stem = os.path.splitext(os.path.basename(txt))[0]
                image = next((os.path.join(image_dir, stem + e) for e in _IMAGE_EXTS
                              if os.path.isfile(os.path.join(image_dir, stem + e))), None)
                with open(txt, encoding="utf-8-sig") as f:  # tolerate a BOM
                    lines = [line.rstrip("\n") for line in f if line.strip()]
                for k, line in enumerate(lines):
                    records.append({"_file": txt, "_line": k + 1, "line": line, "category": task, "image": image,
                                    "image_name": stem})
        if not records:
            raise DataError(f"MME: {root} holds no <subtask>/[questions_answers_YES_NO/]*.txt files")
        return records

    def parse_record(self, record):
        if "line" in record:  # release folder
            parts = record["line"].split("\t")
            if len(parts) != 2:
                raise ValueError(f"{record['_file']} line {record['_line']}: expected 'question<TAB>answer'")
            if record["image"] is None:
                raise ValueError(f"{record['_file']}: no image named {record['image_name']}.* next to it")
            question, answer = parts
            name, image, image_bytes = record["image_name"], record["image"], None
            qid = f"{record['category']}/{name}/{record['_line']}"
        else:  # lmms-lab parquet / VLMEvalKit TSV
            question, answer = str(record["question"]), str(record["answer"])
            image_bytes = record["image"]
            if isinstance(image_bytes, dict):
                image_bytes = image_bytes.get("bytes")
            elif isinstance(image_bytes, str):
                image_bytes = _decode_base64(image_bytes, f"MME record {record.get('index')}")
            if not image_bytes:
                raise ValueError("MME record has no image bytes")
            name = str(record.get("question_id") or record.get("image_path") or record.get("index"))
            image, qid = None, f"{record['category']}/{name}/{question}"
        if answer.strip().lower() not in ("yes", "no"):
            raise ValueError(f"MME answer must be Yes or No, got {answer!r}")
        return {"question_id": qid, "category": str(record["category"]), "image_name": name, "image": image,
                "image_bytes": image_bytes, "question": question.strip(), "answer": answer.strip()}


def _parquet_rows(path: str) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from None
    return pq.read_table(path).to_pylist()


# ---- MMBench ----------------------------------------------------------------------------------
class MMBenchDataset(BenchmarkDataset):
    """One record per circular variant. Options: ``circular`` (default true: a question with N options
    is asked N times with shifted options, unless the TSV already carries its circular copies at
    index + k*1e6) and ``lang`` (en | cn, for the prompt)."""

    fields = ("g_index", "shift", "question", "hint", "options", "answer", "category", "l2_category")

    def read_records(self, path):
        from lavis_lite.tasks.metrics.mmbench_eval import CIRCULAR_OFFSET, LETTERS

        rows = read_tsv(path)
        self._images = {}
        for _, row in rows:
            image = row.get("image")
            if image and not (len(image) <= 64 and image.strip().isdigit()):
                self._images[str(row["index"]).strip()] = image
        has_copies = any(int(float(r["index"])) >= CIRCULAR_OFFSET for _, r in rows)
        circular = self.options.get("circular", True) and not has_copies
        out = []
        for i, row in rows:
            # one record per variant; a row the parser rejects is one bad record
            n_options = sum(1 for c in LETTERS if c in row and not _blank(row[c]))
            shifts = n_options if circular and not _blank(row.get("answer")) and n_options >= 2 else 1
            out.extend((i, {**row, "_shift": k if circular else None}) for k in range(shifts))
        return out

    def parse_record(self, row):
        from lavis_lite.tasks.metrics.mmbench_eval import CIRCULAR_OFFSET, LETTERS, circular_variants

        index = int(float(row["index"]))
        image = row.get("image") or ""
        if len(image) <= 64 and image.strip().isdigit():  # a reference to the row holding the image
            image = self._images.get(str(int(image)))
        if not image:
            image = self._images.get(str(index % CIRCULAR_OFFSET))
        if not image:
            raise ValueError(f"MMBench row {index} has no image")
        options = {c: str(row[c]) for c in LETTERS if c in row and not _blank(row[c])}
        if len(options) < 2:
            raise ValueError(f"MMBench row {index} has {len(options)} options")
        answer = None if _blank(row.get("answer")) else str(row["answer"]).strip()
        record = {"question": str(row["question"]), "hint": None if _blank(row.get("hint")) else str(row["hint"]),
                  "category": row.get("category"), "l2_category": row.get("l2-category", row.get("l2_category")),
                  "image_b64": image, "options": options, "answer": answer}
        if row["_shift"] is None or answer is None:  # as released (circular copies at index + k * 1e6)
            return dict(record, g_index=index % CIRCULAR_OFFSET, shift=index // CIRCULAR_OFFSET,
                        instance_id=str(index))
        shift = row["_shift"]
        options, answer = circular_variants(options, answer)[shift]
        return dict(record, g_index=index, shift=shift, options=options, answer=answer,
                    instance_id=f"{index}_{shift}")

    def image_from_record(self, ann):
        return super().image_from_record({"image_bytes": _decode_base64(ann["image_b64"], f"MMBench {ann['g_index']}")})


# ---- POPE -------------------------------------------------------------------------------------
class POPEDataset(BenchmarkDataset):
    """Records of every split file given; the POPE split (random / popular / adversarial) is read from
    the file name."""

    fields = ("question_id", "question", "label", "pope_split")

    def read_records(self, path):
        name = os.path.basename(path).lower()
        self._pope_split = next((s for s in ("random", "popular", "adversarial") if s in name),
                                os.path.splitext(os.path.basename(path))[0])
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("["):  # a repack as one JSON list
            try:
                return list(enumerate(json.loads(text)))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: malformed JSON list ({err})") from None
        out = []  # the release: one JSON object per line (named .json in the POPE repository)
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                out.append((i, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {i + 1} is not valid JSON ({err})") from None
        return out

    def parse_record(self, rec):
        label = str(rec["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise ValueError(f"POPE label must be yes/no, got {rec['label']!r}")
        return {"question_id": rec["question_id"], "image": rec["image"], "question": rec["text"], "label": label,
                "pope_split": self._pope_split, "instance_id": f"{self._pope_split}/{rec['question_id']}"}


# ---- ScienceQA --------------------------------------------------------------------------------
class ScienceQADataset(BenchmarkDataset):
    """Options: ``pid_split`` (default: the builder split name, e.g. test), ``images_only`` (default
    true: ScienceQA-IMG, the problems with an image)."""

    fields = ("pid", "question", "hint", "choices", "answer", "subject", "grade")

    def read_records(self, path):
        if not os.path.isdir(path):
            raise DataError(f"ScienceQA: {path} must be the folder holding problems.json and pid_splits.json")
        for name in ("problems.json", "pid_splits.json"):
            if not os.path.isfile(os.path.join(path, name)):
                raise DataError(f"ScienceQA: {os.path.join(path, name)} does not exist")
        with open(os.path.join(path, "problems.json"), encoding="utf-8") as f:
            problems = json.load(f)
        with open(os.path.join(path, "pid_splits.json"), encoding="utf-8") as f:
            splits = json.load(f)
        pid_split = self.options.get("pid_split", self.split)
        if pid_split not in splits:
            raise DataError(f"ScienceQA: split {pid_split!r} not in {path}/pid_splits.json ({sorted(splits)})")
        images_only = self.options.get("images_only", True)
        out = []
        for i, pid in enumerate(splits[pid_split]):
            if str(pid) not in problems:
                raise DataError(f"ScienceQA: pid {pid} of split {pid_split!r} is not in problems.json")
            prob = problems[str(pid)]
            if images_only and not prob.get("image"):
                continue
            image = os.path.join(path, "images", pid_split, str(pid), prob["image"]) if prob.get("image") else None
            out.append((i, dict(prob, pid=str(pid), _image_path=image)))
        return out

    def parse_record(self, prob):
        choices = prob["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise ValueError(f"ScienceQA {prob['pid']}: 'choices' must list at least 2 options")
        if not 0 <= int(prob["answer"]) < len(choices):
            raise ValueError(f"ScienceQA {prob['pid']}: answer {prob['answer']} out of range")
        if prob["_image_path"] is None:
            raise ValueError(f"ScienceQA {prob['pid']} has no image (text-only evaluation is not supported)")
        return {"pid": prob["pid"], "question": prob["question"], "hint": prob.get("hint") or None,
                "choices": list(choices), "answer": int(prob["answer"]), "subject": prob.get("subject"),
                "grade": prob.get("grade"), "image": prob["_image_path"], "instance_id": prob["pid"]}
