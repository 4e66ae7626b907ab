"""One training run end to end: dataset → split → cached features → head → evaluation → run
folder. The CLI, the sidebar's training jobs and the scripts that make ``trained/`` call
:func:`train_runs`."""

from __future__ import annotations

import dataclasses
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from xrcompare import __version__
from xrcompare.backbones import get_backbone, weights_status
from xrcompare.classes import choose_positive
from xrcompare.config import TrainConfig
from xrcompare.data import (
    Dataset,
    DatasetError,
    check_heldout_classes,
    group_near_duplicates,
    kfold_by_patient,
    patient_overlap,
    scan_dataset,
    split_by_image,
    split_by_patient,
    split_summary,
)
from xrcompare.evaluate import evaluate_heldout, evaluate_predictions, summarise_folds
from xrcompare.features import FeatureExtractor, FeatureSpec, file_digest
from xrcompare.imagestats import (
    CNN_KIND,
    FEATURES,
    MODEL_FILE,
    STATISTICS_KIND,
    fit_statistics_model,
    statistics_for_files,
)
from xrcompare.imaging import LUNG_BOX, MASK_MODES, NO_MASK
from xrcompare.inference_engine import engine_label, with_engine
from xrcompare.protocol import CHOICE_TEXT, leaky_reasons, protocol_label
from xrcompare.ray_extract import runner_for
from xrcompare.runs import (
    BLOCK_DTYPE,
    BLOCK_FILE,
    SCHEMA_VERSION,
    RunWriter,
    block_weights_of,
    check_runs_dir,
    heldout_scope,
    new_run_id,
    prediction_column,
    write_block_weights,
)
from xrcompare.train import (
    HEADS,
    build_head,
    fine_tune_model,
    fit_head,
    predict,
    save_head_weights,
)

Progress = Callable[[dict], None]

#: A masked-input control in a few words (display names, titles).
CONTROL_WORDS = {"lungs-out": "lungs blacked out", "lungs-only": "lungs only"}
assert set(CONTROL_WORDS) == set(MASK_MODES) - {NO_MASK}


def mask_record() -> dict:
    """What run.json records about the mask's box: fractions of the square input."""
    left, top, right, bottom = LUNG_BOX
    return {"units": "fraction of the square model input", "left": left, "top": top,
            "right": right, "bottom": bottom,
            "description": f"x {left:.2f}–{right:.2f}, y {top:.2f}–{bottom:.2f}: the central "
                           "box over the lung fields"}


def preflight(config: TrainConfig) -> dict:
    """Check a configuration completely before any training work and return its plan: what
    a job will do, for the progress display (images, patients, classes, held-out images, per
    backbone the input size, epochs, folds, views, fractions).

    Validates the configuration (once), checks the runs folder can take a run, every
    backbone's weights, the dataset (two classes at least) and that its split can be made.
    Raises ValueError (or a subclass: DatasetError, RunError) with one readable line.
    """
    config.validate()
    check_runs_dir(config.runs_folder)  # writable, with room for a run: say so now
    for name in config.backbones:
        status = weights_status(name)
        if config.weights == "imagenet" and not status.available:
            raise ValueError(status.detail)
    dataset = scan_dataset(config.data)
    dataset.check_trainable()
    positive = run_positive(config, dataset)
    if config.folds:  # too few patients for the split asked: say so now, not after the base
        kfold_by_patient(dataset, config.folds, seed=config.seed,
                         val_fraction=config.val_fraction)
    else:
        splitter = split_by_image if config.split == "images" else split_by_patient
        splitter(dataset, val_fraction=config.val_fraction if config.select_on == "val"
                 else None, test_fraction=config.test_fraction, seed=config.seed)
    heldouts = [scan_dataset(folder) for folder in config.heldout]
    for held in heldouts:
        check_heldout_classes(held, dataset.classes)
    overlaps = [check_heldout_overlap(dataset, held) for held in heldouts]
    check_run_name(config)
    backbones = [get_backbone(name).name for name in config.backbones]
    return {"data": str(config.data), "data_name": dataset.root.name,
            "images": len(dataset.records), "patients": len(set(dataset.groups)),
            "class_counts": dataset.class_counts(), "classes": dataset.classes,
            "positive": positive,
            "heldout": [str(held.root) for held in heldouts],
            "heldout_name": ", ".join(held.root.name for held in heldouts) or None,
            "heldout_images": sum(len(held.records) for held in heldouts),
            "backbones": backbones,
            "image_sizes": {name: config.image_size_for(name) for name in backbones},
            "image_size": config.image_size, "epochs": config.epochs, "folds": config.folds,
            "augment_views": config.augment_views, "val_fraction": config.val_fraction,
            "test_fraction": config.test_fraction, "select_on": config.select_on,
            "split": config.split, "heldout_overlap": overlaps,
            "cached": cached_counts(config, dataset, heldouts),
            "runs_dir": str(config.runs_folder)}


#: A held-out folder more than this share of whose images belong to patients of the training
#: data is refused: it is not held out (``seed001_0402`` against ``cxr3``). A few shared
#: patients are measured, recorded and scored without (``kaggle_test`` against
#: ``seed001_0402``: 13 of 624 images).
HELDOUT_OVERLAP_LIMIT = 0.10


