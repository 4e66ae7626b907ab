"""The image-statistics baseline's pieces: the statistics, the JSON model (never a pickle) and
its agreement with scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DATA

from xrcompare.imagestats import (
    FEATURE_NAMES,
    StatisticsModel,
    describe_weights,
    fit_statistics_model,
    image_statistics,
    predict_gray,
    statistics_for_files,
)


def test_statistics_of_a_known_picture():
    gray = np.full((100, 200), 100, dtype=np.uint8)
    gray[:5, :] = 255  # a white top border, like a burned-in caption band
    stats = dict(zip(FEATURE_NAMES, image_statistics(gray), strict=True))
    assert (stats["width"], stats["height"], stats["aspect_ratio"]) == (200, 100, 2.0)
    assert stats["near_white_share"] == pytest.approx(0.05)
    assert stats["near_black_share"] == 0
    assert stats["mean_intensity"] == pytest.approx((0.95 * 100 + 0.05 * 255) / 255)
    assert stats["border_brightness"] > stats["mean_intensity"]  # the frame holds the band
    # the top corners are half white band, the bottom ones plain
    assert stats["corner_brightness"] == pytest.approx((0.25 * 255 + 0.75 * 100) / 255)
    with pytest.raises(ValueError, match="2-D gray image"):
        image_statistics(np.zeros((4, 4, 3), np.uint8))


def training_matrix(seed=0, classes=("covid", "normal", "pneumonia")):
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for number, label in enumerate(classes):
        rows.append(rng.normal(number, 1.0, size=(40, len(FEATURE_NAMES))) * (number + 1))
        labels += [label] * 40
    return np.concatenate(rows), labels


@pytest.mark.parametrize("classes", [("covid", "normal", "pneumonia"), ("normal", "pneumonia")])
def test_the_json_model_predicts_what_scikit_learn_predicts(classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    matrix, labels = training_matrix(classes=classes)
    model = fit_statistics_model(matrix, labels)
    payload = json.loads(json.dumps(model.to_json()))  # plain JSON, no pickle
    again = StatisticsModel.from_json(payload)
    scaler = StandardScaler().fit(matrix)
    reference = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(matrix), labels)
    expected = reference.predict_proba(scaler.transform(matrix))
    assert np.allclose(again.predict_proba(matrix), expected, atol=1e-6)
    # in any label order, with a class it never saw at 0
    order = ["pneumonia", "covid", "normal"]
    shuffled = again.predict_proba(matrix, order)
    for column, label in enumerate(order):
        if label in classes:
            assert np.allclose(shuffled[:, column], expected[:, list(reference.classes_)
                                                              .index(label)], atol=1e-6)
        else:
            assert np.all(shuffled[:, column] == 0)
    assert np.allclose(shuffled.sum(axis=1), 1)
    assert set(again.weights()) == set(classes)
    assert describe_weights(again, classes[0]) and all(
        word.startswith(("higher", "lower")) for word in describe_weights(again, classes[0]))


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p.update(kind="pickle"), "kind"),
    (lambda p: p.update(features_version=99), "version"),
    (lambda p: p.update(features=["width"]), "features"),
    (lambda p: p.update(classes=["covid"]), "classes"),
    (lambda p: p["scaler"].update(scale=[0.0] * len(FEATURE_NAMES)), "positive"),
    (lambda p: p.update(coef=[[1.0, "x"]]), "coef"),
    (lambda p: p.update(intercept=[float("nan")] * 3), "intercept"),
])
def test_a_damaged_model_json_is_refused_in_one_line(change, message):
    matrix, labels = training_matrix()
    payload = json.loads(json.dumps(fit_statistics_model(matrix, labels).to_json()))
    change(payload)
    with pytest.raises(ValueError, match=message) as error:
        StatisticsModel.from_json(payload)
    assert "\n" not in str(error.value)


def test_files_are_read_with_the_image_limits_and_bad_ones_listed(tmp_path):
    good = sorted((DATA / "cxr3" / "covid").glob("*.jpg"))[:2]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    matrix, ok, failed = statistics_for_files([good[0], bad, good[1]])
    assert matrix.shape == (2, len(FEATURE_NAMES)) and ok == [0, 2]
    assert failed[0][0] == str(bad) and "not a readable" in failed[0][1]


def test_predict_gray_gives_one_probability_per_label():
    matrix, labels = training_matrix()
    model = fit_statistics_model(matrix, labels)
    result = predict_gray(model, np.full((64, 48), 90, np.uint8), ["covid", "normal",
                                                                   "pneumonia"])
    assert list(result) == ["covid", "normal", "pneumonia"]
    assert sum(result.values()) == pytest.approx(1)
