#!/usr/bin/env bash
# LoRA instruction tuning: bash run_scripts/minigpt4qwen/train_lora.sh [NGPUS=8] [args...]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NGPUS="${1:-8}"; [ $# -gt 0 ] && shift
exec bash "$HERE/../train.sh" projects/minigpt4qwen/lora_qwen7b_chat.yaml "$NGPUS" "$@"
