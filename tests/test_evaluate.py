"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from xrcompare.evaluate import (
    binary_operating_point,
    cheapest_threshold,
    evaluate_predictions,
    lowest_threshold_for_sensitivity,
)


def one_hot(indices, k=3, sure=0.8):
    rest = (1 - sure) / (k - 1)
    out = np.full((len(indices), k), rest)
    out[np.arange(len(indices)), indices] = sure
    return out


def test_confusion_matrix_rows_true_columns_predicted_and_per_class_scores():
    y_true = ["covid", "covid", "normal", "normal", "pneumonia", "pneumonia"]
    predicted = [0, 1, 1, 1, 2, 0]
    metrics = evaluate_predictions(y_true, one_hot(predicted), repeats=200)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_class"]["normal"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    covid = metrics["covid_vs_rest"]
    assert (covid["tp"], covid["fn"], covid["fp"], covid["tn"]) == (1, 1, 1, 3)
    assert covid["sensitivity"] == 0.5 and covid["specificity"] == 0.75
    low, high = metrics["intervals"]["accuracy"]
    assert 0 <= low <= metrics["accuracy"] <= high <= 1


def test_bootstrap_resamples_patients_not_images():
    # Two patients with 50 identical images each: one all right, one all wrong.
    y_true = ["normal"] * 100
    predicted = [1] * 50 + [2] * 50
    groups = ["a"] * 50 + ["b"] * 50
    by_patient = evaluate_predictions(y_true, one_hot(predicted), groups, repeats=500)
    by_image = evaluate_predictions(y_true, one_hot(predicted), repeats=500)
    assert by_patient["intervals"]["unit"] == "patient"
    assert by_patient["intervals"]["accuracy"] == [0.0, 1.0]
    assert by_image["intervals"]["accuracy"][1] - by_image["intervals"]["accuracy"][0] < 0.3


def test_heldout_without_covid_gets_the_blog_table():
    y_true = ["normal"] * 4 + ["pneumonia"] * 2
    metrics = evaluate_predictions(y_true, one_hot([0, 1, 1, 2, 2, 2]), repeats=100)
    table = metrics["heldout_table"]
    assert table["normal"]["predicted_pct"] == pytest.approx(
        {"covid": 25.0, "normal": 50.0, "pneumonia": 25.0})
    assert table["normal"]["non_covid_pct"] == pytest.approx(75.0)
    assert table["pneumonia"]["non_covid_pct"] == pytest.approx(100.0)


def test_thresholds_sensitivity_target_and_cost():
    positive = np.array([1, 1, 1, 0, 0, 0, 0], dtype=bool)
    score = np.array([0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.05])
    point = binary_operating_point(positive, score, 0.5)
    assert (point["tp"], point["fn"], point["fp"], point["tn"]) == (2, 1, 1, 3)
    assert point["ppv"] == pytest.approx(2 / 3) and point["npv"] == pytest.approx(3 / 4)
    reach = lowest_threshold_for_sensitivity(positive, score, 1.0)
    assert reach["threshold"] == pytest.approx(0.2) and reach["fp"] == 2
    assert cheapest_threshold(positive, score, miss_cost=10)["fn"] == 0
    assert cheapest_threshold(positive, score, miss_cost=0.1)["fp"] == 0


def test_bad_shapes_are_value_errors():
    with pytest.raises(ValueError, match="shape"):
        evaluate_predictions(["covid"], np.ones((1, 2)))
    with pytest.raises(ValueError, match="not among"):
        evaluate_predictions(["cat"], np.ones((1, 3)) / 3)
