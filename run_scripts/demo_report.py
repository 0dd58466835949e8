"""Print the CPU demo's outcome: accuracy per question type on the held-out split, a few questions
with the model's answers, and each stage's time; draw output/demo/report.png (training curves of every
stage from its metrics.jsonl, held-out answers). Exit status 1 when any question type is below the
target (90% exactly matched) or has fewer than MIN_PER_TYPE held-out questions."""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

TARGET = 90.0  # percent exactly matched, every question type
MIN_PER_TYPE = 100  # held-out questions per type (fewer: the percentage moves by > 3 points per answer)
QUESTION_TYPES = ("colour", "shape", "count", "position", "compare", "describe")


def compare_breakdown(results: list[dict], records: dict) -> dict:
    """Compare questions split by what they ask (the same colour / shape), and the verdict alone: the
    reference's last word ("yes" / "no", also of a reasoned answer "red and blue, so no.") against the
    prediction's. Informative only: the target is on the whole answer."""
    hits: dict[str, list[bool]] = {}
    for r in results:
        rec = records.get(r["instance_id"], {})
        if rec.get("question_type") != "compare":
            continue
        asked = rec["turn_types"][-1].split("_", 1)[-1]
        hits.setdefault(asked, []).append(bool(r["exact"]))
        last = [str(x).strip().rstrip(".").split()[-1:] for x in (r["prediction"], r["reference"])]
        hits.setdefault("verdict", []).append(last[0] == last[1])
    return {k: 100.0 * sum(v) / len(v) for k, v in sorted(hits.items())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--result-dir", required=True)
    p.add_argument("--data", required=True, help="the demo data directory (for the questions' text)")
    p.add_argument("--split", default="test")
    p.add_argument("--examples", type=int, default=8)
    p.add_argument("--times", nargs="*", default=[], help="name=seconds")
    p.add_argument("--jobs", nargs="*", default=[], help="name=job folder: training curves for the picture")
    p.add_argument("--picture", default=None, help="write the report picture here (PNG)")
    p.add_argument("--min-per-type", type=int, default=MIN_PER_TYPE)
    args = p.parse_args(argv)

    with open(os.path.join(args.result_dir, f"{args.split}_metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(args.result_dir, f"{args.split}_instruction_result.json")) as f:
        results = json.load(f)
    with open(os.path.join(args.data, "instruction", f"{args.split}.json")) as f:
        records = {r["id"]: r for r in json.load(f)}

    print(f"\n=== held-out '{args.split}' split: {metrics['n']} questions ===")
    print(f"{'question type':14s} {'n':>5s} {'exact %':>8s} {'contains %':>10s}")
    for qt, m in sorted(metrics["per_question_type"].items()):
        print(f"{qt:14s} {m['n']:5d} {m['exact_acc']:8.1f} {m['contains_acc']:10.1f}")
    print(f"{'all':14s} {metrics['n']:5d} {metrics['exact_acc']:8.1f} {metrics['contains_acc']:10.1f}")
    breakdown = compare_breakdown(results, records)
    if breakdown:
        print("compare, exact % by the question asked: " + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items()))

    print("\n=== examples ===")
    rng = random.Random(0)
    for r in rng.sample(results, min(args.examples, len(results))):
        rec = records.get(r["instance_id"], {})
        question = str(rec.get("instruction", "?")).replace("<ImageHere>", "").strip()
        image = rec.get("image", "?")
        mark = "ok " if r["exact"] else "BAD"
        print(f"[{mark}] {image}  Q: {question}  A: {r['prediction']!r}  (expected {r['reference']!r})")

    if args.times:
        print("\n=== time per stage ===")
        total = 0
        for item in args.times:
            name, sec = item.split("=")
            total += int(sec)
            print(f"{name:8s} {int(sec):5d} s")
        print(f"{'total':8s} {total:5d} s")

    per_type = metrics["per_question_type"]
    if args.picture:
        from lavis_lite.tools.demo_figure import write_report_png
        jobs = dict(item.split("=", 1) for item in args.jobs)
        write_report_png(args.picture, jobs, results, records, args.data,
                         {qt: m["exact_acc"] for qt, m in per_type.items()},
                         eval_metrics={"stage1": "agg_metrics", "align": "agg_metrics", "stage2": "agg_metrics"})
        print(f"\nreport picture: {args.picture}")
    failed = []
    for qt in QUESTION_TYPES:
        m = per_type.get(qt, {"n": 0, "exact_acc": 0.0})
        if m["n"] < args.min_per_type:
            failed.append(f"{qt}: only {m['n']} held-out questions (< {args.min_per_type})")
        elif m["exact_acc"] < TARGET:
            failed.append(f"{qt}: {m['exact_acc']:.1f}% < {TARGET:.0f}%")
    print(f"\nevery question type >= {TARGET:.0f}% exactly matched on >= {args.min_per_type} questions: "
          f"{'PASS' if not failed else 'FAIL (' + '; '.join(failed) + ')'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
