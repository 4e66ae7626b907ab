"""Two runs on the same images: McNemar's exact test and the paired patient bootstrap against
brute force and hand-computed cases, the verdict's rules, aligning runs and every refusal, the
``compare`` command; on made-up predictions and on the shipped runs in trained/ (several share
one patient-wise test split of cxr3)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from xrcompare import charts
from xrcompare.cli import main
from xrcompare.compare import NotComparable, align_runs, compare_runs, default_pair
from xrcompare.evaluate import (
    SMALL_COMPARISON,
    comparison_verdict,
    format_interval_points,
    format_p,
    format_points,
    mcnemar_exact,
    paired_bootstrap,
    per_class_differences,
)
from xrcompare.runs import Run, list_runs, normalise_scope

SHIPPED = REPO / "trained"
MAIN = "resnet50-cxr3"
#: Shipped runs made with the main run's seed and data: the same 256 test images.
SAME_TEST_IMAGES = ("resnet50-cxr3-padded", "resnet50-cxr3-288px", "resnet50-cxr3-random-control")
LABELS = ["covid", "normal", "pneumonia"]


@pytest.fixture(scope="module")
def shipped() -> dict[str, Run]:
    listing = list_runs(SHIPPED)
    assert not listing.problems, listing.problems
    return {run.run_id: run for run in listing.runs}


def make_run(run_id: str, rows: list[tuple], *, split: str = "test", folds: int | None = None,
             weights: str = "imagenet", accuracy: float | None = None, data: str = "toy",
             labels: list[str] = LABELS, method: str = "grouped stratified by patient",
             heldout: list[tuple] | None = None, heldout_name: str = "kaggle_test") -> Run:
    """An in-memory run from (path, true label, patient, predicted label[, confidence]) rows."""

    def frame(rows, split_name):
        records = []
        for path, label, patient, predicted, *rest in rows:
            sure = rest[0] if rest else 0.8
            other = (1 - sure) / (len(labels) - 1)
            records.append({"path": path, "split": split_name, "label": label,
                            "patient_id": patient,
                            **{f"prob_{c}": sure if c == predicted else other for c in labels}})
        return records

    records = frame(rows, split)
    heldout_metrics = {}
    info_heldout = []
    if heldout is not None:
        records += frame(heldout, f"heldout:{heldout_name}")
        heldout_metrics[heldout_name] = {"accuracy": 0.5}
        info_heldout.append({"name": heldout_name, "folder": f"/nonexistent/{heldout_name}"})
    right = [row[1] == row[3] for row in rows]
    info = {"backbone": "resnet50", "weights": weights, "classes": labels, "image_size": 224,
            "resize_mode": "squash", "head": "gap", "feature_shape": [7, 7, 2048],
            "data": {"name": data, "folder": f"/nonexistent/{data}"},
            "split": {"method": method, **({"folds": folds} if folds else {})},
            "heldout": info_heldout}
    metrics = {"test": {"labels": labels, "accuracy": accuracy if accuracy is not None
                        else float(np.mean(right)) if right else 0.0},
               "heldout": heldout_metrics}
    return Run(Path(f"/nonexistent/{run_id}"), info, metrics, pd.DataFrame(),
               pd.DataFrame(records))


def rows_from(truth: list[str], predicted: list[str], patients: list[str] | None = None):
    patients = patients or [f"p{i}" for i in range(len(truth))]
    return [(f"{t}/img{i}.jpg", t, patient, p)
            for i, (t, p, patient) in enumerate(zip(truth, predicted, patients, strict=True))]


# --------------------------------------------------------------------------- McNemar


def brute_force_two_sided(b: int, c: int) -> float:
    """Sum of the Binomial(b + c, ½) probabilities no larger than that of b."""
    n = b + c
    if n == 0:
        return 1.0
    probability = [math.comb(n, k) / 2 ** n for k in range(n + 1)]
    return min(1.0, sum(p for p in probability if p <= probability[b] * (1 + 1e-7)))


def pairs(b: int, c: int, both_right: int = 5, both_wrong: int = 2):
    """Labels and two runs' predictions with b images only a gets right, c only b."""
    y_true = ["normal"] * (b + c + both_right + both_wrong)
    y_a = ["normal"] * b + ["covid"] * c + ["normal"] * both_right + ["covid"] * both_wrong
    y_b = ["covid"] * b + ["normal"] * c + ["normal"] * both_right + ["pneumonia"] * both_wrong
    return y_true, y_a, y_b


