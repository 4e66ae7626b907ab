"""Run folders: schema, atomic writing, listing, loading, and rebuilding full models.

A run folder (``trained/<run-id>/``) holds::

    run.json          what was trained, on what, how, by which versions, how long each phase took
    history.csv       epoch, loss, accuracy, val_loss, val_accuracy
    metrics.json      {"test": {...}, "heldout": {name: {...}}, "folds": {...}?}
    predictions.csv   path, split (train/val/test or heldout:<name>), label, patient_id,
                      prob_covid, prob_normal, prob_pneumonia
    head.weights.h5   the head only; the frozen base is rebuilt from the registry
    block.weights.h5  fine-tuned runs only (``--fine-tune last-block``): the backbone's last
                      block's trained layers (float16), loaded into the registry's base

It is written into a hidden temporary folder and renamed when complete, so a listing
never sees half a run. Corrupt folders are reported and skipped, never fatal.

:class:`Run` is the only reader of a run folder's contents: every question about what a run
recorded (its metrics and predictions per scope, its input size, feature spec, prediction
columns, folds, held-out patient overlap) is one of its properties or methods.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np
import pandas as pd

from xrcompare import CLASSES, paths
from xrcompare.backbones import RANDOM_WEIGHTS
from xrcompare.errors import one_line
from xrcompare.imagestats import CNN_KIND, MODEL_FILE, MODEL_KINDS, STATISTICS_KIND
from xrcompare.imaging import MASK_MODES, NO_MASK
from xrcompare.protocol import LEAKY_LABEL, check_protocol, leaky_reasons, protocol_label

#: The files of a run folder, per model kind (run.json ``model.kind``; a run without one is a
#: frozen-CNN run, as every run was before the statistics baseline).
REQUIRED_FILES_BY_KIND = {
    CNN_KIND: ("run.json", "metrics.json", "history.csv", "predictions.csv",
               "head.weights.h5"),
    STATISTICS_KIND: ("run.json", "metrics.json", "predictions.csv", MODEL_FILE),
}
REQUIRED_FILES = REQUIRED_FILES_BY_KIND[CNN_KIND]
SCHEMA_VERSION = 1
#: Fields every reader relies on, per model kind; a run without them is reported, never
#: half-shown.
REQUIRED_INFO_BY_KIND = {
    CNN_KIND: ("backbone", "weights", "image_size", "resize_mode", "head", "feature_shape"),
    STATISTICS_KIND: ("model",),
}
REQUIRED_INFO = REQUIRED_INFO_BY_KIND[CNN_KIND]
#: The words a display name must hold (with "control") to need no "[…]" label in a title.
CONTROL_PHRASES = {"random-init": "random-init", "lungs-out": "lungs blacked out",
                   "lungs-only": "lungs only", STATISTICS_KIND: "image statistics"}
#: What kind of control a run is (:attr:`Run.control_kind`), in a few words for titles and
#: tables.
CONTROL_LABELS = {
    "random-init": "random-init control",
    "lungs-out": "control: lungs blacked out",
    "lungs-only": "control: lungs only",
    STATISTICS_KIND: "control: image statistics, no CNN",
}
REQUIRED_TEST_METRICS = ("labels", "accuracy", "confusion_matrix", "per_class", "macro_f1")
TEMPORARY_PREFIX = ".tmp-"
#: Free space a new run needs in the runs folder (a run is well under 1 MB of weights plus
#: its predictions; the margin covers cross-validation heads and a nearly full disk).
RUN_SPACE_BYTES = 50_000_000
#: Every registry backbone downsamples its input by 32: the feature map of an S px input
#: is between floor(S/32) and ceil(S/32) cells on a side.
FEATURE_STRIDE = 32
#: The most channels a frozen base's feature map has (DenseNet121 1024, ResNet 2048).
MAX_FEATURE_CHANNELS = 4096
#: A fine-tuned run's last-block weights (run.json ``fine_tune.file``).
BLOCK_FILE = "block.weights.h5"
#: How the block is stored: float16 halves ``trained/`` (VGG16's block5_conv3 is 4.7 MB, not
#: 9.4 MB); the run records how far float16 moves its predictions from float32's.
BLOCK_DTYPE = np.float16
#: The largest block file read (Xception's block14 is 9.5 MB in float16).
BLOCK_FILE_LIMIT = 64_000_000


#: The scope of a run's own test split (pooled out-of-fold predictions for cross-validation).
TEST_SCOPE = "test"
#: The prefix of a held-out folder's scope in predictions.csv (``heldout:<name>``).
HELDOUT_PREFIX = "heldout:"
#: The splits of the run's own data in predictions.csv (every image of its data folder).
OWN_SPLITS = ("train", "val", "test")
#: predictions.csv names the probability of class ``c`` ``prob_<c>``.
PROBABILITY_PREFIX = "prob_"


def prediction_column(label: str) -> str:
    """The predictions.csv column holding the probability of ``label`` (written and read
    through this one function)."""
    return f"{PROBABILITY_PREFIX}{label}"


def heldout_scope(name: str) -> str:
    """The scope of the held-out folder ``name``: ``"heldout:<name>"``."""
    return f"{HELDOUT_PREFIX}{name}"


def normalise_scope(scope: str) -> str:
    """``"test"`` or ``"heldout:<name>"``; a bare held-out name gets its prefix."""
    scope = str(scope).strip()
    if not scope or scope == HELDOUT_PREFIX:
        raise ValueError("a scope is 'test' or 'heldout:NAME'")
    if scope == TEST_SCOPE or scope.startswith(HELDOUT_PREFIX):
        return scope
    return heldout_scope(scope)


def scope_name(scope: str) -> str:
    """``"test"`` for the test split, the folder name for a held-out scope."""
    scope = normalise_scope(scope)
    return scope if scope == TEST_SCOPE else scope[len(HELDOUT_PREFIX):]


def scope_text(scope: str) -> str:
    """A scope in words: "test" or "held-out kaggle_test"."""
    scope = normalise_scope(scope)
    return scope if scope == TEST_SCOPE else f"held-out {scope_name(scope)}"


#: The settings that decide what a run learns: two runs agreeing on every one of them are
#: the same experiment (their heads differ at most by numerical noise). ``data_images`` is
#: compared only when both sides know it.
RECIPE_KEYS = ("data", "data_images", "backbone", "weights", "image_size", "resize_mode",
               "head", "epochs", "batch_size", "learning_rate", "seed", "augment_views",
               "augment", "balanced", "patience", "monitor", "val_fraction", "test_fraction",
               "folds", "split", "preprocess", "select_on", "mask", "fine_tune",
               "fine_tune_epochs", "fine_tune_learning_rate")


def normalise_recipe(values: dict) -> dict:
    """A recipe with comparable values: every :data:`RECIPE_KEYS` key, counts as int,
    rates and fractions rounded, flags as bool, unknown as None."""

    def number(value, digits: int = 9):
        if isinstance(value, bool) or not isinstance(value, Real):
            return None
        return round(float(value), digits) if math.isfinite(value) else None

    def count(value):
        return int(value) if isinstance(value, Real) and not isinstance(value, bool) else None

    recipe = {key: values.get(key) for key in RECIPE_KEYS}
    for key in ("data_images", "image_size", "epochs", "batch_size", "seed", "patience",
                "folds"):
        recipe[key] = count(recipe[key])
    recipe["augment_views"] = count(recipe["augment_views"]) or 0
    for key in ("learning_rate", "val_fraction", "test_fraction"):
        recipe[key] = number(recipe[key])
    recipe["balanced"] = bool(recipe["balanced"])
    recipe["fine_tune"] = recipe["fine_tune"] or "none"  # runs made before --fine-tune
    recipe["fine_tune_epochs"] = count(recipe["fine_tune_epochs"])
    recipe["fine_tune_learning_rate"] = number(recipe["fine_tune_learning_rate"])
    return recipe


def recipes_match(a: dict, b: dict) -> bool:
    """Whether two :func:`normalise_recipe` recipes are the same experiment."""
    for key in RECIPE_KEYS:
        if key == "data_images" and (a.get(key) is None or b.get(key) is None):
            continue
        if a.get(key) != b.get(key):
            return False
    return True


class RunError(ValueError):
    """A run folder that cannot be used, with a one-line reason."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:80] or "run"


