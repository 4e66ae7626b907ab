"""Tables across runs (pure pandas): the leaderboard and per-class scores."""

from __future__ import annotations

from pathlib import Path

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
    "feature_engine": "What ran the frozen base to make the features: Keras fp32 (the "
                      "reference) or an inference engine such as OpenVINO bf16 (faster on a "
                      "CPU; features agree with the reference to a cosine of 0.999).",
    "trainable_params": "Parameters trained in the head; the base stays frozen.",
}


def _interval_text(interval) -> str:
    if not interval or interval[0] is None:
        return ""
    return f"{interval[0]:.2f}–{interval[1]:.2f}"


#: The held-out folder the leaderboard's "Kaggle" columns describe.
KAGGLE_HELDOUT = "kaggle_test"


def _kaggle_heldout(run: Run) -> dict:
    """The run's metrics on the Kaggle test folder, or {} when it was not held out."""
    return (run.metrics.get("heldout") or {}).get(KAGGLE_HELDOUT) or {}


def leaderboard(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for run in runs:
        test = run.metrics["test"]
        covid = test.get("covid_vs_rest", {})
        heldout = _kaggle_heldout(run)
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
            "feature_engine": run.feature_engine_label,
            "trainable_params": info.get("trainable_params"),
        })
    return pd.DataFrame(rows, columns=["run", "run_id", *list(LEADERBOARD_COLUMNS)[1:]])


def per_class_table(runs: list[Run], scope: str = "test") -> pd.DataFrame:
    """Long table: run, class, precision, recall, f1, support and their 95% intervals."""
    rows = []
    for run in runs:
        heldout = run.metrics.get("heldout") or {}
        metrics = run.metrics["test"] if scope == "test" else heldout.get(scope)
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


# --------------------------------------------------------------------------- data folders


def resolve_folder(record: dict, repo: str | Path | None = None) -> Path | None:
    """The folder a run recorded (its ``data`` or a ``heldout`` entry), found on this machine.

    Tries ``folder_absolute``, then ``folder`` as written (relative to the working directory)
    and relative to the repository. None when none of them exists.
    """
    repo = Path(repo) if repo else Path(__file__).resolve().parent.parent
    candidates = []
    if record.get("folder_absolute"):
        candidates.append(Path(record["folder_absolute"]))
    if record.get("folder"):
        folder = Path(record["folder"]).expanduser()
        candidates.append(folder)
        if not folder.is_absolute():
            candidates.append(repo / folder)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def resolve_manifest(record: dict, repo: str | Path | None = None) -> Path | None:
    """The manifest.csv a dataset record names, or the one beside its folder."""
    repo = Path(repo) if repo else Path(__file__).resolve().parent.parent
    candidates = []
    if record.get("manifest"):
        manifest = Path(record["manifest"]).expanduser()
        candidates.append(manifest)
        if not manifest.is_absolute():
            candidates.append(repo / manifest)
    folder = resolve_folder(record, repo)
    if folder is not None:
        candidates += [folder / "manifest.csv", folder.parent / "manifest.csv"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def image_origin(source_repo: str, notes: str = "") -> str:
    """Where an image of the shared data really comes from, in words (from the manifest)."""
    text = f"{source_repo} {notes}".lower()
    if "kermany" in text:
        return "Kermany: children aged 1–5, one hospital (Guangzhou)"
    if "covid-chestxray" in text or "finding=covid" in text:
        return "Cohen COVID-19 collection: adults, many hospitals, papers and web reports"
    return source_repo or "unknown"


def class_sources(manifest: pd.DataFrame, pool: str) -> pd.DataFrame:
    """Images per class and origin for one folder (``split_pool``) of a manifest, with the
    repositories they were taken from, patients and X-ray views."""
    needed = {"label", "split_pool", "source_repo"}
    if not needed <= set(manifest.columns):
        raise ValueError(f"manifest lacks columns {', '.join(sorted(needed - set(manifest)))}")
    rows = manifest[manifest["split_pool"] == pool].copy()
    notes = rows["notes"].fillna("") if "notes" in rows else pd.Series("", index=rows.index)
    rows["origin"] = [image_origin(str(repo), str(note))
                      for repo, note in zip(rows["source_repo"], notes, strict=True)]
    table = []
    for (label, origin), group in rows.groupby(["label", "origin"], sort=True):
        entry = {"class": label, "origin": origin, "images": len(group)}
        if "patient_id" in group:
            entry["patients"] = int(group["patient_id"].nunique())
        if "view" in group:
            views = group["view"].fillna("?").value_counts()
            entry["views"] = ", ".join(f"{view} {count}" for view, count in views.items())
        entry["taken from"] = ", ".join(sorted(group["source_repo"].astype(str).unique()))
        table.append(entry)
    return pd.DataFrame(table)


def sample_files(run: Run, per_class: int = 6) -> dict[str, list[str]]:
    """A few image paths per class from the run's recorded split files, spread evenly."""
    files = [path for names in (run.info.get("split", {}).get("files") or {}).values()
             for path in names]
    folders = run.info.get("data", {}).get("class_folders") or {}
    by_class: dict[str, list[str]] = {}
    for label in run.labels:
        folder = folders.get(label, label)
        members = sorted(path for path in files if path.split("/")[0] == folder)
        if members:
            step = max(1, len(members) // per_class)
            by_class[label] = members[::step][:per_class]
    return by_class


def sample_heldout_files(run: Run, name: str, per_class: int = 6) -> dict[str, list[str]]:
    """A few image paths per class of a held-out folder, from the run's predictions."""
    frame = run.split_predictions(f"heldout:{name}")
    by_class: dict[str, list[str]] = {}
    for label, group in frame.groupby("label", sort=False):
        members = sorted(group["path"])
        step = max(1, len(members) // per_class)
        by_class[str(label)] = members[::step][:per_class]
    return {label: by_class[label] for label in run.labels if label in by_class}