@pytest.mark.parametrize(("b", "c", "expected"), [
    (0, 0, 1.0), (3, 3, 1.0), (0, 5, 2 / 32), (5, 0, 2 / 32), (1, 9, 2 * (1 + 10) / 1024),
    (0, 1, 1.0), (2, 10, 2 * (1 + 12 + 66) / 4096)])
def test_mcnemar_exact_p_by_hand(b, c, expected):
    test = mcnemar_exact(*pairs(b, c))
    assert (test["a_right_b_wrong"], test["a_wrong_b_right"]) == (b, c)
    assert (test["both_right"], test["both_wrong"]) == (5, 2)
    assert test["p"] == pytest.approx(expected)


def test_mcnemar_exact_matches_brute_force_for_small_counts():
    for b in range(0, 13):
        for c in range(0, 13):
            assert mcnemar_exact(*pairs(b, c, 1, 1))["p"] == pytest.approx(
                brute_force_two_sided(b, c)), (b, c)


def test_mcnemar_refuses_unequal_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact(["covid"], ["covid", "normal"], ["covid"])


# --------------------------------------------------------------------------- paired bootstrap


def brute_force_bootstrap(right_a, right_b, groups, repeats, seed):
    """The same resamples as :func:`paired_bootstrap` (same generator calls), one at a time."""
    unique = sorted(set(groups))
    members = {g: [i for i, x in enumerate(groups) if x == g] for g in unique}
    rng = np.random.default_rng(seed)
    differences = []
    for start in range(0, repeats, 250):
        draws = rng.integers(0, len(unique), size=(min(250, repeats - start), len(unique)))
        for row in draws:
            images = [i for g in row for i in members[unique[g]]]
            differences.append(np.mean([right_a[i] for i in images])
                               - np.mean([right_b[i] for i in images]))
    return list(np.percentile(differences, [2.5, 97.5]))


def test_paired_bootstrap_equals_resampling_patients_one_by_one():
    rng = np.random.default_rng(3)
    n = 60
    y_true = list(rng.choice(LABELS, n))
    y_a = [t if rng.random() < 0.85 else "normal" for t in y_true]
    y_b = [t if rng.random() < 0.7 else "pneumonia" for t in y_true]
    groups = [f"p{i // 3}" if i < 30 else f"q{i}" for i in range(n)]  # some patients, 3 images
    result = paired_bootstrap(y_true, y_a, y_b, groups, repeats=400, seed=11)
    right_a = [a == t for a, t in zip(y_a, y_true, strict=True)]
    right_b = [b == t for b, t in zip(y_b, y_true, strict=True)]
    expected = brute_force_bootstrap(right_a, right_b, groups, 400, 11)
    assert result["accuracy_difference_95ci"] == pytest.approx(expected)
    assert result["unit"] == "patient" and result["patients"] == 10 + 30
    assert result["accuracy_difference"] == pytest.approx(np.mean(right_a) - np.mean(right_b))


