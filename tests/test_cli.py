"""The command line under bad input: one line and a non-zero exit, checked before any work;
machine-readable output stays valid JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import FIXTURES, REPO

SHIPPED = REPO / "trained"
TINY = FIXTURES / "tiny_cxr"


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "xrcompare", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)


def one_error_line(result, code: int = 2) -> str:
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert result.stderr.rstrip().endswith(lines[0])  # the last thing said
    return lines[0]


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_runs_json_has_null_not_nan_for_a_run_without_held_out_folder(tmp_path):
    folder = tmp_path / "no-heldout"
    shutil.copytree(SHIPPED / "resnet50-seed001-blog", folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["heldout"] = {}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    result = cli("runs", "--runs-dir", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    assert "NaN" not in result.stdout
    row = strict_json(result.stdout)["runs"][0]
    assert row["kaggle_accuracy"] is None and row["kaggle_normal_non_covid_pct"] is None
    assert isinstance(row["accuracy"], float) and isinstance(row["image_size"], int)


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_predict_refuses_what_is_not_a_regular_file_without_reading_it(tmp_path, kind):
    target = {"device": "/dev/zero", "folder": str(tmp_path)}.get(kind)
    if kind == "fifo":
        target = tmp_path / "pipe.png"
        os.mkfifo(target)
    line = one_error_line(cli("predict", SHIPPED / "resnet50-cxr3", target, timeout=90))
    assert line.endswith("is not a regular file (a folder, device or pipe); give an image file")


def test_train_refuses_a_runs_dir_that_is_a_file_before_any_work(tmp_path):
    in_the_way = tmp_path / "runs"
    in_the_way.write_text("not a folder")
    line = one_error_line(cli("train", "--data", TINY, "--backbone", "resnet50", "--runs-dir",
                              in_the_way))
    assert line == f"error: the runs folder {in_the_way} is a file, not a folder; choose a " \
                   "folder with --runs-dir"


def test_train_refuses_a_single_class_before_any_work(tmp_path):
    shutil.copytree(TINY / "covid", tmp_path / "one" / "covid")
    line = one_error_line(cli("train", "--data", tmp_path / "one", "--backbone", "resnet50",
                              "--runs-dir", tmp_path / "runs"))
    assert "has images of only one class (covid (5 images)); training needs at least two " \
           "classes with images" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_train_says_when_a_manifest_is_ignored_and_records_it(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(TINY, data)
    rows = (data / "manifest.csv").read_text(encoding="utf-8").splitlines()
    (data / "manifest.csv").write_text("\n".join(["file,patient", *rows[1:]]) + "\n")
    result = cli("train", "--data", data, "--backbone", "resnet50", "--image-size", 32,
                 "--epochs", 1, "--batch-size", 4, "--runs-dir", tmp_path / "runs", "--name",
                 "bad-manifest", "--val-fraction", 0.3, "--test-fraction", 0.25, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "lacks the columns path, patient_id" in warnings[0]
    info = json.loads((tmp_path / "runs" / "bad-manifest" / "run.json").read_text())
    assert "may land in different splits" in info["data"]["manifest_problem"]
    assert "manifest" not in info["data"]["patient_id_sources"]
