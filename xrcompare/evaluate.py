"""Metrics with scikit-learn: confusion matrices, per-class scores, COVID-vs-rest operating
points, ROC/PR curves, bootstrap intervals (resampling patients) and held-out tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    auc,
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from xrcompare import CLASSES

POSITIVE_CLASS = "covid"

#: What the 2020 blog (youngsoul/pyimagesearch-covid19-image-classification) reported, quoted
#: once here for the dashboard and the README table (it was not re-run). ``accuracy``: three-class
#: test accuracy on its own random image split of ``data`` (``test_images`` images, the epoch
#: effectively chosen on them). ``kaggle_test``: for ``model`` on the Kaggle test split, per true
#: class, the share (%) called right and the share kept out of covid; nothing else was reported.
BLOG_2020_REPORTED = {
    "data": "seed001_0402",
    "test_images": 62,
    "accuracy": {"VGG16": 0.85, "VGG19": 0.89},
    "kaggle_test": {
        "model": "VGG16",
        "per_class": {"normal": {"called_right_pct": 68.0, "non_covid_pct": 84.0},
                      "pneumonia": {"called_right_pct": 85.0, "non_covid_pct": 97.0}},
    },
}


def _as_indices(y_true: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    lookup = {label: index for index, label in enumerate(labels)}
    unknown = sorted(set(y_true) - set(lookup))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's classes {list(labels)}")
    return np.array([lookup[label] for label in y_true], dtype=int)


def binary_operating_point(positive: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """Sensitivity, specificity, PPV, NPV and counts when ``score >= threshold`` is positive."""
    positive = np.asarray(positive, dtype=bool)
    called = np.asarray(score) >= threshold
    tp = int(np.sum(called & positive))
    fp = int(np.sum(called & ~positive))
    fn = int(np.sum(~called & positive))
    tn = int(np.sum(~called & ~positive))

    def ratio(a, b):
        return float(a / b) if b else None

    return {"threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
            "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn)}


def _counts_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised accuracy and per-class precision/recall/F1 from confusion matrices (..., k, k)."""
    diagonal = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    predicted = cm.sum(axis=-2).astype(float)
    actual = cm.sum(axis=-1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, diagonal / predicted, np.nan)
        recall = np.where(actual > 0, diagonal / actual, np.nan)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall),
                      np.where(actual > 0, 0.0, np.nan))
        accuracy = diagonal.sum(axis=-1) / cm.sum(axis=(-2, -1))
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1}


def _interval(samples: np.ndarray) -> list[float | None]:
    finite = samples[np.isfinite(samples)]
    if finite.size < 10:
        return [None, None]
    low, high = np.percentile(finite, [2.5, 97.5])
    return [float(low), float(high)]


def bootstrap_intervals(true_index: np.ndarray, pred_index: np.ndarray, groups: Sequence[str],
                        n_classes: int, *, positive_index: int | None, repeats: int = 1000,
                        seed: int = 0) -> dict:
    """95% percentile intervals, resampling patients (whole groups) with replacement."""
    rng = np.random.default_rng(seed)
    unique, group_index = np.unique(np.asarray(groups), return_inverse=True)
    # Per patient, its confusion-matrix contribution; a resample sums the drawn patients.
    per_patient = np.zeros((len(unique), n_classes, n_classes))
    np.add.at(per_patient, (group_index, true_index, pred_index), 1)
    draws = rng.integers(0, len(unique), size=(repeats, len(unique)))
    counts = np.zeros((repeats, len(unique)))
    for row in range(repeats):
        counts[row] = np.bincount(draws[row], minlength=len(unique))
    matrices = np.einsum("rp,pij->rij", counts, per_patient)
    scores = _counts_metrics(matrices)
    result = {"method": f"patient bootstrap, {repeats} resamples, 95% percentile",
              "accuracy": _interval(scores["accuracy"]),
              "per_class": {key: [_interval(scores[key][:, k]) for k in range(n_classes)]
                            for key in ("precision", "recall", "f1")}}
    if positive_index is not None:
        tp = matrices[:, positive_index, positive_index]
        positives = matrices[:, positive_index, :].sum(axis=1)
        called = matrices[:, :, positive_index].sum(axis=1)
        total = matrices.sum(axis=(1, 2))
        tn = total - positives - called + tp
        with np.errstate(divide="ignore", invalid="ignore"):
            result["sensitivity"] = _interval(tp / positives)
            result["specificity"] = _interval(tn / (total - positives))
    return result


