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


def test_predict_explain_script_times_the_pages_work_and_prints_its_lines(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "resnet50-cxr3").symlink_to(REPO / "trained" / "resnet50-cxr3")
    result = subprocess.run(
        [sys.executable, "benchmarks/predict_explain.py", "--runs-dir", str(runs),
         "--repeats", "1", "--smooth-samples", "5"],
        capture_output=True, text=True, cwd=REPO, timeout=900, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert "trunks: 1 for 1 runs; trunk passes per image: 1" in lines
    names = [line.split(":")[0] for line in lines[-4:]]
    assert names == ["warm_up_all_runs_s", "redraw_all_runs_s", "predict_gradcam_one_run_s",
                     "predict_gradcam_all_runs_s"]
    assert all(re.fullmatch(r"[a-z_]+: \d+\.\d+", line) for line in lines[-4:]), lines[-4:]


def test_progress_estimate_script_runs_a_real_job_and_prints_its_errors(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/progress_estimate.py", "--data", str(FIXTURES / "tiny_cxr"),
         "--image-size", "32", "--epochs", "2", "--jobs", "1", "--val-fraction", "0.3",
         "--test-fraction", "0.25"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "XRCOMPARE_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"job1_seconds: \d+\.\d", lines[-3]), lines[-3]
    assert re.fullmatch(r"job1_error_at_10s: (-?\d+\.\d|None)", lines[-2]), lines[-2]
    assert lines[-1].startswith("job1_max_abs_error_after_25pct_s: ")
    assert '"zero_left_shown": false' in result.stdout
