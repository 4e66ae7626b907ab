"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from xrcompare.evaluate import (
    BLOG_2020_REPORTED,
    binary_operating_point,
    cheapest_point,
    evaluate_predictions,
    point_at,
    threshold_for_sensitivity,
    threshold_sweep,
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
    sweep = threshold_sweep(positive, score)
    reach = threshold_for_sensitivity(sweep, 1.0)
    assert reach["threshold"] == pytest.approx(0.2) and reach["fp"] == 2
    assert cheapest_point(sweep, miss_cost=10)["fn"] == 0
    assert cheapest_point(sweep, miss_cost=0.1)["fp"] == 0


@pytest.fixture(scope="module")
def random_scores():
    rng = np.random.default_rng(7)
    positive = rng.random(120) < 0.35
    # overlapping classes, with ties (rounded scores)
    score = np.round(np.clip(rng.normal(0.35 + 0.35 * positive, 0.2), 0, 1), 2)
    return positive, score


def every_threshold(positive, score) -> list[dict]:
    """Brute force: the operating point at each score and at +inf."""
    return [binary_operating_point(positive, score, float(threshold))
            for threshold in [*np.unique(score), np.inf]]


def test_sweep_matches_the_operating_point_at_every_threshold(random_scores):
    positive, score = random_scores
    sweep = threshold_sweep(positive, score)
    assert sweep["threshold"].is_monotonic_increasing
    assert np.isinf(sweep["threshold"].iloc[-1])
    for row in sweep.itertuples():
        expected = binary_operating_point(positive, score, row.threshold)
        assert (row.tp, row.fp, row.fn, row.tn) == (expected["tp"], expected["fp"],
                                                   expected["fn"], expected["tn"])


def test_point_at_any_slider_value_matches_the_operating_point(random_scores):
    positive, score = random_scores
    sweep = threshold_sweep(positive, score)
    for threshold in np.round(np.arange(0, 1.001, 0.01), 2):
        point = point_at(sweep, float(threshold))
        expected = binary_operating_point(positive, score, float(threshold))
        for key in ("tp", "fp", "fn", "tn", "sensitivity", "specificity", "ppv", "npv"):
            assert point[key] == pytest.approx(expected[key]), (threshold, key)


@pytest.mark.parametrize("miss_cost", [0, 1, 3, 10, 100])
def test_cheapest_point_is_the_lowest_of_the_cheapest_thresholds(random_scores, miss_cost):
    positive, score = random_scores
    point = cheapest_point(threshold_sweep(positive, score), miss_cost)
    costs = [(miss_cost * p["fn"] + p["fp"], p["threshold"])
             for p in every_threshold(positive, score)]
    lowest_cost = min(cost for cost, _ in costs)
    assert point["cost"] == lowest_cost == miss_cost * point["fn"] + point["fp"]
    # the tie rule: among equally cheap thresholds, the one finding the most positives
    assert point["threshold"] == min(t for cost, t in costs if cost == lowest_cost)


def test_cheapest_point_refuses_a_negative_cost(random_scores):
    positive, score = random_scores
    with pytest.raises(ValueError, match="negative"):
        cheapest_point(threshold_sweep(positive, score), -1)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_target_sensitivity_has_the_fewest_false_alarms(random_scores, target):
    positive, score = random_scores
    point = threshold_for_sensitivity(threshold_sweep(positive, score), target)
    reaching = [p for p in every_threshold(positive, score) if p["sensitivity"] >= target]
    fewest = min(p["fp"] for p in reaching)
    assert point["sensitivity"] >= target and point["fp"] == fewest
    # the tie rule: among those with the fewest false alarms, the most positives found
    assert point["sensitivity"] == max(p["sensitivity"] for p in reaching if p["fp"] == fewest)
    assert point == binary_operating_point(positive, score, point["threshold"])


def test_target_sensitivity_takes_free_sensitivity_on_a_perfect_model():
    positive = np.array([True, True, True, False, False])
    score = np.array([0.9, 0.6, 0.55, 0.3, 0.1])
    sweep = threshold_sweep(positive, score)
    point = threshold_for_sensitivity(sweep, 0.5)
    # 0.6 alone reaches 2/3 with 0 false alarms, but 0.55 finds all three for free
    assert point["threshold"] == 0.55
    assert (point["sensitivity"], point["fp"]) == (1.0, 0)
    assert threshold_for_sensitivity(threshold_sweep(positive & False, score), 0.5) is None
    with pytest.raises(ValueError, match="between 0 and 1"):
        threshold_for_sensitivity(sweep, 1.5)


def test_blog_figures_are_quoted_once_and_consistent():
    reported = BLOG_2020_REPORTED["kaggle_test"]["per_class"]
    for entry in reported.values():
        # the share called right cannot exceed the share kept out of covid
        assert 0 <= entry["called_right_pct"] <= entry["non_covid_pct"] <= 100
    assert set(BLOG_2020_REPORTED["accuracy"]) == {"VGG16", "VGG19"}


def test_bad_shapes_are_value_errors():
    with pytest.raises(ValueError, match="shape"):
        evaluate_predictions(["covid"], np.ones((1, 2)))
    with pytest.raises(ValueError, match="not among"):
        evaluate_predictions(["cat"], np.ones((1, 3)) / 3)
