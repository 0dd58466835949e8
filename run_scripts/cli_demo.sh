#!/usr/bin/env bash
# Chat in the terminal with the tiny MiniGPT4-Qwen demo model about the shapes demo images.
#
#   bash run_scripts/cli_demo.sh                  # the demo's trained model (run_scripts/demo.sh ->
#                                                 # output/demo/stage2), else the newest tiny job, else random init
#   bash run_scripts/cli_demo.sh TARGET [ARGS...] # TARGET: a job folder output/<run>/<job_id>, an export
#                                                 # folder, or a model/run YAML; ARGS go to lavis_lite.chat
#                                                 # (e.g. --checkpoint PATH --device cuda --conf max_new_tokens=32)
#
# The demo images (coloured shapes) are written once to $LAVIS_LITE_DEMO_DIR (default
# <cache_root>/demo, as the demo configs expect) and the first test image is loaded for you.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False

TARGET="${1:-}"
[ $# -gt 0 ] && shift
if [ -z "$TARGET" ]; then
  # run_scripts/demo.sh's stage 2 (output/demo/stage2), else the newest job folder
  # (output/<run>/<job_id>) of a tiny MiniGPT4-Qwen that holds a finished checkpoint
  for cfg in output/demo/stage2/config.yaml $(ls -t output/*/*/config.yaml 2>/dev/null || true); do
    job="$(dirname "$cfg")"
    if [ -f "$cfg" ] && grep -q "arch: minigpt4qwen" "$cfg" && grep -q "model_type: tiny" "$cfg" \
        && ls -d "$job"/checkpoint_*/COMPLETE >/dev/null 2>&1; then
      TARGET="$job"; break
    fi
  done
fi
if [ -z "$TARGET" ]; then
  TARGET="configs/models/minigpt4qwen/minigpt4qwen_tiny.yaml"
  echo "[cli_demo] no trained tiny job under output/: chatting with the RANDOM-INIT tiny model (answers are noise)."
  echo "[cli_demo] train one first (bash run_scripts/demo.sh), or pass a job folder / export folder."
fi
echo "[cli_demo] model: $TARGET"

DEMO_DIR="${LAVIS_LITE_DEMO_DIR:-$("$PY" -c 'import lavis_lite, os; from lavis_lite.common.registry import registry; print(os.path.join(registry.get_path("cache_root"), "demo"))')}"
if [ ! -d "$DEMO_DIR/images" ]; then
  echo "[cli_demo] writing demo images to $DEMO_DIR"
  "$PY" -m lavis_lite.datasets.demo --out "$DEMO_DIR" >/dev/null
fi
IMAGE="$(ls "$DEMO_DIR"/images/test/* 2>/dev/null | head -1 || true)"
IMAGE_ARGS=()
if [ -n "$IMAGE" ]; then
  IMAGE_ARGS=(--image "$IMAGE")
  echo "[cli_demo] more demo images: $DEMO_DIR/images/test/ (add one with :image PATH)"
fi
exec "$PY" -m lavis_lite.chat --cfg-path "$TARGET" "${IMAGE_ARGS[@]}" "$@"