def heldout_overlap(dataset: Dataset, heldout: Dataset) -> dict:
    """How many of a held-out folder's images belong to patients of the training data (by
    :func:`xrcompare.data.patient_overlap`), whether that is too many to call it held out
    (:data:`HELDOUT_OVERLAP_LIMIT`), and a sentence saying so.

    Returns ``{"name", "images", "shared_patients", "shared_images", "refused",
    "sentence"}``.
    """
    overlap, _ = patient_overlap(dataset.groups, heldout.groups)
    name, own, images = heldout.root.name, dataset.root.name, len(heldout.records)
    shared = overlap["images"]
    refused = bool(images) and shared / images > HELDOUT_OVERLAP_LIMIT
    if not shared:
        sentence = f"No patient of {name} is in {own} (by patient id)."
    elif refused:
        sentence = (f"{shared} of the {images} images of {name} belong to patients of {own}, "
                    f"so {name} is not held out from {own}: choose a held-out folder without "
                    "the training data's patients")
    else:
        sentence = (f"{overlap['patients']} patient{'s' if overlap['patients'] != 1 else ''} "
                    f"({shared} image{'s' if shared != 1 else ''}) of {name} also appear in "
                    f"{own}: the run records them and scores {name} with and without them.")
    return {"name": name, "images": images, "shared_patients": overlap["patients"],
            "shared_images": shared, "refused": refused, "sentence": sentence}


def run_positive(config: TrainConfig, dataset: Dataset) -> str:
    """The run's positive class: ``--positive`` checked against the dataset's classes, else
    covid when present, else the first class; :class:`DatasetError` (one line) for a name
    that is not a class."""
    try:
        return choose_positive(config.positive, dataset.classes)
    except ValueError as error:
        raise DatasetError(str(error)) from None


def check_heldout_overlap(dataset: Dataset, heldout: Dataset) -> dict:
    """:func:`heldout_overlap`, raising :class:`xrcompare.data.DatasetError` (its sentence)
    when the folder is refused."""
    found = heldout_overlap(dataset, heldout)
    if found["refused"]:
        raise DatasetError(found["sentence"])
    return found


def check_run_name(config: TrainConfig) -> None:
    """A run name (``--name``) for one backbone is the run's folder: it must not exist yet
    (several backbones use it as a tag of time-stamped folders)."""
    if config.name and (len(config.backbones) == 1 or config.is_statistics):
        existing = config.runs_folder / config.name
        if existing.exists():
            raise ValueError(f"a run named {config.name} already exists in "
                             f"{config.runs_folder}: choose another name")


def cached_counts(config: TrainConfig, dataset: Dataset, heldouts: list[Dataset]
                  ) -> dict[str, dict[str, int]]:
    """Per backbone, how many images the feature cache already holds: ``dataset`` (the
    images), ``views`` (augmented views of all images) and ``heldout``; the progress
    estimate prices those as cache reads. Reads every file once to hash it; builds nothing."""
    digests = [file_digest(record.path) for record in dataset.records]
    held = [file_digest(record.path) for heldout in heldouts for record in heldout.records]
    counts = {}
    for name in config.backbones:
        backbone = get_backbone(name).name
        extractor = FeatureExtractor(feature_spec(config, backbone,
                                                  config.image_size_for(backbone)))

        def count(found: list[str | None], view: int = 0, extractor=extractor) -> int:
            return sum(1 for digest in found if digest and extractor.is_cached(digest, view))

        counts[backbone] = {
            "dataset": count(digests),
            "views": sum(count(digests, view) for view in range(1, config.augment_views + 1)),
            "heldout": count(held)}
    return counts


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
    # Where the run goes must take it: said now, not after all the training work.
    check_runs_dir(config.runs_folder)
    started = time.perf_counter()
    emit({"phase": "scan", "what": str(config.data)})
    dataset = scan_dataset(config.data)
    dataset.check_trainable()  # one class would score 1.000 on everything
    if dataset.manifest_problem:  # the split falls back to weaker patient ids: say so
        emit({"phase": "warning", "what": dataset.manifest_problem})
    heldouts = [scan_dataset(folder) for folder in config.heldout]
    names = [heldout.root.name for heldout in heldouts]
    if len(set(names)) != len(names):
        raise ValueError(f"held-out folders must have distinct names, got {', '.join(names)}")
    run_positive(config, dataset)  # a --positive that is not a class: say so now
    if config.folds:  # a class with fewer patients than folds: say so before the base loads
        kfold_by_patient(dataset, config.folds, seed=config.seed,
                         val_fraction=config.val_fraction)
    for heldout in heldouts:  # a class the run never saw; the training data's patients
        check_heldout_classes(heldout, dataset.classes)
        check_heldout_overlap(dataset, heldout)
    check_run_name(config)
    scan_seconds = time.perf_counter() - started
    splits: list[list[dict]] = []  # computed once, after the first base loads

    def fold_splits() -> list[dict]:
        if not splits:
            splits.append(make_splits(config, dataset, emit))
        return splits[0]

    if config.is_statistics:  # no CNN: the same split, a logistic regression on statistics
        folder = _train_statistics(config, dataset, heldouts, fold_splits, emit, scan_seconds)
        emit({"phase": "done", "runs": [str(folder)]})
        return [folder]
    folders = []
    # Ray Data workers for the features the cache lacks (--extract-on): joined or started on
    # first use, a Ray started for this run stopped at its end
    runner = runner_for(config.extract_on, config.ray_workers)
    try:
        for number, backbone in enumerate(config.backbones, start=1):
            def tagged(event, number=number, backbone=backbone):
                emit({**event, "backbone": backbone, "backbone_index": number,
                      "backbones": len(config.backbones)})

            folders.append(_train_one(config, backbone, dataset, heldouts, fold_splits,
                                      tagged, scan_seconds, runner))
    finally:
        if runner is not None:
            runner.close()
    emit({"phase": "done", "runs": [str(folder) for folder in folders]})
    return folders


