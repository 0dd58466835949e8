#!/usr/bin/env bash
# Full-LLM SFT with ZeRO-3: bash run_scripts/minigpt4qwen/sft_full_zero3.sh [NGPUS=8] [args...]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NGPUS="${1:-8}"; [ $# -gt 0 ] && shift
exec bash "$HERE/../train.sh" projects/minigpt4qwen/sft_full_qwen7b_chat_zero3.yaml "$NGPUS" "$@"
