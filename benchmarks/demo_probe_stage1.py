"""How readable are position and count in the stage-1 features? Linear probes on freshly drawn images.

    python benchmarks/demo_probe_stage1.py output/demo/stage1/checkpoint_best [--train 256 --test 400]

Draws position and count layouts (and centred shapes: shape, background) with the demo generator's own functions (a fixed seed, not the data
set's images), encodes them with the stage-1 checkpoint (as minigpt4qwen `tiny` loads it) and trains a
linear probe (benchmarks/demo_diagnosis.py `probe`) on ``--train`` images, scored on ``--test`` others:
  vit_concat  the ViT patch tokens (ln_vision), concatenated: what the vision side holds;
  q_concat    the 8 Q-Former outputs concatenated: what a reader of single tokens can get;
  q_mean      the Q-Former outputs averaged over the queries: what a reader that averages gets.
Figures: docs/demo_diagnosis.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_diagnosis as dd

from lavis_lite.common.registry import registry
from lavis_lite.datasets import demo as demo_data


@torch.no_grad()
def encode(model, params: list[dict], size: int = 32):
    proc = registry.get_processor_class("blip2_image_eval").from_config({"image_size": size})
    x = torch.stack([proc(demo_data.draw_image(p, size)) for p in params])
    vit = model.encode_image(x, stage="pixels", upto="vit")
    return vit, model.encode_image(vit, stage="vit", upto="qformer")


def label(what: str, params: dict, size: int = 32) -> int:
    if what == "shape":
        return demo_data.SHAPES.index(params["shapes"][0]["shape"])
    if what == "background":
        return list(demo_data.BACKGROUNDS).index(params["background"])
    if what == "count":
        return len(params["shapes"]) - 1
    return demo_data.POSITIONS.index(demo_data.position_of(params, size))


def probe_stage1(stage1: str, n_train: int = 256, n_test: int = 400, seed: int = 123,
                 model_options: dict | None = None) -> dict:
    torch.manual_seed(0)
    model = dd.build_model(stage1, model_options or {})
    model.eval()
    rng, out = random.Random(seed), {}
    centred = demo_data.single_params
    for what, draw in (("position", demo_data.position_params), ("count", demo_data.count_params),
                       ("shape", centred), ("background", centred)):
        params = [draw(rng, 32) for _ in range(n_train + n_test)]
        y = torch.tensor([label(what, p) for p in params])
        vit, q = encode(model, params)
        for name, x in (("vit_concat", vit[:, 1:].flatten(1)), ("q_concat", q.flatten(1)), ("q_mean", q.mean(1))):
            out[f"{what}_{name}"] = round(dd.probe(x[:n_train], y[:n_train], x[n_train:], y[n_train:]), 1)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage1", help="stage-1 checkpoint folder (demo_stage1.yaml's checkpoint_best)")
    p.add_argument("--train", type=int, default=256, help="probe training images per question type")
    p.add_argument("--test", type=int, default=400, help="probe test images per question type")
    p.add_argument("--model-options", default="{}",
                   help='JSON overrides of minigpt4qwen tiny, e.g. the sizes stage 1 ran with: {"vit_sizes": {...}}')
    args = p.parse_args(argv)
    t0 = time.process_time()
    res = probe_stage1(args.stage1, args.train, args.test, model_options=json.loads(args.model_options))
    res["cpu_s"] = round(time.process_time() - t0, 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
