"""Tables across runs (pure pandas): the leaderboard and per-class scores."""

from __future__ import annotations

import pandas as pd

from xrcompare.runs import Run

#: One plain-language line per leaderboard column.
LEADERBOARD_COLUMNS = {
    "run": "The run's name.",
    "backbone": "The frozen ImageNet CNN whose features the head was trained on.",
    "weights": "ImageNet weights, or a random-init control showing what ImageNet features buy.",
    "data": "The training folder.",
    "split": "How images were divided: always by patient, so no patient is on both sides.",
    "image_size": "Input size in pixels.",
    "resize": "squash: stretched to a square; pad: aspect kept with black borders.",
    "epochs": "Epoch kept (chosen on the validation split) / epochs trained.",
    "accuracy": "Share of test images whose predicted class is right.",
    "accuracy_95ci": "95% bootstrap interval of the accuracy, resampling patients.",
    "macro_f1": "Mean F1 over the classes: balances precision and recall per class.",
    "covid_sensitivity": "Of the COVID test images, the share called covid (misses are false "
                         "negatives).",
    "covid_specificity": "Of the non-COVID test images, the share not called covid.",
    "kaggle_normal_non_covid_pct": "Held-out Kaggle NORMAL images kept out of 'covid' (%).",
    "kaggle_pneumonia_non_covid_pct": "Held-out Kaggle PNEUMONIA images kept out of 'covid' (%).",
    "kaggle_accuracy": "Accuracy on the held-out Kaggle test split (normal vs pneumonia).",
    "train_seconds": "Wall time of the whole run (features, head, evaluation).",
    "trainable_params": "Parameters trained in the head; the base stays frozen.",
}


def _interval_text(interval) -> str:
    if not interval or interval[0] is None:
        return ""
    return f"{interval[0]:.2f}–{interval[1]:.2f}"


def _first_heldout(run: Run) -> tuple[str | None, dict]:
    heldout = run.metrics.get("heldout") or {}
    for name, metrics in heldout.items():
        return name, metrics
    return None, {}


def leaderboard(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for run in runs:
        test = run.metrics["test"]
        covid = test.get("covid_vs_rest", {})
        _, heldout = _first_heldout(run)
        table = heldout.get("heldout_table", {})
        info = run.info
        rows.append({
            "run": run.title,
            "run_id": run.run_id,
            "backbone": info.get("backbone_display", info["backbone"]),
            "weights": "random-init control" if run.is_random_control else "ImageNet",
            "data": info["data"]["name"],
            "split": (f"{info['split']['folds']}-fold CV by patient" if info["split"].get("folds")
                      else "train/val/test by patient"),
            "image_size": info["image_size"],
            "resize": info["resize_mode"],
            "epochs": f"{info.get('best_epoch')}/{info.get('epochs_run')}",
            "accuracy": test["accuracy"],
            "accuracy_95ci": _interval_text(test.get("intervals", {}).get("accuracy")),
            "macro_f1": test["macro_f1"],
            "covid_sensitivity": covid.get("sensitivity"),
            "covid_specificity": covid.get("specificity"),
            "kaggle_normal_non_covid_pct": table.get("normal", {}).get("non_covid_pct"),
            "kaggle_pneumonia_non_covid_pct": table.get("pneumonia", {}).get("non_covid_pct"),
            "kaggle_accuracy": heldout.get("accuracy"),
            "train_seconds": info.get("timings_s", {}).get("total"),
            "trainable_params": info.get("trainable_params"),
        })
    return pd.DataFrame(rows, columns=["run", "run_id", *list(LEADERBOARD_COLUMNS)[1:]])


def per_class_table(runs: list[Run], scope: str = "test") -> pd.DataFrame:
    """Long table: run, class, precision, recall, f1, support and their 95% intervals."""
    rows = []
    for run in runs:
        metrics = run.metrics["test"] if scope == "test" else run.metrics["heldout"].get(scope)
        if not metrics:
            continue
        intervals = metrics.get("intervals", {}).get("per_class", {})
        for index, label in enumerate(metrics["labels"]):
            scores = metrics["per_class"][label]
            row = {"run": run.title, "class": label, **scores}
            for key in ("precision", "recall", "f1"):
                bounds = intervals.get(key, [[None, None]] * len(metrics["labels"]))[index]
                row[f"{key}_low"], row[f"{key}_high"] = bounds
            rows.append(row)
    return pd.DataFrame(rows)