def evaluate_predictions(y_true: Sequence[str], probabilities: np.ndarray,
                         groups: Sequence[str] | None = None, *,
                         labels: Sequence[str] = CLASSES, repeats: int = 1000,
                         seed: int = 0) -> dict:
    """All metrics of one set of predictions (rows true, columns predicted, ``labels`` order)."""
    labels = list(labels)
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels):
        raise ValueError(f"probabilities must have shape (n, {len(labels)})")
    if len(y_true) != len(probabilities):
        raise ValueError("y_true and probabilities differ in length")
    if len(y_true) == 0:
        raise ValueError("no predictions to evaluate")
    true_index = _as_indices(y_true, labels)
    pred_index = probabilities.argmax(axis=1)
    k = len(labels)
    cm = confusion_matrix(true_index, pred_index, labels=list(range(k)))
    precision, recall, f1, support = precision_recall_fscore_support(
        true_index, pred_index, labels=list(range(k)), zero_division=0)
    present = [index for index in range(k) if support[index] > 0]
    result: dict = {
        "labels": labels, "n": int(len(y_true)),
        "accuracy": float(np.mean(true_index == pred_index)),
        "confusion_matrix": cm.tolist(),
        "per_class": {labels[i]: {"precision": float(precision[i]), "recall": float(recall[i]),
                                  "f1": float(f1[i]), "support": int(support[i])}
                      for i in range(k)},
        "macro_f1": float(np.mean([f1[i] for i in present])),
        "classes_present": [labels[i] for i in present],
    }
    positive_index = labels.index(POSITIVE_CLASS) if POSITIVE_CLASS in labels else None
    positive = true_index == positive_index if positive_index is not None else None
    if positive_index is not None:
        called = pred_index == positive_index
        point = binary_operating_point(positive, called.astype(float), 0.5)
        point.pop("threshold")
        point["rule"] = "argmax (the predicted class is covid)"
        result["covid_vs_rest"] = point
    roc, ap = {}, {}
    for i in range(k):
        one = true_index == i
        if 0 < one.sum() < len(one):
            roc[labels[i]] = float(roc_auc_score(one, probabilities[:, i]))
            ap[labels[i]] = float(average_precision_score(one, probabilities[:, i]))
    result["roc_auc"], result["average_precision"] = roc, ap
    groups = list(groups) if groups is not None else [f"image{i}" for i in range(len(y_true))]
    intervals = bootstrap_intervals(
        true_index, pred_index, groups, k,
        positive_index=positive_index if positive is not None and 0 < positive.sum() < len(
            positive) else None, repeats=repeats, seed=seed)
    intervals["unit"] = ("patient" if len(set(groups)) < len(groups) else "image")
    result["intervals"] = intervals
    if positive_index is not None and not positive.any():
        result["heldout_table"] = heldout_table(y_true, pred_index, labels)
    return result


def heldout_table(y_true: Sequence[str], pred_index: np.ndarray, labels: Sequence[str]) -> dict:
    """For a folder without covid images: share of each true class predicted as each class.

    ``non_covid_pct`` is the blog's figure: the share kept out of "covid".
    """
    table = {}
    y_true = np.asarray(y_true)
    for true_label in labels:
        rows = pred_index[y_true == true_label]
        if rows.size == 0:
            continue
        shares = {labels[j]: float(np.mean(rows == j) * 100) for j in range(len(labels))}
        entry = {"n": int(rows.size), "predicted_pct": shares}
        if POSITIVE_CLASS in labels:
            entry["non_covid_pct"] = 100.0 - shares[POSITIVE_CLASS]
        table[true_label] = entry
    return table


def one_vs_rest_curves(y_true: Sequence[str], probabilities: np.ndarray, positive_label: str,
                       labels: Sequence[str] = CLASSES) -> dict | None:
    """ROC and precision-recall curves for ``positive_label`` against the rest (None if
    the data has only one side)."""
    labels = list(labels)
    positive = np.asarray(y_true) == positive_label
    if positive.all() or not positive.any():
        return None
    score = np.asarray(probabilities)[:, labels.index(positive_label)]
    fpr, tpr, roc_thresholds = roc_curve(positive, score)
    precision, recall, pr_thresholds = precision_recall_curve(positive, score)
    return {"fpr": fpr, "tpr": tpr, "roc_thresholds": roc_thresholds,
            "roc_auc": float(auc(fpr, tpr)), "precision": precision, "recall": recall,
            "pr_thresholds": pr_thresholds,
            "average_precision": float(average_precision_score(positive, score))}


