#!/usr/bin/env bash
# Install what the pycocoevalcap parity tests (tests/test_caption_metric.py: METEOR and the PTB
# tokenizer run on Java) need: Debian's headless Java runtime. Idempotent; needs root or sudo for apt.
# CI: .ci/run runs it before run_scripts/test.sh and fails when it cannot install.
set -euo pipefail
if command -v java >/dev/null 2>&1; then
  echo "[install_java] java present: $(java -version 2>&1 | head -1)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "[install_java] not root and no sudo: cannot apt-get install default-jre-headless" >&2; exit 1
  fi
fi
echo "[install_java] installing default-jre-headless with apt"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends default-jre-headless
command -v java >/dev/null 2>&1 || { echo "[install_java] java still missing after apt-get" >&2; exit 1; }
