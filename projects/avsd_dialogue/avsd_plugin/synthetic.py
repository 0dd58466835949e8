"""Write a small synthetic data set in the AVSD format, with random feature files.

Layout under ``out_dir``::

    annotations/{train,val,test}.json     {"dialogs": [{"image_id", "caption", "summary",
                                                      "dialog": [{"question", "answer"}, ...]}]}
    features/i3d_rgb/<video_id>.npy       float32 [frames, 16]  (visual stream)
    features/vggish/<video_id>.npy        float32 [frames', 8]  (audio stream, other length)

Every video draws one value per attribute (colour, action, object, sound); the value is
written as a one-hot block (plus noise) into its feature stream and is the only place it
appears, so the answers can be learned from the features alone.

Command line (from the repository root)::

    python projects/avsd_dialogue/make_synthetic_data.py --out /tmp/avsd_synth --n-train 32
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from .vocabulary import ATTRIBUTES, CAPTIONS, FEATURE_DIMS, QUESTIONS, SUMMARIES

SPLITS = ("train", "val", "test")


def make_features(attrs: dict[str, int], rng: np.random.Generator, n_frames: dict[str, int],
                  noise: float = 0.1) -> dict[str, np.ndarray]:
    feats = {name: rng.normal(0.0, noise, size=(n_frames[name], dim)).astype(np.float32)
             for name, dim in FEATURE_DIMS.items()}
    for attr, value in attrs.items():
        stream, offset, _ = ATTRIBUTES[attr]
        feats[stream][:, offset + value] += 1.0
    return feats


def make_dialog(video_id: str, attrs: dict[str, int], rng: np.random.Generator, n_turns: int) -> dict:
    order = rng.permutation(list(QUESTIONS))[:n_turns]
    turns = []
    for attr in order:
        question, template = QUESTIONS[attr]
        turns.append({"question": question, "answer": template.format(ATTRIBUTES[attr][2][attrs[attr]])})
    return {
        "image_id": video_id,
        "caption": CAPTIONS[rng.integers(len(CAPTIONS))],
        "summary": SUMMARIES[rng.integers(len(SUMMARIES))],
        "dialog": turns,
    }


def write_synthetic_avsd(out_dir: str, n_train: int = 48, n_val: int = 8, n_test: int = 8, seed: int = 0,
                         min_turns: int = 2, max_turns: int = 4, min_frames: int = 3, max_frames: int = 6) -> dict:
    """Write the data set; returns {split: annotation path}."""
    if not 1 <= min_turns <= max_turns <= len(QUESTIONS):
        raise ValueError(f"need 1 <= min_turns <= max_turns <= {len(QUESTIONS)}, got {min_turns}, {max_turns}")
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    rng = np.random.default_rng(seed)
    for stream in FEATURE_DIMS:
        os.makedirs(os.path.join(out_dir, "features", stream), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    paths = {}
    for split, n in zip(SPLITS, (n_train, n_val, n_test)):
        dialogs = []
        for i in range(n):
            video_id = f"{split}_{i:05d}"
            attrs = {a: int(rng.integers(len(v[2]))) for a, v in ATTRIBUTES.items()}
            frames = {s: int(rng.integers(min_frames, max_frames + 1)) for s in FEATURE_DIMS}
            for stream, arr in make_features(attrs, rng, frames).items():
                np.save(os.path.join(out_dir, "features", stream, f"{video_id}.npy"), arr)
            dialogs.append(make_dialog(video_id, attrs, rng, int(rng.integers(min_turns, max_turns + 1))))
        paths[split] = os.path.join(out_dir, "annotations", f"{split}.json")
        with open(paths[split], "w") as f:
            json.dump({"dialogs": dialogs}, f, indent=1)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n-train", type=int, default=48)
    parser.add_argument("--n-val", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_synthetic_avsd(args.out, args.n_train, args.n_val, args.n_test, args.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")
