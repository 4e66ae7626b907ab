"""One training run end to end: dataset → split → cached features → head → evaluation → run
folder. The CLI, the sidebar's training jobs and the scripts that make ``trained/`` call
:func:`train_runs`."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xrcompare import CLASSES, __version__
from xrcompare.backbones import get_backbone, weights_status
from xrcompare.data import (
    Dataset,
    kfold_by_patient,
    scan_dataset,
    split_by_patient,
    split_summary,
)
from xrcompare.evaluate import evaluate_predictions, summarise_folds
from xrcompare.features import FeatureExtractor, FeatureSpec
from xrcompare.imaging import RESIZE_MODES
from xrcompare.inference_engine import ENGINE_CHOICES, engine_label, with_engine
from xrcompare.runs import SCHEMA_VERSION, RunWriter, default_runs_dir, new_run_id, slug
from xrcompare.train import HEADS, build_head, fit_head, predict, save_head_weights

Progress = Callable[[dict], None]


@dataclass
class TrainConfig:
    data: Path
    backbones: list[str]
    epochs: int = 25
    batch_size: int = 8
    learning_rate: float = 1e-3
    image_size: int | None = None  # None: the backbone's default
    seed: int = 42
    heldout: list[Path] = field(default_factory=list)
    runs_dir: Path | None = None
    folds: int | None = None
    resize_mode: str = "squash"
    head: str = "blog"
    weights: str = "imagenet"
    augment_views: int = 0
    balanced: bool = False
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    patience: int | None = None
    monitor: str = "val_loss"
    name: str | None = None  # run id (one backbone) or tag
    display_name: str | None = None
    description: str | None = None
    order: int | None = None
    extract_batch_size: int = 32
    engine: str | None = None  # the base's forward pass: auto, openvino, keras (None: env)

    def validate(self) -> None:
        """Raise ValueError with one readable line for any out-of-range parameter."""
        def check_int(name, value, low, high):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")

        if not self.backbones:
            raise ValueError("give at least one backbone")
        for backbone in self.backbones:
            spec = get_backbone(backbone)
            if self.image_size is not None:
                spec.check_size(self.image_size)
        check_int("epochs", self.epochs, 1, 500)
        check_int("batch size", self.batch_size, 1, 4096)
        check_int("seed", self.seed, 0, 2**31 - 1)
        check_int("augmentation views", self.augment_views, 0, 16)
        if self.folds is not None:
            check_int("folds", self.folds, 2, 20)
        if self.patience is not None:
            check_int("patience", self.patience, 1, 500)
        if not (isinstance(self.learning_rate, (int, float)) and 1e-6 <= self.learning_rate <= 1):
            raise ValueError(
                f"learning rate must be between 1e-6 and 1, got {self.learning_rate!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}")
        if self.weights not in ("imagenet", "random"):
            raise ValueError("weights must be imagenet or random")
        if self.engine is not None and self.engine not in ENGINE_CHOICES:
            raise ValueError(f"engine must be one of {', '.join(ENGINE_CHOICES)}, "
                             f"got {self.engine!r}")
        for value, label in ((self.val_fraction, "validation"), (self.test_fraction, "test")):
            if not 0.05 <= value <= 0.45:
                raise ValueError(f"{label} fraction must be between 0.05 and 0.45")


def environment() -> dict:
    import keras

    versions = {"xrcompare": __version__, "python": platform.python_version(),
                "keras": keras.__version__, "keras_backend": keras.backend.backend(),
                "numpy": np.__version__}
    for module in ("tensorflow", "jax", "sklearn", "cv2", "pandas", "openvino"):
        loaded = sys.modules.get(module)
        if loaded is not None:
            versions[module] = getattr(loaded, "__version__", "?")
    return {"versions": versions,
            "machine": {"platform": platform.platform(), "processor": platform.machine(),
                        "cpu_count": os.cpu_count(), "accelerator": accelerator()}}


def accelerator() -> str:
    """The device the Keras backend computes on, in words."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            return f"{device.platform}: {getattr(device, 'device_kind', device)}"
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return f"gpu: {len(gpus)} GPU(s)" if gpus else "cpu"
        if backend == "torch":
            import torch

            return f"gpu: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"
    except Exception:  # a broken driver must not stop a CPU run
        return "unknown"
    return "cpu"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


