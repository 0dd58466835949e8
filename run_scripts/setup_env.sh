#!/usr/bin/env bash
# Create .venv at the repository root when missing and (re)install the project when
# pyproject.toml or the pinned versions changed. Idempotent: a second run only compares a stamp.
# requirements/constraints.txt pins every package to the version the tests passed with (regenerate it
# with requirements/make_constraints.py); LAVIS_LITE_CONSTRAINTS=none installs from pyproject's ranges.
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
CONSTRAINTS="${LAVIS_LITE_CONSTRAINTS:-$ROOT/requirements/constraints.txt}"
PIN=() PINNED=/dev/null
if [ "$CONSTRAINTS" != "none" ]; then
  [ -f "$CONSTRAINTS" ] || { echo "[setup] constraints file $CONSTRAINTS is missing" >&2; exit 1; }
  PIN=(-c "$CONSTRAINTS") PINNED="$CONSTRAINTS"
fi
STAMP="$VENV/.lavis_lite_installed"
WANT="$(cat "$ROOT/pyproject.toml" "$PINNED" | sha1sum | cut -c1-40) $TORCH_SPEC"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "[setup] installing lavis_lite and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q "${PIN[@]}" $TORCH_SPEC
  "$VENV/bin/python" -m pip install -q "${PIN[@]}" -e "$ROOT[dev]"
  echo "$WANT" > "$STAMP"
fi
