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


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_predict_refuses_what_is_not_a_regular_file_without_reading_it(tmp_path, kind):
    # (a folder is a batch of its images: tests/test_batch.py)
    target = {"device": "/dev/zero"}.get(kind)
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


def test_evaluate_prints_only_the_classes_macro_f1_averages_and_the_patient_overlap():
    """The held-out table: no covid row of zeros beside a macro-F1 over two classes, and the
    patients the folder shares with the run's own data said in one line."""
    from xrcompare.data import patient_overlap
    from xrcompare.evaluate import evaluate_heldout
    from xrcompare.report import evaluation_lines
    from xrcompare.runs import load_run

    run = load_run(SHIPPED / "resnet50-seed001-blog")
    rows = run.predictions_for("kaggle_test")
    patients = rows["patient_id"].astype(str).tolist()
    overlap, shared = patient_overlap(run.own_patients, patients)
    metrics = evaluate_heldout(rows["label"].tolist(), rows[run.probability_columns()].to_numpy(),
                               patients, overlap, shared, labels=run.labels, repeats=100)
    lines = evaluation_lines(run.title, "../shared/data/kaggle_test", metrics, (),
                             run.data_name)
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["class",
                                                                           "precision"])
    per_class = [line.split() for line in lines[header + 1:header + 3]]
    assert [row[0] for row in per_class] == ["normal", "pneumonia"]
    printed_mean = sum(float(row[3]) for row in per_class) / 2
    assert abs(printed_mean - metrics["macro_f1"]) < 0.001
    assert f"macro-F1 {metrics['macro_f1']:.3f} (over the 2 classes present)" in lines[1]
    confusion = lines[lines.index("confusion matrix (rows true, columns predicted):") + 2:header]
    assert [row.split()[0] for row in confusion] == ["normal", "pneumonia"]
    called_covid = sum(int(row.split()[1]) for row in confusion)
    assert (f"covid no images in this folder, so not in macro-F1; {called_covid} images "
            "called covid") in " ".join(lines[header + 3].split())
    overlap_line = next(line for line in lines if line.startswith("patients: "))
    assert "12 patients (13 images) of kaggle_test also appear in the run's own data " \
           "(seed001_0402); without them (611 images): accuracy" in overlap_line
