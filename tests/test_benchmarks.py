"""The GPU check script must work the day a GPU is lent: its steps, dry-run on the CPU with tiny settings."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    bench = (tmp_path / "bench.txt").read_text()
    for line in ("cocoa_clip RISE (tiny)", "masks to r>=0.97", "iid         regression", "antithetic  paper",
                 "stability estimate minus real r", "masks auto, regression"):
        assert line in bench, bench
    assert "passed" in (tmp_path / "tests.txt").read_text() and "Traceback" not in bench
