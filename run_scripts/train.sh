#!/usr/bin/env bash
# Generic launcher: bash run_scripts/train.sh CONFIG.yaml [NPROC_PER_NODE] [train.py args...]
# One process: plain python. Several: torchrun (env://). Multi-node: set NNODES, NODE_RANK,
# MASTER_ADDR and MASTER_PORT on every node.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CFG="${1:?usage: train.sh CONFIG.yaml [NPROC_PER_NODE] [train.py args...]}"; shift
NPROC="${1:-1}"; [ $# -gt 0 ] && shift
PY="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"
if [ "$NPROC" = "1" ] && [ "${NNODES:-1}" = "1" ]; then
  exec "$PY" train.py --cfg-path "$CFG" "$@"
fi
exec "$PY" -m torch.distributed.run --nproc_per_node="$NPROC" --nnodes="${NNODES:-1}" \
  --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
  train.py --cfg-path "$CFG" "$@"