def test_paired_bootstrap_is_seeded_contains_the_difference_and_handles_no_positives():
    y_true, y_a, y_b = pairs(9, 3, both_right=30, both_wrong=4)
    # six positives among the images only a gets right: a finds all, b none
    y_true[:6], y_a[:6], y_b[:6] = ["covid"] * 6, ["covid"] * 6, ["normal"] * 6
    first = paired_bootstrap(y_true, y_a, y_b, repeats=500, seed=5)
    again = paired_bootstrap(y_true, y_a, y_b, repeats=500, seed=5)
    other = paired_bootstrap(y_true, y_a, y_b, repeats=500, seed=6)
    assert first == again
    assert first["accuracy_difference_95ci"] != other["accuracy_difference_95ci"]
    low, high = first["accuracy_difference_95ci"]
    assert first["accuracy_difference"] == pytest.approx(6 / 46)
    assert low <= first["accuracy_difference"] <= high
    assert first["unit"] == "image"
    assert first["sensitivity_difference"] == pytest.approx(1.0)  # a finds 6/6, b none
    assert first["positives"] == 6
    held = paired_bootstrap(["normal", "pneumonia"] * 10, ["normal"] * 20, ["pneumonia"] * 20,
                            repeats=200)
    assert held["sensitivity_difference"] is None and held["sensitivity_difference_95ci"] is None
    with pytest.raises(ValueError, match="at least 100"):
        paired_bootstrap(y_true, y_a, y_b, repeats=10)


def test_one_patient_with_many_images_widens_the_interval():
    # 40 images of one patient all favour a; as images they look decisive, as one patient not.
    y_true, y_a, y_b = pairs(40, 0, both_right=40, both_wrong=0)
    by_image = paired_bootstrap(y_true, y_a, y_b, repeats=500)
    groups = ["one"] * 40 + [f"p{i}" for i in range(40)]
    by_patient = paired_bootstrap(y_true, y_a, y_b, groups, repeats=500)
    width = [r["accuracy_difference_95ci"][1] - r["accuracy_difference_95ci"][0]
             for r in (by_image, by_patient)]
    assert width[1] > 2 * width[0]


# --------------------------------------------------------------------------- verdict


def verdict(low, high, p, *, a=0.95, b=0.92, n=300, discordant=20):
    return comparison_verdict("VGG16", "ResNet50", n=n, accuracy_a=a, accuracy_b=b,
                              difference_95ci=[low, high], mcnemar_p=p, discordant=discordant)


def test_verdict_names_a_winner_only_with_both_kinds_of_evidence():
    assert verdict(0.004, 0.041, 0.02) == (
        "VGG16 is better on these 300 test images by 3.0 points of accuracy (0.950 vs 0.920; "
        "95% CI 0.4 to 4.1; McNemar p = 0.020).")
    # interval excludes 0 but p ≥ 0.05, or p < 0.05 but the interval includes 0: no evidence
    for low, high, p in ((0.004, 0.041, 0.06), (-0.002, 0.041, 0.01), (0.0, 0.041, 0.01)):
        text = verdict(low, high, p)
        assert text.startswith("On these 300 test images there is no evidence"), text
    assert "difference +3.0 points, 95% CI +0.4 to +4.1; McNemar p = 0.060" in verdict(
        0.004, 0.041, 0.06)


def test_verdict_for_b_small_samples_ties_and_rounding():
    text = verdict(-0.05, -0.01, 0.001, a=0.90, b=0.93)
    assert text.startswith("ResNet50 is better on these 300 test images by 3.0 points")
    assert "(0.930 vs 0.900; 95% CI 1.0 to 5.0; McNemar p = 0.001)" in text
    small = verdict(-0.2, 0.1, 0.5, n=SMALL_COMPARISON - 1)
    assert f"these {SMALL_COMPARISON - 1} test images (few: only a large difference" in small
    assert "no evidence" in small
    same = verdict(0.0, 0.0, 1.0, a=0.9, b=0.9, discordant=0)
    assert "right and wrong on exactly the same images" in same
    # a p just under 0.05 is never printed as "p = 0.050"
    assert "McNemar p < 0.05)" in verdict(0.004, 0.041, 0.0499)
    assert "−1.6 to +2.4" in verdict(-0.016, 0.024, 0.7)


