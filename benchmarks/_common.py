"""Shared by the benchmark scripts: environment record, timing loops, medians, the one JSON line."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time


def environment() -> dict:
    import torch
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "cpu": _cpu_name(),
           "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "cuda": torch.cuda.is_available()}
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                                           text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    env["load_avg_1min"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def pin_to_one_core() -> int | None:
    """Restrict this process to one CPU core (and torch to one thread); returns the core or None."""
    import torch
    torch.set_num_threads(1)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if hasattr(os, "sched_setaffinity"):
        core = sorted(os.sched_getaffinity(0))[0]
        os.sched_setaffinity(0, {core})
        return core
    return None


def time_loop(step, seconds: float, min_iters: int = 1, warmup: int = 1) -> tuple[float, int]:
    """Run ``step()`` for about ``seconds`` after ``warmup`` calls; returns (elapsed, iterations)."""
    for _ in range(warmup):
        step()
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < seconds:
        step()
        n += 1
    return time.perf_counter() - start, n


def median(values):
    return statistics.median(values) if values else None


def emit(bench: str, config: dict, figures: dict) -> dict:
    """Print the single JSON line of a benchmark run (and return it)."""
    record = {"bench": bench, "config": config, "figures": figures, "env": environment()}
    sys.stdout.write(json.dumps(record, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()
    return record


_WORDS = ("the a shape colour red green blue yellow circle square triangle left right top bottom large small "
          "image picture shows there is are of in on with and two three one what where how many describe "
          "please answer question carefully background white black gray centre middle corner near far "
          "bright dark round sharp edge side same different both each").split()


def synthetic_conversations(n: int, seed: int = 0, min_words: int = 4, max_words: int = 30,
                            max_rounds: int = 2) -> list[list[dict]]:
    """Instruction conversations of varied length: one image in the first user turn, 1..max_rounds rounds.

    The defaults give ~100 text tokens per sample with the tiny tokenizer (system prompt and ChatML
    headers included; 44..190), the length the issue's GPU target assumes."""
    import random

    rng = random.Random(seed)
    convs = []
    for _ in range(n):
        conv = []
        for r in range(rng.randint(1, max_rounds)):
            q = " ".join(rng.choices(_WORDS, k=rng.randint(min_words, max(min_words, max_words // 3)))) + "?"
            a = " ".join(rng.choices(_WORDS, k=rng.randint(min_words, max_words))) + "."
            conv += [{"from": "human", "value": ("<ImageHere> " if r == 0 else "") + q}, {"from": "gpt", "value": a}]
        convs.append(conv)
    return convs


def published_conversations(n: int, seed: int = 0, rounds_scale: float = 1.0) -> list[list[dict]]:
    """Conversations shaped like the published MiniGPT4-Qwen recipe's benchmark data (issue 22): one image
    in the first user turn, 1-3 rounds (weights 5:2:3), questions of 4-24 words, replies of 4-40 words.

    With the tiny tokenizer and 32 image tokens: 180.8 LLM positions per sample before truncation, 174.2
    at max_txt_len 256, 18.8% of samples longer than 256 (512 samples, seed 0). ``rounds_scale``
    multiplies the number of rounds (longer real text, same turn shapes) for the scaling table."""
    import random

    rng = random.Random(seed)
    convs = []
    for _ in range(n):
        rounds = max(1, round(rng.choices((1, 2, 3), weights=(5, 2, 3))[0] * rounds_scale))
        conv = []
        for r in range(rounds):
            q = " ".join(rng.choices(_WORDS, k=rng.randint(4, 24))) + "?"
            a = " ".join(rng.choices(_WORDS, k=rng.randint(4, 40))) + "."
            conv += [{"from": "human", "value": ("<ImageHere> " if r == 0 else "") + q}, {"from": "gpt", "value": a}]
        convs.append(conv)
    return convs


def write_synthetic_photos(folder: str, n: int, width: int = 640, height: int = 480, seed: int = 0,
                           quality: int = 90) -> list[str]:
    """COCO-sized JPEGs with photo-like statistics (smooth colour fields + texture + shapes), so decode
    and resize cost what real photos cost; the demo's small PNGs of flat shapes decode far faster."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((width, height), Image.BICUBIC)
        noise = rng.normal(0, 18, (height, width, 3))
        arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr).filter(ImageFilter.GaussianBlur(0.8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            x, y = int(rng.integers(0, max(1, width // 2))), int(rng.integers(0, max(1, height // 2)))
            w, h = int(rng.integers(4, max(5, width // 3))), int(rng.integers(4, max(5, height // 3)))
            draw.ellipse([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        path = os.path.join(folder, f"{i:06d}.jpg")
        img.save(path, quality=quality)
        paths.append(path)
    return paths
