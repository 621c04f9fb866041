#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtual environment in .venv with everything installed.
# torch==2.13.0 goes first: on CPU machines it is the CPU wheel, and the project's looser
# torch requirement is then already satisfied (no multi-GB CUDA build is pulled).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e '.[dev]'
