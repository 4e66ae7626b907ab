"""Metrics with scikit-learn: confusion matrices, per-class scores, positive-vs-rest operating
points, ROC/PR curves, bootstrap intervals (resampling patients) and held-out tables.

The positive class is the run's (``--positive``, :mod:`xrcompare.classes`; covid by default).
Its one-against-the-rest figures sit under the key ``covid_vs_rest`` (the schema's name, kept
so the shipped runs read unchanged) whose ``positive`` names the class; folds summaries keep
``covid_sensitivity`` / ``covid_specificity`` the same way. ``non_covid_pct`` (the 2020 blog's
figure) is only written when the positive class is covid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from xrcompare import CLASSES
from xrcompare.classes import DEFAULT_POSITIVE, default_positive

#: The positive class of the three-class runs (a run's own: :attr:`xrcompare.runs.Run.positive`).
POSITIVE_CLASS = DEFAULT_POSITIVE

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


#: The seed papers' other protocols, as they reported them (each split by image, not by
#: patient, so their figures are not comparable with a patient-wise split's; README puts them
#: side by side with that caveat).
SEED_PAPERS_REPORTED = {
    "covid-vs-rest": {
        "paper": "Apostolopoulos & Mpesiana (2020), covid vs non-covid, 10-fold "
                 "cross-validation split by image",
        "accuracy": 0.9678, "sensitivity": 0.9866, "specificity": 0.9646},
    "four-class": {
        "paper": "a MobileNetV3 study, covid / bacterial / viral / normal, split by image",
        "accuracy": 0.956, "sensitivity": None, "specificity": None},
}


def metrics_positive(metrics: dict) -> str:
    """The positive class a set of metrics was scored with (``covid_vs_rest.positive``;
    covid for metrics written before runs chose one)."""
    block = metrics.get("covid_vs_rest")
    found = block.get("positive") if isinstance(block, dict) else None
    return found if isinstance(found, str) else POSITIVE_CLASS


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
                         seed: int = 0, positive: str | None = None) -> dict:
    """All metrics of one set of predictions (rows true, columns predicted, ``labels`` order);
    ``positive`` (default :func:`xrcompare.classes.default_positive`) is the class of the
    one-against-the-rest figures."""
    from sklearn.metrics import (  # lazily: a second to import
        average_precision_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )
    labels = list(labels)
    positive_label = positive if positive is not None else default_positive(labels)
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
    positive_index = labels.index(positive_label) if positive_label in labels else None
    positive = true_index == positive_index if positive_index is not None else None
    if positive_index is not None:
        called = pred_index == positive_index
        point = binary_operating_point(positive, called.astype(float), 0.5)
        point.pop("threshold")
        point["rule"] = f"argmax (the predicted class is {positive_label})"
        point["positive"] = positive_label
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
        result["heldout_table"] = heldout_table(y_true, pred_index, labels, positive_label)
    result["ece"] = expected_calibration_error(y_true, probabilities, labels)
    result["ece_bins"] = ECE_BINS
    return result


# --------------------------------------------------------------------------- calibration
#
# A model is calibrated when, of the images it calls with confidence 0.8, about 80% are right.
# Confidence here is the top-label probability (the probability of the predicted class);
# the expected calibration error (ECE, Guo et al. 2017) bins the images by confidence into
# ECE_BINS equal-width bins on [0, 1] (a bin holds low < confidence <= high; the first also
# holds 0) and averages |accuracy - mean confidence| over the bins, weighted by their images.

#: Equal-width confidence bins of the ECE and of the reliability diagram.
ECE_BINS = 15


def reliability(y_true: Sequence[str], probabilities: np.ndarray,
                labels: Sequence[str] = CLASSES, bins: int = ECE_BINS) -> dict:
    """The reliability diagram's data and the ECE of top-label confidence.

    Returns ``ece``, ``bins`` (their number), ``n`` and ``table``: one entry per bin with
    ``low``, ``high``, ``count``, ``confidence`` (mean top-label probability) and
    ``accuracy`` (share right), None for empty bins.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    labels = list(labels)
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels):
        raise ValueError(f"probabilities must have shape (n, {len(labels)})")
    if len(y_true) != len(probabilities):
        raise ValueError("y_true and probabilities differ in length")
    if len(y_true) == 0:
        raise ValueError("no predictions to calibrate")
    true_index = _as_indices(list(y_true), labels)
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == true_index
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for number in range(bins):
        members = which == number
        count = int(members.sum())
        entry = {"low": float(edges[number]), "high": float(edges[number + 1]),
                 "count": count, "confidence": None, "accuracy": None}
        if count:
            entry["confidence"] = float(confidence[members].mean())
            entry["accuracy"] = float(right[members].mean())
            ece += count / len(right) * abs(entry["accuracy"] - entry["confidence"])
        table.append(entry)
    return {"ece": float(ece), "bins": bins, "n": int(len(right)), "table": table}


