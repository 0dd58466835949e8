"""Compare the training-loss curves of two runs (their ``metrics.jsonl``), step by step.

    python benchmarks/compare_loss_curves.py output/demo_fp32 output/demo_bf16 [--smooth 10]

Prints one JSON line: steps compared, max / mean absolute difference of the per-step loss (and of its
``--smooth``-step moving average, which takes out batch-to-batch noise), each run's final loss (last step and
mean of the last ``--smooth`` steps) and the validation records of both runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_losses(records) -> dict[int, float]:
    return {int(r["step"]): float(r["loss"]) for r in records if r.get("kind") == "train" and "loss" in r}


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def compare(a_records, b_records, smooth: int = 10) -> dict:
    a, b = train_losses(a_records), train_losses(b_records)
    steps = sorted(set(a) & set(b))
    if not steps:
        raise ValueError("the two runs share no training step with a loss")
    da = [a[s] for s in steps]
    db = [b[s] for s in steps]
    diff = [abs(x - y) for x, y in zip(da, db)]
    sa, sb = moving_average(da, smooth), moving_average(db, smooth)
    sdiff = [abs(x - y) for x, y in zip(sa, sb)]
    return {"steps": len(steps), "first_step": steps[0], "last_step": steps[-1],
            "max_abs_diff": max(diff), "mean_abs_diff": sum(diff) / len(diff),
            f"max_abs_diff_ma{smooth}": max(sdiff), f"mean_abs_diff_ma{smooth}": sum(sdiff) / len(sdiff),
            "final_loss": [da[-1], db[-1]], f"final_loss_ma{smooth}": [sa[-1], sb[-1]],
            "val": [[{k: r[k] for k in ("step", "loss", "token_acc") if k in r} for r in recs if r.get("kind") == "eval"]
                    for recs in (a_records, b_records)]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_a", help="job folder (or its metrics.jsonl)")
    p.add_argument("run_b")
    p.add_argument("--smooth", type=int, default=10)
    args = p.parse_args(argv)
    from lavis_lite.common.trackers.jsonl_tracker import read_metrics
    result = compare(read_metrics(args.run_a), read_metrics(args.run_b), args.smooth)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
