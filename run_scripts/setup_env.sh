#!/usr/bin/env bash
# Create .venv at the repository root when missing and (re)install the project when
# pyproject.toml changed. Idempotent: a second run only compares a stamp.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
# torch/torchvision are pinned to the releases whose wheels this environment carries.
TORCH_SPEC="${LAVIS_LITE_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.lavis_lite_installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha1sum | cut -c1-40) $TORCH_SPEC"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "[setup] installing lavis_lite and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $TORCH_SPEC
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
  echo "$WANT" > "$STAMP"
fi
