"""Tables across runs (pure pandas): the leaderboard and per-class scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from xrcompare.backbones import REGISTRY
from xrcompare.paths import BENCHMARK_RESULTS_DIR
from xrcompare.protocol import LEAKY_LABEL as LEAKY_TEXT
from xrcompare.runs import TEST_SCOPE, Run

#: Where ``benchmarks/extract_throughput.py`` writes what it measured on this machine::
#:
#:     {"machine": "2 x86_64 CPU cores, no GPU", "measured": "2026-12-02",
#:      "backbones": {"resnet50": {"images_per_s": 37.7, "image_size": 224, ...}, ...}}
#:
#: Extra keys are allowed; :func:`extract_throughput` reads it.
EXTRACT_THROUGHPUT_FILE = BENCHMARK_RESULTS_DIR / "extract_throughput.json"

#: One plain-language line per leaderboard column.
LEADERBOARD_COLUMNS = {
    "run": "The run's name.",
    "backbone": "The frozen ImageNet CNN whose features the head was trained on.",
    "weights": "ImageNet weights, or a control (not a model): a random-init base (what "
               "ImageNet features buy), masked inputs (lungs blacked out, or only the lungs "
               "kept) or the image-statistics baseline (no CNN at all). See the Shortcut lab.",
    "data": "The training folder.",
    "protocol": "sound, or '2020 protocol (leaky)': images split at random (one patient on "
                "both sides), the epoch chosen on the test split, or inputs scaled 0..1 unlike "
                "the backbone's ImageNet training. Leaky runs reproduce the 2020 blog; their "
                "test figures are optimistic.",
    "split": "How images were divided: by patient (no patient on both sides) or, in the 2020 "
             "protocol, at random by image.",
    "image_size": "Input size in pixels.",
    "resize": "squash: stretched to a square; pad: aspect kept with black borders.",
    "epochs": "Epoch kept (chosen on the validation split; on the test split in the 2020 "
              "protocol) / epochs trained; every fold's for cross-validation.",
    "accuracy": "Test accuracy: the share of the run's own test images whose predicted class "
                "is right.",
    "accuracy_95ci": "95% bootstrap interval of the accuracy, resampling patients.",
    "macro_f1": "Mean F1 over the classes: balances precision and recall per class.",
    "classes": "The classes the run predicts. Runs with different classes are not like for "
               "like: chance accuracy differs (1/2 for two classes, 1/4 for four).",
    "positive": "The run's positive class (--positive; covid by default): the one its "
                "sensitivity and specificity are about, every other class being negative.",
    "sensitivity": "Sensitivity of the run's positive class: of its test images of that "
                   "class, the share called that class (misses are false negatives).",
    "specificity": "Specificity of the run's positive class: of its test images of the other "
                   "classes, the share not called the positive class.",
    "kaggle_normal_non_covid_pct": "Held-out Kaggle test split: share of its NORMAL images "
                                   "kept out of 'covid' (%), the figure the 2020 blog "
                                   "reported.",
    "kaggle_pneumonia_non_covid_pct": "Held-out Kaggle test split: share of its PNEUMONIA "
                                      "images kept out of 'covid' (%), the figure the 2020 "
                                      "blog reported.",
    "kaggle_accuracy": "Accuracy on the held-out Kaggle test split (normal vs pneumonia "
                       "children's X-rays from elsewhere; no run trained on them).",
    "train_seconds": "Wall time of the whole run (features, head, evaluation).",
    "feature_engine": "What ran the frozen base to make the features: Keras fp32 (the "
                      "reference) or an inference engine such as OpenVINO bf16 (faster on a "
                      "CPU; features agree with the reference to a cosine of 0.999).",
    "trainable_params": "Parameters trained in the head; the base stays frozen.",
    "base_params": "Parameters of the frozen ImageNet base (computed once per image, never "
                   "trained).",
    "extract_images_per_s": "Images per second through the frozen base (read, decode, resize, "
                            "base, cache), measured on this machine by "
                            "benchmarks/extract_throughput.py at the run's input size; – when "
                            "not measured.",
    "run_size_bytes": "Size of the run folder on disk (head weights, predictions, metrics).",
}


#: The leaderboard's key columns, always shown first (the page's lesson: the test split's
#: figures beside the held-out Kaggle ones), then the groups a "more columns" choice adds.
LEADERBOARD_KEY_COLUMNS = ("run", "accuracy", "accuracy_95ci", "positive", "sensitivity",
                           "specificity", "kaggle_accuracy",
                           "kaggle_normal_non_covid_pct", "kaggle_pneumonia_non_covid_pct")
LEADERBOARD_MORE_COLUMNS = {
    "Macro-F1": ("macro_f1",),
    "How it was trained": ("backbone", "weights", "protocol", "data", "classes", "split",
                           "image_size",
                           "resize", "epochs", "feature_engine"),
    "Size and speed": ("base_params", "trainable_params", "extract_images_per_s",
                       "train_seconds", "run_size_bytes"),
    "Run folder": ("run_id",),
}
#: Each column's header as the page shows it (short: the full text is its help, on hover)
#: and its width in pixels (the key columns fit beside the sidebar at 1280 px).
LEADERBOARD_HEADERS = {
    "run": ("Run", 176),
    "accuracy": ("Test acc.", 72),
    "accuracy_95ci": ("95% CI", 80),
    "positive": ("Positive", 72),
    "sensitivity": ("Sens.", 64),
    "specificity": ("Spec.", 64),
    "classes": ("Classes", 160),
    "kaggle_accuracy": ("Kaggle acc.", 88),
    "kaggle_normal_non_covid_pct": ("NORMAL not covid", 128),
    "kaggle_pneumonia_non_covid_pct": ("PNEUMONIA not covid", 150),
    "macro_f1": ("Macro-F1", 84),
    "backbone": ("Backbone", 96),
    "weights": ("Weights", 160),
    "protocol": ("Protocol", 170),
    "data": ("Data", 110),
    "split": ("Split", 190),
    "image_size": ("Input px", 76),
    "resize": ("Resize", 70),
    "epochs": ("Kept epoch", 130),
    "feature_engine": ("Feature engine", 130),
    "base_params": ("Base params", 104),
    "trainable_params": ("Head params", 104),
    "extract_images_per_s": ("Extract img/s", 104),
    "train_seconds": ("Train time (s)", 110),
    "run_size_bytes": ("Run size", 90),
    "run_id": ("Run folder", 220),
}


def leaderboard_columns(more: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The leaderboard's columns in order: the key columns, then those of the chosen
    :data:`LEADERBOARD_MORE_COLUMNS` groups (in their declared order)."""
    extra = [column for group, columns in LEADERBOARD_MORE_COLUMNS.items() if group in more
             for column in columns]
    return [*LEADERBOARD_KEY_COLUMNS, *extra]


