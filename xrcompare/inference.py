"""Using a saved run: evaluate it on a labelled folder, predict or explain one image file."""

from __future__ import annotations

from pathlib import Path

from xrcompare.data import scan_dataset
from xrcompare.evaluate import evaluate_predictions
from xrcompare.features import FeatureExtractor, FeatureSpec
from xrcompare.inference_engine import describe_difference, engine_label, with_engine
from xrcompare.runs import Run, build_head_for_run, check_rebuildable
from xrcompare.train import predict


def feature_spec(run: Run) -> FeatureSpec:
    """The run's features as the Keras float32 reference computes them."""
    info = run.info
    return FeatureSpec(info["backbone"], info["image_size"], info["resize_mode"],
                       info["weights"], info.get("weights_seed", 0))


def engine_spec(run: Run, engine: str | None = None) -> FeatureSpec:
    """The run's features through the engine chosen here (``engine``, else
    ``$XRCOMPARE_ENGINE``, else auto; see :mod:`xrcompare.inference_engine`)."""
    return with_engine(feature_spec(run), engine)


def engine_note(run: Run, spec: FeatureSpec, doing: str = "evaluated") -> dict:
    """Which engine made the run's training features and which one runs now, with a
    sentence when they differ ("trained with Keras fp32, evaluated with OpenVINO bf16")."""
    used = engine_label(spec.engine, spec.precision)
    return {"trained_with": run.feature_engine_label, f"{doing}_with": used,
            "note": describe_difference(run.feature_engine_label, used, doing)}


def evaluate_folder(run: Run, folder: str | Path, *, repeats: int = 1000,
                    engine: str | None = None):
    """Metrics of ``run`` on a labelled folder (same layout as training data), through the
    feature cache and the engine chosen here. Returns (metrics, skipped files); the metrics'
    ``feature_engine`` says which engine made the training and the evaluation features."""
    dataset = scan_dataset(folder)
    unknown = sorted(set(dataset.labels) - set(run.labels))
    if unknown:
        raise ValueError(f"{folder} has classes {unknown} that the run does not predict")
    check_rebuildable(run)  # a random-init control's base differs across Keras versions
    spec = engine_spec(run, engine)
    extractor = FeatureExtractor(spec)
    result = extractor.extract([record.path for record in dataset.records])
    if not result.ok:
        raise ValueError(f"none of the images in {folder} could be read")
    probabilities = predict(build_head_for_run(run), result.features)
    records = [dataset.records[i] for i in result.ok]
    metrics = evaluate_predictions([r.label for r in records], probabilities,
                                   [r.patient_id for r in records], labels=run.labels,
                                   repeats=repeats)
    metrics["feature_engine"] = engine_note(run, spec)
    return metrics, result.failed


def load_image_file(path: str | Path):
    """An image file as checked 8-bit grayscale, with the upload loader's warnings."""
    from xrcompare.imaging import read_bytes
    from xrcompare.uploads import load_upload

    return load_upload(read_bytes(path), Path(path).name)


def predict_file(run: Run, path: str | Path, model=None) -> dict:
    """One image file through ``run`` (the CLI's ``predict``), as the dashboard predicts it.

    Returns ``run``, ``image``, ``probabilities`` (class → probability), ``predicted`` and the
    image loader's ``warnings``.
    """
    from xrcompare import predictor

    image = load_image_file(path)
    prediction = predictor.predict_one(run, model or predictor.load_model(run), image.gray)
    engine = engine_note(run, feature_spec(run), "predicted")  # the full Keras model
    return {"run": run.run_id, "image": str(path), "probabilities": prediction.probabilities,
            "predicted": prediction.predicted, "warnings": list(image.warnings),
            "feature_engine": engine}


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
    from xrcompare.explain import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if target is not None and target not in run.labels:
        raise ValueError(f"unknown class {target!r}; choose from {', '.join(run.labels)}")
    if not 0 <= alpha <= 1:
        raise ValueError("alpha must be between 0 and 1")
    out = check_overlay_path(out)
    image = load_image_file(path)
    model = predictor.load_model(run)
    predicted = predictor.predict_one(run, model, image.gray).predicted
    target = target or predicted
    explanation = predictor.explain_run(run, model, image.gray, method, target)
    picture = predictor.overlay_for_run(run, image.gray, explanation.saliency, alpha=alpha)
    if not cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"cannot write {out}")
    return {"method": method, "target": target, "predicted": predicted}
