#!/usr/bin/env bash
# DeepSpeed's own launcher over ssh: run once, on the first node, with a hostfile naming every node.
#
#   bash run_scripts/multinode/deepspeed.sh run_scripts/multinode/hostfile.example \
#     train.py --cfg-path projects/minigpt4qwen/<run>.yaml [--options ...]
#
# The hostfile lists "hostname slots=N" per node (see hostfile.example). DeepSpeed's launcher reaches every
# node by passwordless ssh (pdsh when installed) and starts N processes per node there, in the same
# directory, with MASTER_ADDR = the first host. Each node needs this checkout at the same path and the same
# .venv. MASTER_PORT (default 29500) must be open between the nodes. Without ssh, run it on every node with
# DS_LAUNCHER_ARGS="--no_ssh --node_rank=R --master_addr=FIRST_NODE" (DeepSpeed's --no_ssh mode). train.py reads the env:// variables
# that the launcher exports; the run YAML's runner may be deepspeed_runner or runner_base.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}"
[ "$#" -ge 2 ] || { echo "usage: $0 HOSTFILE train.py --cfg-path RUN.yaml [...]" >&2; exit 2; }
HOSTFILE="$1"; shift
[ -f "$HOSTFILE" ] || { echo "hostfile $HOSTFILE does not exist" >&2; exit 2; }
cd "$ROOT"
# --no_local_rank: train.py takes LOCAL_RANK from the environment, not as an argument
# shellcheck disable=SC2086
exec "$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --master_port "${MASTER_PORT:-29500}" \
  --no_local_rank ${DS_LAUNCHER_ARGS:-} "$@"
