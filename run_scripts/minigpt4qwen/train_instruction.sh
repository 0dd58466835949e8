#!/usr/bin/env bash
# Instruction tuning of MiniGPT4-Qwen (Qwen-7B-Chat, only llm_proj trains, bf16).
#   bash run_scripts/minigpt4qwen/train_instruction.sh [NGPUS=8] [ZERO_STAGE=2: 0|1|2] [train.py args...]
# Set the paths marked SET in projects/minigpt4qwen/instruction_qwen7b_chat.yaml first.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NGPUS="${1:-8}"; ZERO="${2:-2}"; shift $(( $# < 2 ? $# : 2 ))
case "$ZERO" in 0|1|2) ;; *) echo "ZERO_STAGE must be 0, 1 or 2 (got $ZERO)" >&2; exit 2;; esac
exec bash "$HERE/../train.sh" projects/minigpt4qwen/instruction_qwen7b_chat.yaml "$NGPUS" \
  --options run.deepspeed_config.zero_optimization.stage="$ZERO" \
  run.output_dir="output/minigpt4qwen/instruction_qwen7b_chat_zero$ZERO" "$@"
