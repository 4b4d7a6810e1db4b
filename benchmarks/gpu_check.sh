#!/usr/bin/env bash
# GPU evidence (issue 4), for the device machine: CUDA tests, then the RISE benchmark. About 3 minutes.
# Run from the repo root with the pure-Python wheels the GPU image lacks in .whl/ (benchmarks/README.md says how to make them).
# PYTHON: the interpreter to use (default python3 from PATH; the tests pass their own).
# --dry-run: the same steps on this machine's CPU with tiny settings (no wheels, no nvidia-smi), to check the script.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False
PYTHON=${PYTHON:-python3}
if [ "${1:-}" = "--dry-run" ]; then
  DEVICE=cpu SMALL="--architecture tiny --masks 64 --paper-masks 4 --reference-masks 200 --eval-masks 128"
  SCENES="--scenes 1" TESTS="tests/test_cuda.py tests/test_masks.py"
  echo "dry run on the CPU" | tee "$OUT/device.txt"
else
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  DEVICE=cuda SMALL="--masks 20000" SCENES="" TESTS="tests/test_cuda.py tests/test_masks.py tests/test_rise.py"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
fi
"$PYTHON" -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tee "$OUT/tests.txt"
"$PYTHON" benchmarks/rise_speed.py --device $DEVICE $SMALL $SCENES 2>&1 | tee "$OUT/bench.txt"
"$PYTHON" benchmarks/rise_speed.py --device $DEVICE $SMALL --batch-size 2048 --scenes 0 2>&1 | tee "$OUT/bench_b2048.txt"
grep -q "masks auto, regression" "$OUT/bench.txt" && grep -q "speed-up" "$OUT/bench_b2048.txt"