def make_splits(config: TrainConfig, dataset: Dataset, emit: Progress) -> list[dict]:
    """The run's split (one dict of train/val/test indices; one per fold for
    cross-validation), the same for every backbone and for the statistics baseline made with
    the same settings: near-duplicate images merged into one patient first (patient split),
    then the grouped stratified split (or k folds), or the 2020 image split."""
    if config.split == "patients":
        # The same radiograph under two patient ids must not cross the split.
        emit({"phase": "scan", "what": "looking for near-duplicate images"})
        merged = group_near_duplicates(dataset)
        if merged:
            emit({"phase": "scan", "what": f"{len(merged)} near-duplicate pair(s) of "
                                          "images merged into one patient each"})
    # Choosing the epoch on the test split leaves no use for a validation split.
    val_fraction = config.val_fraction if config.select_on == "val" else None
    if config.folds:
        return kfold_by_patient(dataset, config.folds, seed=config.seed,
                                val_fraction=config.val_fraction)
    splitter = split_by_image if config.split == "images" else split_by_patient
    return [splitter(dataset, val_fraction=val_fraction, test_fraction=config.test_fraction,
                     seed=config.seed)]


def _train_one(config: TrainConfig, backbone_name: str, dataset: Dataset,
               heldouts: list[Dataset], make_splits: Callable[[], list[dict]], emit: Progress,
               scan_seconds: float, runner=None) -> Path:
    import keras

    backbone = get_backbone(backbone_name)
    size = config.image_size_for(backbone.name)
    spec = feature_spec(config, backbone.name, size)
    phases = _Phases()
    phases.seconds["scan"] = scan_seconds
    status = weights_status(backbone.name)
    t = time.perf_counter()
    emit({"phase": "load_backbone", "what": f"({engine_label(spec.engine, spec.precision)})"})
    extractor = FeatureExtractor(spec, batch_size=config.extract_batch_size, runner=runner)
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
    classes, positive = dataset.classes, run_positive(config, dataset)
    labels = np.array([classes.index(dataset.records[i].label) for i in original_records])
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
        # The 2020 protocol (--select-on test) keeps the epoch with the best TEST accuracy:
        # the test split is handed to fit_head as its validation data.
        selection = "test" if config.select_on == "test" else "val"
        val_rows = [row_of[i] for i in kept[selection]]
        monitor = "val_accuracy" if selection == "test" else config.monitor
        keras.utils.set_random_seed(config.seed)
        head = build_head(config.head, feature_shape, len(classes))
        t = time.perf_counter()

        def on_epoch(event, fold_number=fold_number, selection=selection):
            emit({**event, "fold": fold_number, "folds": len(fold_splits),
                  "selected_on": selection})

        fit = fit_head(head, train_x, train_y, features[val_rows], labels[val_rows],
                       epochs=config.epochs, batch_size=config.batch_size,
                       learning_rate=config.learning_rate, seed=config.seed,
                       balanced=config.balanced, patience=config.patience,
                       monitor=monitor, progress=on_epoch)
        if selection == "test":  # say what the "validation" figures really were
            fit["history"] = {(f"test_{key[4:]}" if key.startswith("val_") else key): values
                              for key, values in fit["history"].items()}
            fit["monitor"] = "test_accuracy"
        phases.add("train", t)
        t = time.perf_counter()
        emit({"phase": "evaluate", "fold": fold_number, "folds": len(fold_splits)})
        frames = []
        for split_name, indices in kept.items():
            probabilities = predict(head, features[[row_of[i] for i in indices]])
            frames.append(_prediction_frame(dataset, indices, split_name, probabilities,
                                            fold_number if config.folds else None, classes))
        test_frame = frames[2]
        test_metrics = _evaluate_frame(test_frame, config.seed, classes, positive)
        phases.add("evaluate", t)
        fold_results.append({"head": head, "fit": fit, "frames": frames,
                             "test_metrics": test_metrics, "splits": kept})

    first = fold_results[0]
    head = first["head"]
    tuned = None
    if config.is_fine_tuned:  # the second stage: the last block and the head together
        tuned = FineTuning(config, backbone, spec, dataset, first, emit, phases, runner)
        first = tuned.run(classes, positive)
    t = time.perf_counter()
    heldout_metrics, heldout_frames, heldout_info = {}, [], []
    for heldout in heldouts:
        name = heldout.root.name
        emit({"phase": "heldout", "what": name})
        indices = list(range(len(heldout.records)))
        result, records = _extract(tuned.extractor if tuned else extractor, heldout, indices,
                                   [0], emit, f"held-out {name}")
        skipped_here = [{"path": p, "reason": r} for p, r in result.failed]
        if not result.ok:  # nothing readable: record it, keep the run
            heldout_info.append({"name": name, "folder": str(heldout.root), "images": 0,
                                 "folder_absolute": str(heldout.root.resolve()),
                                 "skipped": skipped_here,
                                 "note": "no readable images: not evaluated"})
            continue
        probabilities = (tuned.predict(result.features, heldout_scope(name)) if tuned
                         else predict(head, result.features))
        frame = _prediction_frame(heldout, records, heldout_scope(name), probabilities, None,
                                  classes)
        heldout_frames.append(frame)
        # A held-out folder may share patients with the training data (seed001_0402 and
        # kaggle_test share Kermany patients): measured, recorded, and scored without them.
        overlap, shared = patient_overlap(dataset.groups, frame["patient_id"].tolist())
        heldout_metrics[name] = evaluate_heldout(
            frame["label"].tolist(), probabilities, frame["patient_id"].tolist(), overlap,
            shared, seed=config.seed, labels=classes, positive=positive)
        if config.folds and len(fold_results) > 1:
            heldout_metrics[name]["across_folds"] = summarise_folds([
                evaluate_predictions(frame["label"].tolist(), predict(fr["head"], result.features),
                                     frame["patient_id"].tolist(), repeats=200,
                                     seed=config.seed, labels=classes, positive=positive)
                for fr in fold_results])
        heldout_info.append({"name": name, "folder": str(heldout.root),
                             "folder_absolute": str(heldout.root.resolve()),
                             **{k: v for k, v in heldout.summary().items() if k != "folder"},
                             "skipped": skipped_here})
    phases.add("heldout", t)

    emit({"phase": "write"})
    if config.folds:
        test_frame = pd.concat([fr["frames"][2] for fr in fold_results], ignore_index=True)
        test_metrics = _evaluate_frame(test_frame, config.seed, classes, positive)
        test_metrics["scope"] = f"out-of-fold predictions pooled over {config.folds} folds"
        predictions = pd.concat([test_frame, *first["frames"][:2], *heldout_frames],
                                ignore_index=True)
    else:
        test_metrics = first["test_metrics"]
        test_metrics["scope"] = ("patient-wise test split" if config.split == "patients"
                                 else "random image test split (patients ignored)")
        if config.select_on == "test":
            test_metrics["scope"] += ", also used to choose the epoch"
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
    writer = RunWriter(config.runs_folder, run_id)
    try:
        history = pd.DataFrame(first["fit"]["history"])
        history.insert(0, "epoch", range(1, len(history) + 1))
        writer.write_csv("history.csv", history)
        writer.write_csv("predictions.csv", predictions)
        save_head_weights(head, writer.path("head.weights.h5"))
        if tuned is not None:
            write_block_weights(writer.path(BLOCK_FILE), tuned.stored)
        if config.folds:
            for n, fr in enumerate(fold_results, start=1):
                save_head_weights(fr["head"], writer.path(f"head_fold{n}.weights.h5"))
        writer.write_json("metrics.json", metrics)
        phases.seconds["total"] = sum(phases.seconds.values())
        info = _run_info(config, backbone, size, feature_shape, dataset, fold_splits,
                         first, fold_results, skipped, heldout_info, phases, status, head,
                         writer.run_id, original, extractor)
        if tuned is not None:
            tuned.record(info)
        writer.write_json("run.json", info)
        folder = writer.commit()
    except BaseException:
        writer.abort()
        raise
    emit({"phase": "written", "run": str(folder)})
    return folder


