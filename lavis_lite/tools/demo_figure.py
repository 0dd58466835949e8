"""The CPU demo's report picture (``output/demo/report.png``): per-stage training loss and validation
curves over steps, read from each job's ``metrics.jsonl``, and a grid of held-out images with the
question, the model's answer and the expected one (green = exact match, red = not).

matplotlib is imported when the picture is drawn (it is in the ``dev`` extra, which the demo installs).
"""
from __future__ import annotations

import os
import textwrap

from lavis_lite.common.trackers.jsonl_tracker import read_metrics


def curves(job_dir: str) -> dict:
    """``{"train": [(step, loss)], "eval": {metric: [(step, value)]}}`` of one job's metrics.jsonl."""
    records = read_metrics(job_dir)
    out = {"train": [], "eval": {}}
    for r in records:
        if r.get("kind") == "train" and "loss" in r:
            out["train"].append((int(r["step"]), float(r["loss"])))
        elif r.get("kind") == "eval":
            for key, value in r.items():
                if key in ("kind", "split", "step", "epoch") or not isinstance(value, (int, float)):
                    continue
                out["eval"].setdefault(f"{r.get('split', 'val')} {key}", []).append((int(r["step"]), float(value)))
    if not out["train"]:
        raise ValueError(f"{job_dir}: metrics.jsonl has no training records")
    return out


def pick_examples(results: list[dict], records: dict, per_type: int = 2, seed: int = 0) -> list[dict]:
    """A few held-out answers of every question type, a wrong one first where there is one."""
    import random

    rng = random.Random(seed)
    by_type: dict[str, list[dict]] = {}
    for r in results:
        by_type.setdefault(r.get("question_type") or "?", []).append(r)
    picked = []
    for qt in sorted(by_type):
        rows = by_type[qt][:]
        rng.shuffle(rows)
        wrong = [r for r in rows if not r["exact"]][:1]
        picked += (wrong + [r for r in rows if r not in wrong])[:per_type]
    return [dict(r, record=records.get(r["instance_id"], {})) for r in picked]


def write_report_png(path: str, jobs: dict[str, str], results: list[dict], records: dict, data_dir: str,
                     per_type_acc: dict | None = None, eval_metrics: dict[str, str] | None = None) -> str:
    """Draw the report. ``jobs``: {stage name: job folder}; ``results``: the evaluation's per-answer
    records (instance_id, question_type, prediction, reference, exact); ``records``: {id: data record};
    ``eval_metrics``: {stage name: validation metric to draw} (default: every validation metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    examples = pick_examples(results, records)
    n_cols = 6
    n_rows = -(-len(examples) // n_cols)
    fig = plt.figure(figsize=(3.0 * n_cols, 3.2 + 2.9 * n_rows), constrained_layout=True)
    grid = fig.add_gridspec(1 + n_rows, n_cols, height_ratios=[1.15] + [1.0] * n_rows)
    # curves: one panel per stage, training loss (left axis) and its validation metric (right axis)
    span = max(1, n_cols // max(1, len(jobs)))
    for k, (name, job) in enumerate(jobs.items()):
        ax = fig.add_subplot(grid[0, k * span:(k + 1) * span])
        c = curves(job)
        steps, losses = zip(*c["train"])
        ax.plot(steps, losses, color="tab:blue", label="train loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss", color="tab:blue")
        ax.set_title(f"{name} ({os.path.basename(job)})")
        want = (eval_metrics or {}).get(name)
        shown = {m: v for m, v in c["eval"].items() if want is None or m.endswith(" " + want)}
        if shown:
            ax2 = ax.twinx()
            for (metric, points), colour in zip(sorted(shown.items()), ("tab:orange", "tab:green", "tab:red")):
                xs, ys = zip(*points)
                ax2.plot(xs, ys, "o-", color=colour, label=metric)
            ax2.set_ylabel("validation", color="tab:orange")
            ax2.legend(loc="center right", fontsize=8)
        ax.legend(loc="upper right", fontsize=8)
    if per_type_acc:
        fig.suptitle("held-out exact match: " + ", ".join(f"{t} {a:.1f}%" for t, a in sorted(per_type_acc.items())),
                     fontsize=12)
    for i, ex in enumerate(examples):
        ax = fig.add_subplot(grid[1 + i // n_cols, i % n_cols])
        rec = ex["record"]
        paths = rec.get("image") or []
        paths = paths if isinstance(paths, list) else [paths]
        imgs = [Image.open(os.path.join(data_dir, "images", p)).convert("RGB") for p in paths]
        if imgs:
            sheet = Image.new("RGB", (sum(im.width for im in imgs) + 4 * (len(imgs) - 1), imgs[0].height), (255,) * 3)
            x = 0
            for im in imgs:
                sheet.paste(im, (x, 0))
                x += im.width + 4
            ax.imshow(sheet, interpolation="nearest")
        question = rec.get("instruction", "?")
        question = (question[-1] if isinstance(question, list) else question).replace("<ImageHere>", "").strip()
        colour = "green" if ex["exact"] else "red"
        ax.set_title("\n".join(textwrap.wrap(f"[{ex.get('question_type')}] {question}", 34)), fontsize=8)
        ax.set_xlabel("\n".join(textwrap.wrap(f"model: {ex['prediction']}", 34) +
                                textwrap.wrap(f"expected: {ex['reference']}", 34)), fontsize=8, color=colour)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