def test_numbers_for_reading():
    assert format_points(0.0234) == "+2.3" and format_points(-0.016) == "\u22121.6"
    assert format_points(-0.0001) == "+0.0" and format_points(0.041, signed=False) == "4.1"
    assert format_points(None) == format_interval_points([None, None]) == "\u2013"
    assert format_interval_points([-0.016, 0.024]) == "\u22121.6 to +2.4"
    assert [format_p(p) for p in (0.0004, 0.0126, 0.0499, 0.05, 0.734, 1.0)] == [
        "< 0.001", "0.013", "< 0.05", "0.050", "0.73", "1.00"]


# --------------------------------------------------------------------------- per class


def test_per_class_differences_by_hand():
    y_true = ["covid", "covid", "normal", "normal"]
    y_a = ["covid", "covid", "normal", "covid"]
    y_b = ["covid", "normal", "normal", "normal"]
    table = per_class_differences(y_true, y_a, y_b, LABELS).set_index(["class", "metric"])
    assert table.loc[("covid", "recall"), ["a", "b"]].tolist() == [1.0, 0.5]
    assert table.loc[("covid", "precision"), "a"] == pytest.approx(2 / 3)
    assert table.loc[("normal", "precision"), "difference"] == pytest.approx(1 - 2 / 3)
    assert table.loc[("covid", "f1"), "a"] == pytest.approx(0.8)
    # pneumonia: no image and never predicted: undefined, not 0
    assert table.loc[("pneumonia", "recall"), ["a", "b", "difference"]].isna().all()
    assert table.loc[("covid", "recall"), "support"] == 2


def test_per_class_difference_figure_in_points_without_undefined_bars():
    table = per_class_differences(["covid", "covid", "normal", "normal"],
                                  ["covid", "covid", "normal", "covid"],
                                  ["covid", "normal", "normal", "normal"], LABELS)
    figure = charts.per_class_difference_figure(table, "A", "B")
    assert [trace.name for trace in figure.data] == ["Precision", "Recall (sensitivity)", "F1"]
    recall = figure.data[1]
    assert list(recall.x) == ["covid", "normal"]  # pneumonia has no recall here
    assert list(recall.y) == pytest.approx([50.0, -50.0])
    assert figure.layout.yaxis.range[1] >= 50


# --------------------------------------------------------------------------- aligning runs


def test_compare_runs_on_made_up_runs_counts_pairs_and_lists_discordant_images():
    truth = ["covid"] * 4 + ["normal"] * 4 + ["pneumonia"] * 4
    run_a = make_run("a", rows_from(truth, ["covid"] * 4 + ["normal"] * 3 + ["covid"]
                                    + ["pneumonia"] * 4))
    b_rows = rows_from(truth, ["covid", "covid", "normal", "normal"] + ["normal"] * 4
                       + ["pneumonia", "pneumonia", "normal", "pneumonia"])
    b_rows[3] = (*b_rows[3][:4], 0.99)  # b's most confident mistake
    run_b = make_run("b", list(reversed(b_rows)))  # row order must not matter
    comparison = compare_runs(run_a, run_b, repeats=200)
    stats = comparison.stats
    assert (stats["n"], stats["a_right_b_wrong"], stats["a_wrong_b_right"]) == (12, 3, 1)
    assert (stats["both_right"], stats["both_wrong"]) == (8, 0)
    assert stats["accuracy_a"] == pytest.approx(11 / 12)
    assert stats["difference"] == pytest.approx(2 / 12)
    assert stats["sensitivity_a"] == 1.0 and stats["sensitivity_b"] == 0.5
    assert stats["mcnemar_p"] == pytest.approx(0.625)
    assert "no evidence" in comparison.verdict and comparison.better is None
    assert comparison.agreement_table().to_numpy().sum() == 12
    first, total = comparison.discordant("a", count=2)
    assert total == 3 and len(first) == 2
    assert first.loc[0, "path"] == "covid/img3.jpg" and first.loc[0, "p_wrong"] == 0.99
    assert first.loc[0, "predicted_b"] == "normal" and first.loc[0, "p_true_a"] == 0.8
    only_b, total_b = comparison.discordant("b")
    assert total_b == 1 and only_b.loc[0, "path"] == "normal/img7.jpg"
    payload = json.loads(json.dumps(comparison.to_json()))  # JSON-safe (no NaN)
    assert payload["per_class"][0]["class"] == "covid"