class FineTuning:
    """``--fine-tune last-block``: the second stage of a run, after its head has trained on
    the frozen base (the first fold's ``first`` result).

    The registry base runs once per image up to the cut before its last block
    (:attr:`xrcompare.backbones.Backbone.fine_tune_cut`; cached like any features, through
    the same inference engine); then only the last block (its registered layers trainable,
    batch norm in inference mode) and the head train on those activations, with the head's
    recipe but :attr:`TrainConfig.fine_tune_epochs` epochs at
    :attr:`TrainConfig.fine_tune_learning_rate`, on the training split's original images, the
    epoch kept as the head's was. The block is stored in float16 (:data:`BLOCK_DTYPE`): every
    prediction the run records is made with the stored float16 block, and how far those are
    from the float32 block's is measured on every image (:meth:`record`).
    """

    def __init__(self, config: TrainConfig, backbone, spec, dataset: Dataset, first: dict,
                 emit: Progress, phases: _Phases, runner=None):
        self.config, self.backbone, self.dataset = config, backbone, dataset
        self.frozen, self.emit, self.phases = first, emit, phases
        self.spec = dataclasses.replace(spec, cut=backbone.fine_tune_cut)
        self.extractor = FeatureExtractor(self.spec, batch_size=config.extract_batch_size,
                                          runner=runner)
        self.check = {"images": 0, "max_abs_difference": 0.0, "argmax_changed": 0}
        self.stored: dict[str, list[np.ndarray]] = {}

    def run(self, classes: list[str], positive: str) -> dict:
        """Fine-tune; return the first fold's result as the run now predicts (its frames and
        test metrics from the fine-tuned block and head)."""
        import keras

        from xrcompare.backbones import build_base, build_block

        config, backbone, dataset, emit = self.config, self.backbone, self.dataset, self.emit
        kept = self.frozen["splits"]
        t = time.perf_counter()
        emit({"phase": "load_backbone",
              "what": f"cut before {backbone.fine_tune_cut} "
                      f"({engine_label(self.spec.engine, self.spec.precision)})"})
        indices = sorted({i for split in kept.values() for i in split})
        result, records = _extract(self.extractor, dataset, indices, [0], emit,
                                   f"dataset at the cut before {backbone.fine_tune_cut}")
        self.cut_result = result
        self.phases.add("extract_cut", t)
        row_of = {index: row for row, index in enumerate(records)}
        lost = [i for i in indices if i not in row_of]
        if lost:  # the same bytes were read for the frozen stage: should never happen
            raise ValueError(f"{len(lost)} images could not be read at the cut, e.g. "
                             f"{dataset.records[lost[0]].path}")
        labels = np.array([classes.index(dataset.records[i].label) for i in records])
        t = time.perf_counter()
        keras.utils.set_random_seed(config.seed)
        self.base = build_base(backbone.name, self.spec.image_size, config.weights,
                               seed=config.seed)
        self.model = fine_tune_model(build_block(self.base, backbone.name), self.frozen["head"])
        self.phases.add("build_block", t)
        selection = "test" if config.select_on == "test" else "val"
        monitor = "val_accuracy" if selection == "test" else config.monitor
        train_rows = [row_of[i] for i in kept["train"]]
        val_rows = [row_of[i] for i in kept[selection]]

        def on_epoch(event):
            emit({**event, "phase": "fine_tune", "selected_on": selection})

        t = time.perf_counter()
        features = result.features
        self.fit = fit_head(self.model, features[train_rows], labels[train_rows],
                            features[val_rows], labels[val_rows],
                            epochs=config.fine_tune_epochs, batch_size=config.batch_size,
                            learning_rate=config.fine_tune_learning_rate, seed=config.seed,
                            balanced=config.balanced, patience=config.patience,
                            monitor=monitor, progress=on_epoch)
        if selection == "test":
            self.fit["history"] = {(f"test_{key[4:]}" if key.startswith("val_") else key): v
                                   for key, v in self.fit["history"].items()}
            self.fit["monitor"] = "test_accuracy"
        self.phases.add("fine_tune", t)
        # Store float16; every recorded prediction is the stored block's.
        self.trained = block_weights_of(self.base, backbone.name)
        self.stored = {name: [w.astype(BLOCK_DTYPE).astype(np.float32) for w in arrays]
                       for name, arrays in self.trained.items()}
        self._use(self.stored)
        t = time.perf_counter()
        emit({"phase": "evaluate", "fold": 1, "folds": 1})
        frames = []
        for split_name, split_indices in kept.items():
            probabilities = self.predict(features[[row_of[i] for i in split_indices]],
                                         split_name)
            frames.append(_prediction_frame(dataset, split_indices, split_name, probabilities,
                                            None, classes))
        test_metrics = _evaluate_frame(frames[2], config.seed, classes, positive)
        self.phases.add("evaluate", t)
        return {**self.frozen, "frames": frames, "test_metrics": test_metrics}

    def _use(self, weights: dict[str, list[np.ndarray]]) -> None:
        for name, arrays in weights.items():
            self.base.get_layer(name).set_weights(arrays)

    def predict(self, features: np.ndarray, scope: str) -> np.ndarray:
        """Probabilities of the stored (float16) block and head; the float32 block's are
        computed too and the largest difference kept for :meth:`record`."""
        stored = predict(self.model, features)
        self._use(self.trained)
        full = predict(self.model, features)
        self._use(self.stored)
        if len(features):
            check = self.check
            check["images"] += len(features)
            check["max_abs_difference"] = max(check["max_abs_difference"],
                                              float(np.abs(stored - full).max()))
            check["argmax_changed"] += int((stored.argmax(1) != full.argmax(1)).sum())
        return stored

    def record(self, info: dict) -> None:
        """Add what the fine-tuning did to the run's run.json ``info``."""
        config, backbone = self.config, self.backbone
        frozen_test = self.frozen["test_metrics"]
        history, epoch = self.fit["history"], self.fit["best_epoch"]
        size_bytes = sum(int(np.prod(w.shape)) for arrays in self.stored.values()
                         for w in arrays) * np.dtype(BLOCK_DTYPE).itemsize
        info["fine_tune"] = {
            "mode": config.fine_tune, "layers": list(backbone.fine_tune_names),
            "cut_before": backbone.fine_tune_cut,
            "cut_layer": _cut_layer_name(self.base, backbone.fine_tune_cut),
            "cut_shape": [int(d) for d in self.cut_result.features.shape[1:]],
            "params": backbone.fine_tune_params,
            "batch_norm": "frozen, inference mode (ImageNet statistics)",
            "file": BLOCK_FILE, "storage": np.dtype(BLOCK_DTYPE).name,
            "stored_bytes": int(size_bytes),
            "float16_check": {
                **self.check, "max_abs_difference": round(self.check["max_abs_difference"], 6),
                "what": "largest difference of any class probability between the stored "
                        "float16 block and the trained float32 block, and how many predicted "
                        "classes changed, over every image the run recorded"},
            "epochs": config.fine_tune_epochs, "learning_rate": config.fine_tune_learning_rate,
            "best_epoch": epoch, "epochs_run": self.fit["epochs_run"],
            "monitor": self.fit["monitor"],
            "trained_on": "the train split's original images (no augmented views), as "
                          "activations at the cut",
            "history": {key: [round(float(v), 6) for v in values]
                        for key, values in history.items()},
            "val_best": {key: values[epoch - 1] for key, values in history.items()
                         if key.startswith(("val_", "test_")) and 0 < epoch <= len(values)},
            "features": {"spec": self.spec.key(), "cached": self.cut_result.cached,
                         "computed": self.cut_result.computed},
            "before": {"description": "the head on the frozen base, before fine-tuning",
                       "best_epoch": self.frozen["fit"]["best_epoch"],
                       "val_best": _best_val(self.frozen["fit"]),
                       "test_accuracy": frozen_test.get("accuracy"),
                       "test_macro_f1": frozen_test.get("macro_f1")},
        }
        info["trainable_params"] = int(info["trainable_params"]) + backbone.fine_tune_params
        info["selection"] = (f"{info['selection']}; then the last block "
                             f"({', '.join(backbone.fine_tune_names)}) and the head fine-tuned "
                             f"for up to {config.fine_tune_epochs} epochs at learning rate "
                             f"{config.fine_tune_learning_rate:g}, epoch {epoch} kept "
                             f"({self.fit['monitor']})")
        if not config.display_name:
            info["display_name"] += " · fine-tuned last block"


