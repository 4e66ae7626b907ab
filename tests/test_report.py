"""One evaluation's tables and text (xrcompare.report), shared by the CLI and the Evaluate
page; the app's evaluation request on a folder and on an uploaded .zip; background tasks."""

from __future__ import annotations

import io
import math
import time
import zipfile

import pytest
from conftest import FIXTURES, REPO

from xrcompare import limits
from xrcompare.background import Task
from xrcompare.data import patient_overlap
from xrcompare.evaluate import evaluate_heldout
from xrcompare.inference import evaluate_folder, evaluate_request
from xrcompare.report import (
    confusion_rows,
    evaluation_lines,
    heldout_share_rows,
    per_class_rows,
)
from xrcompare.runs import list_runs, load_run

SHIPPED = REPO / "trained"
TINY = FIXTURES / "tiny_cxr"


def heldout_metrics(run_id: str = "resnet50-seed001-blog") -> tuple:
    run = load_run(SHIPPED / run_id)
    rows = run.predictions_for("kaggle_test")
    patients = rows["patient_id"].astype(str).tolist()
    overlap, shared = patient_overlap(run.own_patients, patients)
    return run, evaluate_heldout(rows["label"].tolist(),
                                 rows[run.probability_columns()].to_numpy(), patients, overlap,
                                 shared, labels=run.labels, repeats=100)


def test_a_class_without_images_has_no_recall_and_says_so():
    run, metrics = heldout_metrics()
    rows = per_class_rows(metrics).set_index("class")
    covid = rows.loc["covid"]
    assert covid["support"] == 0
    assert math.isnan(covid["recall"]) and math.isnan(covid["f1"])
    assert covid["recall_95ci"] == covid["f1_95ci"] == "no images"
    called = sum(row[run.labels.index("covid")] for row in metrics["confusion_matrix"])
    assert called > 0 and covid["precision"] == 0.0  # every covid call here is wrong
    assert covid["note"] == (f"no images in this folder, so not in macro-F1; {called} images "
                             "called covid")
    for label in ("normal", "pneumonia"):
        assert rows.loc[label, "recall"] == pytest.approx(metrics["per_class"][label]["recall"])
        assert rows.loc[label, "recall_95ci"].count("–") == 1
    # the confusion matrix lists the true classes present; the shares are the held-out table
    assert list(confusion_rows(metrics).index) == ["normal", "pneumonia"]
    shares = heldout_share_rows(metrics).set_index("true class")
    assert shares.loc["normal", "kept out of covid %"] == pytest.approx(
        metrics["heldout_table"]["normal"]["non_covid_pct"])
    # the CLI prints those very rows
    lines = evaluation_lines(run.title, "kaggle_test", metrics, (), run.data_name)
    assert f"      covid {covid['note']}" in lines


def test_a_class_never_predicted_and_absent_has_no_precision_either():
    run, metrics = heldout_metrics()
    labels = metrics["labels"]
    k = labels.index("covid")
    metrics = {**metrics, "confusion_matrix": [
        [0 if j == k else value for j, value in enumerate(row)] for row in
        metrics["confusion_matrix"]]}
    covid = per_class_rows(metrics).set_index("class").loc["covid"]
    assert math.isnan(covid["precision"]) and covid["precision_95ci"] == "never predicted"
    assert covid["note"].endswith("0 images called covid")


def test_the_app_evaluates_a_folder_and_the_same_folder_zipped_alike():
    run = list_runs(SHIPPED).runs[0]
    events = []
    by_folder = evaluate_request(run, name="tiny_cxr", folder=TINY, progress=events.append)
    assert events[0] == {"phase": "load"}
    extract = [event for event in events if event.get("phase") == "extract"]
    assert extract[-1]["done"] == extract[-1]["total"] == 15
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(TINY.rglob("*")):
            if path.is_file():
                archive.write(path, "tiny/" + path.relative_to(TINY).as_posix())
    by_zip = evaluate_request(run, name="tiny.zip", archive=buffer.getvalue())
    assert by_zip["images"] == {"covid": 5, "normal": 5, "pneumonia": 5}
    for key in ("accuracy", "macro_f1", "confusion_matrix", "per_class", "patient_overlap"):
        assert by_zip["metrics"][key] == by_folder["metrics"][key], key
    direct, _ = evaluate_folder(run, TINY, chunk=4)  # small chunks: the same figures
    assert direct["confusion_matrix"] == by_folder["metrics"]["confusion_matrix"]
    assert limits.work_slots().busy == 0 and limits.work_slots().peak >= 1


def test_a_zip_of_unreadable_images_is_refused_naming_the_zip_not_a_temporary_folder():
    run = list_runs(SHIPPED).runs[0]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number in range(3):
            archive.writestr(f"normal/{number}.jpg", b"not a jpeg" * 10)
    with pytest.raises(ValueError) as refusal:
        evaluate_request(run, name="broken.zip", archive=buffer.getvalue())
    assert str(refusal.value) == "none of the images in broken.zip could be read"


def test_a_background_task_reports_progress_and_its_outcome():
    def work(size, progress):
        for done in range(size):
            progress({"done": done + 1})
        return size * 2

    task = Task(work, 3).start()
    task.join(10)
    assert task.done and task.result == 6 and task.snapshot()["event"] == {"done": 3}

    def fails(progress):
        raise ValueError("this folder has no class folders\nsecond line")

    task = Task(fails).start()
    task.join(10)
    assert task.state == "failed" and task.error == "this folder has no class folders"

    def slow(progress):
        time.sleep(0.3)

    task = Task(slow).start()
    assert not task.done and task.snapshot()["state"] == "running"
    task.join(10)
    assert task.done and task.snapshot()["seconds"] >= 0.3