def test_patients_shared_in_either_run_form_one_group():
    truth = ["normal"] * 4
    run_a = make_run("a", rows_from(truth, truth, ["x", "x", "y", "z"]))
    run_b = make_run("b", rows_from(truth, truth, ["1", "2", "2", "3"]))
    groups = align_runs(run_a, run_b).frame["group"]
    assert groups.nunique() == 2 and groups[0] == groups[1] == groups[2] != groups[3]


@pytest.mark.parametrize(("change", "message"), [
    (dict(rows=rows_from(["normal"] * 3, ["normal"] * 3)),
     "a and b were scored on different test images (4 vs 3, 2 shared): a paired comparison "
     "needs the same images"),
    (dict(data="other"), "a was tested on toy and b on other"),
    (dict(labels=["normal", "pneumonia"]), "a paired comparison needs the same classes"),
    (dict(split="val"), "b has no test predictions (it has: none)"),
])
def test_refusals_are_one_readable_sentence(change, message):
    truth = ["normal", "normal", "pneumonia", "pneumonia"]
    run_a = make_run("a", rows_from(truth, truth))
    options = {"rows": rows_from(truth, truth), **change}
    if "labels" in change:
        options["rows"] = rows_from(truth, truth)
    run_b = make_run("b", **options)
    with pytest.raises(NotComparable) as error:
        compare_runs(run_a, run_b, repeats=200)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_refusals_for_labels_duplicates_itself_and_missing_heldout():
    truth = ["normal", "pneumonia"]
    run_a = make_run("a", rows_from(truth, truth), heldout=rows_from(truth, truth))
    relabelled = make_run("b", [("normal/img0.jpg", "pneumonia", "p0", "normal"),
                                ("pneumonia/img1.jpg", "pneumonia", "p1", "pneumonia")])
    with pytest.raises(NotComparable, match="disagree on the true label of 1 test image"):
        align_runs(run_a, relabelled)
    doubled = make_run("c", rows_from(truth, truth) + rows_from(truth, truth))
    with pytest.raises(NotComparable, match="lists 2 test image"):
        align_runs(run_a, doubled)
    with pytest.raises(NotComparable, match="compared with itself"):
        align_runs(run_a, run_a)
    plain = make_run("d", rows_from(truth, truth))
    with pytest.raises(NotComparable, match="d has no predictions for the held-out folder "
                                            "kaggle_test"):
        align_runs(run_a, plain, "heldout:kaggle_test")
    # a bare held-out name is the same scope
    assert normalise_scope("kaggle_test") == "heldout:kaggle_test"
    twin = make_run("e", rows_from(truth, ["pneumonia"] * 2), heldout=rows_from(truth, truth))
    assert len(align_runs(run_a, twin, "kaggle_test").frame) == 2


def test_cross_validation_pairs_only_on_the_same_images():
    truth = ["normal", "pneumonia", "normal", "pneumonia"]
    single = make_run("single", rows_from(truth[:2], truth[:2]))
    cv = make_run("cv", rows_from(truth, truth), folds=5)
    with pytest.raises(NotComparable, match=r"\(2 vs 4, 2 shared\).*cv is cross-validated"):
        align_runs(single, cv)
    other_cv = make_run("cv2", rows_from(truth, ["normal"] * 4), folds=5)
    assert align_runs(cv, other_cv).frame["path"].tolist() == sorted(
        row[0] for row in rows_from(truth, truth))


