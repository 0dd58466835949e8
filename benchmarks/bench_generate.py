"""Generation throughput of MiniGPT4-Qwen: new tokens/s, batched vs one prompt at a time.

    python benchmarks/bench_generate.py --size bench --batch-size 8 --max-new-tokens 32 --repeats 3

Greedy decoding with ``min_length = max_new_tokens`` so that every prompt produces exactly
``max_new_tokens`` tokens (random weights would otherwise stop at arbitrary points), which makes
the two ways comparable. Images go through the whole frozen vision stack. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, median, synthetic_conversations  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="bench", help="tiny | bench | full (see bench_train.py)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from bench_train import build_model

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads or not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(args.seed)
    model = build_model(argparse.Namespace(size=args.size, dtype=args.dtype, lora=False, device=args.device)).eval()
    size = model.visual_encoder.patch_embed.img_size
    convs = [c[:1] for c in synthetic_conversations(args.batch_size, seed=args.seed)]  # first question only
    images = torch.randn(args.batch_size, 3, size, size, device=args.device)
    gen = dict(max_new_tokens=args.max_new_tokens, min_length=args.max_new_tokens, num_beams=1, do_sample=False)
    cuda = args.device.startswith("cuda")

    def timed(fn):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    def batched():
        return model.generate({"image": images, "n_images": [1] * args.batch_size, "conversations": convs}, **gen)

    def one_by_one():
        return [model.generate({"image": images[i:i + 1], "n_images": [1], "conversations": [convs[i]]}, **gen)[0]
                for i in range(args.batch_size)]

    batched()  # warm-up
    runs = {"batched": [], "one_by_one": []}
    same = True
    for _ in range(args.repeats):
        t_b, out_b = timed(batched)
        t_o, out_o = timed(one_by_one)
        runs["batched"].append(args.batch_size * args.max_new_tokens / t_b)
        runs["one_by_one"].append(args.batch_size * args.max_new_tokens / t_o)
        same = same and out_b == out_o
    figures = {"batched_tokens_per_s": round(median(runs["batched"]), 1),
               "one_by_one_tokens_per_s": round(median(runs["one_by_one"]), 1),
               "batched_speedup": round(median(runs["batched"]) / median(runs["one_by_one"]), 2),
               "batched_equals_one_by_one": same,
               "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()}}
    return emit("bench_generate", dict(vars(args), model_params=model.show_n_params()), figures)


if __name__ == "__main__":
    main()
