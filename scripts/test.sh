#!/usr/bin/env bash
# The test suite, then the accuracy regression gate. Installs what it needs into .venv
# (Python 3.11, torch 2.13.0 CPU). Arguments go to pytest; GATE=0 skips the gate.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[cpu,dev]'
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
if [ "${GATE:-1}" != "0" ]; then
  bash benchmarks/accuracy_gate.sh
fi
