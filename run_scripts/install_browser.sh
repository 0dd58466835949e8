#!/usr/bin/env bash
# Install what the browser test (tests/test_webui_browser.py) needs: Debian's Chromium and
# its matching chromedriver (apt), plus Gradio and Selenium in .venv when it exists (they are in
# the dev extra too). Idempotent: each part is installed only when missing. Needs root or sudo
# for apt. CI: run it before run_scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "[install_browser] not root and no sudo: cannot apt-get install chromium" >&2; exit 1
    fi
  fi
  echo "[install_browser] installing chromium + chromium-driver with apt"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
else
  echo "[install_browser] chromium and chromedriver present: $(chromium --version 2>/dev/null || true)"
fi

if [ ! -x "$PY" ]; then
  # the dev extra of pyproject.toml holds selenium and gradio: run_scripts/setup_env.sh installs them
  echo "[install_browser] no $PY yet: selenium and gradio come with run_scripts/setup_env.sh"
elif ! "$PY" -c "import selenium, gradio" >/dev/null 2>&1; then
  echo "[install_browser] installing selenium and gradio into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install -q "selenium>=4.10" "gradio>=5"
else
  echo "[install_browser] selenium and gradio present"
fi
