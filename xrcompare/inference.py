"""Using a saved run: evaluate it on a labelled folder, predict or explain one image file."""

from __future__ import annotations

from pathlib import Path

from xrcompare.data import patient_overlap, scan_dataset
from xrcompare.evaluate import evaluate_heldout
from xrcompare.features import FeatureExtractor
from xrcompare.runs import Run, build_head_for_run, check_rebuildable
from xrcompare.train import predict


def evaluate_folder(run: Run, folder: str | Path, *, repeats: int = 1000):
    """Metrics of ``run`` on a labelled folder (same layout as training data), through the
    feature cache. Returns (metrics, skipped files).

    The folder's patients are checked against the run's own data (predictions.csv's
    patient ids): the metrics carry ``patient_overlap`` and, when some are shared,
    ``without_overlap`` (see :func:`xrcompare.evaluate.evaluate_heldout`)."""
    dataset = scan_dataset(folder)
    unknown = sorted(set(dataset.labels) - set(run.labels))
    if unknown:
        raise ValueError(f"{folder} has classes {unknown} that the run does not predict")
    check_rebuildable(run)  # a random-init control's base differs across Keras versions
    extractor = FeatureExtractor(run.feature_spec())
    result = extractor.extract([record.path for record in dataset.records])
    if not result.ok:
        raise ValueError(f"none of the images in {folder} could be read")
    probabilities = predict(build_head_for_run(run), result.features)
    records = [dataset.records[i] for i in result.ok]
    patients = [r.patient_id for r in records]
    own = run.own_patients
    overlap, shared = patient_overlap(own, patients) if own is not None else (None, None)
    metrics = evaluate_heldout([r.label for r in records], probabilities, patients, overlap,
                               shared, labels=run.labels, repeats=repeats)
    return metrics, result.failed


def load_image_file(path: str | Path):
    """An image file as checked 8-bit grayscale, with the upload loader's warnings."""
    from xrcompare.imaging import read_bytes
    from xrcompare.uploads import load_upload

    return load_upload(read_bytes(path), Path(path).name)


def predict_file(run: Run, path: str | Path, engine=None) -> dict:
    """One image file through ``run`` (the CLI's ``predict``), as the dashboard predicts it
    (through an :class:`xrcompare.engine.Engine`; None builds a fresh one).

    Returns ``run``, ``image``, ``probabilities`` (class → probability), ``predicted`` and the
    image loader's ``warnings``. Raises the model's error when the run cannot predict.
    """
    from xrcompare.engine import Engine

    image = load_image_file(path)
    engine = engine or Engine()
    probabilities = engine.probabilities(run, image.gray)
    predicted = max(probabilities, key=probabilities.get)
    return {"run": run.run_id, "image": str(path), "probabilities": probabilities,
            "predicted": predicted, "warnings": list(image.warnings)}


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
                 alpha: float = 0.45) -> dict:
    """A saliency overlay of one image file written to ``out`` (the CLI's ``explain``), made
    as the dashboard makes it. ``target`` None explains the predicted class.

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
    engine = Engine()
    probabilities = engine.probabilities(run, image.gray)
    predicted = max(probabilities, key=probabilities.get)
    target = target or predicted
    explanation = predictor.explain_run(engine, run, image.gray, method, target)
    picture = predictor.overlay_for_run(run, image.gray, explanation.saliency, alpha=alpha)
    if not cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"cannot write {out}")
    return {"method": method, "target": target, "predicted": predicted}
