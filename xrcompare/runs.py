"""Run folders: schema, atomic writing, listing, loading, and rebuilding full models.

A run folder (``trained/<run-id>/``) holds::

    run.json          what was trained, on what, how, by which versions, how long each phase took
    history.csv       epoch, loss, accuracy, val_loss, val_accuracy
    metrics.json      {"test": {...}, "heldout": {name: {...}}, "folds": {...}?}
    predictions.csv   path, split (train/val/test or heldout:<name>), label, patient_id,
                      prob_covid, prob_normal, prob_pneumonia
    head.weights.h5   the head only; the frozen base is rebuilt from the registry

It is written into a hidden temporary folder and renamed when complete, so a listing
never sees half a run. Corrupt folders are reported and skipped, never fatal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xrcompare import CLASSES

RUNS_DIR_VARIABLE = "XRCOMPARE_RUNS_DIR"
REQUIRED_FILES = ("run.json", "metrics.json", "history.csv", "predictions.csv",
                  "head.weights.h5")
SCHEMA_VERSION = 1
#: Fields every reader relies on; a run without them is reported, never half-shown.
REQUIRED_INFO = ("backbone", "weights", "image_size", "resize_mode", "head", "feature_shape")
REQUIRED_TEST_METRICS = ("labels", "accuracy", "confusion_matrix", "per_class", "macro_f1")
TEMPORARY_PREFIX = ".tmp-"


def default_runs_dir() -> Path:
    value = os.environ.get(RUNS_DIR_VARIABLE, "").strip()
    if value:
        return Path(value).expanduser()
    return Path(__file__).resolve().parent.parent / "trained"


class RunError(ValueError):
    """A run folder that cannot be used, with a one-line reason."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:80] or "run"


def new_run_id(backbone: str, data_name: str, tag: str | None = None) -> str:
    parts = [time.strftime("%Y%m%d-%H%M%S"), backbone, slug(data_name)]
    if tag:
        parts.append(slug(tag))
    return "-".join(parts)


class RunWriter:
    """Collects a run's files in ``<runs_dir>/.tmp-<id>-<pid>/`` and renames on commit."""

    def __init__(self, runs_dir: Path, run_id: str):
        self.runs_dir = Path(runs_dir)
        self.run_id = slug(run_id)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.final = self.runs_dir / self.run_id
        if self.final.exists():
            raise RunError(f"run folder {self.final} already exists")
        self.folder = self.runs_dir / f"{TEMPORARY_PREFIX}{self.run_id}-{os.getpid()}"
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir()

    def write_json(self, name: str, payload: dict) -> None:
        text = json.dumps(_plain(payload), indent=2, allow_nan=False)
        (self.folder / name).write_text(text + "\n", encoding="utf-8")

    def write_csv(self, name: str, frame: pd.DataFrame) -> None:
        frame.to_csv(self.folder / name, index=False, float_format="%.6g")

    def path(self, name: str) -> Path:
        return self.folder / name

    def commit(self) -> Path:
        missing = [name for name in REQUIRED_FILES if not (self.folder / name).is_file()]
        if missing:
            raise RunError(f"run {self.run_id} is incomplete, missing {', '.join(missing)}")
        os.replace(self.folder, self.final)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _plain(value):
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if np.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- reading


@dataclass
class Run:
    path: Path
    info: dict
    metrics: dict
    history: pd.DataFrame
    predictions: pd.DataFrame
    modified: float = 0.0

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def backbone(self) -> str:
        return self.info["backbone"]

    @property
    def labels(self) -> list[str]:
        return list(self.info.get("classes", CLASSES))

    @property
    def is_random_control(self) -> bool:
        return self.info.get("weights") == "random"

    @property
    def title(self) -> str:
        """Short human label used everywhere a run is named."""
        name = self.info.get("display_name") or self.run_id
        if self.is_random_control and "random-init" not in name.lower():
            return f"{name} [random-init control]"
        return name

    def split_predictions(self, split: str) -> pd.DataFrame:
        return self.predictions[self.predictions["split"] == split]

    def probability_columns(self) -> list[str]:
        return [f"prob_{label}" for label in self.labels]

    @property
    def feature_engine(self) -> tuple[str, str]:
        """(engine, precision) that computed the run's features: ``("openvino", "bf16")``;
        ``("keras", "fp32")``, the reference, for runs that recorded none."""
        features = self.info.get("features")
        features = features if isinstance(features, dict) else {}
        engine, precision = features.get("engine"), features.get("precision")
        if isinstance(engine, str) and isinstance(precision, str) and engine and precision:
            return engine, precision
        return "keras", "fp32"

    @property
    def feature_engine_label(self) -> str:
        """The feature engine in words: "Keras fp32", "OpenVINO bf16"."""
        from xrcompare.inference_engine import engine_label

        return engine_label(*self.feature_engine)

    @property
    def head_weights(self) -> Path:
        return self.path / "head.weights.h5"


