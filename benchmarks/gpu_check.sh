#!/usr/bin/env bash
# GPU evidence (issue 4), for the device machine: CUDA tests, then the RISE benchmark. About 3 minutes.
# Run from the repo root with the pure-Python wheels the GPU image lacks in .whl/ (benchmarks/README.md says how to make them).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_masks.py tests/test_rise.py 2>&1 | tee "$OUT/tests.txt"
python3 benchmarks/rise_speed.py --device cuda --masks 20000 2>&1 | tee "$OUT/bench.txt"
python3 benchmarks/rise_speed.py --device cuda --masks 20000 --batch-size 2048 --scenes 0 2>&1 | tee "$OUT/bench_b2048.txt"
