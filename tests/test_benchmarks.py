"""The benchmark scripts run and print their result lines (speed targets are not asserted
here: they are measured by running the scripts, see README)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
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
    assert "neighbour indexes: 1 of 1 runs" in lines
    names = [line.split(":")[0] for line in lines[-5:]]
    assert names == ["warm_up_all_runs_s", "redraw_all_runs_s", "predict_gradcam_one_run_s",
                     "predict_gradcam_all_runs_s", "neighbours_ood_extra_s"]
    assert all(re.fullmatch(r"[a-z_]+: \d+\.\d+", line) for line in lines[-5:]), lines[-5:]


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


def test_extract_throughput_measures_reference_engine_and_pipeline_side_by_side(tmp_path):
    results = tmp_path / "extract_throughput.json"
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- engine-benchmark:start -->\nold\n"
                      "<!-- engine-benchmark:end -->\nafter\n")
    result = subprocess.run(
        [sys.executable, "benchmarks/extract_throughput.py", "--backbones", "resnet50",
         "--images", "8", "--batch-size", "4", "--image-size", "32", "--repeats", "1",
         "--data", str(FIXTURES / "tiny_cxr"), "--json", str(results), "--readme", str(readme)],
        capture_output=True, text=True, cwd=REPO, timeout=600)  # session cache: converted once
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"engine_vs_reference: \d+\.\d{3}", lines[-1]), lines[-1]
    assert re.fullmatch(r"pipeline_vs_engine: \d+\.\d{3}", lines[-2]), lines[-2]
    line = next(line for line in lines if line.startswith("ResNet50 32px:"))
    assert re.match(r"ResNet50 32px: reference Keras fp32 [\d.]+ img/s \| engine \S+ \S+ "
                    r"[\d.]+ img/s \([\d.]+x\) \| pipeline [\d.]+ img/s", line), line
    settings = next(line for line in lines if "engine settings, bare forward" in line)
    assert "keras-bf16" in settings and "latency-bf16" in settings  # the default variants
    saved = json.loads(results.read_text())
    assert {"machine", "measured", "load", "backbones"} <= set(saved)
    row = saved["backbones"]["ResNet50"]
    assert row["image_size"] == 32 and row["precision"] in ("bf16", "fp32")
    assert set(row["other_settings_images_per_s"]) >= {"keras-bf16", "latency-bf16"}
    for key in ("reference_images_per_s", "engine_images_per_s", "pipeline_images_per_s"):
        assert row[key] > 0
    assert float(lines[-1].split()[-1]) == pytest.approx(row["engine_vs_reference"], abs=2e-3)
    assert row["engine_vs_reference"] == pytest.approx(  # one repeat: the ratio of the rates
        row["engine_images_per_s"] / row["reference_images_per_s"], rel=0.02)
    # the bound: every core busy with the engine, plus each image's preparation on one core
    assert row["prepare_ms_per_image"] > 0 and 0 < row["pipeline_bound_vs_engine"] < 1
    assert row["pipeline_bound_vs_engine"] == pytest.approx(1 / (
        1 + row["prepare_ms_per_image"] / 1000 * row["engine_images_per_s"] / row["cores"]),
        rel=0.01)
    assert "ms of one core, so at most" in line
    # CPU time per image: the pipeline does the engine's work and more (decode, resize)
    assert 0 < row["engine_cpu_ms_per_image"] < row["pipeline_cpu_ms_per_image"]
    assert f"pipeline {row['pipeline_cpu_ms_per_image']:.2f} ms" in line
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    assert "| ResNet50 | 32 px |" in text and "engine_vs_reference" in text


def test_batch_predict_script_times_a_batch_through_the_runs_and_prints_its_rate(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "resnet50-cxr3").symlink_to(REPO / "trained" / "resnet50-cxr3")
    result = subprocess.run(
        [sys.executable, "benchmarks/batch_predict.py", "--runs-dir", str(runs), "--images",
         "4", "--chunk", "3", "--single", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=600, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert "runs: 1 (1 trunks)" in lines[1]
    assert lines[2].startswith("batch: 4 images from kaggle_test (0 unreadable, 0 rows with "
                               "a problem), chunk 3:")
    assert lines[2].endswith("for 4 rows")
    assert re.fullmatch(r"batch_images_per_s: \d+\.\d\d", lines[-1]) and \
        float(lines[-1].split()[-1]) > 0
