"""Tiny stand-ins of the benchmarks' released layouts (MME, MMBench, POPE, ScienceQA), written by tests."""
from __future__ import annotations

import base64
import csv
import io
import json
import os

from PIL import Image


def _png(color, size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def write_mme(root) -> str:
    """Two subtasks in the two release layouts: existence (images and txt side by side) and
    artwork (images/ + questions_answers_YES_NO/); two images each, two questions per image."""
    root = os.path.join(str(root), "MME_Benchmark_release_version")
    colors = ["red", "blue"]
    for task, nested in (("existence", False), ("artwork", True)):
        image_dir = os.path.join(root, task, "images") if nested else os.path.join(root, task)
        qa_dir = os.path.join(root, task, "questions_answers_YES_NO") if nested else os.path.join(root, task)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(qa_dir, exist_ok=True)
        for k, color in enumerate(colors):
            name = f"{k:04d}"
            with open(os.path.join(image_dir, name + (".jpg" if nested else ".png")), "wb") as f:
                f.write(_png(color))
            with open(os.path.join(qa_dir, name + ".txt"), "w") as f:
                f.write(f"Is the image {color}? Please answer yes or no.\tYes\n")
                f.write("Is the image green? Please answer yes or no.\tNo\n")
    return root


MMBENCH_ROWS = [
    # index, question, hint, A, B, C, D, answer, category, l2-category
    (0, "What colour is the image?", "A plain square.", "red", "blue", "green", "", "A", "color", "perception"),
    (1, "Which shape is it?", "", "square", "circle", "", "", "B", "shape", "reasoning"),
]


def write_mmbench(root) -> str:
    path = os.path.join(str(root), "MMBench_DEV_EN.tsv")
    image = base64.b64encode(_png("red")).decode()
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"])
        for row in MMBENCH_ROWS:
            w.writerow([*row, image])
    return path


def write_pope(root) -> tuple[list[str], str]:
    root = str(root)
    images = os.path.join(root, "val2014")
    os.makedirs(images, exist_ok=True)
    for k, color in enumerate(["red", "blue"]):
        with open(os.path.join(images, f"COCO_val2014_{k:012d}.jpg"), "wb") as f:
            f.write(_png(color))
    files = []
    for split in ("random", "popular", "adversarial"):
        # the POPE repository names its JSON-lines files .json; repacks use .jsonl
        path = os.path.join(root, f"coco_pope_{split}.{'json' if split == 'random' else 'jsonl'}")
        with open(path, "w") as f:
            for q in range(4):
                f.write(json.dumps({"question_id": q + 1, "image": f"COCO_val2014_{q % 2:012d}.jpg",
                                    "text": f"Is there a {['dog', 'cat'][q % 2]} in the image?",
                                    "label": "yes" if q < 2 else "no"}) + "\n")
        files.append(path)
    return files, images


def write_scienceqa(root) -> str:
    root = os.path.join(str(root), "scienceqa")
    problems = {
        "1": {"question": "Which colour is shown?", "choices": ["red", "blue"], "answer": 0, "hint": "Look.",
              "image": "image.png", "subject": "natural science", "grade": "grade3", "split": "test"},
        "2": {"question": "Which is bigger?", "choices": ["ant", "whale", "cat"], "answer": 1, "hint": "",
              "image": "image.png", "subject": "natural science", "grade": "grade8", "split": "test"},
        "3": {"question": "Text only?", "choices": ["yes", "no"], "answer": 0, "hint": "", "image": None,
              "subject": "language science", "grade": "grade2", "split": "test"},
        "4": {"question": "Train problem", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png",
              "subject": "social science", "grade": "grade5", "split": "train"},
    }
    for pid in ("1", "2", "4"):
        split = problems[pid]["split"]
        os.makedirs(os.path.join(root, "images", split, pid), exist_ok=True)
        with open(os.path.join(root, "images", split, pid, "image.png"), "wb") as f:
            f.write(_png("green"))
    with open(os.path.join(root, "problems.json"), "w") as f:
        json.dump(problems, f)
    with open(os.path.join(root, "pid_splits.json"), "w") as f:
        json.dump({"train": ["4"], "val": [], "test": ["1", "2", "3"]}, f)
    return root
