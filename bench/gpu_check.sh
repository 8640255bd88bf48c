#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): a few minutes on a machine with CUDA GPUs; skips cleanly
# (exit 0) on a machine without. PYTHON picks the interpreter; arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU on this machine: skipped"
    exit 0
fi
exec timeout 480 "$PY" bench/gpu_check.py "$@"
