"""Forward + backward time of one training step of a run whose LLM trains, with and without the shared
prefix (``model.share_prefix``) and the oneDNN Linear layers (``model.cpu_onednn_linear``).

Builds the job exactly as train.py does (model, datasets, feature cache), takes the first ``--steps``
training batches and times ``loss.backward()`` of each variant on the same model and the same batches,
variants interleaved, ``--repeats`` rounds, CPU time of this process (``time.process_time``); prints
medians per step and, over every batch, each variant's largest loss and (per-tensor relative) gradient
difference from the first variant.

    OMP_NUM_THREADS=1 LAVIS_LITE_CACHE_ROOT=... python benchmarks/bench_trained_llm_step.py \\
        --cfg-path projects/minigpt4qwen/demo.yaml --options model.q_former_model=.../checkpoint_best
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time

import torch

VARIANTS = {"plain": (False, False), "prefix": (True, False), "onednn": (False, True), "both": (True, True)}


def _step(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(dict(batch))["loss"]
    loss.backward()
    return loss.detach()


def _set(model, share_prefix: bool, onednn: bool):
    from lavis_lite.models.onednn_linear import use_onednn_linear
    model.share_prefix = share_prefix
    use_onednn_linear(model, onednn)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg-path", required=True)
    parser.add_argument("--options", nargs="*", default=[])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import lavis_lite  # noqa: F401
    from lavis_lite.runners.launch import build_job
    from lavis_lite.tasks.base_task import move_to_device

    out = tempfile.mkdtemp(prefix="bench_trained_llm_")
    _, _, runner = build_job(["--cfg-path", args.cfg_path, "--overwrite", "--options", f"run.output_dir={out}",
                              *args.options])
    model = runner.unwrapped_model if hasattr(runner, "unwrapped_model") else runner.model
    model.train()
    stream = iter(runner.train_stream)
    batches = [move_to_device(b, torch.device("cpu")) for b in itertools.islice(stream, args.steps)]
    tokens = [int(b["attention_mask"].numel()) for b in batches]
    names = args.variants.split(",")
    times = {n: [] for n in names}
    ref, report = None, {}
    for n in names:  # warm-up (oneDNN builds a kernel per shape) and the equality check on every batch
        _set(model, *VARIANTS[n])
        results = []
        for b in batches:
            loss = _step(model, b)
            results.append((loss, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
        ref = ref or results
        loss_diff = max(abs(loss.item() - r_loss.item()) for (loss, _), (r_loss, _) in zip(results, ref))
        grad_diff = max(((grads[k] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item()
                        for (_, grads), (_, r_grads) in zip(results, ref) for k, g in r_grads.items())
        same = all(set(grads) == set(r_grads) for (_, grads), (_, r_grads) in zip(results, ref))
        report[n] = (loss_diff, grad_diff, same)
    for _ in range(args.repeats):
        for n in names:
            _set(model, *VARIANTS[n])
            start = time.process_time()
            for b in batches:
                _step(model, b)
            times[n].append((time.process_time() - start) / len(batches) * 1e3)
    base = statistics.median(times[names[0]])
    print(f"{len(batches)} batches, {statistics.mean(tokens):.0f} padded LLM tokens per batch (mean), "
          f"{args.repeats} rounds, CPU ms per step (median), torch threads {torch.get_num_threads()}")
    for n in names:
        med = statistics.median(times[n])
        loss_diff, grad_diff, same_params = report[n]
        print(f"  {n:8s} {med:7.2f} ms  x{base / med:4.2f}  |loss diff| {loss_diff:.1e}  "
              f"max rel grad diff {grad_diff:.1e}  same params {same_params}  (rounds: "
              + " ".join(f"{t:.1f}" for t in times[n]) + ")")


if __name__ == "__main__":
    sys.exit(main())
