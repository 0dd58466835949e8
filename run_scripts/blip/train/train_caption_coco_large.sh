#!/usr/bin/env bash
# Fine-tune BLIP large for COCO captioning: bash run_scripts/blip/train/train_caption_coco_large.sh [NGPUS=8] [args...]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NGPUS="${1:-8}"; [ $# -gt 0 ] && shift
exec bash "$HERE/../../train.sh" projects/blip/train/caption_coco_large_ft.yaml "$NGPUS" "$@"
