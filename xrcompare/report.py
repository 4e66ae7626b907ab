"""One evaluation (a run scored on a labelled folder) as tables and text.

The CLI's ``evaluate`` prints :func:`evaluation_lines`; the app's *Evaluate on a folder* page
shows the tables the lines are made from (:func:`per_class_rows`, :func:`confusion_rows`,
:func:`heldout_share_rows`), so both say exactly the same. Pure functions of the metrics that
:func:`xrcompare.evaluate.evaluate_predictions` returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath

import pandas as pd

from xrcompare.evaluate import metrics_positive, overlap_sentence


def classes_present(metrics: dict) -> tuple[list[str], list[str]]:
    """(classes with images in the scored folder, classes without), in the run's order."""
    labels = list(metrics["labels"])
    present = [label for label in labels if metrics["per_class"][label]["support"] > 0]
    return present, [label for label in labels if label not in present]


def called_as(metrics: dict, label: str) -> int:
    """How many images of the folder the run called ``label``."""
    labels = list(metrics["labels"])
    column = labels.index(label)
    return int(sum(row[column] for row in metrics["confusion_matrix"]))


def absent_note(metrics: dict, label: str) -> str:
    """The sentence for a class without images: why it has no recall, and how often it was
    predicted anyway."""
    called = called_as(metrics, label)
    return (f"no images in this folder, so not in macro-F1; {called} "
            f"image{'s' if called != 1 else ''} called {label}")


def _interval(pair) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return ""
    return f"{pair[0]:.2f}–{pair[1]:.2f}"


def per_class_rows(metrics: dict) -> pd.DataFrame:
    """One row per class: support, precision, recall and F1 with their 95% intervals (as
    text), and a ``note``. A class without images has no recall or F1 (blank, never 0) and
    says so in its note; its precision is shown only when the run called some images that
    class (then it is 0: every such call is wrong)."""
    labels = list(metrics["labels"])
    present, _ = classes_present(metrics)
    intervals = (metrics.get("intervals") or {}).get("per_class") or {}
    rows = []
    for index, label in enumerate(labels):
        scores = metrics["per_class"][label]
        row = {"class": label, "support": int(scores["support"])}
        for key in ("precision", "recall", "f1"):
            bounds = (intervals.get(key) or [[None, None]] * len(labels))[index]
            row[key], row[f"{key}_95ci"] = scores.get(key), _interval(bounds)
        row["note"] = ""
        if label not in present:
            for key in ("recall", "f1"):
                row[key], row[f"{key}_95ci"] = None, "no images"
            if not called_as(metrics, label):
                row["precision"], row["precision_95ci"] = None, "never predicted"
            row["note"] = absent_note(metrics, label)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["class", "support", "precision", "precision_95ci",
                                        "recall", "recall_95ci", "f1", "f1_95ci", "note"])
    for key in ("precision", "recall", "f1"):
        frame[key] = pd.to_numeric(frame[key], errors="coerce").astype(float)
    return frame


def confusion_rows(metrics: dict) -> pd.DataFrame:
    """The confusion matrix as a table: one row per true class present, one column per
    predicted class (the run's classes)."""
    labels = list(metrics["labels"])
    present, _ = classes_present(metrics)
    matrix = dict(zip(labels, metrics["confusion_matrix"], strict=True))
    return pd.DataFrame([matrix[label] for label in present], index=pd.Index(present,
                        name="true class"), columns=labels)


def kept_out_pct(entry: dict, positive: str) -> float | None:
    """Of a held-out table entry's images, the share (%) not called ``positive`` (the 2020
    blog's "non-COVID" figure when the positive class is covid)."""
    share = (entry.get("predicted_pct") or {}).get(positive)
    return None if share is None else 100.0 - share


def heldout_share_rows(metrics: dict, positive: str | None = None) -> pd.DataFrame:
    """For a folder without images of the positive class (default: the one the metrics were
    scored with): per true class, its images, the share (%) predicted as each class and the
    share kept out of the positive class; empty otherwise."""
    positive = positive or metrics_positive(metrics)
    table = metrics.get("heldout_table") or {}
    rows = []
    for true_label, entry in table.items():
        row = {"true class": true_label, "images": entry.get("n")}
        row.update({f"called {label} %": share
                    for label, share in entry["predicted_pct"].items()})
        row[f"kept out of {positive} %"] = kept_out_pct(entry, positive)
        rows.append(row)
    return pd.DataFrame(rows)


def evaluation_lines(title: str, folder: str, metrics: dict, skipped: Iterable = (),
                     own_data: str = "") -> list[str]:
    """What ``evaluate`` prints: accuracy and macro-F1, the confusion matrix and per-class
    scores of the classes present (macro-F1 averages those), a line per class without images
    in the folder, the held-out shares and the patient overlap with the run's own data."""
    labels = list(metrics["labels"])
    present, absent = classes_present(metrics)
    confusion = confusion_rows(metrics)
    lines = [f"{title} on {folder} ({metrics['n']} images)"]
    engine = metrics.get("feature_engine") or {}
    if engine.get("note"):
        lines.append(f"features: {engine['note']} (scores may differ slightly from the run's "
                     "own)")
    lines += [f"accuracy {metrics['accuracy']:.3f}   macro-F1 {metrics['macro_f1']:.3f}"
             + (f" (over the {len(present)} classes present)" if absent else ""),
             "confusion matrix (rows true, columns predicted):",
             "            " + "".join(f"{label:>11}" for label in labels)]
    lines += [f"{label:>11} " + "".join(f"{int(value):>11}" for value in confusion.loc[label])
              for label in present]
    lines.append(f"{'class':>11} {'precision':>10} {'recall':>8} {'f1':>6} {'support':>8}")
    table = per_class_rows(metrics).set_index("class")
    for label in present:
        row = table.loc[label]
        lines.append(f"{label:>11} {row['precision']:>10.3f} {row['recall']:>8.3f} "
                     f"{row['f1']:>6.3f} {int(row['support']):>8}")
    for label in absent:
        lines.append(f"{label:>11} {absent_note(metrics, label)}")
    positive = metrics_positive(metrics)
    for true_label, entry in (metrics.get("heldout_table") or {}).items():
        shares = ", ".join(f"{k} {v:.1f}%" for k, v in entry["predicted_pct"].items())
        kept = kept_out_pct(entry, positive)
        lines.append(f"true {true_label}: predicted {shares}"
                     + (f"; non-{positive.upper()} {kept:.1f}%" if kept is not None else ""))
    if metrics.get("ece") is not None:
        lines.append(f"calibration: ECE {metrics['ece']:.3f} (top-label confidence, "
                     f"{metrics.get('ece_bins', 15)} equal-width bins)")
    overlap = overlap_sentence(metrics, PurePath(str(folder)).name, own_data)
    if overlap:
        lines.append(f"patients: {overlap}")
    skipped = list(skipped)
    if skipped:
        lines.append(f"skipped {len(skipped)} unreadable file(s): "
                     + "; ".join(f"{p} ({r})" for p, r in skipped[:5]))
    return lines
