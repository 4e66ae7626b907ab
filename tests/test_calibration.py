"""Calibration: ECE and reliability bins by hand, temperature scaling fitted on validation
only, and the shipped runs' own figures (the trade-offs page and ``calibration`` CLI)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import REPO

from xrcompare.calibration import calibrate, calibration_table, temperature_for
from xrcompare.cli import main
from xrcompare.evaluate import (
    ECE_BINS,
    apply_temperature,
    evaluate_predictions,
    expected_calibration_error,
    fit_temperature,
    reliability,
)
from xrcompare.runs import list_runs, load_run

TRAINED = REPO / "trained"
LABELS = ["covid", "normal", "pneumonia"]


def test_ece_by_hand():
    # two images at confidence 0.9 (one right), two at 0.6 (both right)
    probabilities = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05],
                              [0.6, 0.3, 0.1], [0.1, 0.6, 0.3]])
    y_true = ["covid", "normal", "covid", "normal"]
    found = reliability(y_true, probabilities, LABELS, bins=10)
    # bin (0.8, 0.9]: accuracy 0.5 vs 0.9; bin (0.5, 0.6]: accuracy 1.0 vs 0.6
    assert found["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    full = [entry for entry in found["table"] if entry["count"]]
    assert [(entry["count"], entry["accuracy"]) for entry in full] == [(2, 1.0), (2, 0.5)]
    assert full[0]["high"] == pytest.approx(0.6) and full[1]["high"] == pytest.approx(0.9)
    assert expected_calibration_error(y_true, probabilities, LABELS, 10) == found["ece"]
    assert reliability(y_true, probabilities, LABELS)["bins"] == ECE_BINS == 15


def test_evaluate_predictions_reports_the_ece():
    probabilities = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    metrics = evaluate_predictions(["covid", "normal"], probabilities, repeats=100)
    assert metrics["ece"] == 0 and metrics["ece_bins"] == ECE_BINS


def test_temperature_scaling_recovers_an_overconfident_model_and_keeps_the_answers():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, size=(4000, 3))
    true_probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_true = [LABELS[rng.choice(3, p=p)] for p in true_probabilities]
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)  # T = 1/3
    temperature = fit_temperature(y_true, sharp, LABELS)
    assert temperature == pytest.approx(3.0, rel=0.1)
    softened = apply_temperature(sharp, temperature)
    assert np.array_equal(softened.argmax(axis=1), sharp.argmax(axis=1))
    assert (expected_calibration_error(y_true, softened, LABELS)
            < expected_calibration_error(y_true, sharp, LABELS) / 2)
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(sharp, 0)


def test_the_shipped_main_run_is_fitted_on_validation_and_scored_elsewhere():
    run = load_run(TRAINED / "resnet50-cxr3")
    temperature = temperature_for(run)
    val = run.split_predictions("val")
    assert temperature.fitted and temperature.images == len(val)
    expected = fit_temperature(val["label"].tolist(),
                               val[run.probability_columns()].to_numpy(), run.labels)
    assert temperature.value == pytest.approx(expected)
    found = calibrate(run, "heldout:kaggle_test")
    rows = run.predictions_for("kaggle_test")
    assert found.before["n"] == len(rows)
    assert found.ece == pytest.approx(expected_calibration_error(
        rows["label"].tolist(), rows[run.probability_columns()].to_numpy(), run.labels))
    assert found.ece_after is not None and found.after["n"] == len(rows)


def test_a_run_without_a_validation_split_gets_no_temperature(tmp_path):
    """The 2020 protocol chose its epoch on test: no temperature is fitted on test images."""
    folder = tmp_path / "leaky"
    shutil.copytree(TRAINED / "resnet50-seed001-blog", folder)
    info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    info["protocol"] = {"split": "images", "preprocess": "backbone", "select_on": "test",
                        "augment": "mild"}
    (folder / "run.json").write_text(json.dumps(info), encoding="utf-8")
    predictions = (folder / "predictions.csv").read_text(encoding="utf-8").splitlines()
    kept = [line for line in predictions if ",val," not in line]
    (folder / "predictions.csv").write_text("\n".join(kept) + "\n", encoding="utf-8")
    run = load_run(folder)
    temperature = temperature_for(run)
    assert not temperature.fitted
    assert "not possible (no validation split" in temperature.note
    table = calibration_table([run])
    assert list(table["scope"]) == ["test", "held-out kaggle_test"]
    assert table["ece_after"].isna().all() and (table["ece"] > 0).all()


def test_the_calibration_command_prints_the_runs_figures(capsys):
    runs = list_runs(TRAINED).runs
    run = runs[0]
    assert main(["calibration", str(run.path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    table = calibration_table([run])
    assert [entry["ece"] for entry in payload["scopes"]] == pytest.approx(list(table["ece"]))
    assert main(["calibration", str(run.path)]) == 0
    text = capsys.readouterr().out
    assert f"ECE {table['ece'].iloc[0]:.3f}" in text and "validation" in text
