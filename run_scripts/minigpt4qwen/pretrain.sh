#!/usr/bin/env bash
# Stage-1 projection pretraining on LLaVA-558k pairs: bash run_scripts/minigpt4qwen/pretrain.sh [NGPUS=8] [args...]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NGPUS="${1:-8}"; [ $# -gt 0 ] && shift
exec bash "$HERE/../train.sh" projects/minigpt4qwen/pretrain_llava558k.yaml "$NGPUS" "$@"