def load_run(folder: str | Path) -> Run:
    """Load a run folder, or raise :class:`RunError` saying what is wrong with it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"{folder} is not a run folder")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise RunError(f"{folder.name}: missing {', '.join(missing)}")
    try:
        info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{folder.name}: unreadable JSON ({str(error)[:120]})") from None
    if not isinstance(info, dict) or not isinstance(metrics, dict):
        raise RunError(f"{folder.name}: run.json or metrics.json is not a JSON object")
    missing_info = [key for key in REQUIRED_INFO if key not in info]
    missing_data = [key for key in ("name",) if not isinstance(info.get("data"), dict)
                    or key not in info["data"]]
    missing_split = [] if isinstance(info.get("split"), dict) else ["split"]
    test = metrics.get("test")
    missing_metrics = [key for key in REQUIRED_TEST_METRICS
                       if not isinstance(test, dict) or key not in test]
    if missing_info or missing_data or missing_split or missing_metrics:
        fields = [*missing_info, *(f"data.{k}" for k in missing_data), *missing_split,
                  *(f"metrics test.{k}" for k in missing_metrics)]
        raise RunError(f"{folder.name}: run.json/metrics.json lack {', '.join(fields)}")
    if not isinstance(metrics.get("heldout", {}), dict):
        raise RunError(f"{folder.name}: metrics.json 'heldout' is not an object")
    try:
        history = pd.read_csv(folder / "history.csv")
        predictions = pd.read_csv(folder / "predictions.csv")
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise RunError(f"{folder.name}: unreadable CSV ({str(error)[:120]})") from None
    labels = list(info.get("classes", CLASSES))
    needed = {"path", "split", "label", *[f"prob_{label}" for label in labels]}
    if not needed <= set(predictions.columns):
        raise RunError(f"{folder.name}: predictions.csv lacks columns "
                       f"{', '.join(sorted(needed - set(predictions.columns)))}")
    modified = max(p.stat().st_mtime for p in folder.iterdir())
    return Run(folder, info, metrics, history, predictions, modified)


@dataclass
class RunListing:
    runs: list[Run]
    problems: list[tuple[str, str]]  # (folder name, reason)


def list_runs(runs_dir: str | Path | None = None) -> RunListing:
    """Every complete run under ``runs_dir``, newest first; broken folders become problems."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    runs: list[Run] = []
    problems: list[tuple[str, str]] = []
    if not runs_dir.is_dir():
        return RunListing(runs, problems)
    for folder in sorted(runs_dir.iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        try:
            runs.append(load_run(folder))
        except RunError as error:
            problems.append((folder.name, str(error)))
    # "order": null (runs trained without --order) sorts after the ordered ones
    runs.sort(key=lambda run: (run.info.get("order") if isinstance(run.info.get("order"), int)
                               else 1000, run.run_id))
    return RunListing(runs, problems)


def runs_fingerprint(runs_dir: str | Path | None = None) -> tuple:
    """A cheap key that changes whenever a run is added, removed or rewritten."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    if not runs_dir.is_dir():
        return ()
    entries = []
    for folder in sorted(runs_dir.iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            try:
                entries.append((folder.name, max((p.stat().st_mtime_ns for p in
                                                  folder.iterdir()), default=0)))
            except OSError:
                entries.append((folder.name, -1))
    return tuple(entries)


# --------------------------------------------------------------------------- models


def build_head_for_run(run: Run):
    from xrcompare.train import build_head

    head = build_head(run.info["head"], tuple(run.info["feature_shape"]), len(run.labels))
    head.load_weights(run.head_weights)
    return head


def rebuild_problem(run: Run) -> str | None:
    """Why this run's frozen base cannot be rebuilt faithfully here (one sentence), or None.

    A random-init control is rebuilt from its seed, and seeded initialisers differ between
    Keras backends and versions: rebuilding it elsewhere would pair the head with another net.
    """
    import keras

    if run.info.get("weights") != "random":
        return None
    trained_backend = run.info.get("keras_backend")
    trained_keras = run.info.get("versions", {}).get("keras")
    here = (keras.backend.backend(), keras.__version__)
    if (trained_backend, trained_keras) != here:
        return (f"{run.title} is a random-init control made with Keras {trained_keras} on "
                f"{trained_backend}; its random base cannot be rebuilt identically with "
                f"Keras {here[1]} on {here[0]}")
    return None


def check_rebuildable(run: Run) -> None:
    """Raise :class:`xrcompare.backbones.WeightsUnavailable` with :func:`rebuild_problem`'s
    sentence when the run's base cannot be rebuilt faithfully here."""
    from xrcompare.backbones import WeightsUnavailable

    problem = rebuild_problem(run)
    if problem:
        raise WeightsUnavailable(problem)


def build_full_model(run: Run, *, base=None):
    """The run's full classifier as ONE flat graph: frozen base + head layers.

    Raises :class:`xrcompare.backbones.WeightsUnavailable` when ImageNet weights are missing
    or a random-init control cannot be rebuilt identically here.
    """
    from xrcompare.backbones import build_base
    from xrcompare.train import attach_head

    check_rebuildable(run)
    if base is None:
        base = build_base(run.backbone, run.info["image_size"], run.info["weights"],
                          seed=run.info.get("weights_seed", 0))
    return attach_head(base, build_head_for_run(run))


def model_input_for_run(run: Run, gray: np.ndarray) -> np.ndarray:
    """A batch of one, exactly as the run's training images were prepared."""
    from xrcompare.backbones import get_backbone
    from xrcompare.imaging import to_model_input

    image = to_model_input(gray, run.info["image_size"], run.info["resize_mode"])
    return get_backbone(run.backbone).preprocess(image[None])


def predict_gray(run: Run, model, gray: np.ndarray) -> dict[str, float]:
    probabilities = np.asarray(model.predict_on_batch(model_input_for_run(run, gray)))[0]
    return {label: float(p) for label, p in zip(run.labels, probabilities, strict=True)}
