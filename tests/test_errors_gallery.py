"""The confusion-cell gallery (xrcompare.errors_gallery), the CLI's ``errors`` and the gallery
on the Confusion matrices page, on the shipped runs and the real images in ../shared/data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, REPO
from streamlit.testing.v1 import AppTest

from xrcompare import errors_gallery
from xrcompare.engine import Engine
from xrcompare.paths import RUNS_DIR_VARIABLE
from xrcompare.runs import heldout_scope, list_runs, load_run

TRAINED = REPO / "trained"
MAIN_RUN = "resnet50-cxr3"
KAGGLE = heldout_scope("kaggle_test")


@pytest.fixture(scope="module")
def runs():
    listing = list_runs(TRAINED)
    assert listing.problems == [] and listing.runs
    return listing.runs


@pytest.fixture(scope="module")
def main_run():
    return load_run(TRAINED / MAIN_RUN)


def copy_run(tmp_path, name: str = MAIN_RUN):
    target = tmp_path / name
    shutil.copytree(TRAINED / name, target, ignore=shutil.ignore_patterns("head_fold*"))
    return target


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "xrcompare", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)


# --------------------------------------------------------------------------- cells


def test_cells_add_up_to_every_shipped_runs_recorded_confusion_matrix(runs):
    checked = 0
    for run in runs:
        for scope in run.scopes:
            cells = errors_gallery.confusion_cells(run, scope)
            metrics = run.metrics_for(scope)
            table = cells.set_index(["true", "predicted"])["images"]
            labels = metrics["labels"]
            matrix = [[int(table[(true, predicted)]) for predicted in labels] for true in labels]
            assert matrix == metrics["confusion_matrix"], (run.run_id, scope)
            assert cells["images"].sum() == len(run.predictions_for(scope))
            checked += 1
    assert checked >= 2 * len(runs) - 1  # every run has its test split, most kaggle_test too


def test_a_cell_lists_its_images_most_confident_first_with_their_files(main_run):
    cells = errors_gallery.confusion_cells(main_run, KAGGLE).set_index(["true", "predicted"])
    expected = int(cells.loc[("normal", "covid"), "images"])
    assert expected >= 10  # the main run calls some Kaggle children covid
    selection = errors_gallery.cell_images(main_run, KAGGLE, "normal", "covid", limit=8)
    rows = selection.rows
    assert selection.total == expected and len(rows) == 8 and selection.more == expected - 8
    assert set(rows["label"]) == {"normal"} and set(rows["predicted"]) == {"covid"}
    assert list(rows["p_predicted"]) == sorted(rows["p_predicted"], reverse=True)
    assert np.allclose(rows["p_predicted"], rows["prob_covid"])
    assert np.allclose(rows["p_true"], rows["prob_normal"])
    assert selection.folder == (DATA / "kaggle_test").resolve() or \
        selection.folder.resolve() == (DATA / "kaggle_test").resolve()
    for row in rows.to_dict("records"):
        assert row["file"].is_file() and row["missing"] == ""
        assert row["file"].resolve().is_relative_to((DATA / "kaggle_test").resolve())
    # the next page starts where this one ended, in the same order
    following = errors_gallery.cell_images(main_run, KAGGLE, "normal", "covid", limit=8,
                                           offset=8)
    assert following.rows["p_predicted"].iloc[0] <= rows["p_predicted"].iloc[-1]
    assert not set(following.rows["path"]) & set(rows["path"])
    every = errors_gallery.cell_images(main_run, KAGGLE, "normal", "covid", limit=None)
    assert len(every.rows) == expected and every.more == 0


def recorded_matrix(run, scope="test"):
    metrics = run.metrics_for(scope)
    return metrics["labels"], np.array(metrics["confusion_matrix"])


def test_the_diagonal_is_a_cell_too_and_one_class_alone_means_its_mistakes(main_run):
    labels, matrix = recorded_matrix(main_run)
    covid, pneumonia = labels.index("covid"), labels.index("pneumonia")
    right = errors_gallery.cell_images(main_run, "test", "covid", "covid", limit=None)
    assert right.total == matrix[covid, covid] > 0
    assert (right.rows["label"] == right.rows["predicted"]).all()
    assert "right" in right.description
    mistakes = errors_gallery.cell_images(main_run, "test", "pneumonia", None, limit=None)
    assert mistakes.total == matrix[pneumonia].sum() - matrix[pneumonia, pneumonia] > 0
    assert set(mistakes.rows["label"]) == {"pneumonia"}
    assert (mistakes.rows["predicted"] != "pneumonia").all()
    called = errors_gallery.cell_images(main_run, "test", None, "covid", limit=None)
    assert called.total == matrix[:, covid].sum() - matrix[covid, covid] > 0
    assert (called.rows["label"] != "covid").all()
    every = errors_gallery.cell_images(main_run, "test", limit=None)
    assert every.total == matrix.sum() - np.trace(matrix)
    assert every.description == "every mistake"
    assert list(every.rows["p_predicted"]) == sorted(every.rows["p_predicted"], reverse=True)


def test_unknown_classes_scopes_and_limits_are_refused_in_one_sentence(main_run):
    with pytest.raises(ValueError, match="unknown true class 'cat'"):
        errors_gallery.cell_images(main_run, "test", "cat", "covid")
    with pytest.raises(ValueError, match="no predictions on held-out nowhere"):
        errors_gallery.cell_images(main_run, "heldout:nowhere")
    with pytest.raises(ValueError, match="at least 1"):
        errors_gallery.cell_images(main_run, "test", limit=0)


# --------------------------------------------------------------------------- files


def test_a_folder_not_on_this_machine_gets_one_sentence_and_no_files(tmp_path):
    folder = copy_run(tmp_path)
    info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    for record in [info["data"], *info["heldout"]]:
        record["folder"] = record["folder_absolute"] = str(tmp_path / "gone" / record["name"])
    (folder / "run.json").write_text(json.dumps(info), encoding="utf-8")
    selection = errors_gallery.cell_images(load_run(folder), "test", limit=5)
    assert selection.folder is None and "not on this machine" in selection.folder_problem
    assert selection.rows["file"].isna().all() and len(selection.rows) == 5


def test_a_folder_outside_the_data_root_is_never_read(tmp_path):
    folder = copy_run(tmp_path)
    info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    info["data"]["folder"] = info["data"]["folder_absolute"] = str(REPO / "samples")
    (folder / "run.json").write_text(json.dumps(info), encoding="utf-8")
    selection = errors_gallery.cell_images(load_run(folder), "test", limit=5)
    assert selection.folder is None and "outside the data root" in selection.folder_problem
    assert selection.rows["file"].isna().all()


def test_paths_leaving_the_folder_and_missing_files_are_named_not_opened(tmp_path):
    folder = copy_run(tmp_path)
    predictions = pd.read_csv(folder / "predictions.csv")
    test = predictions.index[(predictions["split"] == "test")
                             & (predictions["label"] == "covid")]
    predictions.loc[test[0], "path"] = "../kaggle_test/NORMAL/" + \
        next((DATA / "kaggle_test" / "NORMAL").iterdir()).name
    predictions.loc[test[1], "path"] = "covid/not-there.jpg"
    predictions.to_csv(folder / "predictions.csv", index=False)
    run = load_run(folder)
    selection = errors_gallery.cell_images(run, "test", "covid", "covid", limit=None)
    by_path = {row["path"]: row for row in selection.rows.to_dict("records")}
    leaving = next(row for path, row in by_path.items() if path.startswith(".."))
    assert leaving["file"] is None and "leads out of the run's image folder" in leaving["missing"]
    missing = by_path["covid/not-there.jpg"]
    assert missing["file"] is None and missing["missing"].startswith("covid/not-there.jpg is "
                                                                     "not in")
    assert sum(row["file"] is not None for row in by_path.values()) == selection.total - 2


# --------------------------------------------------------------------------- one image


def test_one_gallery_image_gets_its_grad_cam_through_the_predict_engine(main_run):
    selection = errors_gallery.cell_images(main_run, KAGGLE, "normal", "covid", limit=1)
    row = selection.rows.iloc[0]
    result = errors_gallery.explain_image(Engine(), main_run, row["file"], row["predicted"])
    assert result.target == "covid" and result.note == ""
    assert result.overlay.ndim == 3 and result.overlay.shape[2] == 3
    assert result.overlay.dtype == np.uint8 and result.overlay.std() > 1
    # the same head on the same file: the recorded answer, from the image through the engine
    assert max(result.probabilities, key=result.probabilities.get) == "covid"
    assert abs(result.probabilities["covid"] - row["prob_covid"]) < 0.05


# --------------------------------------------------------------------------- CLI


def test_cli_errors_prints_the_cells_then_the_images(main_run):
    labels, matrix = recorded_matrix(main_run, KAGGLE)
    normal, covid = labels.index("normal"), labels.index("covid")
    result = cli("errors", TRAINED / MAIN_RUN, "--on", KAGGLE, "--true", "normal",
                 "--predicted", "covid", "--limit", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("images per cell (rows true, columns predicted)")
    assert lines[2 + normal].split() == ["normal", *map(str, matrix[normal])]
    called = matrix[normal, covid]
    assert lines[5].startswith(f"true normal called covid (mistakes): {called} images")
    assert len([line for line in lines if line.startswith("  true normal")]) == 3
    assert lines[-1] == f"  … and {called - 3} more (--limit to see more)"


def test_cli_errors_json_and_one_line_refusals(main_run):
    _, matrix = recorded_matrix(main_run)
    result = cli("errors", MAIN_RUN, "--json", "--limit", "2")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    mistakes = int(matrix.sum() - np.trace(matrix))
    assert payload["total"] == mistakes and payload["shown"] == 2
    assert payload["more"] == mistakes - 2
    assert len(payload["cells"]) == 9
    first = payload["images"][0]
    assert first["label"] != first["predicted"] and first["file"].endswith(first["path"])
    assert set(first["probabilities"]) == {"covid", "normal", "pneumonia"}
    bad = cli("errors", MAIN_RUN, "--predicted", "cat")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == ("error: unknown predicted class 'cat'; resnet50-cxr3 "
                                  "predicts covid, normal, pneumonia")


# --------------------------------------------------------------------------- the page


def test_the_confusion_page_shows_a_cells_images_more_on_demand_and_one_grad_cam(monkeypatch,
                                                                                main_run):
    labels, matrix = recorded_matrix(main_run, KAGGLE)
    called = matrix[labels.index("normal"), labels.index("covid")]
    assert called > 24
    monkeypatch.setenv(RUNS_DIR_VARIABLE, str(TRAINED))
    app = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=300)
    app.run()
    for run in list_runs(TRAINED).runs:
        app.session_state[f"run_pick::{run.run_id}"] = run.run_id == MAIN_RUN
    app.session_state["selected_run_ids"] = [MAIN_RUN]
    app.switch_page("app_pages/confusion.py").run()
    assert not app.exception and not app.error
    app.selectbox(key="confusion_scope").set_value(KAGGLE.removeprefix("heldout:")).run()
    app.selectbox(key="gallery_true").set_value("normal").run()
    app.selectbox(key="gallery_predicted").set_value("covid").run()
    assert not app.exception and not app.error
    assert any("true normal called covid" in item.value and f"**{called}**" in item.value
               for item in app.markdown)
    assert len(app.get("image")) == 12
    more = next(button for button in app.button if button.label.startswith("Show 12 more"))
    more.click().run()
    assert not app.exception and not app.error
    assert len(app.get("image")) == 24
    explain = app.selectbox(key="gallery_explain")
    explain.set_value(explain.options[1]).run()
    assert not app.exception and not app.error
    assert any("The run's head on this file now" in item.value for item in app.caption)


def test_a_scope_scored_without_per_image_predictions_is_said_not_crashed(tmp_path,
                                                                          monkeypatch):
    folder = copy_run(tmp_path)
    predictions = pd.read_csv(folder / "predictions.csv")
    predictions[predictions["split"] != KAGGLE].to_csv(folder / "predictions.csv", index=False)
    monkeypatch.setenv(RUNS_DIR_VARIABLE, str(tmp_path))
    app = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=300)
    app.run()
    app.switch_page("app_pages/confusion.py").run()
    app.selectbox(key="confusion_scope").set_value("kaggle_test").run()
    assert not app.exception and not app.error
    assert len(app.get("plotly_chart")) == 1  # the recorded matrix is still drawn
    assert any("has no predictions on held-out kaggle_test" in item.value for item in app.info)
