"""Using a saved run: evaluate it on a labelled folder, predict or explain one image file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xrcompare.data import patient_overlap, scan_dataset
from xrcompare.evaluate import evaluate_heldout
from xrcompare.features import FeatureExtractor
from xrcompare.inference_engine import describe_difference, engine_label, with_engine
from xrcompare.neighbours import neighbours_of
from xrcompare.runs import Run, build_feature_model_for_run, check_rebuildable
from xrcompare.train import predict


def engine_spec(run: Run, engine: str | None = None):
    """The run's features through the engine chosen here (``engine``, else
    ``$XRCOMPARE_ENGINE``, else auto; see :mod:`xrcompare.inference_engine`)."""
    return with_engine(run.feature_spec(), engine)


def engine_note(run: Run, spec, doing: str = "evaluated") -> dict:
    """Which engine made the run's training features and which one runs now, with a
    sentence when they differ ("trained with Keras fp32, evaluated with OpenVINO bf16")."""
    used = engine_label(spec.engine, spec.precision)
    return {"trained_with": run.feature_engine_label, f"{doing}_with": used,
            "note": describe_difference(run.feature_engine_label, used, doing)}


#: Images whose features are held in memory at once while a folder is evaluated (a
#: ResNet50 feature map is 400 KB: 256 images stay near 100 MB however large the folder).
EVALUATE_CHUNK = 256


def evaluate_folder(run: Run, folder: str | Path, *, repeats: int = 1000,
                    progress: Callable[[dict], None] | None = None,
                    name: str | None = None, chunk: int = EVALUATE_CHUNK,
                    engine: str | None = None):
    """Metrics of ``run`` on a labelled folder (same layout as training data), through the
    feature cache and the engine chosen here (``engine``; the metrics' ``feature_engine`` says
    which engine made the training and the evaluation features). Returns (metrics, skipped
    files).

    The folder's patients are checked against the run's own data (predictions.csv's
    patient ids): the metrics carry ``patient_overlap`` and, when some are shared,
    ``without_overlap`` (see :func:`xrcompare.evaluate.evaluate_heldout`). ``progress``
    receives the extraction's events (``{"phase": "extract", "what": "images", "done",
    "total", "cached"}`` over the whole folder); ``name`` is how the folder is called in
    messages (default: its path). Features are computed ``chunk`` images at a time, so
    memory stays bounded."""
    import numpy as np

    name = name or str(folder)
    dataset = scan_dataset(folder)
    unknown = sorted(set(dataset.labels) - set(run.labels))
    if unknown:
        raise ValueError(f"{name} has class {', '.join(unknown)}, which the run never saw "
                         f"(its classes: {', '.join(run.labels)})")
    check_rebuildable(run)  # a random-init control's base differs across Keras versions
    spec = engine_spec(run, engine)
    extractor = FeatureExtractor(spec)
    # The head on the frozen base's features; a fine-tuned run's block and head on the
    # registry base's activations at its cut (its feature spec says so).
    head = build_feature_model_for_run(run)
    paths = [record.path for record in dataset.records]
    total, cached_before = len(paths), 0
    kept, parts, failed = [], [], []
    for start in range(0, total, max(1, chunk)):
        def report(event, start=start, cached_before=cached_before):
            if progress is not None:
                progress({**event, "what": "images", "done": start + event["done"],
                          "total": total, "cached": cached_before + event["cached"]})

        result = extractor.extract(paths[start:start + chunk], progress=report, label="images")
        cached_before += result.cached
        failed += result.failed
        if result.ok:
            parts.append(predict(head, result.features))
            kept += [start + index for index in result.ok]
    if not kept:
        raise ValueError(f"none of the images in {name} could be read")
    probabilities = np.concatenate(parts)
    records = [dataset.records[i] for i in kept]
    patients = [r.patient_id for r in records]
    own = run.own_patients
    overlap, shared = patient_overlap(own, patients) if own is not None else (None, None)
    metrics = evaluate_heldout([r.label for r in records], probabilities, patients, overlap,
                               shared, labels=run.labels, repeats=repeats,
                               positive=run.positive)
    metrics["feature_engine"] = engine_note(run, spec)
    return metrics, failed


def evaluate_archive(run: Run, data: bytes, name: str, *, repeats: int = 1000,
                     progress: Callable[[dict], None] | None = None):
    """:func:`evaluate_folder` on a .zip of class folders (an upload), unpacked into a
    temporary folder that is deleted afterwards (:func:`xrcompare.archives.extract_class_zip`
    bounds and checks it). Returns (metrics, skipped files, images per class folder). Errors
    name the archive, never the temporary folder."""
    import io
    import tempfile

    from xrcompare.archives import extract_class_zip

    with tempfile.TemporaryDirectory(prefix="xrcompare-upload-") as folder:
        if progress is not None:
            progress({"phase": "unpack", "what": name})
        extracted = extract_class_zip(io.BytesIO(data), folder, size=len(data))
        if progress is not None:
            progress({"phase": "load"})
        try:
            metrics, failed = evaluate_folder(run, extracted.root, repeats=repeats,
                                              progress=progress, name=name)
        except ValueError as error:  # DatasetError and friends: say it of the archive
            raise ValueError(str(error).replace(str(extracted.root), name)) from None
        skipped = [(str(path).replace(str(extracted.root) + "/", ""), reason)
                   for path, reason in failed]
        return metrics, skipped, dict(extracted.images)


def load_image_file(path: str | Path):
    """An image file as checked 8-bit grayscale, with the upload loader's warnings."""
    from xrcompare.imaging import read_bytes
    from xrcompare.uploads import load_upload

    return load_upload(read_bytes(path), Path(path).name)