def _cut_layer_name(base, first_layer: str) -> str:
    """The name of the layer whose output is the cut (the input of ``first_layer``)."""
    tensor = base.get_layer(first_layer).input
    history = getattr(tensor, "_keras_history", None)
    operation = getattr(history, "operation", None) if history is not None else None
    return getattr(operation, "name", None) or f"input of {first_layer}"


#: Images per progress event while the statistics baseline reads its images.
STATISTICS_CHUNK = 64


def _statistics_of(dataset: Dataset, emit: Progress, label: str):
    """Every image's statistics, with progress events as feature extraction sends them:
    (matrix, indices of the readable records, (path, reason) of the others)."""
    paths = [record.path for record in dataset.records]
    rows, ok, failed = [], [], []
    for start in range(0, len(paths), STATISTICS_CHUNK):
        matrix, kept, bad = statistics_for_files(paths[start:start + STATISTICS_CHUNK])
        rows.append(matrix)
        ok += [start + index for index in kept]
        failed += bad
        emit({"phase": "extract", "backbone": STATISTICS_KIND, "what": label,
              "done": min(len(paths), start + STATISTICS_CHUNK), "total": len(paths),
              "cached": 0})
    matrix = np.concatenate(rows) if rows else np.zeros((0, len(FEATURES)))
    return matrix, ok, failed


