#!/usr/bin/env bash
# One command on a machine with one CUDA GPU and this repository: installs what it needs (scripts/setup.sh:
# .venv with torch 2.13 and the package), then measures logits vs transformers (fp32, bf16), forward and
# training tokens/s and MFU at the phi-2 config (bf16, torch.compile off/on), the cost of recording during
# training, `workbench cache` vs forward-only, and the circuit EAP time over every edge; writes gpu_check.json
# and gpu_check.md into --out.
#
#   bash bench/gpu_check.sh [--out DIR]     # on the GPU machine (sections that would start past 450 s are skipped)
#   bash bench/gpu_check.sh --dry-run       # the same code on a tiny config on CPU (seconds; in the tests)
#
# PYTHON=/path/to/python skips the install and uses that interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && DRY=1; done
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  if [ "$DRY" = 0 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "error: nvidia-smi not found: this check needs a CUDA GPU (try --dry-run on CPU)" >&2
    exit 1
  fi
  bash scripts/setup.sh
  PY=.venv/bin/python
fi
[ "$DRY" = 0 ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" bench/gpu_check.py "$@"