def _interval_text(interval) -> str:
    if not interval or interval[0] is None:
        return ""
    return f"{interval[0]:.2f}–{interval[1]:.2f}"


#: The held-out folder the leaderboard's "Kaggle" columns describe.
KAGGLE_HELDOUT = "kaggle_test"


def _kaggle_heldout(run: Run) -> dict:
    """The run's metrics on the Kaggle test folder, or {} when it was not held out."""
    return run.metrics_for(KAGGLE_HELDOUT) or {}


def extract_throughput(path: str | Path | None = None) -> dict:
    """The measured extraction throughput of :data:`EXTRACT_THROUGHPUT_FILE` (or ``path``).

    Returns ``{"machine": str | None, "measured": str | None, "backbones": {name:
    {"images_per_s": float, "image_size": int | None}}}`` (the whole pipeline's rate, files to
    cached features, as ``benchmarks/extract_throughput.py`` writes it under each backbone's
    name), keeping only well-formed backbone entries; every field empty when the file is
    missing or unreadable (it is data from outside).
    """
    path = Path(path) if path else EXTRACT_THROUGHPUT_FILE
    empty = {"machine": None, "measured": None, "backbones": {}}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return empty
    if not isinstance(payload, dict) or not isinstance(payload.get("backbones"), dict):
        return empty
    backbones = {}
    for name, entry in payload["backbones"].items():
        if not isinstance(entry, dict):
            continue
        rate, size = entry.get("pipeline_images_per_s"), entry.get("image_size")
        if (isinstance(rate, (int, float)) and not isinstance(rate, bool)
                and math.isfinite(rate) and rate > 0):
            backbones[str(name).lower()] = {
                "images_per_s": float(rate),
                "image_size": size if isinstance(size, int) and not isinstance(size, bool)
                else None}
    text = {key: str(payload[key])[:120] if isinstance(payload.get(key), str) else None
            for key in ("machine", "measured")}
    return {**text, "backbones": backbones}


def _extract_rate(run: Run, throughput: dict) -> float | None:
    """The measured images/s of the run's backbone at the run's input size, else None."""
    entry = throughput.get("backbones", {}).get(str(run.backbone).lower())
    if not entry:
        return None
    if entry["image_size"] is not None and entry["image_size"] != run.image_size:
        return None
    return entry["images_per_s"]


