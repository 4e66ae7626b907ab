"""The benchmark scripts run and print their result lines (speed targets are not asserted
here: they are measured by running the scripts, see README)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import FIXTURES, REPO


def test_gpu_throughput_script_runs_under_jax_and_prints_per_backbone_lines(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_throughput.py", "--backbones", "resnet50",
         "--images", "16", "--batch-size", "8", "--image-size", "32", "--bare-repeats", "1",
         "--workers", "2", "--data", str(FIXTURES / "tiny_cxr")],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "KERAS_BACKEND": "jax", "XRCOMPARE_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"resnet50: pipeline \d+ img/s, bare \d+ img/s \(\d+\.\d\d of bare, 32px\)",
                        last), last
    assert "(jax)" in result.stdout
