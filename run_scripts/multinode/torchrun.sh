#!/usr/bin/env bash
# One node's share of a multi-node job: run this on every node with the same RDZV_ENDPOINT and RDZV_ID.
#
#   NNODES=2 NODE_RANK=0 NPROC_PER_NODE=8 RDZV_ENDPOINT=node0.example:29500 \
#     bash run_scripts/multinode/torchrun.sh train.py --cfg-path projects/minigpt4qwen/<run>.yaml [--options ...]
#
# NNODES           number of nodes (default 1)
# NODE_RANK        this node's index 0..NNODES-1 (default 0); with RDZV_BACKEND=static it fixes the ranks
#                  (node r gets global ranks r*NPROC_PER_NODE ...), with c10d ranks follow arrival order
# NPROC_PER_NODE   processes (GPUs) on this node (default: the GPUs torch sees, else 1)
# RDZV_ENDPOINT    host:port that every node reaches (default 127.0.0.1:29500); with c10d the node whose
#                  address it is hosts the rendezvous store, so start that node first
# RDZV_BACKEND     c10d (default, tolerates nodes starting in any order) or static
# RDZV_ID          job id shared by the nodes (default lavis_lite)
# PYTHON           interpreter (default: .venv/bin/python of this checkout, else python3)
# Everything after the variables is passed to torchrun: the script (train.py / evaluate.py) and its arguments.
# The DeepSpeed runner needs nothing else: it joins the process group torchrun sets up (env://).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}"
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE="$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')"
fi
[ "$#" -gt 0 ] || { echo "usage: [NNODES=.. NODE_RANK=.. RDZV_ENDPOINT=host:port] $0 train.py --cfg-path RUN.yaml" >&2; exit 2; }
cd "$ROOT"
exec "$PYTHON" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --nproc_per_node="$NPROC_PER_NODE" \
  --rdzv-backend="${RDZV_BACKEND:-c10d}" --rdzv-endpoint="${RDZV_ENDPOINT:-127.0.0.1:29500}" \
  --rdzv-id="${RDZV_ID:-lavis_lite}" --max-restarts=0 "$@"