def expected_calibration_error(y_true: Sequence[str], probabilities: np.ndarray,
                               labels: Sequence[str] = CLASSES, bins: int = ECE_BINS) -> float:
    """The ECE of top-label confidence (see :func:`reliability`): 0 is perfectly calibrated,
    0.1 means confidence and accuracy differ by 10 points on average."""
    return reliability(y_true, probabilities, labels, bins)["ece"]


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of probabilities: softmax(log p / T). T > 1 softens an
    over-confident model, T < 1 sharpens it; the predicted class never changes."""
    if not temperature > 0:
        raise ValueError(f"the temperature must be positive, got {temperature}")
    logits = np.log(np.clip(np.asarray(probabilities, dtype=float), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


#: The temperatures :func:`fit_temperature` searches (log-uniform bounds).
TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(y_true: Sequence[str], probabilities: np.ndarray,
                    labels: Sequence[str] = CLASSES) -> float:
    """The temperature minimising the negative log-likelihood of ``y_true`` (Guo et al.
    2017), the log-probabilities taken as logits. Fit it on a validation split, never on the
    images it is then judged on."""
    from scipy.optimize import minimize_scalar

    labels = list(labels)
    true_index = _as_indices(list(y_true), labels)
    if len(true_index) == 0:
        raise ValueError("no predictions to fit a temperature on")
    logits = np.log(np.clip(np.asarray(probabilities, dtype=float), 1e-12, 1.0))

    def loss(log_temperature: float) -> float:
        scaled = logits / np.exp(log_temperature)
        scaled -= scaled.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scaled).sum(axis=1))
        return float(np.mean(log_norm - scaled[np.arange(len(true_index)), true_index]))

    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    found = minimize_scalar(loss, bounds=(low, high), method="bounded",
                            options={"xatol": 1e-4})
    return float(np.exp(found.x))


def evaluate_heldout(y_true: Sequence[str], probabilities: np.ndarray, groups: Sequence[str],
                     overlap: dict | None, shared: Sequence[bool] | None = None,
                     **options) -> dict:
    """:func:`evaluate_predictions` of a held-out folder, with its patient overlap.

    ``overlap`` (:func:`xrcompare.data.patient_overlap`: patients, images, ids shared with
    the run's own data; None when unknown) is kept as ``patient_overlap``; when some images
    are shared (``shared`` flags them), ``without_overlap`` holds the same metrics computed
    without them, so a figure is never quoted as held-out when patients were seen.
    """
    metrics = evaluate_predictions(y_true, probabilities, groups, **options)
    if overlap is None:
        return metrics
    metrics["patient_overlap"] = overlap
    keep = ~np.asarray(shared if shared is not None else [], dtype=bool)
    if overlap.get("images") and keep.size == len(y_true) and keep.any():
        metrics["without_overlap"] = evaluate_predictions(
            list(np.asarray(y_true, dtype=object)[keep]),
            np.asarray(probabilities)[keep], list(np.asarray(groups, dtype=object)[keep]),
            **options)
    return metrics


def overlap_sentence(metrics: dict, folder: str, own: str) -> str | None:
    """One sentence on a held-out folder's patient overlap with a run's own data ``own``:
    how many patients and images it shares and the scores without them; None when it was
    not checked."""
    overlap = metrics.get("patient_overlap")
    if not isinstance(overlap, dict):
        return None
    if not overlap.get("images"):
        return f"No patient of {folder} is in the run's own data ({own}), by patient id."
    patients, images = overlap["patients"], overlap["images"]
    text = (f"{patients} patient{'s' if patients != 1 else ''} ({images} "
            f"image{'s' if images != 1 else ''}) of {folder} also appear in the run's own "
            f"data ({own})")
    rest = metrics.get("without_overlap")
    if not isinstance(rest, dict):
        left_none = images >= int(metrics.get("n") or 0)
        return text + ("; no image is left without them." if left_none else ".")
    return (text + f"; without them ({rest['n']} images): accuracy {rest['accuracy']:.3f}, "
            f"macro-F1 {rest['macro_f1']:.3f}.")


def heldout_table(y_true: Sequence[str], pred_index: np.ndarray, labels: Sequence[str],
                  positive: str = POSITIVE_CLASS) -> dict:
    """For a folder without images of the positive class: share of each true class predicted
    as each class.

    ``non_covid_pct`` is the blog's figure, the share kept out of "covid": written only when
    the positive class is covid.
    """
    table = {}
    y_true = np.asarray(y_true)
    for true_label in labels:
        rows = pred_index[y_true == true_label]
        if rows.size == 0:
            continue
        shares = {labels[j]: float(np.mean(rows == j) * 100) for j in range(len(labels))}
        entry = {"n": int(rows.size), "predicted_pct": shares}
        if positive == POSITIVE_CLASS and POSITIVE_CLASS in labels:
            entry["non_covid_pct"] = 100.0 - shares[POSITIVE_CLASS]
        table[true_label] = entry
    return table


def one_vs_rest_curves(y_true: Sequence[str], probabilities: np.ndarray, positive_label: str,
                       labels: Sequence[str] = CLASSES) -> dict | None:
    """ROC and precision-recall curves for ``positive_label`` against the rest (None if
    the data has only one side)."""
    from sklearn.metrics import (  # lazily: a second to import
        auc,
        average_precision_score,
        precision_recall_curve,
        roc_curve,
    )
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


# --------------------------------------------------------------------------- two runs, paired
#
# Two runs scored on the SAME images: each image is a pair (run a right or wrong, run b right or
# wrong). The pair keeps what an unpaired comparison throws away (both runs met the same hard
# images), so small differences can be told from noise. Predictions are class labels here;
# :mod:`xrcompare.compare` lines two runs' predictions.csv up and refuses unequal image sets.

#: Below this many images a paired comparison can only show large differences; the verdict
#: says so.
SMALL_COMPARISON = 100
#: The significance level of the verdict (both the McNemar test and the 95% interval).
ALPHA = 0.05


def mcnemar_exact(y_true: Sequence, y_pred_a: Sequence, y_pred_b: Sequence) -> dict:
    """McNemar's exact test: the two-sided binomial test (p = ½) on the discordant pairs.

    ``a_right_b_wrong`` (b) and ``a_wrong_b_right`` (c) are the images exactly one run gets
    right; under "neither is better" each discordant image is a fair coin. ``p`` is 1 when there
    is no discordant image.
    """
    from scipy.stats import binomtest

    y_true, y_pred_a, y_pred_b = (np.asarray(v, dtype=object) for v in (y_true, y_pred_a,
                                                                         y_pred_b))
    if not len(y_true) == len(y_pred_a) == len(y_pred_b):
        raise ValueError("y_true, y_pred_a and y_pred_b differ in length")
    right_a, right_b = y_pred_a == y_true, y_pred_b == y_true
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return {"a_right_b_wrong": b, "a_wrong_b_right": c,
            "both_right": int(np.sum(right_a & right_b)),
            "both_wrong": int(np.sum(~right_a & ~right_b)), "p": min(1.0, p)}


def paired_bootstrap(y_true: Sequence, y_pred_a: Sequence, y_pred_b: Sequence,
                     groups: Sequence | None = None, *, pos_label: str | None = POSITIVE_CLASS,
                     repeats: int = 2000, seed: int = 0) -> dict:
    """95% percentile intervals of accuracy(a) − accuracy(b) and sensitivity(a) −
    sensitivity(b) of ``pos_label``, resampling patients (``groups``; images when None) with
    replacement, the same resample for both runs.

    The sensitivity entries are None when no image is of ``pos_label`` (e.g. a held-out folder
    without covid). Differences are fractions (0.023 = 2.3 points).
    """
    y_true = np.asarray(y_true, dtype=object)
    right_a = np.asarray(y_pred_a, dtype=object) == y_true
    right_b = np.asarray(y_pred_b, dtype=object) == y_true
    if not len(y_true) == len(right_a) == len(right_b):
        raise ValueError("y_true, y_pred_a and y_pred_b differ in length")
    if len(y_true) == 0:
        raise ValueError("no predictions to compare")
    if repeats < 100:
        raise ValueError(f"a bootstrap needs at least 100 resamples, got {repeats}")
    groups = np.arange(len(y_true)) if groups is None else np.asarray(groups)
    if len(groups) != len(y_true):
        raise ValueError("groups and y_true differ in length")
    _, group_index = np.unique(groups.astype(str), return_inverse=True)
    positive = y_true == pos_label if pos_label is not None else np.zeros(len(y_true), bool)
    # Per patient: images, right by a, right by b, positives, positives found by a and by b.
    # Integer counts throughout: an integer matrix product needs no BLAS threads (a float one
    # stalls for long on a busy machine) and is exact.
    columns = np.stack([np.ones(len(y_true), bool), right_a, right_b, positive,
                        positive & right_a, positive & right_b], axis=1).astype(np.int64)
    per_patient = np.zeros((group_index.max() + 1, columns.shape[1]), dtype=np.int64)
    np.add.at(per_patient, group_index, columns)
    patients = len(per_patient)
    rng = np.random.default_rng(seed)
    accuracy, sensitivity = [], []
    for start in range(0, repeats, 250):  # bounded memory: 250 resamples at a time
        size = min(250, repeats - start)
        draws = rng.integers(0, patients, size=(size, patients))
        offsets = np.arange(size)[:, None] * patients
        counts = np.bincount((draws + offsets).ravel(), minlength=size * patients)
        counts = counts.reshape(size, patients)
        totals = counts @ per_patient
        accuracy.append((totals[:, 1] - totals[:, 2]) / totals[:, 0])
        with np.errstate(divide="ignore", invalid="ignore"):
            sensitivity.append((totals[:, 4] - totals[:, 5]) / totals[:, 3])
    n_positive = int(positive.sum())
    result = {
        "method": f"paired patient bootstrap, {repeats} resamples, 95% percentile",
        "unit": "patient" if patients < len(y_true) else "image", "patients": patients,
        "seed": seed, "repeats": repeats,
        "accuracy_difference": float(right_a.mean() - right_b.mean()),
        "accuracy_difference_95ci": _interval(np.concatenate(accuracy)),
        "pos_label": pos_label, "positives": n_positive,
        "sensitivity_difference": None, "sensitivity_difference_95ci": None,
    }
    if n_positive:
        result["sensitivity_difference"] = float(
            (right_a & positive).sum() / n_positive - (right_b & positive).sum() / n_positive)
        result["sensitivity_difference_95ci"] = _interval(np.concatenate(sensitivity))
    return result


def per_class_differences(y_true: Sequence, y_pred_a: Sequence, y_pred_b: Sequence,
                          labels: Sequence[str]) -> pd.DataFrame:
    """Per class and metric (precision, recall, F1): run a, run b and a − b.

    Long table with columns class, metric, a, b, difference, support; NaN where a score is
    undefined (recall of a class with no image, precision of a class never predicted).
    """
    from sklearn.metrics import confusion_matrix  # lazily: a second to import
    labels = list(labels)
    true_index = _as_indices(list(y_true), labels)
    rows = []
    scores = {}
    for name, predicted in (("a", y_pred_a), ("b", y_pred_b)):
        pred_index = _as_indices(list(predicted), labels)
        cm = confusion_matrix(true_index, pred_index, labels=list(range(len(labels))))
        scores[name] = _counts_metrics(cm)
    support = np.bincount(true_index, minlength=len(labels))
    for k, label in enumerate(labels):
        for metric in ("precision", "recall", "f1"):
            a, b = float(scores["a"][metric][k]), float(scores["b"][metric][k])
            rows.append({"class": label, "metric": metric, "a": a, "b": b,
                         "difference": a - b, "support": int(support[k])})
    return pd.DataFrame(rows, columns=["class", "metric", "a", "b", "difference", "support"])


def format_points(value: float | None, signed: bool = True) -> str:
    """A difference of fractions in percentage points ("+2.3", "−1.6" with a real minus sign;
    unsigned: "2.3"); "–" for None."""
    if value is None:
        return "\u2013"
    text = f"{abs(value) * 100:.1f}"
    if not signed:
        return text
    return ("+" if value >= 0 or text == "0.0" else "\u2212") + text


def format_interval_points(interval: Sequence[float | None] | None) -> str:
    """A 95% interval of a difference in points: "−1.6 to +2.4" ("–" when undefined)."""
    if not interval or interval[0] is None or interval[1] is None:
        return "\u2013"
    return f"{format_points(interval[0])} to {format_points(interval[1])}"


def format_p(p: float) -> str:
    """A p-value for reading, never rounded across the :data:`ALPHA` line: "< 0.001",
    "0.013", "< 0.05", "0.73"."""
    if p < 0.001:
        return "< 0.001"
    text = f"{p:.2f}" if p >= 0.1 else f"{p:.3f}"
    if p < ALPHA <= float(text):
        return f"< {ALPHA:g}"
    return text


def p_phrase(p: float) -> str:
    """"p = 0.013" or "p < 0.001": :func:`format_p` in a sentence."""
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def better_run(difference: float, difference_95ci: Sequence[float | None] | None,
               mcnemar_p: float) -> str | None:
    """"a" or "b" when one run is better by the verdict's rule, else None: the 95% interval of
    accuracy(a) − accuracy(b) excludes 0 AND McNemar's exact p < :data:`ALPHA`."""
    low, high = difference_95ci if difference_95ci else (None, None)
    if low is None or high is None or mcnemar_p >= ALPHA or low <= 0 <= high:
        return None
    return "a" if difference > 0 else "b"


def comparison_verdict(name_a: str, name_b: str, *, n: int, accuracy_a: float,
                       accuracy_b: float, difference_95ci: Sequence[float | None],
                       mcnemar_p: float, discordant: int, images: str = "test images") -> str:
    """One plain sentence: which run is better on these images, or that there is no evidence.

    Rule: a run is "better" only when the 95% bootstrap interval of the accuracy difference
    excludes 0 AND McNemar's exact p < 0.05; otherwise there is no evidence either way. Small
    comparisons (fewer than :data:`SMALL_COMPARISON` images) say so.
    """
    difference = accuracy_a - accuracy_b
    low, high = difference_95ci if difference_95ci else (None, None)
    where = f"these {n} {images}"
    if n < SMALL_COMPARISON:
        where += " (few: only a large difference could show)"
    if discordant == 0:
        return (f"On {where} both runs are right and wrong on exactly the same images "
                f"(accuracy {accuracy_a:.3f} each): no difference to test.")
    better = better_run(difference, difference_95ci, mcnemar_p)
    if better is not None:
        if better == "a":
            better, sign, bounds = name_a, 1, (low, high)
        else:
            better, sign, bounds = name_b, -1, (-high, -low)
        return (f"{better} is better on {where} by "
                f"{format_points(sign * difference, False)} points of accuracy "
                f"({max(accuracy_a, accuracy_b):.3f} vs {min(accuracy_a, accuracy_b):.3f}; "
                f"95% CI {format_points(bounds[0], False)} to "
                f"{format_points(bounds[1], False)}; McNemar {p_phrase(mcnemar_p)}).")
    interval = ("" if low is None else
                f", 95% CI {format_interval_points([low, high])}")
    return (f"On {where} there is no evidence that either is better (accuracy "
            f"{accuracy_a:.3f} vs {accuracy_b:.3f}; difference {format_points(difference)} points"
            f"{interval}; McNemar {p_phrase(mcnemar_p)}).")


def compare_predictions(y_true: Sequence, y_pred_a: Sequence, y_pred_b: Sequence,
                        groups: Sequence | None = None, *, labels: Sequence[str],
                        pos_label: str | None = POSITIVE_CLASS, name_a: str = "A",
                        name_b: str = "B", images: str = "test images", repeats: int = 2000,
                        seed: int = 0) -> dict:
    """Everything a paired comparison of two runs reports, as plain JSON-ready values.

    ``difference`` is accuracy(a) − accuracy(b); ``verdict`` is :func:`comparison_verdict`'s
    sentence. ``pos_label`` falls back to None when it is not one of ``labels``.
    """
    labels = list(labels)
    y_true = list(y_true)
    for predicted in (y_true, y_pred_a, y_pred_b):
        _as_indices(list(predicted), labels)
    if pos_label not in labels:
        pos_label = None
    test = mcnemar_exact(y_true, y_pred_a, y_pred_b)
    intervals = paired_bootstrap(y_true, y_pred_a, y_pred_b, groups, pos_label=pos_label,
                                 repeats=repeats, seed=seed)
    n = len(y_true)
    accuracy_a = (test["both_right"] + test["a_right_b_wrong"]) / n
    accuracy_b = (test["both_right"] + test["a_wrong_b_right"]) / n
    result = {
        "n": n, "patients": intervals["patients"], "unit": intervals["unit"],
        "accuracy_a": accuracy_a, "accuracy_b": accuracy_b,
        "difference": accuracy_a - accuracy_b,
        "difference_95ci": intervals["accuracy_difference_95ci"],
        "mcnemar_p": test["p"],
        "a_right_b_wrong": test["a_right_b_wrong"], "a_wrong_b_right": test["a_wrong_b_right"],
        "both_right": test["both_right"], "both_wrong": test["both_wrong"],
        "pos_label": pos_label, "positives": intervals["positives"],
        "sensitivity_a": None, "sensitivity_b": None,
        "sensitivity_difference": intervals["sensitivity_difference"],
        "sensitivity_difference_95ci": intervals["sensitivity_difference_95ci"],
        "bootstrap": intervals["method"], "seed": seed,
    }
    if intervals["positives"]:
        positive = np.asarray(y_true, dtype=object) == pos_label
        for key, predicted in (("sensitivity_a", y_pred_a), ("sensitivity_b", y_pred_b)):
            right = np.asarray(predicted, dtype=object)[positive] == pos_label
            result[key] = float(right.mean())
    result["better"] = better_run(result["difference"], result["difference_95ci"], test["p"])
    result["verdict"] = comparison_verdict(
        name_a, name_b, n=n, accuracy_a=accuracy_a, accuracy_b=accuracy_b,
        difference_95ci=result["difference_95ci"], mcnemar_p=test["p"],
        discordant=test["a_right_b_wrong"] + test["a_wrong_b_right"], images=images)
    return result