class _Phases:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, name: str, started: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def _extract(extractor: FeatureExtractor, dataset: Dataset, indices: list[int], views: list[int],
             progress: Progress | None, label: str):
    paths = [dataset.records[i].path for i in indices]
    result = extractor.extract(paths, views=views, progress=progress, label=label)
    # row r ↔ requested position result.ok[r] = index-in-indices × len(views) + view-offset
    kept_records = [indices[position // len(views)] for position in result.ok]
    return result, kept_records


def train_runs(config: TrainConfig, progress: Progress | None = None) -> list[Path]:
    """Train one run per backbone; return the committed run folders."""
    config.validate()
    emit = progress or (lambda event: None)
    started = time.perf_counter()
    emit({"phase": "scan", "what": str(config.data)})
    dataset = scan_dataset(config.data)
    heldouts = [scan_dataset(folder) for folder in config.heldout]
    names = [heldout.root.name for heldout in heldouts]
    if len(set(names)) != len(names):
        raise ValueError(f"held-out folders must have distinct names, got {', '.join(names)}")
    if config.name and len(config.backbones) == 1:
        existing = (config.runs_dir or default_runs_dir()) / slug(config.name)
        if existing.exists():
            raise ValueError(f"run folder {existing} already exists: choose another --name "
                             "or remove it first")
    scan_seconds = time.perf_counter() - started
    splits: list[list[dict]] = []  # computed once, after the first base loads

    def fold_splits() -> list[dict]:
        if not splits:
            if config.folds:
                splits.append(kfold_by_patient(dataset, config.folds, seed=config.seed,
                                               val_fraction=config.val_fraction))
            else:
                splits.append([split_by_patient(dataset, val_fraction=config.val_fraction,
                                                test_fraction=config.test_fraction,
                                                seed=config.seed)])
        return splits[0]

    folders = []
    for number, backbone in enumerate(config.backbones, start=1):
        def tagged(event, number=number, backbone=backbone):
            emit({**event, "backbone": backbone, "backbone_index": number,
                  "backbones": len(config.backbones)})

        folders.append(_train_one(config, backbone, dataset, heldouts, fold_splits, tagged,
                                  scan_seconds))
    emit({"phase": "done", "runs": [str(folder) for folder in folders]})
    return folders


def _train_one(config: TrainConfig, backbone_name: str, dataset: Dataset,
               heldouts: list[Dataset], make_splits: Callable[[], list[dict]], emit: Progress,
               scan_seconds: float) -> Path:
    import keras

    backbone = get_backbone(backbone_name)
    size = config.image_size or backbone.default_size
    spec = with_engine(FeatureSpec(backbone.name, size, config.resize_mode, config.weights,
                                   config.seed), config.engine)
    phases = _Phases()
    phases.seconds["scan"] = scan_seconds
    status = weights_status(backbone.name)
    t = time.perf_counter()
    emit({"phase": "load_backbone", "what": f"({engine_label(spec.engine, spec.precision)})"})
    extractor = FeatureExtractor(spec, batch_size=config.extract_batch_size)
    extractor.engine  # noqa: B018 - build now so a missing-weights error comes first
    phases.add("build_base", t)
    fold_splits = make_splits()

    t = time.perf_counter()
    all_indices = list(range(len(dataset.records)))
    original, original_records = _extract(extractor, dataset, all_indices, [0], emit, "dataset")
    row_of = {index: row for row, index in enumerate(original_records)}
    skipped = original.failed
    augmented = None
    if config.augment_views:
        train_union = sorted({i for split in fold_splits for i in split["train"]
                              if i in row_of})
        augmented = _extract(extractor, dataset, train_union,
                             list(range(1, config.augment_views + 1)), emit, "augmented views")
    phases.add("extract", t)
    if not row_of:
        raise ValueError(f"none of the images in {dataset.root} could be read")
    features = original.features
    labels = np.array([CLASSES.index(dataset.records[i].label) for i in original_records])
    feature_shape = tuple(int(d) for d in features.shape[1:])

    fold_results = []
    for fold_number, splits in enumerate(fold_splits, start=1):
        kept = {name: [i for i in indices if i in row_of] for name, indices in splits.items()}
        train_rows = [row_of[i] for i in kept["train"]]
        train_x, train_y = features[train_rows], labels[train_rows]
        if augmented is not None:
            aug_result, aug_records = augmented
            wanted = set(kept["train"])
            aug_rows = [r for r, i in enumerate(aug_records) if i in wanted]
            train_x = np.concatenate([train_x, aug_result.features[aug_rows]])
            train_y = np.concatenate([train_y, labels[[row_of[aug_records[r]] for r in aug_rows]]])
        val_rows = [row_of[i] for i in kept["val"]]
        keras.utils.set_random_seed(config.seed)
        head = build_head(config.head, feature_shape, len(CLASSES))
        t = time.perf_counter()

        def on_epoch(event, fold_number=fold_number):
            emit({**event, "fold": fold_number, "folds": len(fold_splits)})

        fit = fit_head(head, train_x, train_y, features[val_rows], labels[val_rows],
                       epochs=config.epochs, batch_size=config.batch_size,
                       learning_rate=config.learning_rate, seed=config.seed,
                       balanced=config.balanced, patience=config.patience,
                       monitor=config.monitor, progress=on_epoch)
        phases.add("train", t)
        t = time.perf_counter()
        emit({"phase": "evaluate", "fold": fold_number, "folds": len(fold_splits)})
        frames = []
        for split_name, indices in kept.items():
            probabilities = predict(head, features[[row_of[i] for i in indices]])
            frames.append(_prediction_frame(dataset, indices, split_name, probabilities,
                                            fold_number if config.folds else None))
        test_frame = frames[2]
        test_metrics = evaluate_predictions(
            test_frame["label"].tolist(), test_frame[[f"prob_{c}" for c in CLASSES]].to_numpy(),
            test_frame["patient_id"].tolist(), seed=config.seed)
        phases.add("evaluate", t)
        fold_results.append({"head": head, "fit": fit, "frames": frames,
                             "test_metrics": test_metrics, "splits": kept})

    first = fold_results[0]
    head = first["head"]
    t = time.perf_counter()
    heldout_metrics, heldout_frames, heldout_info = {}, [], []
    for heldout in heldouts:
        name = heldout.root.name
        emit({"phase": "heldout", "what": name})
        indices = list(range(len(heldout.records)))
        result, records = _extract(extractor, heldout, indices, [0], emit, f"held-out {name}")
        skipped_here = [{"path": p, "reason": r} for p, r in result.failed]
        if not result.ok:  # nothing readable: record it, keep the run
            heldout_info.append({"name": name, "folder": str(heldout.root), "images": 0,
                                 "folder_absolute": str(heldout.root.resolve()),
                                 "skipped": skipped_here,
                                 "note": "no readable images: not evaluated"})
            continue
        probabilities = predict(head, result.features)
        frame = _prediction_frame(heldout, records, f"heldout:{name}", probabilities, None)
        heldout_frames.append(frame)
        heldout_metrics[name] = evaluate_predictions(
            frame["label"].tolist(), probabilities, frame["patient_id"].tolist(),
            seed=config.seed)
        if config.folds and len(fold_results) > 1:
            heldout_metrics[name]["across_folds"] = summarise_folds([
                evaluate_predictions(frame["label"].tolist(), predict(fr["head"], result.features),
                                     frame["patient_id"].tolist(), repeats=200,
                                     seed=config.seed)
                for fr in fold_results])
        heldout_info.append({"name": name, "folder": str(heldout.root),
                             "folder_absolute": str(heldout.root.resolve()),
                             **{k: v for k, v in heldout.summary().items() if k != "folder"},
                             "skipped": skipped_here})
    phases.add("heldout", t)

    emit({"phase": "write"})
    if config.folds:
        test_frame = pd.concat([fr["frames"][2] for fr in fold_results], ignore_index=True)
        test_metrics = evaluate_predictions(
            test_frame["label"].tolist(), test_frame[[f"prob_{c}" for c in CLASSES]].to_numpy(),
            test_frame["patient_id"].tolist(), seed=config.seed)
        test_metrics["scope"] = f"out-of-fold predictions pooled over {config.folds} folds"
        predictions = pd.concat([test_frame, *first["frames"][:2], *heldout_frames],
                                ignore_index=True)
    else:
        test_metrics = first["test_metrics"]
        test_metrics["scope"] = "patient-wise test split"
        predictions = pd.concat([*first["frames"], *heldout_frames], ignore_index=True)
    metrics = {"test": test_metrics, "heldout": heldout_metrics,
               "val_best": _best_val(first["fit"])}
    if config.folds:
        metrics["folds"] = summarise_folds([fr["test_metrics"] for fr in fold_results])
        metrics["folds"]["per_fold"] = [
            {"fold": n, "accuracy": fr["test_metrics"]["accuracy"],
             "macro_f1": fr["test_metrics"]["macro_f1"],
             "covid_sensitivity": fr["test_metrics"].get("covid_vs_rest", {}).get("sensitivity"),
             "best_epoch": fr["fit"]["best_epoch"], "test_images": len(fr["frames"][2])}
            for n, fr in enumerate(fold_results, start=1)]

    tag = config.name if len(config.backbones) > 1 else None
    run_id = (config.name if config.name and len(config.backbones) == 1
              else new_run_id(backbone.name, dataset.root.name, tag))
    writer = RunWriter(config.runs_dir or default_runs_dir(), run_id)
    try:
        history = pd.DataFrame(first["fit"]["history"])
        history.insert(0, "epoch", range(1, len(history) + 1))
        writer.write_csv("history.csv", history)
        writer.write_csv("predictions.csv", predictions)
        save_head_weights(head, writer.path("head.weights.h5"))
        if config.folds:
            for n, fr in enumerate(fold_results, start=1):
                save_head_weights(fr["head"], writer.path(f"head_fold{n}.weights.h5"))
        writer.write_json("metrics.json", metrics)
        phases.seconds["total"] = sum(phases.seconds.values())
        info = _run_info(config, backbone, size, feature_shape, dataset, fold_splits,
                         first, fold_results, skipped, heldout_info, phases, status, head,
                         writer.run_id, original, extractor)
        writer.write_json("run.json", info)
        folder = writer.commit()
    except BaseException:
        writer.abort()
        raise
    emit({"phase": "written", "run": str(folder)})
    return folder


def _command_line() -> str | None:
    """How this run was started, without machine-specific paths when it was the CLI."""
    if not sys.argv or not sys.argv[0]:
        return None
    program = Path(sys.argv[0])
    if program.name == "__main__.py" and program.parent.name == "xrcompare":
        return shlex.join(["python", "-m", "xrcompare", *sys.argv[1:]])
    return shlex.join([program.name, *sys.argv[1:]])


def _best_val(fit: dict) -> dict:
    history, epoch = fit["history"], fit["best_epoch"]
    return {key: values[epoch - 1] for key, values in history.items()
            if key.startswith("val_") and 0 < epoch <= len(values)}


def _prediction_frame(dataset: Dataset, indices: list[int], split: str,
                      probabilities: np.ndarray, fold: int | None) -> pd.DataFrame:
    frame = pd.DataFrame({
        "path": [_relative(dataset.records[i].path, dataset.root) for i in indices],
        "split": split,
        "label": [dataset.records[i].label for i in indices],
        "patient_id": [dataset.records[i].patient_id for i in indices],
    })
    for column, label in enumerate(CLASSES):
        frame[f"prob_{label}"] = probabilities[:, column] if len(indices) else []
    frame["predicted"] = [CLASSES[j] for j in probabilities.argmax(axis=1)] if len(indices) else []
    if fold is not None:
        frame["fold"] = fold
    return frame


def _run_info(config, backbone, size, feature_shape, dataset, fold_splits, first, fold_results,
              skipped, heldout_info, phases, status, head, run_id, original,
              extractor) -> dict:
    import keras

    def files(indices):
        return [_relative(dataset.records[i].path, dataset.root) for i in indices]

    split = {"method": ("grouped stratified k-fold by patient" if config.folds
                        else "grouped stratified train/val/test by patient"),
             "seed": config.seed, "val_fraction": config.val_fraction,
             "test_fraction": None if config.folds else config.test_fraction,
             "summary": split_summary(dataset, fold_splits[0]),
             "files": {name: files(indices) for name, indices in first["splits"].items()}}
    if config.folds:
        split["folds"] = config.folds
        split["fold_summaries"] = [split_summary(dataset, s) for s in fold_splits]
    hyper = {key: value for key, value in asdict(config).items()
             if key in ("epochs", "batch_size", "learning_rate", "seed", "augment_views",
                        "balanced", "patience", "monitor", "head", "resize_mode")}
    summary = dataset.summary()
    return {
        "schema": SCHEMA_VERSION, "run_id": run_id,
        "display_name": config.display_name or f"{backbone.display_name} · {dataset.root.name}"
                        + (" · random-init control" if config.weights == "random" else ""),
        "description": config.description or "", "order": config.order,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": _command_line(),
        "classes": list(CLASSES),
        "backbone": backbone.name, "backbone_display": backbone.display_name,
        "weights": config.weights,
        "weights_source": (status.detail if config.weights == "imagenet"
                           else f"random initialisation (seed {config.seed}): a control, "
                                "not an ImageNet model"),
        "weights_seed": config.seed,
        "image_size": size, "resize_mode": config.resize_mode,
        "head": config.head, "head_description": HEADS[config.head],
        "feature_shape": list(feature_shape),
        "last_conv_layer": backbone.last_conv_layer,
        "trainable_params": int(sum(int(np.prod(w.shape)) for w in head.trainable_weights)),
        "hyperparameters": hyper,
        "data": {**summary, "name": dataset.root.name, "folder": str(config.data),
                 "folder_absolute": str(dataset.root.resolve()),
                 "skipped": [{"path": p, "reason": r} for p, r in skipped]},
        "split": split,
        "heldout": heldout_info,
        "best_epoch": first["fit"]["best_epoch"], "epochs_run": first["fit"]["epochs_run"],
        "selection": f"best epoch by {first['fit']['monitor']} on the validation split",
        "features": {"spec": extractor.spec.key(),
                     "cached": original.cached, "computed": original.computed,
                     **extractor.engine.info()},
        "timings_s": {key: round(value, 2) for key, value in phases.seconds.items()},
        "keras_backend": keras.backend.backend(),
        **environment(),
    }