def predict_file(run: Run, path: str | Path, engine=None) -> dict:
    """One image file through ``run`` (the CLI's ``predict``), as the dashboard predicts it
    (through an :class:`xrcompare.engine.Engine`; None builds a fresh one).

    Returns ``run``, ``image``, ``probabilities`` (class → probability), ``predicted``, the
    image loader's ``warnings`` and, for a run with a neighbour index
    (:mod:`xrcompare.neighbours`), ``out_of_distribution``, ``distance``, ``threshold`` and
    the ``nearest`` training images (None, and ``neighbours_note`` saying why, without one).
    Raises the model's error when the run cannot predict.
    """
    from xrcompare.engine import Engine

    image = load_image_file(path)
    engine = engine or Engine()
    probabilities = engine.probabilities(run, image.gray)
    predicted = max(probabilities, key=probabilities.get)
    note = engine_note(run, run.feature_spec(), "predicted")  # the Keras trunk
    return {"run": run.run_id, "image": str(path), "probabilities": probabilities,
            "predicted": predicted, "warnings": list(image.warnings),
            "feature_engine": note, **neighbours_of(run, image.gray, engine)}


def check_overlay_path(out: str | Path) -> Path:
    """``out`` as a .png path whose folder exists (made if needed); ValueError otherwise."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {out.name!r}")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder, not a .png file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the folder for --out ({out.parent}): "
                         f"{error.strerror or error}") from None
    return out


def explain_file(run: Run, path: str | Path, *, method: str, target: str | None, out: Path,
                 alpha: float = 0.45, engine=None) -> dict:
    """A saliency overlay of one image file written to ``out`` (the CLI's ``explain``), made
    as the dashboard makes it (through ``engine``, an :class:`xrcompare.engine.Engine`; None
    builds a fresh one). ``target`` None explains the predicted class.

    The arguments and ``out`` are checked before any model is built. Returns ``method``,
    ``target`` and ``predicted``.
    """
    import cv2

    from xrcompare import predictor
    from xrcompare.engine import Engine
    from xrcompare.explain import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if target is not None and target not in run.labels:
        raise ValueError(f"unknown class {target!r}; choose from {', '.join(run.labels)}")
    if not 0 <= alpha <= 1:
        raise ValueError("alpha must be between 0 and 1")
    out = check_overlay_path(out)
    image = load_image_file(path)
    engine = engine or Engine()
    probabilities = engine.probabilities(run, image.gray)
    predicted = max(probabilities, key=probabilities.get)
    target = target or predicted
    explanation = predictor.explain_run(engine, run, image.gray, method, target)
    picture = predictor.overlay_for_run(run, image.gray, explanation.saliency, alpha=alpha)
    if not cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"cannot write {out}")
    return {"method": method, "target": target, "predicted": predicted}


def evaluate_request(run: Run, *, name: str, folder: str | Path | None = None,
                     archive: bytes | None = None, repeats: int = 1000,
                     progress: Callable[[dict], None] | None = None) -> dict:
    """One evaluation asked for in the app: ``run`` on a folder (already confined to the
    data root) or on an uploaded .zip, holding one of the server-wide work slots
    (:mod:`xrcompare.limits`) for the heavy part.

    Returns ``{"metrics", "skipped", "images" (per class folder, archives only), "name"}``;
    ``progress`` gets ``{"phase": "waiting"}`` while every slot is busy, then the
    extraction's events.
    """
    from xrcompare import limits

    if (folder is None) == (archive is None):
        raise ValueError("evaluate either a folder or an archive")

    def waiting() -> None:
        if progress is not None:
            progress({"phase": "waiting"})

    with limits.work_slot(on_wait=waiting):
        if progress is not None:
            progress({"phase": "load"})
        if archive is not None:
            metrics, skipped, images = evaluate_archive(run, archive, name, repeats=repeats,
                                                        progress=progress)
        else:
            metrics, failed = evaluate_folder(run, folder, repeats=repeats,
                                              progress=progress, name=name)
            prefix = str(folder).rstrip("/") + "/"
            skipped = [(str(path).removeprefix(prefix), reason) for path, reason in failed]
            images = None
    return {"metrics": metrics, "skipped": skipped, "images": images, "name": name}
