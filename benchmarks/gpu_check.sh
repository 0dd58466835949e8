#!/usr/bin/env bash
# The GPU check of issue 22 in one command: CUDA-only tests, then bench_train.py at full size for
# published / best_uncached / best_cached / LoRA, all in one JSON file (path printed at the end).
#   bash benchmarks/gpu_check.sh [--out PATH]     # on one GPU (~10 minutes on an H100)
#   bash benchmarks/gpu_check.sh --cpu-smoke      # no GPU: the same plumbing at tiny size on the CPU
# PYTHON picks the interpreter (default: the repo's .venv, else python3). Exit status non-zero on any
# failed test or benchmark error.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