def leaderboard(runs: list[Run], throughput: dict | None = None) -> pd.DataFrame:
    """One row per run (columns: :data:`LEADERBOARD_COLUMNS` plus ``run_id``).

    ``throughput`` is :func:`extract_throughput`'s table (read from its file when None).
    """
    throughput = extract_throughput() if throughput is None else throughput
    rows = []
    for run in runs:
        test = run.test_metrics
        covid = test.get("covid_vs_rest", {})  # the run's positive class against the rest
        heldout = _kaggle_heldout(run)
        table = run.heldout_table(KAGGLE_HELDOUT)
        rows.append({
            "run": run.title,
            "run_id": run.run_id,
            "backbone": run.backbone_display,
            "weights": weights_text(run),
            "data": run.data_name,
            "classes": " / ".join(run.labels),
            "positive": run.positive,
            "protocol": run.protocol_label,
            "split": split_text(run),
            "image_size": run.image_size,
            "resize": run.resize_mode,
            "epochs": run.kept_epoch_text,
            "accuracy": test["accuracy"],
            "accuracy_95ci": _interval_text(test.get("intervals", {}).get("accuracy")),
            "macro_f1": test["macro_f1"],
            "sensitivity": covid.get("sensitivity"),
            "specificity": covid.get("specificity"),
            "kaggle_normal_non_covid_pct": table.get("normal", {}).get("non_covid_pct"),
            "kaggle_pneumonia_non_covid_pct": table.get("pneumonia", {}).get("non_covid_pct"),
            "kaggle_accuracy": heldout.get("accuracy"),
            "train_seconds": run.timings.get("total"),
            "trainable_params": run.trainable_params,
            "feature_engine": run.feature_engine_label,
            "base_params": (REGISTRY[run.backbone].base_params if run.backbone in REGISTRY
                            else None),
            "extract_images_per_s": _extract_rate(run, throughput),
            "run_size_bytes": run.disk_bytes(),
        })
    return pd.DataFrame(rows, columns=["run", "run_id", *list(LEADERBOARD_COLUMNS)[1:]])


def weights_text(run: Run) -> str:
    """The leaderboard's "weights" cell: ImageNet, or which control the run is."""
    if run.is_random_control or not run.is_cnn:
        return run.control_label or "no CNN"
    if run.is_control:
        return f"ImageNet, {run.control_label}"
    return "ImageNet"


def split_text(run: Run) -> str:
    """How the run divided its images, in a few words."""
    if run.folds:
        return f"{run.folds}-fold CV by patient"
    parts = "train/val/test" if run.protocol["select_on"] == "val" else "train/test"
    if run.protocol["split"] == "images":
        return f"{parts} by image (random)"
    return f"{parts} by patient"


def blog_comparison(runs: list[Run]) -> pd.DataFrame:
    """The 2020 blog's reported figures beside the runs trained on its data
    (``BLOG_2020_REPORTED["data"]``): the blog's rows first, then runs with a backbone it
    reported (its reproductions), then the others. Kaggle columns come from the held-out Kaggle
    folder. Empty when no run was trained on the blog's data."""
    from xrcompare.evaluate import BLOG_2020_REPORTED as reported

    kaggle = reported["kaggle_test"]
    rows = []
    for model, accuracy in reported["accuracy"].items():
        per_class = kaggle["per_class"] if model == kaggle["model"] else {}
        rows.append({"run": f"2020 blog, {model}, as reported", "backbone": model,
                     "protocol": LEAKY_TEXT,
                     "why": "random image split; epoch chosen on the test images; x/255",
                     "test_images": reported["test_images"], "accuracy": accuracy,
                     "kaggle_normal_non_covid_pct":
                         per_class.get("normal", {}).get("non_covid_pct"),
                     "kaggle_pneumonia_non_covid_pct":
                         per_class.get("pneumonia", {}).get("non_covid_pct")})
    models = {model.lower() for model in reported["accuracy"]}
    on_blog_data = [run for run in runs if run.data_name == reported["data"]]
    on_blog_data.sort(key=lambda run: run.backbone not in models)  # stable: keeps run order
    for run in on_blog_data:
        table = run.heldout_table(KAGGLE_HELDOUT)
        rows.append({"run": run.title,
                     "backbone": run.backbone_display,
                     "protocol": run.protocol_label,
                     "why": "; ".join(run.leaky_reasons) or split_text(run),
                     "test_images": run.test_metrics.get("n"),
                     "accuracy": run.test_metrics["accuracy"],
                     "kaggle_normal_non_covid_pct": table.get("normal", {}).get("non_covid_pct"),
                     "kaggle_pneumonia_non_covid_pct":
                         table.get("pneumonia", {}).get("non_covid_pct")})
    if len(rows) == len(reported["accuracy"]):
        return pd.DataFrame(columns=BLOG_COMPARISON_COLUMNS)
    return pd.DataFrame(rows, columns=BLOG_COMPARISON_COLUMNS)