def check_runs_dir(runs_dir: str | Path, needed_bytes: int = RUN_SPACE_BYTES) -> Path:
    """Make sure a run can be written to ``runs_dir`` before any training work: it is (or
    can be made) a folder, it is writable, and it has ``needed_bytes`` free. Raises
    :class:`RunError` with one line otherwise."""
    folder = Path(runs_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise RunError(f"the runs folder {folder} is a file, not a folder; choose a folder "
                       "with --runs-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot create the runs folder {folder}: "
                       f"{error.strerror or error}") from None
    probe = folder / f"{TEMPORARY_PREFIX}write-check-{os.getpid()}"
    try:
        probe.mkdir(exist_ok=True)
        (probe / "probe").write_bytes(b"x")
    except OSError as error:
        raise RunError(f"the runs folder {folder} is not writable "
                       f"({error.strerror or error})") from None
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise RunError(f"the runs folder {folder} has only {free / 1e6:.0f} MB free; a run "
                       f"needs about {needed_bytes / 1e6:.0f} MB: free some space or choose "
                       "another folder")
    return folder


def new_run_id(backbone: str, data_name: str, tag: str | None = None) -> str:
    parts = [time.strftime("%Y%m%d-%H%M%S"), backbone, slug(data_name)]
    if tag:
        parts.append(slug(tag))
    return "-".join(parts)


class RunWriter:
    """Collects a run's files in ``<runs_dir>/.tmp-<id>-<pid>/`` and renames on commit; the
    files a run of ``kind`` needs (:data:`REQUIRED_FILES_BY_KIND`) must all be there."""

    def __init__(self, runs_dir: Path, run_id: str, kind: str = CNN_KIND):
        if kind not in REQUIRED_FILES_BY_KIND:
            raise ValueError(f"unknown model kind {kind!r}")
        self.kind = kind
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
        missing = [name for name in REQUIRED_FILES_BY_KIND[self.kind]
                   if not (self.folder / name).is_file()]
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


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


@dataclass
class Run:
    path: Path
    info: dict
    metrics: dict
    history: pd.DataFrame
    predictions: pd.DataFrame
    modified: float = 0.0

    # ----------------------------------------------------------------- what was trained

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        """The model kind (run.json ``model.kind``, checked on load): ``"frozen-cnn"``, a head
        on a frozen CNN base (also every run that records no kind), or ``"image-statistics"``,
        the statistics baseline (:mod:`xrcompare.imagestats`)."""
        model = self.info.get("model")
        kind = model.get("kind") if isinstance(model, dict) else None
        return kind if kind in MODEL_KINDS else CNN_KIND

    @property
    def is_cnn(self) -> bool:
        """A head on a frozen CNN base: it has a backbone, an input size, a feature spec and
        saliency maps. The statistics baseline has none of these."""
        return self.kind == CNN_KIND

    @property
    def is_statistics(self) -> bool:
        return self.kind == STATISTICS_KIND

    @property
    def backbone(self) -> str:
        """The frozen CNN's registry name; ``"image-statistics"`` for the statistics
        baseline."""
        return self.info["backbone"] if self.is_cnn else STATISTICS_KIND

    @property
    def backbone_display(self) -> str:
        """The backbone as people write it ("ResNet50"), else its registry name."""
        if not self.is_cnn:
            return "Image statistics (no CNN)"
        return self.info.get("backbone_display") or self.backbone

    @property
    def labels(self) -> list[str]:
        """The classes the run predicts, in its output order (run.json ``classes``; a run
        that recorded none is a three-class run)."""
        return list(self.info.get("classes", CLASSES))

    @property
    def positive(self) -> str:
        """The class the run's sensitivity, specificity and thresholds call positive (run.json
        ``positive``, checked on load; a run that recorded none: covid when it is a class,
        else the first class in sorted order)."""
        from xrcompare.classes import default_positive

        return self.info.get("positive") or default_positive(self.labels)

    @property
    def label_set(self) -> tuple[str, ...]:
        """The classes as a key: runs can be set side by side only with the same one."""
        return tuple(self.labels)

    @property
    def weights(self) -> str | None:
        """``"imagenet"`` or ``"random"`` (checked on load); None for a run without a CNN."""
        return self.info["weights"] if self.is_cnn else None

    @property
    def weights_seed(self) -> int:
        """The seed a random-init control base was built with (0 when not recorded)."""
        return int(self.info.get("weights_seed") or 0)

    @property
    def is_random_control(self) -> bool:
        return self.weights == RANDOM_WEIGHTS

    @property
    def image_size(self) -> int | None:
        """The input size in pixels (checked on load); None for a run without a CNN."""
        return int(self.info["image_size"]) if self.is_cnn else None

    @property
    def resize_mode(self) -> str | None:
        """``"squash"`` or ``"pad"`` (checked on load); None for a run without a CNN."""
        return self.info["resize_mode"] if self.is_cnn else None

    @property
    def mask(self) -> str:
        """The masked-input control its images went through (:data:`xrcompare.imaging.
        MASK_MODES`, checked on load): ``"none"``, ``"lungs-out"`` or ``"lungs-only"``."""
        return self.info.get("mask") or NO_MASK

    @property
    def mask_box(self) -> dict | None:
        """Where the mask's box was (run.json ``mask_box``: fractions of the square input),
        None for an unmasked run."""
        if self.mask == NO_MASK:
            return None
        box = self.info.get("mask_box")
        if isinstance(box, dict):
            return dict(box)
        from xrcompare.imaging import LUNG_BOX

        left, top, right, bottom = LUNG_BOX
        return {"left": left, "top": top, "right": right, "bottom": bottom}

    @property
    def head(self) -> str | None:
        return self.info["head"] if self.is_cnn else None

    @property
    def is_fine_tuned(self) -> bool:
        """Whether the backbone's last block was fine-tuned after the head (run.json
        ``fine_tune``, checked on load against the registry; ``block.weights.h5`` holds it)."""
        return self.is_cnn and isinstance(self.info.get("fine_tune"), dict)

    @property
    def fine_tune_record(self) -> dict:
        """run.json's ``fine_tune`` ({} for a frozen-base run): mode, layers, cut, storage,
        epochs, learning rate, kept epoch, history, the float16 check and the frozen stage's
        figures (``before``)."""
        return dict(_dict(self.info.get("fine_tune"))) if self.is_fine_tuned else {}

    @property
    def fine_tuned_layers(self) -> tuple[str, ...]:
        """The base's layers whose weights this run fine-tuned (empty: a frozen base)."""
        return tuple(self.fine_tune_record.get("layers") or ())

    @property
    def block_weights(self) -> Path:
        return self.path / BLOCK_FILE

    def _require_cnn(self, what: str) -> None:
        if not self.is_cnn:
            raise RunError(f"{self.title} is not a CNN run (it is the {self.kind} control): "
                           f"it has no {what}")

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """The frozen base's feature map (height, width, channels), checked on load."""
        self._require_cnn("feature map")
        height, width, channels = self.info["feature_shape"]
        return int(height), int(width), int(channels)

    def feature_spec(self):
        """The feature-cache spec of this run's images (:class:`xrcompare.features.FeatureSpec`):
        what its training features were computed with, so evaluation reuses the cache."""
        from xrcompare.features import FeatureSpec

        self._require_cnn("frozen base")
        # A fine-tuned run's features are the registry base's activations at the cut before
        # its last block (the block and head run on them: build_feature_model_for_run).
        return FeatureSpec(self.backbone, self.image_size, self.resize_mode, self.weights,
                           self.weights_seed, preprocess=self.preprocess, mask=self.mask,
                           cut=self.fine_tuned_layers[0] if self.is_fine_tuned else "")

    def statistics_model(self):
        """The statistics baseline's fitted model (:class:`xrcompare.imagestats.
        StatisticsModel`) from its model.json; RunError when it cannot be used."""
        from xrcompare.imagestats import StatisticsModel

        if not self.is_statistics:
            raise RunError(f"{self.title} is not the image-statistics baseline")
        try:
            return StatisticsModel.read(self.path / MODEL_FILE)
        except ValueError as error:
            raise RunError(f"{self.run_id}: {error}") from None

    @property
    def protocol(self) -> dict[str, str]:
        """split, preprocess, select_on, augment (checked on load). Runs made before protocols
        were recorded read as the sound defaults, except that a split method not "by patient"
        reads as an image split."""
        recorded = self.info.get("protocol")
        if recorded is None:
            method = str(_dict(self.info.get("split")).get("method", "by patient"))
            recorded = {} if "patient" in method.lower() else {"split": "images"}
        return check_protocol(recorded)

    @property
    def preprocess(self) -> str:
        """How model inputs were scaled before the base (see Backbone.preprocess)."""
        return self.protocol["preprocess"]

    @property
    def leaky_reasons(self) -> list[str]:
        """Plain sentences saying why this run's protocol is leaky (empty when sound); a run
        marked ``"leaky": true`` in run.json without a protocol says just that."""
        reasons = leaky_reasons(self.protocol)
        if not reasons and self.info.get("leaky") is True:
            reasons = ["marked leaky in its run.json"]
        return reasons

    @property
    def is_leaky(self) -> bool:
        """Its test score is inflated by the protocol (see :attr:`leaky_reasons`): one patient
        on both sides, the epoch chosen on test, or inputs unlike the base's training."""
        return bool(self.leaky_reasons)

    @property
    def protocol_label(self) -> str:
        """"sound" or "2020 protocol (leaky)"."""
        return LEAKY_LABEL if self.is_leaky else protocol_label(self.protocol)

    @property
    def title(self) -> str:
        """Short human label used everywhere a run is named; a control says which (unless its
        display name already does), a leaky run says so."""
        name = self.info.get("display_name") or self.run_id
        label = self.control_label
        if label is not None:
            phrase = CONTROL_PHRASES.get(self.control_kind, "control")
            lowered = name.lower()
            if phrase not in lowered or "control" not in lowered:
                name = f"{name} [{label}]"
        if self.is_leaky and LEAKY_LABEL.lower() not in name.lower():
            name = f"{name} [{LEAKY_LABEL}]"
        return name

    @property
    def description(self) -> str:
        return self.info.get("description") or ""

    @property
    def order(self) -> int | None:
        """The run's place in listings (None: after the ordered runs)."""
        order = self.info.get("order")
        return order if isinstance(order, int) and not isinstance(order, bool) else None

    @property
    def command(self) -> str | None:
        """The command line that trained it, as recorded."""
        return self.info.get("command")

    @property
    def control_kind(self) -> str | None:
        """What kind of control the run is, None for a model: ``"random-init"`` (an
        untrained base), ``"lungs-out"`` / ``"lungs-only"`` (masked inputs),
        ``"image-statistics"`` (no CNN), or ``"marked"`` (``"control": true`` in run.json
        for another reason)."""
        if self.is_statistics:
            return STATISTICS_KIND
        if self.mask != NO_MASK:
            return self.mask
        if self.is_random_control:
            return "random-init"
        return "marked" if self.info.get("control") is True else None

    @property
    def control_label(self) -> str | None:
        """The control in a few words ("control: lungs blacked out"), None for a model."""
        kind = self.control_kind
        return None if kind is None else CONTROL_LABELS.get(kind, "control")

    @property
    def is_control(self) -> bool:
        """A control run, not a model to pick (see :attr:`control_kind`)."""
        return self.control_kind is not None

    # ----------------------------------------------------------------- data and split
    @property
    def last_conv_layer(self) -> str:
        """The base's last convolutional layer (the registry's), where the CAM methods look."""
        from xrcompare.backbones import get_backbone

        return get_backbone(self.backbone).last_conv_layer

    @property
    def data_name(self) -> str:
        """The name of the dataset folder the run was trained on (e.g. ``cxr3``)."""
        return str(self.data_record().get("name", ""))

    @property
    def data_images(self) -> int | None:
        """Images in the training data folder (as scanned when the run was made)."""
        return self.data_record().get("images")

    @property
    def data_patients(self) -> int | None:
        """Distinct patient ids in the training data folder."""
        return self.data_record().get("patients")

    @property
    def data_class_counts(self) -> dict[str, int]:
        """Images per class in the training data folder."""
        return dict(self.data_record().get("class_counts") or {})

    @property
    def manifest_problem(self) -> str | None:
        """Why the data's manifest.csv gave no patient ids (None when it did or none was
        found)."""
        return self.data_record().get("manifest_problem")

    @property
    def class_folders(self) -> dict[str, str]:
        """Class → the folder name that held it in the training data."""
        return dict(self.data_record().get("class_folders") or {})

    @property
    def split_record(self) -> dict:
        """run.json's ``split``: method, seed, fractions, summary, files (fold 1's)."""
        return _dict(self.info.get("split"))

    @property
    def split_method(self) -> str:
        return str(self.split_record.get("method", ""))

    @property
    def folds(self) -> int | None:
        """The number of cross-validation folds (None for a single split)."""
        folds = self.split_record.get("folds")
        return int(folds) if folds else None

    @property
    def is_cross_validation(self) -> bool:
        """Cross-validated: its "test" predictions are pooled out-of-fold over the dataset."""
        return bool(self.folds)

    @property
    def split_summary(self) -> dict[str, dict]:
        """Per split (train/val/test; fold 1's for cross-validation): images, patients,
        class_counts."""
        return _dict(self.split_record.get("summary"))

    @property
    def split_files(self) -> dict[str, list[str]]:
        """Per split, the image paths (relative to the data folder; fold 1's for
        cross-validation, see :attr:`fold_records` for every fold's)."""
        return dict(_dict(self.split_record.get("files")))

    @property
    def fold_records(self) -> list[dict]:
        """One entry per cross-validation fold: ``fold``, ``best_epoch``, ``epochs_run`` and
        ``files`` (per split); empty for a single split or runs that recorded none."""
        folds = self.split_record.get("per_fold")
        return [entry for entry in folds if isinstance(entry, dict)] if isinstance(
            folds, list) else []

    @property
    def best_epoch(self) -> int | None:
        """The kept epoch (fold 1's head for cross-validation)."""
        return self.info.get("best_epoch")

    @property
    def epochs_run(self) -> int | None:
        return self.info.get("epochs_run")

    @property
    def kept_epochs(self) -> list[int]:
        """The kept epoch of every head: one per fold for cross-validation (from run.json's
        folds, else metrics.json's), else the one head's."""
        epochs = [entry.get("best_epoch") for entry in self.fold_records]
        if not epochs and self.folds_summary:
            epochs = [entry.get("best_epoch") for entry in
                      self.folds_summary.get("per_fold") or [] if isinstance(entry, dict)]
        epochs = [epoch for epoch in epochs if isinstance(epoch, int)]
        return epochs or ([self.best_epoch] if self.best_epoch is not None else [])

    @property
    def kept_epoch_text(self) -> str:
        """"8/25", or every fold's kept epoch for cross-validation: "4, 14, 2, 2, 13/25";
        "no epochs" for the statistics baseline."""
        if not self.is_cnn:
            return "no epochs"
        kept = ", ".join(str(epoch) for epoch in self.kept_epochs) or "?"
        return f"{kept}/{self.epochs_run if self.epochs_run is not None else '?'}"

    @property
    def hyperparameters(self) -> dict:
        """What the head was trained with: epochs, batch_size, learning_rate, seed,
        augment_views, balanced, patience, monitor, head, resize_mode, augment."""
        return dict(_dict(self.info.get("hyperparameters")))

    @property
    def recipe(self) -> dict:
        """What this run learned from (:data:`RECIPE_KEYS`), from what run.json recorded:
        its data, backbone, weights, input, head, hyperparameters, split fractions, folds and
        protocol. :meth:`xrcompare.config.TrainConfig.recipe` says the same of a
        configuration, so a repeat can be told before it is trained."""
        hyper = self.hyperparameters
        protocol = self.protocol
        split = self.split_record
        on_val = protocol["select_on"] == "val"
        views = self.augment_views
        return normalise_recipe({
            "data": self.data_name, "data_images": self.data_images,
            "backbone": self.backbone, "weights": self.weights, "image_size": self.image_size,
            "resize_mode": self.resize_mode, "head": self.head,
            "epochs": hyper.get("epochs"), "batch_size": hyper.get("batch_size"),
            "learning_rate": hyper.get("learning_rate"),
            "seed": hyper.get("seed", split.get("seed")), "augment_views": views,
            "augment": (hyper.get("augment") or "mild") if views else None,
            "balanced": hyper.get("balanced"), "patience": hyper.get("patience"),
            "monitor": hyper.get("monitor") if on_val else None,
            "val_fraction": split.get("val_fraction") if on_val else None,
            "test_fraction": None if self.folds else split.get("test_fraction"),
            "folds": self.folds, "split": protocol["split"],
            "preprocess": protocol["preprocess"], "select_on": protocol["select_on"],
            "mask": self.mask,
            **({"fine_tune": self.fine_tune_record.get("mode"),
                "fine_tune_epochs": self.fine_tune_record.get("epochs"),
                "fine_tune_learning_rate": self.fine_tune_record.get("learning_rate")}
               if self.is_fine_tuned else {"fine_tune": "none"})})

    @property
    def augment_views(self) -> int:
        return int(self.hyperparameters.get("augment_views") or 0)

    @property
    def selection(self) -> str:
        """How the kept epoch was chosen, in words."""
        return self.info.get("selection") or ""

    @property
    def trainable_params(self) -> int | None:
        return self.info.get("trainable_params")

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per phase (scan, build_base, extract, train, evaluate, heldout, total)."""
        return dict(_dict(self.info.get("timings_s")))

    @property
    def features_record(self) -> dict:
        """run.json's ``features``: the cache spec key, images cached and computed."""
        return _dict(self.info.get("features"))

    @property
    def machine(self) -> dict:
        return _dict(self.info.get("machine"))

    @property
    def versions(self) -> dict:
        return _dict(self.info.get("versions"))

    @property
    def heldout_records(self) -> list[dict]:
        """run.json's record of each held-out folder (name, folder, images, patients,
        class_counts, ...), in training order."""
        return [entry for entry in self.info.get("heldout") or [] if isinstance(entry, dict)]

    # ----------------------------------------------------------------- metrics and scopes

    @property
    def test_metrics(self) -> dict:
        """metrics.json's test split (pooled out-of-fold for cross-validation)."""
        return self.metrics["test"]

    @property
    def val_best(self) -> dict[str, float]:
        """The validation figures at the kept epoch (val_loss, val_accuracy)."""
        return dict(_dict(self.metrics.get("val_best")))

    @property
    def folds_summary(self) -> dict | None:
        """metrics.json's ``folds`` (mean ± sd per score, per_fold) for cross-validation."""
        folds = self.metrics.get("folds")
        return folds if isinstance(folds, dict) else None

    @property
    def heldout_names(self) -> list[str]:
        """Names of the held-out folders this run was scored on (metrics.json order)."""
        return [str(name) for name in _dict(self.metrics.get("heldout"))]

    def metrics_for(self, scope: str = TEST_SCOPE) -> dict | None:
        """The metrics of ``"test"`` or of a held-out folder (``"heldout:<name>"`` or its
        bare name); None when the run was not scored there."""
        scope = normalise_scope(scope)
        if scope == TEST_SCOPE:
            return self.test_metrics
        found = _dict(self.metrics.get("heldout")).get(scope_name(scope))
        return found if isinstance(found, dict) else None

    def heldout_table(self, scope: str) -> dict:
        """For a scope without positive-class images: per true class, the share (%) predicted
        as each class and ``non_covid_pct``; {} when the run has none there."""
        return _dict((self.metrics_for(scope) or {}).get("heldout_table"))

    def patient_overlap(self, scope: str) -> dict | None:
        """How many of a held-out folder's patients (and their images) also appear in the
        run's own data: ``{"patients", "images", "ids"}`` as metrics.json recorded it, else
        worked out from predictions.csv's patient ids; None when neither can tell."""
        found = (self.metrics_for(scope) or {}).get("patient_overlap")
        if isinstance(found, dict):
            return found
        rows = self.predictions_for(scope)
        own = self.own_patients
        if own is None or rows.empty or normalise_scope(scope) == TEST_SCOPE:
            return None
        from xrcompare.data import patient_overlap

        return patient_overlap(own, rows["patient_id"].astype(str).tolist())[0]

    def metrics_without_overlap(self, scope: str) -> dict | None:
        """The held-out folder's metrics computed without the images of patients the run's
        own data also holds (None when there were none, or it was not checked)."""
        found = (self.metrics_for(scope) or {}).get("without_overlap")
        return found if isinstance(found, dict) else None

    @property
    def scopes(self) -> list[str]:
        """The scopes this run has predictions for: ``"test"`` first (when present), then
        ``"heldout:<name>"`` per held-out folder."""
        present = set(self.predictions["split"].astype(str))
        scopes = [TEST_SCOPE] if TEST_SCOPE in present else []
        named = [heldout_scope(name) for name in self.heldout_names]
        extra = sorted(s for s in present if s.startswith(HELDOUT_PREFIX) and s not in named)
        return scopes + [s for s in named if s in present] + extra

    def predictions_for(self, scope: str) -> pd.DataFrame:
        """predictions.csv rows of one scope (``"test"``, ``"heldout:<name>"`` or a bare
        held-out name); empty when the run has none."""
        return self.split_predictions(normalise_scope(scope))

    def split_of(self, folder: str, path: str) -> str | None:
        """Where this run met image ``path`` of dataset folder ``folder`` (a path relative to
        that folder, as predictions.csv writes it): ``"train"``, ``"val"`` or ``"test"`` in
        its own data, ``"heldout"`` in a held-out folder it was evaluated on, else None.

        For cross-validation runs the answer is for the shipped head (fold 1): an image in
        another fold's test split sat in fold 1's training or validation split.
        """
        frame = self.predictions
        rows = frame[frame["path"].astype(str) == str(path)]
        splits = set(rows["split"].astype(str))
        if folder == self.data_name:
            for split in ("train", "val", "test"):
                if split in splits:
                    return split
        if f"heldout:{folder}" in splits:
            return "heldout"
        return None

    def split_predictions(self, split: str) -> pd.DataFrame:
        """predictions.csv rows whose ``split`` is exactly ``split`` (train, val, test or
        ``heldout:<name>``)."""
        return self.predictions[self.predictions["split"] == split]

    @property
    def own_patients(self) -> set[str] | None:
        """The patient ids of every image of the run's own data folder (its train, val and
        test rows), as predictions.csv recorded them; None when it recorded none."""
        if "patient_id" not in self.predictions:
            return None
        rows = self.predictions[self.predictions["split"].isin(OWN_SPLITS)]
        return {str(patient) for patient in rows["patient_id"].dropna()}

    def scope_record(self, scope: str) -> dict:
        """run.json's record of the folder a scope's images came from (``data`` for the test
        split, the ``heldout`` entry otherwise; {} when absent); :meth:`data_folder` finds
        that folder on this machine."""
        scope = normalise_scope(scope)
        if scope == TEST_SCOPE:
            return _dict(self.info.get("data"))
        name = scope_name(scope)
        return next((entry for entry in self.heldout_records if entry.get("name") == name), {})

    def prediction_column(self, label: str) -> str:
        """The predictions.csv column holding the probability of ``label``."""
        if label not in self.labels:
            raise ValueError(f"{label!r} is not one of {self.title}'s classes "
                             f"({', '.join(self.labels)})")
        return prediction_column(label)

    def probability_columns(self) -> list[str]:
        return [prediction_column(label) for label in self.labels]

    def disk_bytes(self) -> int | None:
        """Bytes of the run folder's files (None when the folder is not on disk)."""
        if not self.path.is_dir():
            return None
        total = 0
        for item in self.path.rglob("*"):
            try:
                if item.is_file() and not item.is_symlink():
                    total += item.stat().st_size
            except OSError:
                continue
        return total

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

    def head_arrays(self) -> dict[str, list[np.ndarray]]:
        """The head's weights as NumPy arrays by layer name (``head_dense``,
        ``head_predictions``), read without Keras (:func:`head_weight_arrays`)."""
        if not self.is_cnn:
            raise RunError(f"{self.title} has no CNN head")
        return head_weight_arrays(self.head_weights)

    # ----------------------------------------------------------------- recorded data paths

    def data_record(self, scope: str = "data") -> dict:
        """What the run recorded about the folder of a scope's images: the training folder
        for ``"data"`` or ``"test"``, a held-out folder for ``"heldout:<name>"`` or its bare
        name (see :meth:`scope_record`); {} when it recorded nothing."""
        return self.scope_record(TEST_SCOPE if scope == "data" else scope)

    def data_folder(self, scope: str = "data", data_root: str | Path | None = None
                    ) -> Path | None:
        """The recorded folder (training data, or the held-out folder ``scope``) on this
        machine, or None when it is not here.

        Tries ``folder_absolute``, then ``folder`` (as written and from the repository);
        only a folder inside the data root
        (``$XRCOMPARE_DATA_ROOT``, default ``../shared/data``) is used. Raises
        :class:`RunError` when the recorded folder exists but lies outside it.
        """
        from xrcompare.data import is_inside

        root = Path(data_root) if data_root else paths.data_root()
        record = self.data_record(scope)
        candidates = []
        if record.get("folder_absolute"):
            candidates.append(Path(record["folder_absolute"]))
        if record.get("folder"):
            folder = Path(record["folder"]).expanduser()
            candidates.append(folder)
            if not folder.is_absolute():
                candidates.append(paths.from_repo(folder))
        refused = None
        for candidate in candidates:
            if candidate.is_dir():
                if is_inside(candidate, root):
                    return candidate
                refused = refused or candidate
        if refused is not None:
            raise RunError(f"{self.run_id} recorded the folder {refused}, which is outside the "
                           f"data root {root}; its images are not shown (set "
                           f"{paths.DATA_ROOT_VARIABLE} to the folder that holds them)")
        return None

    def image_path(self, relative: str, scope: str = "data",
                   data_root: str | Path | None = None) -> Path | None:
        """A recorded image path (``split.files`` or ``predictions.csv``) inside the run's
        data folder (or a link from it into the data root: a derived dataset), or None when
        the folder is not here or the path would leave both."""
        from xrcompare.data import path_inside

        folder = self.data_folder(scope, data_root)
        root = Path(data_root) if data_root else paths.data_root()
        return None if folder is None else path_inside(folder, relative, also=root)

    def manifest_path(self, data_root: str | Path | None = None) -> Path | None:
        """The training data's ``manifest.csv`` on this machine (the recorded one, else the
        one beside the data folder), only from inside the data root; None otherwise."""
        from xrcompare.data import MANIFEST_NAME, is_inside

        root = Path(data_root) if data_root else paths.data_root()
        candidates = []
        recorded = self.data_record().get("manifest")
        if isinstance(recorded, str) and recorded:
            manifest = Path(recorded).expanduser()
            candidates.append(manifest)
            if not manifest.is_absolute():
                candidates.append(paths.from_repo(manifest))
        try:
            folder = self.data_folder(data_root=root)
        except RunError:
            folder = None
        if folder is not None:
            candidates += [folder / MANIFEST_NAME, folder.parent / MANIFEST_NAME]
        for candidate in candidates:
            if (candidate.name == MANIFEST_NAME and is_inside(candidate, root)
                    and candidate.is_file()):
                return candidate
        return None


def load_run(folder: str | Path) -> Run:
    """Load a run folder, or raise :class:`RunError` saying what is wrong with it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"{folder} is not a run folder")
    for name in ("run.json", "metrics.json"):
        if not (folder / name).is_file():
            raise RunError(f"{folder.name}: missing {name}")
    try:
        info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{folder.name}: unreadable JSON ({one_line(error, 120)})") from None
    if not isinstance(info, dict) or not isinstance(metrics, dict):
        raise RunError(f"{folder.name}: run.json or metrics.json is not a JSON object")
    kind = run_kind(info)
    if kind is None:
        raise RunError(f"{folder.name}: run.json model.kind is not one of "
                       f"{', '.join(MODEL_KINDS)}")
    missing = [name for name in REQUIRED_FILES_BY_KIND[kind] if not (folder / name).is_file()]
    if missing:
        raise RunError(f"{folder.name}: missing {', '.join(missing)}")
    missing_info = [key for key in REQUIRED_INFO_BY_KIND[kind] if key not in info]
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
        check_protocol(info.get("protocol") or {})
    except ValueError as error:
        raise RunError(f"{folder.name}: run.json {error}") from None
    try:
        history = (pd.read_csv(folder / "history.csv") if kind == CNN_KIND
                   else pd.DataFrame({"epoch": pd.Series(dtype="int64")}))  # no epochs
        predictions = pd.read_csv(folder / "predictions.csv")
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise RunError(f"{folder.name}: unreadable CSV ({one_line(error, 120)})") from None
    try:
        check_info(info, kind)
        labels = list(info.get("classes", CLASSES))
        check_metrics(metrics, labels)
        if kind == CNN_KIND:
            check_head_file(folder / "head.weights.h5", info, labels)
            if isinstance(info.get("fine_tune"), dict):
                if not (folder / BLOCK_FILE).is_file():
                    raise SchemaError(f"run.json says the last block was fine-tuned, but "
                                      f"{BLOCK_FILE} is missing")
                check_block_file(folder / BLOCK_FILE, info["backbone"])
        else:
            check_statistics_file(folder / MODEL_FILE, labels)
    except SchemaError as error:
        raise RunError(f"{folder.name}: {error}") from None
    columns = [prediction_column(label) for label in labels]
    needed = {"path", "split", "label", *columns}
    if not needed <= set(predictions.columns):
        raise RunError(f"{folder.name}: predictions.csv lacks columns "
                       f"{', '.join(sorted(needed - set(predictions.columns)))}")
    not_numbers = [column for column in [*columns, *history.columns]
                   if not pd.api.types.is_numeric_dtype(
                       predictions[column] if column in columns else history[column])]
    if not_numbers:
        raise RunError(f"{folder.name}: predictions.csv/history.csv column "
                       f"{not_numbers[0]} holds values that are not numbers")
    modified = max(p.stat().st_mtime for p in folder.iterdir())
    return Run(folder, info, metrics, history, predictions, modified)


# --------------------------------------------------------------------------- schema


class SchemaError(ValueError):
    """A field of run.json or metrics.json with the wrong type or shape."""


def _is_number(value) -> bool:
    return (isinstance(value, Real) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _expect(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise SchemaError(f"{where} is not {what}")


def _expect_number(value, where: str, optional: bool = False) -> None:
    _expect(_is_number(value) or (optional and value is None), where,
            "a number" + (" or null" if optional else ""))


def _expect_text(value, where: str, optional: bool = False) -> None:
    _expect(isinstance(value, str) or (optional and value is None), where,
            "a string" + (" or null" if optional else ""))


def _expect_labels(value, where: str) -> None:
    _expect(isinstance(value, list) and value and len(set(map(str, value))) == len(value)
            and all(isinstance(label, str) and label for label in value),
            where, "a list of distinct class names")


def run_kind(info: dict) -> str | None:
    """The model kind run.json records (``model.kind``; a frozen-CNN run when it records
    none), or None when it records one this version does not know."""
    model = info.get("model")
    if model is None:
        return CNN_KIND
    kind = model.get("kind", CNN_KIND) if isinstance(model, dict) else None
    return kind if kind in MODEL_KINDS else None


def check_info(info: dict, kind: str = CNN_KIND) -> None:
    """Types and ranges of the run.json fields readers rely on; :class:`SchemaError` else."""
    from xrcompare.backbones import WEIGHT_KINDS
    from xrcompare.imaging import RESIZE_MODES
    from xrcompare.train import HEADS

    if kind == CNN_KIND:
        _expect_text(info["backbone"], "run.json backbone")
        _expect(info["weights"] in WEIGHT_KINDS, "run.json weights",
                f"one of {', '.join(WEIGHT_KINDS)}")
        size = info["image_size"]
        _expect(_is_count(size) and 1 <= size <= 1024, "run.json image_size",
                "a whole number of pixels from 1 to 1024")
        _expect(info["resize_mode"] in RESIZE_MODES, "run.json resize_mode",
                f"one of {', '.join(RESIZE_MODES)}")
        _expect(info["head"] in HEADS, "run.json head", f"one of {', '.join(HEADS)}")
        check_feature_shape(info["feature_shape"], size)
        check_feature_channels(info["feature_shape"], info["backbone"])
        _expect(info.get("mask", NO_MASK) in MASK_MODES, "run.json mask",
                f"one of {', '.join(MASK_MODES)}")
        box = info.get("mask_box")
        if box is not None:
            _expect(isinstance(box, dict) and all(
                _is_number(box.get(key)) and 0 <= box[key] <= 1
                for key in ("left", "top", "right", "bottom")), "run.json mask_box",
                "an object of fractions left, top, right, bottom")
        if info.get("fine_tune") is not None:
            check_fine_tune_record(info["fine_tune"], info["backbone"])
    if "control" in info:
        _expect(isinstance(info["control"], bool), "run.json control", "true or false")
    if "classes" in info:
        _expect_labels(info["classes"], "run.json classes")
    if info.get("positive") is not None:
        _expect(info["positive"] in info.get("classes", CLASSES), "run.json positive",
                "one of the run's classes")
    for key in ("display_name", "description", "selection", "backbone_display"):
        _expect_text(info.get(key), f"run.json {key}", optional=True)
    for key in ("best_epoch", "epochs_run", "trainable_params", "weights_seed"):
        _expect(info.get(key) is None or _is_count(info[key]), f"run.json {key}",
                "a whole number or null")
    order = info.get("order")
    _expect(order is None or (isinstance(order, int) and not isinstance(order, bool)),
            "run.json order", "a whole number or null")
    data = info["data"]
    _expect_text(data["name"], "run.json data.name")
    _check_folder_record(data, "run.json data")
    split = info["split"]
    if split.get("folds") is not None:
        _expect(_is_count(split["folds"]), "run.json split.folds", "a whole number")
    if split.get("files") is not None:
        _check_files(split["files"], "run.json split.files")
    per_fold = split.get("per_fold")
    if per_fold is not None:
        _expect(isinstance(per_fold, list) and all(isinstance(entry, dict)
                                                   for entry in per_fold),
                "run.json split.per_fold", "a list of objects")
        for number, entry in enumerate(per_fold):
            where = f"run.json split.per_fold[{number}]"
            for key in ("fold", "best_epoch", "epochs_run"):
                _expect(entry.get(key) is None or _is_count(entry[key]), f"{where}.{key}",
                        "a whole number or null")
            if entry.get("files") is not None:
                _check_files(entry["files"], f"{where}.files")
    heldout = info.get("heldout", [])
    _expect(isinstance(heldout, list) and all(isinstance(entry, dict) for entry in heldout),
            "run.json heldout", "a list of objects")
    for number, entry in enumerate(heldout):
        _expect_text(entry.get("name"), f"run.json heldout[{number}].name")
        _check_folder_record(entry, f"run.json heldout[{number}]")
    timings = info.get("timings_s", {})
    _expect(isinstance(timings, dict) and all(_is_number(v) for v in timings.values()),
            "run.json timings_s", "an object of numbers")
    for key in ("hyperparameters", "features", "versions", "machine"):
        _expect(isinstance(info.get(key, {}), dict), f"run.json {key}", "an object")


def _check_files(files, where: str) -> None:
    _expect(isinstance(files, dict) and all(
        isinstance(names, list) and all(isinstance(name, str) for name in names)
        for names in files.values()), where, "lists of file paths")


def _check_folder_record(record: dict, where: str) -> None:
    for key in ("folder", "folder_absolute", "manifest"):
        _expect_text(record.get(key), f"{where}.{key}", optional=True)
    for key in ("class_counts", "patient_id_sources"):
        value = record.get(key, {})
        _expect(isinstance(value, dict) and all(_is_count(v) for v in value.values()),
                f"{where}.{key}", "an object of counts")
    folders = record.get("class_folders", {})
    _expect(isinstance(folders, dict) and all(isinstance(v, str) for v in folders.values()),
            f"{where}.class_folders", "an object of folder names")
    for key in ("images", "patients"):
        _expect(record.get(key) is None or _is_count(record[key]), f"{where}.{key}",
                "a whole number")


def check_feature_shape(shape, image_size: int) -> tuple[int, int, int]:
    """The recorded frozen-base feature map (height, width, channels), checked against what
    a stride-32 base makes of ``image_size`` px; :class:`SchemaError` otherwise."""
    _expect(isinstance(shape, list) and len(shape) == 3 and all(_is_count(v) and v > 0
                                                                for v in shape),
            "run.json feature_shape", "three positive whole numbers")
    height, width, channels = shape
    low = max(1, image_size // FEATURE_STRIDE)
    high = max(1, -(-image_size // FEATURE_STRIDE))
    if not (low <= height <= high and low <= width <= high):
        raise SchemaError(f"run.json feature_shape {shape} does not fit a {image_size} px "
                          f"input (a frozen base gives {low}–{high} cells on a side)")
    if channels > MAX_FEATURE_CHANNELS:
        raise SchemaError(f"run.json feature_shape {shape} has more than "
                          f"{MAX_FEATURE_CHANNELS} channels")
    return height, width, channels


def check_feature_channels(shape, backbone_name: str) -> None:
    """The recorded feature map's channels are what the backbone's base gives (a head sized for
    another base would fail deep inside a model call); unknown backbones are left to the
    weights check, which names them."""
    from xrcompare.backbones import REGISTRY

    backbone = REGISTRY.get(str(backbone_name))
    if backbone is not None and shape[2] != backbone.feature_channels:
        raise SchemaError(f"run.json feature_shape {shape} has {shape[2]} channels, but "
                          f"{backbone.display_name}'s base gives {backbone.feature_channels}")


def check_metrics(metrics: dict, labels: list[str]) -> None:
    """Types and shapes of the metrics.json parts the pages and the CLI read."""
    _check_scope(metrics["test"], "metrics.json test", labels)
    for name, scope in metrics.get("heldout", {}).items():
        where = f"metrics.json heldout.{name}"
        _expect(isinstance(scope, dict), where, "an object")
        _check_scope(scope, where, labels)
        overlap = scope.get("patient_overlap")
        if overlap is not None:
            _expect(isinstance(overlap, dict) and _is_count(overlap.get("patients"))
                    and _is_count(overlap.get("images"))
                    and isinstance(overlap.get("ids", []), list)
                    and all(isinstance(item, str) for item in overlap.get("ids", [])),
                    f"{where}.patient_overlap", "an object with patients, images and ids")
        if scope.get("without_overlap") is not None:
            _expect(isinstance(scope["without_overlap"], dict), f"{where}.without_overlap",
                    "an object")
            _check_scope(scope["without_overlap"], f"{where}.without_overlap", labels)
    folds = metrics.get("folds")
    if folds is not None:
        _expect(isinstance(folds, dict), "metrics.json folds", "an object")
        for key in ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity"):
            stats = folds.get(key)
            if stats is not None:
                _expect(isinstance(stats, dict), f"metrics.json folds.{key}", "an object")
                _expect_number(stats.get("mean"), f"metrics.json folds.{key}.mean")
                _expect_number(stats.get("sd"), f"metrics.json folds.{key}.sd")
    val_best = metrics.get("val_best", {})
    _expect(isinstance(val_best, dict) and all(_is_number(v) or v is None
                                               for v in val_best.values()),
            "metrics.json val_best", "an object of numbers")


def _check_scope(scope: dict, where: str, labels: list[str]) -> None:
    """One scored set (the test split or a held-out folder)."""
    for key in REQUIRED_TEST_METRICS:
        _expect(key in scope, f"{where}.{key}", "present")
    _expect_labels(scope["labels"], f"{where}.labels")
    _expect(set(scope["labels"]) <= set(labels), f"{where}.labels",
            "a subset of the run's classes")
    size = len(scope["labels"])
    _expect_number(scope["accuracy"], f"{where}.accuracy")
    _expect_number(scope["macro_f1"], f"{where}.macro_f1")
    if "n" in scope:
        _expect(_is_count(scope["n"]), f"{where}.n", "a whole number")
    matrix = scope["confusion_matrix"]
    _expect(isinstance(matrix, list) and len(matrix) == size
            and all(isinstance(row, list) and len(row) == size and all(map(_is_count, row))
                    for row in matrix),
            f"{where}.confusion_matrix", f"a {size} × {size} table of counts")
    per_class = scope["per_class"]
    _expect(isinstance(per_class, dict) and set(scope["labels"]) <= set(per_class),
            f"{where}.per_class", "an object with one entry per class")
    for label in scope["labels"]:
        scores = per_class[label]
        _expect(isinstance(scores, dict), f"{where}.per_class.{label}", "an object")
        for key in ("precision", "recall", "f1"):
            _expect_number(scores.get(key), f"{where}.per_class.{label}.{key}", optional=True)
        _expect(_is_count(scores.get("support")), f"{where}.per_class.{label}.support",
                "a whole number")
    for key in ("covid_vs_rest", "roc_auc", "average_precision"):
        block = scope.get(key, {})
        _expect(isinstance(block, dict), f"{where}.{key}", "an object")
        for name, value in block.items():
            if name == "positive":  # the run's positive class (covid_vs_rest)
                _expect(value in labels, f"{where}.{key}.positive", "one of the run's classes")
            elif name != "rule":
                _expect_number(value, f"{where}.{key}.{name}", optional=True)
    intervals = scope.get("intervals", {})
    _expect(isinstance(intervals, dict), f"{where}.intervals", "an object")
    for key in ("accuracy", "sensitivity", "specificity"):
        if intervals.get(key) is not None:
            _expect_pair(intervals[key], f"{where}.intervals.{key}")
    per_class_intervals = intervals.get("per_class", {})
    _expect(isinstance(per_class_intervals, dict), f"{where}.intervals.per_class", "an object")
    for key, pairs in per_class_intervals.items():
        _expect(isinstance(pairs, list) and len(pairs) == size,
                f"{where}.intervals.per_class.{key}", "one interval per class")
        for pair in pairs:
            _expect_pair(pair, f"{where}.intervals.per_class.{key}")
    table = scope.get("heldout_table", {})
    _expect(isinstance(table, dict), f"{where}.heldout_table", "an object")
    for label, entry in table.items():
        _expect(isinstance(entry, dict) and isinstance(entry.get("predicted_pct"), dict)
                and all(_is_number(v) for v in entry["predicted_pct"].values()),
                f"{where}.heldout_table.{label}", "an object of percentages")
        _expect_number(entry.get("non_covid_pct"), f"{where}.heldout_table.{label}."
                       "non_covid_pct", optional=True)


def _expect_pair(value, where: str) -> None:
    _expect(isinstance(value, list) and len(value) == 2
            and all(_is_number(v) or v is None for v in value), where,
            "a [low, high] interval")


def check_statistics_file(path: Path, labels: list[str]) -> None:
    """The statistics baseline's model.json must be a valid model of the run's classes."""
    from xrcompare.imagestats import StatisticsModel

    try:
        model = StatisticsModel.read(path)
    except ValueError as error:
        raise SchemaError(str(error)) from None
    unknown = sorted(set(model.classes) - set(labels))
    if unknown:
        raise SchemaError(f"model.json predicts {', '.join(unknown)}, not among run.json's "
                          "classes")


def check_head_file(path: Path, info: dict, labels: list[str]) -> None:
    """The head weights must fit the recorded feature shape and classes, so a wrong
    ``feature_shape`` is caught before any model is built (it sizes the head's layers)."""
    shapes = head_weight_shapes(path)
    height, width, channels = info["feature_shape"]
    predictions = shapes.get("head_predictions")
    if predictions is None:
        return  # a layout this version does not know: the feature-shape bounds still hold
    kernel = predictions[0] if predictions else ()
    if len(kernel) != 2 or kernel[1] != len(labels):
        raise SchemaError(f"head.weights.h5 predicts {kernel[1] if len(kernel) == 2 else '?'} "
                          f"classes, run.json names {len(labels)}")
    if info["head"] == "gap":
        expected = {"head_predictions": channels}
    elif info["head"] == "blog":
        pooled = (height // min(4, height)) * (width // min(4, width)) * channels
        expected = {"head_dense": pooled}
    else:
        expected = {}
    for layer, inputs in expected.items():
        found = (shapes.get(layer) or [()])[0]
        if len(found) != 2 or found[0] != inputs:
            raise SchemaError(f"head.weights.h5 does not fit run.json feature_shape "
                              f"{info['feature_shape']} (layer {layer} takes "
                              f"{found[0] if len(found) == 2 else '?'} inputs, the shape "
                              f"gives {inputs})")


def check_fine_tune_record(record, backbone_name: str) -> None:
    """run.json ``fine_tune`` names the registry's last block of the run's backbone."""
    from xrcompare.backbones import FINE_TUNE_CHOICES, REGISTRY

    _expect(isinstance(record, dict), "run.json fine_tune", "an object")
    _expect(record.get("mode") in FINE_TUNE_CHOICES[1:], "run.json fine_tune.mode",
            f"one of {', '.join(FINE_TUNE_CHOICES[1:])}")
    backbone = REGISTRY.get(str(backbone_name))
    if backbone is None:
        return  # an unknown backbone is named by the weights check
    if not backbone.fine_tune_layers:
        raise SchemaError(f"run.json fine_tune: {backbone.display_name} has no fine-tune cut "
                          "registered")
    layers = record.get("layers")
    if layers != list(backbone.fine_tune_names):
        raise SchemaError(f"run.json fine_tune.layers {layers!r} are not "
                          f"{backbone.display_name}'s registered last block "
                          f"{list(backbone.fine_tune_names)}")
    for key in ("epochs", "best_epoch", "epochs_run"):
        _expect(record.get(key) is None or _is_count(record[key]), f"run.json fine_tune.{key}",
                "a whole number or null")
    _expect(record.get("learning_rate") is None or _is_number(record["learning_rate"]),
            "run.json fine_tune.learning_rate", "a number or null")


def block_weight_shapes(path: Path) -> dict[str, list[tuple[int, ...]]]:
    """Layer name → the shapes of its weights in a block file (:func:`write_block_weights`),
    read without loading the values; :class:`SchemaError` (one sentence) when it is not one."""
    import h5py

    try:
        size = Path(path).stat().st_size
        if size > BLOCK_FILE_LIMIT:
            raise SchemaError(f"{BLOCK_FILE} is {size / 1e6:.0f} MB, more than a last block "
                              f"({BLOCK_FILE_LIMIT / 1e6:.0f} MB at most)")
        with h5py.File(path, "r") as handle:
            layers = handle.get("layers")
            if not isinstance(layers, h5py.Group):
                raise SchemaError(f"{BLOCK_FILE} has no 'layers' group: it is not a block "
                                  "weights file")
            shapes = {}
            for name, group in layers.items():
                if not isinstance(group, h5py.Group) or not all(
                        isinstance(group.get(key), h5py.Dataset) for key in group):
                    raise SchemaError(f"{BLOCK_FILE} layer {name} is not a group of arrays")
                keys = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else -1)
                if keys != [str(number) for number in range(len(keys))]:
                    raise SchemaError(f"{BLOCK_FILE} layer {name} has arrays {keys}, "
                                      "expected 0, 1, ...")
                shapes[name] = [tuple(int(d) for d in group[key].shape) for key in keys]
    except SchemaError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SchemaError(f"{BLOCK_FILE} cannot be read ({one_line(error, 80)})") from None
    return shapes


def check_block_file(path: Path, backbone_name: str) -> None:
    """The block file holds exactly the registry's last-block layers of ``backbone_name``
    with their weight shapes (a file from another backbone or a damaged one is refused
    before any model is built); :class:`SchemaError` (one sentence) otherwise."""
    from xrcompare.backbones import REGISTRY

    backbone = REGISTRY.get(str(backbone_name))
    if backbone is None or not backbone.fine_tune_layers:
        raise SchemaError(f"{BLOCK_FILE}: {backbone_name} has no fine-tune cut registered")
    found = block_weight_shapes(path)
    expected = {name: [tuple(shape) for shape in shapes]
                for name, shapes in backbone.fine_tune_layers}
    if set(found) != set(expected):
        raise SchemaError(f"{BLOCK_FILE} holds layers {sorted(found)}, but "
                          f"{backbone.display_name}'s last block is {sorted(expected)}")
    for name, shapes in expected.items():
        if found[name] != shapes:
            raise SchemaError(f"{BLOCK_FILE} layer {name} has weight shapes "
                              f"{[list(s) for s in found[name]]}, but {backbone.display_name}'s "
                              f"{name} takes {[list(s) for s in shapes]}")


def write_block_weights(path: Path, weights: dict[str, list[np.ndarray]]) -> None:
    """Write a last block's weights (layer name → its arrays in Keras order) as float16."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle.attrs["format"] = "xrcompare last-block weights, float16"
        layers = handle.create_group("layers")
        for name, arrays in weights.items():
            group = layers.create_group(name)
            for number, array in enumerate(arrays):
                group.create_dataset(str(number), data=np.asarray(array).astype(BLOCK_DTYPE))


def read_block_weights(path: Path, backbone_name: str) -> dict[str, list[np.ndarray]]:
    """A block file's weights as float32 arrays, checked (:func:`check_block_file`; float16
    or float32 values, all finite); :class:`SchemaError` (one sentence) otherwise."""
    import h5py

    check_block_file(path, backbone_name)
    weights: dict[str, list[np.ndarray]] = {}
    try:
        with h5py.File(path, "r") as handle:
            for name, group in handle["layers"].items():
                arrays = []
                for key in sorted(group.keys(), key=int):
                    dataset = group[key]
                    if dataset.dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
                        raise SchemaError(f"{BLOCK_FILE} layer {name} holds {dataset.dtype} "
                                          "values, not float16 or float32")
                    array = np.asarray(dataset[()], dtype=np.float32)
                    if not np.isfinite(array).all():
                        raise SchemaError(f"{BLOCK_FILE} layer {name} holds values that are "
                                          "not finite numbers")
                    arrays.append(array)
                weights[name] = arrays
    except SchemaError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SchemaError(f"{BLOCK_FILE} cannot be read ({one_line(error, 80)})") from None
    return weights


def block_weights_of(base, backbone_name: str) -> dict[str, list[np.ndarray]]:
    """The registry's last-block layers' weights of ``base`` (for :func:`write_block_weights`)."""
    from xrcompare.backbones import get_backbone

    return {name: [np.asarray(w) for w in base.get_layer(name).get_weights()]
            for name in get_backbone(backbone_name).fine_tune_names}


def head_weight_arrays(path: Path) -> dict[str, list[np.ndarray]]:
    """Layer name → its weights (float32, in Keras's order: kernel, bias) in a Keras 3
    ``.weights.h5`` file, read without Keras; :class:`SchemaError` when the file cannot be
    read or holds values that are not finite. The shapes were checked when the run was
    loaded (:func:`check_head_file`), so nothing here is unexpectedly large."""
    import h5py

    arrays: dict[str, list[np.ndarray]] = {}
    try:
        with h5py.File(path, "r") as handle:
            layers = handle.get("layers")
            for group in (layers.values() if layers is not None else []):
                variables = group.get("vars") if isinstance(group, h5py.Group) else None
                if variables is None or not len(variables):
                    continue
                name = variables.attrs.get("name")
                name = name.decode() if isinstance(name, bytes) else str(name or group.name)
                keys = sorted(variables.keys(), key=lambda k: int(k) if k.isdigit() else 0)
                values = [np.asarray(variables[key][()], dtype=np.float32) for key in keys]
                if not all(np.isfinite(value).all() for value in values):
                    raise SchemaError(f"head.weights.h5 layer {name} holds values that are "
                                      "not finite numbers")
                arrays[name] = values
    except SchemaError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SchemaError(f"head.weights.h5 cannot be read ({one_line(error, 80)})") from None
    return arrays


def head_weight_shapes(path: Path) -> dict[str, list[tuple[int, ...]]]:
    """Layer name → the shapes of its weights in a Keras 3 ``.weights.h5`` file, read
    without building anything; :class:`SchemaError` when the file cannot be read."""
    import h5py

    shapes: dict[str, list[tuple[int, ...]]] = {}
    try:
        with h5py.File(path, "r") as handle:
            layers = handle.get("layers")
            for group in (layers.values() if layers is not None else []):
                variables = group.get("vars") if isinstance(group, h5py.Group) else None
                if variables is None:
                    continue
                name = variables.attrs.get("name")
                name = name.decode() if isinstance(name, bytes) else str(name or group.name)
                keys = sorted(variables.keys(), key=lambda k: int(k) if k.isdigit() else 0)
                shapes[name] = [tuple(int(d) for d in variables[key].shape) for key in keys]
    except (OSError, ValueError, KeyError) as error:
        raise SchemaError(f"head.weights.h5 cannot be read ({one_line(error, 80)})") from None
    return shapes


@dataclass
class RunListing:
    runs: list[Run]
    problems: list[tuple[str, str]]  # (folder name, reason)


def list_runs(runs_dir: str | Path | None = None) -> RunListing:
    """Every complete run under ``runs_dir``, newest first; broken folders become problems."""
    runs_dir = Path(runs_dir) if runs_dir else paths.runs_dir()
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
    runs.sort(key=lambda run: (run.order if run.order is not None else 1000, run.run_id))
    return RunListing(runs, problems)


def heldout_names(runs) -> list[str]:
    """Names of the held-out folders any of ``runs`` was scored on, first seen first."""
    names: list[str] = []
    for run in runs:
        names += [name for name in run.heldout_names if name not in names]
    return names


def runs_fingerprint(runs_dir: str | Path | None = None) -> tuple:
    """A cheap key that changes whenever a run is added, removed or rewritten."""
    runs_dir = Path(runs_dir) if runs_dir else paths.runs_dir()
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

    # feature_shape was checked on load (check_feature_shape, check_head_file): it sizes
    # the head's layers, so an unchecked one could allocate gigabytes here.
    head = build_head(run.head, run.feature_shape, len(run.labels))
    head.load_weights(run.head_weights)
    return head


def rebuild_problem(run: Run) -> str | None:
    """Why this run's frozen base cannot be rebuilt faithfully here (one sentence), or None.

    A random-init control is rebuilt from its seed, and seeded initialisers differ between
    Keras backends and versions: rebuilding it elsewhere would pair the head with another net.
    """
    import keras

    if not run.is_random_control:
        return None
    trained_backend = run.info.get("keras_backend")
    trained_keras = run.versions.get("keras")
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


def load_block_into(run: Run, base) -> None:
    """Set a fine-tuned run's stored last block (``block.weights.h5``) into ``base``, a
    registry base of its backbone; :class:`RunError` (one sentence) for a bad file."""
    try:
        weights = read_block_weights(run.block_weights, run.backbone)
    except SchemaError as error:
        raise RunError(f"{run.run_id}: {error}") from None
    for name, arrays in weights.items():
        base.get_layer(name).set_weights(arrays)


def build_base_for_run(run: Run):
    """The run's base: the registry's (ImageNet, or its random-init control), with its
    fine-tuned last block loaded for a fine-tuned run. A fine-tuned run's base is its own:
    never share it with another run's (:func:`xrcompare.engine.base_key`)."""
    from xrcompare.backbones import build_base

    run._require_cnn("CNN base")
    check_rebuildable(run)
    base = build_base(run.backbone, run.image_size, run.weights, seed=run.weights_seed)
    if run.is_fine_tuned:
        load_block_into(run, base)
    return base


def build_feature_model_for_run(run: Run, *, base=None):
    """The model that takes the run's cached features (:meth:`Run.feature_spec`) to class
    probabilities: its head for a frozen-base run; for a fine-tuned run, its last block
    (from the cut, with the stored weights; batch norm in inference mode) then its head.
    ``base``: a base from :func:`build_base_for_run` (None: built here)."""
    if not run.is_fine_tuned:
        return build_head_for_run(run)
    from xrcompare.backbones import build_block
    from xrcompare.train import fine_tune_model

    base = base if base is not None else build_base_for_run(run)
    return fine_tune_model(build_block(base, run.backbone), build_head_for_run(run))


def build_full_model(run: Run, *, base=None):
    """The run's full classifier as ONE flat graph: base + head layers (what Grad-CAM and
    tf-keras-vis need). A fine-tuned run's base carries its stored last block.

    ``base``: a base from :func:`build_base_for_run` for this run (the engine's shared one);
    None builds it. Raises :class:`xrcompare.backbones.WeightsUnavailable` when ImageNet
    weights are missing or a random-init control cannot be rebuilt identically here, and
    :class:`RunError` when a fine-tuned run's block file is bad.
    """
    from xrcompare.train import attach_head

    run._require_cnn("CNN classifier")
    check_rebuildable(run)
    if base is None:
        base = build_base_for_run(run)
    return attach_head(base, build_head_for_run(run))


def model_square_for_run(run: Run, gray: np.ndarray) -> np.ndarray:
    """A batch of one 8-bit gray square (1, S, S), as the run's training images were fed to
    its inference engine (:func:`xrcompare.imaging.to_model_square`)."""
    from xrcompare.imaging import to_model_square

    if not run.is_cnn:
        raise RunError(f"{run.title} has no CNN: it takes no model input")
    return to_model_square(gray, run.image_size, run.resize_mode, run.mask)[None]


def model_input_for_run(run: Run, gray: np.ndarray) -> np.ndarray:
    """A batch of one, exactly as the run's training images were prepared: the Keras
    model's preprocessed input (:meth:`xrcompare.backbones.Backbone.model_inputs`)."""
    from xrcompare.backbones import get_backbone

    return get_backbone(run.backbone).model_inputs(model_square_for_run(run, gray),
                                                   run.preprocess)


def predict_gray(run: Run, model, gray: np.ndarray) -> dict[str, float]:
    """Class → probability of ``run`` for one 8-bit gray image. ``model``: the CNN run's full
    classifier (:func:`build_full_model`); for the statistics baseline its
    :meth:`Run.statistics_model` (None: read from the run folder)."""
    if run.is_statistics:
        from xrcompare.imagestats import predict_gray as predict_statistics

        return predict_statistics(model if model is not None else run.statistics_model(), gray,
                                  run.labels)
    probabilities = np.asarray(model.predict_on_batch(model_input_for_run(run, gray)))[0]
    return {label: float(p) for label, p in zip(run.labels, probabilities, strict=True)}
