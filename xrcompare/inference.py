"""Using a saved run: evaluate it on a labelled folder, predict or explain one image file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xrcompare.data import scan_dataset
from xrcompare.evaluate import evaluate_predictions
from xrcompare.features import FeatureExtractor, FeatureSpec
from xrcompare.runs import Run, build_full_model, build_head_for_run, predict_gray
from xrcompare.train import predict


def feature_spec(run: Run) -> FeatureSpec:
    info = run.info
    return FeatureSpec(info["backbone"], info["image_size"], info["resize_mode"],
                       info["weights"], info.get("weights_seed", 0))


def evaluate_folder(run: Run, folder: str | Path, *, repeats: int = 1000):
    """Metrics of ``run`` on a labelled folder (same layout as training data), through the
    feature cache. Returns (metrics, skipped files)."""
    dataset = scan_dataset(folder)
    unknown = sorted(set(dataset.labels) - set(run.labels))
    if unknown:
        raise ValueError(f"{folder} has classes {unknown} that the run does not predict")
    extractor = FeatureExtractor(feature_spec(run))
    result = extractor.extract([record.path for record in dataset.records])
    if not result.ok:
        raise ValueError(f"none of the images in {folder} could be read")
    probabilities = predict(build_head_for_run(run), result.features)
    records = [dataset.records[i] for i in result.ok]
    metrics = evaluate_predictions([r.label for r in records], probabilities,
                                   [r.patient_id for r in records], labels=run.labels,
                                   repeats=repeats)
    return metrics, result.failed


def load_image_file(path: str | Path):
    """An image file as checked 8-bit grayscale, with the upload loader's warnings."""
    from xrcompare.imaging import read_bytes
    from xrcompare.uploads import load_upload

    return load_upload(read_bytes(path), Path(path).name)


def predict_file(run: Run, path: str | Path, model=None) -> dict:
    image = load_image_file(path)
    model = model or build_full_model(run)
    probabilities = predict_gray(run, model, image.gray)
    predicted = max(probabilities, key=probabilities.get)
    return {"run": run.run_id, "image": str(path), "probabilities": probabilities,
            "predicted": predicted, "warnings": list(image.warnings)}


def explain_file(run: Run, path: str | Path, *, method: str, target: str | None, out: Path,
                 alpha: float = 0.45) -> dict:
    import cv2

    from xrcompare.explain import METHODS, compute_saliency, overlay
    from xrcompare.runs import model_input_for_run

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if target is not None and target not in run.labels:
        raise ValueError(f"unknown class {target!r}; choose from {', '.join(run.labels)}")
    if not 0 <= alpha <= 1:
        raise ValueError("alpha must be between 0 and 1")
    image = load_image_file(path)
    model = build_full_model(run)
    inputs = model_input_for_run(run, image.gray)
    probabilities = np.asarray(model.predict_on_batch(inputs))[0]
    predicted = run.labels[int(probabilities.argmax())]
    target = target or predicted
    saliency = compute_saliency(model, inputs, method, run.labels.index(target),
                                penultimate_layer=run.info["last_conv_layer"])
    picture = overlay(image.gray, saliency, alpha=alpha, resize_mode=run.info["resize_mode"])
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError("--out must name a .png file")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"cannot write {out}")
    return {"method": method, "target": target, "predicted": predicted}