def test_default_pair_skips_controls_leaky_runs_and_other_splits():
    truth = ["normal", "pneumonia"]
    same = rows_from(truth, truth)
    control = make_run("control", same, weights="random", accuracy=0.99)
    leaky = make_run("leaky", same, method="random image split", accuracy=0.98)
    best = make_run("best", same, accuracy=0.95)
    elsewhere = make_run("elsewhere", rows_from(["covid"], ["covid"]), data="other",
                         accuracy=0.94)
    second = make_run("second", same, accuracy=0.90)
    assert leaky.is_leaky and control.is_control and not best.is_leaky
    pair = default_pair([control, leaky, elsewhere, second, best])
    assert [run.run_id for run in pair] == ["best", "second"]
    # without two eligible runs, any comparable pair
    assert {run.run_id for run in default_pair([control, leaky, elsewhere])} == {"control",
                                                                               "leaky"}
    assert default_pair([best]) is None


# --------------------------------------------------------------------------- shipped runs


@pytest.mark.parametrize("other", SAME_TEST_IMAGES)
def test_shipped_runs_on_one_split_pair_up_and_agree_with_their_metrics(shipped, other):
    run_a, run_b = shipped[MAIN], shipped[other]
    comparison = compare_runs(run_a, run_b, repeats=300)
    stats = comparison.stats
    assert stats["n"] == len(run_a.predictions_for("test")) == 256
    # each run's accuracy equals what its own metrics.json recorded
    assert stats["accuracy_a"] == pytest.approx(run_a.metrics["test"]["accuracy"])
    assert stats["accuracy_b"] == pytest.approx(run_b.metrics["test"]["accuracy"])
    # the discordant counts, recounted from predictions.csv by path
    a = run_a.predictions_for("test").set_index("path")
    b = run_b.predictions_for("test").set_index("path").loc[a.index]

    def right(frame, run):
        columns = [run.prediction_column(label) for label in run.labels]
        predicted = np.array(run.labels)[frame[columns].to_numpy().argmax(axis=1)]
        return predicted == frame["label"].to_numpy()

    right_a, right_b = right(a, run_a), right(b, run_b)
    assert stats["a_right_b_wrong"] == int(np.sum(right_a & ~right_b))
    assert stats["a_wrong_b_right"] == int(np.sum(~right_a & right_b))
    assert stats["pos_label"] == "covid" and stats["positives"] == int((a["label"] == "covid")
                                                                        .sum())
    low, high = stats["difference_95ci"]
    assert low <= stats["difference"] <= high


def test_shipped_cv_run_pairs_on_kaggle_but_not_on_test(shipped):
    with pytest.raises(NotComparable, match=r"\(256 vs 1280, 256 shared\)"):
        compare_runs(shipped[MAIN], shipped["resnet50-cxr3-cv5"])
    held = compare_runs(shipped[MAIN], shipped["resnet50-cxr3-cv5"], "heldout:kaggle_test",
                        repeats=200)
    assert held.stats["n"] == 624 and held.stats["sensitivity_difference"] is None
    # no covid image here: covid recall is undefined, and the JSON says null, not NaN
    payload = json.loads(json.dumps(held.to_json(), allow_nan=False))
    recall = next(row for row in payload["per_class"]
                  if (row["class"], row["metric"]) == ("covid", "recall"))
    assert recall["a"] is None and recall["support"] == 0
    assert held.stats["accuracy_b"] == pytest.approx(
        shipped["resnet50-cxr3-cv5"].metrics["heldout"]["kaggle_test"]["accuracy"])
    with pytest.raises(NotComparable, match="tested on cxr3 and resnet50-seed001-blog on "
                                            "seed001_0402"):
        compare_runs(shipped[MAIN], shipped["resnet50-seed001-blog"])