def _train_statistics(config: TrainConfig, dataset: Dataset, heldouts: list[Dataset],
                      make: Callable[[], list[dict]], emit: Progress,
                      scan_seconds: float) -> Path:
    """The image-statistics baseline (:mod:`xrcompare.imagestats`) on the same split as the
    CNN runs made with the same settings, scored like them, written as a run folder."""
    phases = _Phases()
    phases.seconds["scan"] = scan_seconds
    splits = make()[0]
    t = time.perf_counter()
    matrix, ok, skipped = _statistics_of(dataset, emit, "dataset")
    phases.add("extract", t)
    if not ok:
        raise ValueError(f"none of the images in {dataset.root} could be read")
    row_of = {index: row for row, index in enumerate(ok)}
    kept = {name: [i for i in indices if i in row_of] for name, indices in splits.items()}
    labels = [dataset.records[i].label for i in ok]
    classes, positive = dataset.classes, run_positive(config, dataset)

    t = time.perf_counter()
    train_rows = [row_of[i] for i in kept["train"]]
    model = fit_statistics_model(matrix[train_rows], [labels[r] for r in train_rows],
                                 seed=config.seed)
    phases.add("train", t)
    t = time.perf_counter()
    emit({"phase": "evaluate", "fold": 1, "folds": 1})
    frames = []
    for split_name, indices in kept.items():
        probabilities = model.predict_proba(matrix[[row_of[i] for i in indices]], classes)
        frames.append(_prediction_frame(dataset, indices, split_name, probabilities, None,
                                        classes))
    test_metrics = _evaluate_frame(frames[2], config.seed, classes, positive)
    test_metrics["scope"] = ("patient-wise test split" if config.split == "patients"
                             else "random image test split (patients ignored)")
    val_best = {}
    if "val" in kept and kept["val"]:
        val = frames[1]
        probabilities = val[[prediction_column(c) for c in classes]].to_numpy()
        truth = np.array([classes.index(label) for label in val["label"]])
        picked = np.clip(probabilities[np.arange(len(truth)), truth], 1e-12, 1.0)
        val_best = {"val_accuracy": float(np.mean(probabilities.argmax(axis=1) == truth)),
                    "val_loss": float(-np.mean(np.log(picked)))}
    phases.add("evaluate", t)

    t = time.perf_counter()
    heldout_metrics, heldout_frames, heldout_info = {}, [], []
    for heldout in heldouts:
        name = heldout.root.name
        emit({"phase": "heldout", "what": name})
        held_matrix, held_ok, held_failed = _statistics_of(heldout, emit, f"held-out {name}")
        skipped_here = [{"path": p, "reason": r} for p, r in held_failed]
        if not held_ok:
            heldout_info.append({"name": name, "folder": str(heldout.root), "images": 0,
                                 "folder_absolute": str(heldout.root.resolve()),
                                 "skipped": skipped_here,
                                 "note": "no readable images: not evaluated"})
            continue
        probabilities = model.predict_proba(held_matrix, classes)
        frame = _prediction_frame(heldout, held_ok, heldout_scope(name), probabilities, None,
                                  classes)
        heldout_frames.append(frame)
        overlap, shared = patient_overlap(dataset.groups, frame["patient_id"].tolist())
        heldout_metrics[name] = evaluate_heldout(
            frame["label"].tolist(), probabilities, frame["patient_id"].tolist(), overlap,
            shared, seed=config.seed, labels=classes, positive=positive)
        heldout_info.append({"name": name, "folder": str(heldout.root),
                             "folder_absolute": str(heldout.root.resolve()),
                             **{k: v for k, v in heldout.summary().items() if k != "folder"},
                             "skipped": skipped_here})
    phases.add("heldout", t)

    emit({"phase": "write"})
    predictions = pd.concat([*frames, *heldout_frames], ignore_index=True)
    metrics = {"test": test_metrics, "heldout": heldout_metrics, "val_best": val_best}
    run_id = config.name or new_run_id(STATISTICS_KIND, dataset.root.name)
    writer = RunWriter(config.runs_folder, run_id, kind=STATISTICS_KIND)
    try:
        writer.write_csv("predictions.csv", predictions)
        writer.write_json("metrics.json", metrics)
        model.write(writer.path(MODEL_FILE))
        phases.seconds["total"] = sum(phases.seconds.values())
        protocol = config.protocol
        summary = dataset.summary()
        info = {
            "schema": SCHEMA_VERSION, "run_id": writer.run_id,
            "display_name": config.display_name
                            or f"Image statistics · {dataset.root.name} · control",
            "description": config.description or "", "order": config.order,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": _command_line(),
            "config": {**config.to_json(), "runs_dir": None},
            "classes": list(classes), "positive": positive,
            "model": {"kind": STATISTICS_KIND, "file": MODEL_FILE,
                      "estimator": model.to_json()["estimator"],
                      "features": dict(FEATURES),
                      "trained_on": "the train split's images, read at their stored size"},
            "control": True,
            "data": {**summary, "name": dataset.root.name, "folder": str(config.data),
                     "folder_absolute": str(dataset.root.resolve()),
                     "skipped": [{"path": p, "reason": r} for p, r in skipped]},
            "split": _split_record(config, dataset, [splits], kept),
            "heldout": heldout_info,
            "selection": "no epochs: one fit on the train split (the validation split is "
                         "only scored)",
            "protocol": protocol, "protocol_label": protocol_label(protocol),
            "protocol_description": {key: CHOICE_TEXT[(key, value)]
                                     for key, value in protocol.items()},
            "leaky_reasons": leaky_reasons(protocol),
            "trainable_params": int(model.coef.size + model.intercept.size),
            "timings_s": {key: round(value, 2) for key, value in phases.seconds.items()},
            **environment(),
        }
        writer.write_json("run.json", info)
        folder = writer.commit()
    except BaseException:
        writer.abort()
        raise
    emit({"phase": "written", "run": str(folder)})
    return folder