# --------------------------------------------------------------------------- thresholds
#
# An image is called positive when ``score >= threshold``. Every threshold worth trying is one
# of the scores (or +inf, never positive). One tie rule everywhere: when thresholds are equally
# good by the criterion asked for, the one finding the most positives wins, which is the lowest
# of them (two thresholds with the same counts cannot both be in a sweep).


def threshold_sweep(positive: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    """Every distinct threshold (each score, plus +inf = never positive) with its counts and
    rates (NaN where undefined); thresholds ascend."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    if positive.shape != score.shape:
        raise ValueError("positive and score differ in shape")
    thresholds = np.concatenate([np.unique(score), [np.inf]])
    positive_scores = np.sort(score[positive])
    negative_scores = np.sort(score[~positive])
    tp = len(positive_scores) - np.searchsorted(positive_scores, thresholds, side="left")
    fp = len(negative_scores) - np.searchsorted(negative_scores, thresholds, side="left")
    fn = len(positive_scores) - tp
    tn = len(negative_scores) - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.DataFrame({
            "threshold": thresholds, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "sensitivity": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
            "specificity": np.where(tn + fp > 0, tn / (tn + fp), np.nan),
            "ppv": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "npv": np.where(tn + fn > 0, tn / (tn + fn), np.nan),
        })


def _sweep_point(sweep: pd.DataFrame, row: int) -> dict:
    """One sweep row as :func:`binary_operating_point` returns it (None for undefined)."""
    point = sweep.iloc[row].to_dict()
    for key in ("tp", "fp", "fn", "tn"):
        point[key] = int(point[key])
    for key in ("sensitivity", "specificity", "ppv", "npv"):
        point[key] = None if pd.isna(point[key]) else float(point[key])
    point["threshold"] = float(point["threshold"])
    return point


def point_at(sweep: pd.DataFrame, threshold: float) -> dict:
    """The operating point for any ``threshold`` (the first sweep row at or above it)."""
    row = int(np.searchsorted(sweep["threshold"].to_numpy(), threshold, side="left"))
    point = _sweep_point(sweep, min(row, len(sweep) - 1))
    point["threshold"] = float(threshold)
    return point


def threshold_for_sensitivity(sweep: pd.DataFrame, target: float) -> dict | None:
    """The threshold of a :func:`threshold_sweep` reaching ``sensitivity >= target`` with the
    fewest false positives (None when there are no positives).

    Ties (same false positives) go to the most positives found: sensitivity that costs no
    false alarm is taken.
    """
    if not 0 <= target <= 1:
        raise ValueError(f"the target sensitivity must be between 0 and 1, got {target}")
    if int(sweep["tp"].iloc[0] + sweep["fn"].iloc[0]) == 0:
        return None
    sensitivity = sweep["sensitivity"].to_numpy()
    false_positives = sweep["fp"].to_numpy()
    # The lowest positive score finds every positive, so some threshold always reaches.
    reaching = sensitivity >= target - 1e-12
    best = reaching & (false_positives == false_positives[reaching].min())
    best &= sensitivity == sensitivity[best].max()
    return _sweep_point(sweep, int(np.flatnonzero(best)[0]))


def cheapest_point(sweep: pd.DataFrame, miss_cost: float) -> dict:
    """The threshold minimising ``miss_cost × FN + FP`` (one missed case costs ``miss_cost``
    false alarms), with its ``cost``; ties go to the most positives found (lowest threshold)."""
    if miss_cost < 0:
        raise ValueError("the cost of a missed case cannot be negative")
    cost = miss_cost * sweep["fn"].to_numpy() + sweep["fp"].to_numpy()
    point = _sweep_point(sweep, int(np.argmin(cost)))
    point["cost"] = float(cost.min())
    return point


def summarise_folds(fold_metrics: list[dict]) -> dict:
    """Mean ± sd across cross-validation folds for the headline numbers."""

    def stats(values):
        values = np.array([v for v in values if v is not None], dtype=float)
        if values.size == 0:
            return None
        return {"mean": float(values.mean()),
                "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                "values": values.tolist()}

    summary = {"folds": len(fold_metrics),
               "accuracy": stats(m["accuracy"] for m in fold_metrics),
               "macro_f1": stats(m["macro_f1"] for m in fold_metrics)}
    for key in ("sensitivity", "specificity"):
        summary[f"covid_{key}"] = stats(m.get("covid_vs_rest", {}).get(key) for m in fold_metrics)
    summary["per_class_recall"] = {
        label: stats(m["per_class"][label]["recall"] for m in fold_metrics)
        for label in fold_metrics[0]["labels"]}
    return summary