def test_run_accessors_on_a_shipped_run(shipped):
    run = shipped[MAIN]
    assert run.scopes == ["test", "heldout:kaggle_test"]
    assert run.heldout_names == ["kaggle_test"]
    assert len(run.predictions_for("kaggle_test")) == 624
    assert run.scope_record("heldout:kaggle_test")["name"] == "kaggle_test"
    assert run.scope_record("test")["name"] == "cxr3"
    assert run.prediction_column("covid") == "prob_covid"
    with pytest.raises(ValueError, match="not one of"):
        run.prediction_column("cat")
    assert not run.is_cross_validation and shipped["resnet50-cxr3-cv5"].is_cross_validation
    assert shipped["resnet50-cxr3-random-control"].is_control and not run.is_control
    assert {r.run_id for r in shipped.values() if r.is_leaky} == {"vgg16-seed001-blog2020"}
    assert run.disk_bytes() == sum(p.stat().st_size for p in run.path.iterdir())


# --------------------------------------------------------------------------- command line


def cli(*args):
    """The real command in a fresh process (exit status, stdout, stderr as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "xrcompare", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XRCOMPARE_RUNS_DIR": str(SHIPPED)})


def cli_here(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """The same command in this process (no interpreter start-up): status, stdout, stderr."""
    monkeypatch.setenv("XRCOMPARE_RUNS_DIR", str(SHIPPED))
    status = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_compare_json_on_two_shipped_runs(shipped):
    result = cli("compare", MAIN, SHIPPED / "resnet50-cxr3-padded", "--json", "--repeats", "300")
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(result.stdout)
    assert {"n", "accuracy_a", "accuracy_b", "difference", "difference_95ci", "mcnemar_p",
            "a_right_b_wrong", "a_wrong_b_right", "run_a", "run_b", "scope",
            "sensitivity_difference", "sensitivity_difference_95ci", "verdict"} <= set(payload)
    assert (payload["run_a"], payload["run_b"], payload["scope"]) == (
        MAIN, "resnet50-cxr3-padded", "test")
    expected = compare_runs(shipped[MAIN], shipped["resnet50-cxr3-padded"], repeats=300).stats
    for key in ("n", "mcnemar_p", "a_right_b_wrong", "a_wrong_b_right", "difference_95ci"):
        assert payload[key] == pytest.approx(expected[key]), key
    refused = cli("compare", MAIN, "resnet50-cxr3-cv5")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == (
        "error: resnet50-cxr3 and resnet50-cxr3-cv5 were scored on different test images "
        "(256 vs 1280, 256 shared): a paired comparison needs the same images "
        "(resnet50-cxr3-cv5 is cross-validated: its test rows span the whole dataset)")


def test_cli_compare_text_table_and_verdict(capsys, monkeypatch):
    status, out, _ = cli_here(capsys, monkeypatch, "compare", MAIN, "resnet50-cxr3-288px",
                              "--on", "heldout:kaggle_test", "--repeats", "200")
    assert status == 0
    lines = out.strip().splitlines()
    assert lines[2].startswith("on held-out kaggle_test: 624 images")
    assert lines[4].startswith("accuracy") and "covid sensitivity" not in out  # no covid here
    assert lines[-1].startswith("resnet50-cxr3") and "kaggle_test images" in lines[-1]


@pytest.mark.parametrize(("args", "message"), [
    ((MAIN, "resnet50-cxr3-padded", "--on", "heldout:nowhere"),
     "error: resnet50-cxr3 has no predictions for the held-out folder nowhere"),
    ((MAIN, "../trained"), "error: ../trained is neither a run folder nor a run id"),
    ((MAIN, MAIN), "error: resnet50-cxr3 is compared with itself"),
    ((MAIN, "resnet50-cxr3-padded", "--repeats", "50"), "error: a bootstrap needs at least 100"),
])
def test_cli_compare_refuses_in_one_line(capsys, monkeypatch, args, message):
    status, out, err = cli_here(capsys, monkeypatch, "compare", *args)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(message)