def feature_spec(config: TrainConfig, backbone: str, size: int) -> FeatureSpec:
    """The feature-cache spec of a run made with ``config`` on ``backbone`` at ``size`` px,
    through the inference engine chosen here (``config.engine``, else ``$XRCOMPARE_ENGINE``,
    else auto: see :mod:`xrcompare.inference_engine`)."""
    return with_engine(FeatureSpec(backbone, size, config.resize_mode, config.weights,
                                   config.seed, preprocess=config.preprocess,
                                   augment=config.augment, mask=config.mask), config.engine)


def _command_line() -> str | None:
    """How this run was started, without machine-specific paths when it was the CLI."""
    if not sys.argv or not sys.argv[0]:
        return None
    program = Path(sys.argv[0])
    if program.name == "__main__.py" and program.parent.name == "xrcompare":
        return shlex.join(["python", "-m", "xrcompare", *sys.argv[1:]])
    return shlex.join([program.name, *sys.argv[1:]])


def _selection_text(config: TrainConfig, fit: dict) -> str:
    if config.select_on == "test":
        return ("best epoch by accuracy on the TEST split (the 2020 protocol: the test split "
                "doubled as validation, so its figures are optimistic)")
    if fit["monitor"].startswith("last epoch"):
        return fit["monitor"]
    return f"best epoch by {fit['monitor']} on the validation split"


def _evaluate_frame(frame: pd.DataFrame, seed: int, classes: list[str], positive: str) -> dict:
    """Metrics of a prediction frame (one row per image, a probability column per class)."""
    return evaluate_predictions(
        frame["label"].tolist(), frame[[prediction_column(c) for c in classes]].to_numpy(),
        frame["patient_id"].tolist(), seed=seed, labels=classes, positive=positive)


