#!/usr/bin/env bash
# The CPU demo, end to end (README main job): generate the shapes data if missing, stage 1 (BLIP-2
# Q-Former pretraining, projects/minigpt4qwen/demo_stage1.yaml), stage 2 (MiniGPT4-Qwen instruction
# tuning with deepspeed_runner, projects/minigpt4qwen/demo.yaml), then evaluation on the held-out test
# split: accuracy per question type, a few questions with the model's answers, each stage's time.
# Outputs go to output/demo/{stage1,stage2,eval} (or $DEMO_OUT; an earlier run moves aside to <job>.replaced-<time>). Data: $LAVIS_LITE_CACHE_ROOT/demo
# (default ~/.cache/lavis_lite/demo). Extra arguments are passed to both train.py calls' --options.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash run_scripts/setup_env.sh
PY="$ROOT/.venv/bin/python"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
CACHE="${LAVIS_LITE_CACHE_ROOT:-$HOME/.cache/lavis_lite}"
DATA="$CACHE/demo"
OUT="${DEMO_OUT:-output/demo}"   # DEMO_OUT=DIR puts the outputs elsewhere
declare -A SECONDS_OF

stage() {  # stage NAME COMMAND...: run, time, fail loudly
  local name="$1"; shift
  local t0=$SECONDS
  echo "[demo] === $name ==="
  "$@"
  SECONDS_OF[$name]=$((SECONDS - t0))
  echo "[demo] $name took ${SECONDS_OF[$name]}s"
}

if [ ! -f "$DATA/instruction/test.json" ] || [ ! -f "$DATA/caption/train.json" ]; then
  stage data "$PY" -m lavis_lite.datasets.demo --out "$DATA"
else
  echo "[demo] using the demo data in $DATA"; SECONDS_OF[data]=0
fi
rm -rf "$OUT/eval"
OPTS=(run.output_dir="$OUT" run.progress_bar=False)
# The demo YAMLs fix their job ids: --overwrite moves an earlier demo run aside (<job>.replaced-<time>).
stage stage1 "$PY" train.py --cfg-path projects/minigpt4qwen/demo_stage1.yaml --overwrite --options "${OPTS[@]}" "$@"
stage stage2 "$PY" train.py --cfg-path projects/minigpt4qwen/demo.yaml --overwrite \
  --options "${OPTS[@]}" model.q_former_model="$OUT/stage1/checkpoint_best" "$@"
"$PY" -m lavis_lite.tools.export_checkpoint "$OUT/stage2" "$OUT/stage2/stage2_trainable.safetensors"
stage eval "$PY" evaluate.py --cfg-path projects/minigpt4qwen/eval_demo_instruction.yaml --job-id eval \
  --options run.output_dir="$OUT" model.q_former_model="$OUT/stage1/checkpoint_best" \
  model.checkpoint="$OUT/stage2/stage2_trainable.safetensors" > "$OUT/eval_metrics.log"

TIMES=""
for name in data stage1 stage2 eval; do TIMES="$TIMES $name=${SECONDS_OF[$name]:-0}"; done
exec "$PY" run_scripts/demo_report.py --result-dir "$OUT/eval/result" --data "$DATA" --times $TIMES
