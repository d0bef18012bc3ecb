#!/usr/bin/env bash
# Run every benchmark once, one after the other (never two at a time: they would slow each
# other down), logging to benchmarks/.cache/logs/. About 45-60 minutes on 2 idle cores.
# training.py goes first: it saves the model the others use (benchmarks/.cache/model.pt).
# Usage: benchmarks/run_all.sh [python]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
LOGS=benchmarks/.cache/logs
mkdir -p "$LOGS"
for b in training flops inference scaling postprocess; do
  echo "== benchmarks/$b.py" >&2
  nice -n 10 "$PY" "benchmarks/$b.py" 2>&1 | tee "$LOGS/$b.log"
done
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "== benchmarks/gpu.py (a CUDA GPU is here)" >&2
  "$PY" benchmarks/gpu.py --big 2>&1 | tee "$LOGS/gpu.log"
fi