def _best_val(fit: dict) -> dict:
    history, epoch = fit["history"], fit["best_epoch"]
    return {key: values[epoch - 1] for key, values in history.items()
            if key.startswith("val_") and 0 < epoch <= len(values)}


def _prediction_frame(dataset: Dataset, indices: list[int], split: str,
                      probabilities: np.ndarray, fold: int | None,
                      classes: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({
        "path": [_relative(dataset.records[i].path, dataset.root) for i in indices],
        "split": split,
        "label": [dataset.records[i].label for i in indices],
        "patient_id": [dataset.records[i].patient_id for i in indices],
    })
    for column, label in enumerate(classes):
        frame[prediction_column(label)] = probabilities[:, column] if len(indices) else []
    frame["predicted"] = [classes[j] for j in probabilities.argmax(axis=1)] if len(indices) else []
    if fold is not None:
        frame["fold"] = fold
    return frame


def _split_record(config: TrainConfig, dataset: Dataset, fold_splits: list[dict],
                  kept: dict[str, list[int]]) -> dict:
    """run.json's ``split``: method, seed, fractions, summary, near-duplicates and the file
    lists of the (first) split actually used (``kept``: readable images only)."""
    parts = "train/val/test" if config.select_on == "val" else "train/test"
    if config.folds:
        method = "grouped stratified k-fold by patient"
    elif config.split == "images":
        method = f"stratified random {parts} by image (patients ignored)"
    else:
        method = f"grouped stratified {parts} by patient"
    return {"method": method, "by": config.split,
            "seed": config.seed,
            "val_fraction": config.val_fraction if config.select_on == "val" else None,
            "test_fraction": None if config.folds else config.test_fraction,
            "summary": split_summary(dataset, fold_splits[0]),
            "near_duplicates": dataset.near_duplicates,
            "files": {name: [_relative(dataset.records[i].path, dataset.root) for i in indices]
                      for name, indices in kept.items()}}


def _run_info(config, backbone, size, feature_shape, dataset, fold_splits, first, fold_results,
              skipped, heldout_info, phases, status, head, run_id, original,
              extractor) -> dict:
    import keras

    def files(indices):
        return [_relative(dataset.records[i].path, dataset.root) for i in indices]

    split = _split_record(config, dataset, fold_splits, first["splits"])
    if config.folds:
        split["folds"] = config.folds
        split["fold_summaries"] = [split_summary(dataset, s) for s in fold_splits]
        # Every fold's head: its kept epoch and its own file lists (fold 1's are "files").
        split["per_fold"] = [
            {"fold": n, "best_epoch": fr["fit"]["best_epoch"],
             "epochs_run": fr["fit"]["epochs_run"],
             "files": {name: files(indices) for name, indices in fr["splits"].items()}}
            for n, fr in enumerate(fold_results, start=1)]
    hyper = {key: value for key, value in config.to_json().items()
             if key in ("epochs", "batch_size", "learning_rate", "seed", "augment_views",
                        "balanced", "patience", "monitor", "head", "resize_mode")}
    hyper["monitor"] = first["fit"]["monitor"]
    if config.augment_views:
        from xrcompare.features import AUGMENTATIONS

        hyper["augment"] = config.augment
        hyper["augment_description"] = AUGMENTATIONS[config.augment].description
    protocol = config.protocol
    reasons = leaky_reasons(protocol)
    summary = dataset.summary()
    return {
        "schema": SCHEMA_VERSION, "run_id": run_id,
        "display_name": config.display_name or f"{backbone.display_name} · {dataset.root.name}"
                        + (" · random-init control" if config.is_random_control else "")
                        + (f" · {CONTROL_WORDS[config.mask]} control"
                           if config.mask != NO_MASK else ""),
        "description": config.description or "", "order": config.order,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": _command_line(),
        "config": {**config.to_json(), "runs_dir": None},  # the settings, not the machine
        "classes": dataset.classes, "positive": run_positive(config, dataset),
        "backbone": backbone.name, "backbone_display": backbone.display_name,
        "weights": config.weights,
        "weights_source": (status.detail if config.weights == "imagenet"
                           else f"random initialisation (seed {config.seed}): a control, "
                                "not an ImageNet model"),
        "weights_seed": config.seed,
        "image_size": size, "resize_mode": config.resize_mode,
        "mask": config.mask,
        **({"mask_box": mask_record(), "control": True} if config.mask != NO_MASK else {}),
        "model": {"kind": CNN_KIND},
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
        "selection": _selection_text(config, first["fit"]),
        "protocol": protocol, "protocol_label": protocol_label(protocol),
        "protocol_description": {key: CHOICE_TEXT[(key, value)]
                                 for key, value in protocol.items()},
        "leaky_reasons": reasons,
        "features": {"spec": extractor.spec.key(),
                     "cached": original.cached, "computed": original.computed,
                     **extractor.engine.info(), "extracted_on": extractor.extracted_on},
        "timings_s": {key: round(value, 2) for key, value in phases.seconds.items()},
        "keras_backend": keras.backend.backend(),
        **environment(),
    }