BLOG_COMPARISON_COLUMNS = ["run", "backbone", "protocol", "why", "test_images", "accuracy",
                           "kaggle_normal_non_covid_pct", "kaggle_pneumonia_non_covid_pct"]


def resize_contrast(runs: list[Run], heldout: str = KAGGLE_HELDOUT,
                    true_class: str = "pneumonia", predicted: str = "covid") -> list[dict]:
    """For each run trained on padded images and scored on ``heldout``, the same figure for
    its squashed counterpart (the first run with the same backbone, data, input size and
    weights, squashed, sound): how many true ``true_class`` images each called
    ``predicted``. The lesson of a preprocessing mismatch, from the runs' own metrics.

    Returns one dict per pair: ``padded`` and ``squashed`` (the runs), ``padded_called``,
    ``squashed_called`` and ``total``.
    """
    from xrcompare.charts import called_as

    pairs = []
    for padded in runs:
        metrics = padded.metrics_for(heldout)
        if padded.resize_mode != "pad" or not metrics:
            continue
        for squashed in runs:
            other = squashed.metrics_for(heldout)
            if (squashed.resize_mode == "squash" and other and not squashed.is_leaky
                    and (squashed.backbone, squashed.data_name, squashed.image_size,
                         squashed.weights) == (padded.backbone, padded.data_name,
                                               padded.image_size, padded.weights)):
                called, total = called_as(metrics, true_class, predicted)
                squashed_called, squashed_total = called_as(other, true_class, predicted)
                if total and total == squashed_total:
                    pairs.append({"padded": padded, "squashed": squashed,
                                  "padded_called": called, "squashed_called": squashed_called,
                                  "total": total})
                break
    return pairs


def per_class_table(runs: list[Run], scope: str = TEST_SCOPE) -> pd.DataFrame:
    """Long table: run, class, precision, recall, f1, support and their 95% intervals.

    A class without images in the scope (covid in a held-out folder) has no recall and no
    F1: they are NaN with no interval, never 0, and its ``note`` says so."""
    rows = []
    for run in runs:
        metrics = run.metrics_for(scope)
        if not metrics:
            continue
        intervals = metrics.get("intervals", {}).get("per_class", {})
        for index, label in enumerate(metrics["labels"]):
            scores = metrics["per_class"][label]
            row = {"run": run.title, "class": label, **scores, "note": ""}
            for key in ("precision", "recall", "f1"):
                bounds = intervals.get(key, [[None, None]] * len(metrics["labels"]))[index]
                row[f"{key}_low"], row[f"{key}_high"] = bounds
            if not scores.get("support"):
                for key in ("recall", "f1"):
                    row[key] = row[f"{key}_low"] = row[f"{key}_high"] = None
                row["note"] = "no images"
            rows.append(row)
    frame = pd.DataFrame(rows)
    for key in ("precision", "recall", "f1"):
        if key in frame:
            frame[key] = pd.to_numeric(frame[key], errors="coerce").astype(float)
    return frame


# --------------------------------------------------------------------------- data folders


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
    files = [path for names in run.split_files.values() for path in names]
    folders = run.class_folders
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
    frame = run.predictions_for(name)
    by_class: dict[str, list[str]] = {}
    for label, group in frame.groupby("label", sort=False):
        members = sorted(group["path"])
        step = max(1, len(members) // per_class)
        by_class[str(label)] = members[::step][:per_class]
    return {label: by_class[label] for label in run.labels if label in by_class}


def label_sets(runs: list[Run]) -> dict[tuple[str, ...], list[Run]]:
    """The runs grouped by the classes they predict (:attr:`Run.label_set`), in run order."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label_set, []).append(run)
    return groups


def label_set_note(runs: list[Run]) -> str | None:
    """One sentence when the runs predict different class sets (their accuracies are not like
    for like, and an image-by-image comparison needs the same classes); None when they all
    predict the same classes."""
    groups = label_sets(runs)
    if len(groups) < 2:
        return None
    parts = "; ".join(f"{' / '.join(labels)}: {len(members)} run{'s' if len(members) > 1 else ''}"
                      for labels, members in groups.items())
    return (f"These runs predict different sets of classes ({parts}). Scores of runs with "
            "different classes are not like for like (chance accuracy is 1 / the number of "
            "classes), and only runs with the same classes can be compared image by image.")
