#!/usr/bin/env bash
# COCO captioning eval of BLIP base: bash run_scripts/blip/eval/eval_coco_cap.sh [NGPUS=8] [evaluate.py args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
NGPUS="${1:-8}"; [ $# -gt 0 ] && shift
PY="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"
if [ "$NGPUS" = "1" ]; then exec "$PY" evaluate.py --cfg-path projects/blip/eval/caption_coco_eval.yaml "$@"; fi
exec "$PY" -m torch.distributed.run --nproc_per_node="$NGPUS" evaluate.py --cfg-path projects/blip/eval/caption_coco_eval.yaml "$@"
