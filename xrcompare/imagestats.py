"""The image-statistics baseline: a control that never looks at the lungs.

A scikit-learn logistic regression on a few non-anatomical statistics of each image file:
its stored width, height and aspect ratio, the mean and spread of its intensity, the
brightness of its border and of its corners, and the shares of near-white and near-black
pixels. If it scores far above chance, the classes can be told apart without any anatomy:
the source / age shortcut of this data, measured without a CNN.

It is a run like any other (``python -m xrcompare train --model image-statistics --data DIR``:
the same scan, near-duplicate grouping and patient-wise split as the CNN runs, the same
evaluation and ``predictions.csv`` columns), labelled a control everywhere. The fitted model
is stored as JSON (``model.json``: feature names, scaler means and scales, coefficients,
intercepts, classes), never as a pickle, and predicting needs only numpy
(:meth:`StatisticsModel.predict_proba`, :func:`predict_gray` for one upload).

Caveat worth teaching: ``kaggle_test`` was squashed to 224×224 by its source, so its width,
height and aspect ratio are constant and unlike every training image; the baseline reads that
too, which is exactly the kind of cue a CNN can also pick up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: A run's model kind (run.json ``model.kind``): a head on a frozen CNN base (every run made
#: before kinds existed), or this baseline.
CNN_KIND = "frozen-cnn"
STATISTICS_KIND = "image-statistics"
MODEL_KINDS = (CNN_KIND, STATISTICS_KIND)

#: The file a statistics run keeps its fitted model in.
MODEL_FILE = "model.json"
#: Bump when the features change (a model.json of another version is refused).
FEATURES_VERSION = 1
#: Share of each side taken as the image's border, and side of each corner square.
BORDER_FRACTION = 0.05
CORNER_FRACTION = 0.10
#: Pixels at or above this are "near-white" (burned-in text, markers, labels), at or below
#: :data:`NEAR_BLACK` "near-black" (padding, collimation, black frames).
NEAR_WHITE = 245
NEAR_BLACK = 10
#: Inverse regularisation strength of the logistic regression (scikit-learn's default).
REGULARISATION_C = 1.0

#: The statistics, in model order, with what each measures.
FEATURES: dict[str, str] = {
    "width": "stored width in pixels",
    "height": "stored height in pixels",
    "aspect_ratio": "width / height",
    "mean_intensity": "mean gray level (0–1)",
    "intensity_sd": "standard deviation of the gray level (0–1)",
    "border_brightness": f"mean gray level of the outer {BORDER_FRACTION:.0%} frame (0–1)",
    "corner_brightness": f"mean gray level of the four corner squares ({CORNER_FRACTION:.0%} "
                         "of each side, 0–1)",
    "near_white_share": f"share of pixels at or above {NEAR_WHITE} (of 255)",
    "near_black_share": f"share of pixels at or below {NEAR_BLACK} (of 255)",
}
FEATURE_NAMES = tuple(FEATURES)


def image_statistics(gray: np.ndarray) -> np.ndarray:
    """The :data:`FEATURES` of one decoded 8-bit gray image (H, W), as float64."""
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"expected a 2-D gray image, got shape {gray.shape}")
    height, width = gray.shape
    pixels = gray.astype(np.float64) / 255.0
    band_y = max(1, int(round(height * BORDER_FRACTION)))
    band_x = max(1, int(round(width * BORDER_FRACTION)))
    frame = np.ones(gray.shape, dtype=bool)
    frame[band_y:height - band_y, band_x:width - band_x] = False
    corner_y = max(1, int(round(height * CORNER_FRACTION)))
    corner_x = max(1, int(round(width * CORNER_FRACTION)))
    corners = np.concatenate([pixels[:corner_y, :corner_x].ravel(),
                              pixels[:corner_y, -corner_x:].ravel(),
                              pixels[-corner_y:, :corner_x].ravel(),
                              pixels[-corner_y:, -corner_x:].ravel()])
    return np.array([
        float(width), float(height), width / height,
        float(pixels.mean()), float(pixels.std()),
        float(pixels[frame].mean()), float(corners.mean()),
        float(np.mean(gray >= NEAR_WHITE)), float(np.mean(gray <= NEAR_BLACK)),
    ], dtype=np.float64)


def statistics_for_files(paths: Sequence[str | Path]
                         ) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """The statistics of image files (read through :func:`xrcompare.imaging.read_gray`, with
    its limits): (matrix with one row per readable file, indices of those files, (path,
    reason) of the unreadable ones)."""
    from xrcompare.imaging import ImageError, read_gray

    rows, ok, failed = [], [], []
    for index, path in enumerate(paths):
        try:
            rows.append(image_statistics(read_gray(path)))
            ok.append(index)
        except (ImageError, ValueError) as error:
            failed.append((str(path), str(error)))
    matrix = np.stack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)))
    return matrix, ok, failed


@dataclass(frozen=True)
class StatisticsModel:
    """A fitted standard scaler + logistic regression, as plain numbers.

    ``classes`` are the labels it was fitted on (scikit-learn's sorted ``classes_``); ``coef``
    has one row per class, or one row for two classes (scikit-learn's binary form: the row
    scores ``classes[1]``).
    """

    features: tuple[str, ...]
    classes: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    regularisation_c: float = REGULARISATION_C

    def decision(self, matrix: np.ndarray) -> np.ndarray:
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.features):
            raise ValueError(f"expected {len(self.features)} statistics per image, got "
                             f"shape {matrix.shape}")
        return ((matrix - self.mean) / self.scale) @ self.coef.T + self.intercept

    def predict_proba(self, matrix: np.ndarray, labels: Sequence[str] | None = None
                      ) -> np.ndarray:
        """Probabilities per row in the order of ``labels`` (default :attr:`classes`); a label
        the model was not fitted on gets 0."""
        scores = self.decision(matrix)
        if scores.shape[1] == 1:  # binary: the one row scores classes[1]
            scores = np.concatenate([np.zeros_like(scores), scores], axis=1)
        scores = scores - scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        fitted = exp / exp.sum(axis=1, keepdims=True)
        labels = list(labels) if labels is not None else list(self.classes)
        result = np.zeros((len(fitted), len(labels)))
        for column, label in enumerate(labels):
            if label in self.classes:
                result[:, column] = fitted[:, self.classes.index(label)]
        return result

    def weights(self) -> dict[str, dict[str, float]]:
        """Per class, the coefficient of each standardised statistic (how much one standard
        deviation of it moves that class's score); the binary form is spelled out as ± the
        one row."""
        coef = self.coef
        if coef.shape[0] == 1:
            coef = np.concatenate([-coef / 2, coef / 2])
        return {label: {name: float(value) for name, value in zip(self.features, row,
                                                                  strict=True)}
                for label, row in zip(self.classes, coef, strict=True)}

    def to_json(self) -> dict:
        return {"kind": STATISTICS_KIND, "features_version": FEATURES_VERSION,
                "features": list(self.features), "feature_descriptions":
                    {name: FEATURES.get(name, "") for name in self.features},
                "classes": list(self.classes),
                "scaler": {"mean": self.mean.tolist(), "scale": self.scale.tolist()},
                "coef": self.coef.tolist(), "intercept": self.intercept.tolist(),
                "estimator": "StandardScaler + LogisticRegression (lbfgs, L2, "
                             f"C={self.regularisation_c:g})",
                "regularisation_c": self.regularisation_c}

    @classmethod
    def from_json(cls, payload) -> StatisticsModel:
        """A model from :meth:`to_json`'s values; ValueError (one line) when anything is off
        (model.json is data from outside)."""
        if not isinstance(payload, dict):
            raise ValueError("model.json is not a JSON object")
        if payload.get("kind") != STATISTICS_KIND:
            raise ValueError(f"model.json kind is not {STATISTICS_KIND!r}")
        if payload.get("features_version") != FEATURES_VERSION:
            raise ValueError(f"model.json was made with image statistics version "
                             f"{payload.get('features_version')!r}, this version computes "
                             f"{FEATURES_VERSION}")
        features, classes = payload.get("features"), payload.get("classes")
        if features != list(FEATURE_NAMES):
            raise ValueError("model.json features are not this version's image statistics")
        if (not isinstance(classes, list) or len(classes) < 2 or len(set(classes)) != len(classes)
                or not all(isinstance(label, str) and label for label in classes)):
            raise ValueError("model.json classes are not a list of distinct class names")
        scaler = payload.get("scaler") if isinstance(payload.get("scaler"), dict) else {}
        rows = 1 if len(classes) == 2 else len(classes)
        mean = _numbers(scaler.get("mean"), (len(features),), "scaler.mean")
        scale = _numbers(scaler.get("scale"), (len(features),), "scaler.scale")
        if np.any(scale <= 0):
            raise ValueError("model.json scaler.scale must be positive")
        coef = _numbers(payload.get("coef"), (rows, len(features)), "coef")
        intercept = _numbers(payload.get("intercept"), (rows,), "intercept")
        c = payload.get("regularisation_c", REGULARISATION_C)
        if not isinstance(c, (int, float)) or isinstance(c, bool) or not c > 0:
            raise ValueError("model.json regularisation_c must be a positive number")
        return cls(tuple(features), tuple(classes), mean, scale, coef, intercept, float(c))

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: str | Path) -> StatisticsModel:
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            from xrcompare.errors import one_line

            raise ValueError(f"model.json cannot be read ({one_line(error, 100)})") from None
        return cls.from_json(payload)


def _numbers(value, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"model.json {where} is not a table of numbers") from None
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise ValueError(f"model.json {where} is not {' × '.join(map(str, shape))} finite "
                         "numbers")
    return array


def fit_statistics_model(matrix: np.ndarray, y_true: Sequence[str], *,
                         regularisation_c: float = REGULARISATION_C,
                         seed: int = 0) -> StatisticsModel:
    """Fit the scaler and logistic regression (scikit-learn) on training rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    matrix = np.asarray(matrix, dtype=np.float64)
    labels = np.asarray(list(y_true), dtype=object)
    if len(matrix) != len(labels) or len(matrix) == 0:
        raise ValueError("the statistics baseline needs one label per training image")
    if len(set(labels)) < 2:
        raise ValueError("the statistics baseline needs at least two classes to train on")
    scaler = StandardScaler().fit(matrix)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    model = LogisticRegression(C=regularisation_c, max_iter=5000, random_state=seed)
    model.fit((matrix - scaler.mean_) / scale, labels.astype(str))
    return StatisticsModel(tuple(FEATURE_NAMES), tuple(str(c) for c in model.classes_),
                           scaler.mean_.copy(), scale.copy(), model.coef_.copy(),
                           model.intercept_.copy(), float(regularisation_c))


def predict_gray(model: StatisticsModel, gray: np.ndarray, labels: Sequence[str]
                 ) -> dict[str, float]:
    """One decoded 8-bit gray image (an upload) through the baseline: class → probability."""
    probabilities = model.predict_proba(image_statistics(gray)[None], labels)[0]
    return {label: float(p) for label, p in zip(labels, probabilities, strict=True)}


def describe_weights(model: StatisticsModel, label: str, count: int = 3) -> list[str]:
    """The ``count`` statistics that push an image most towards ``label``, in words
    ("bright corners", "small width"), strongest first."""
    weights = model.weights().get(label, {})
    ranked = sorted(weights.items(), key=lambda item: -abs(item[1]))[:count]
    words = []
    for name, value in ranked:
        if not math.isfinite(value):
            continue
        direction = "higher" if value > 0 else "lower"
        words.append(f"{direction} {name.replace('_', ' ')}")
    return words
