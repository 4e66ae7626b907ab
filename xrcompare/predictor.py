"""One X-ray through many runs: predictions, where they agree, and saliency maps.

What the *Predict & explain* page, ``benchmarks/predict_explain.py`` and the tests share.
No Streamlit here: the page caches what these functions return.

Models are the runs' full classifiers, each ONE flat functional graph (frozen base, then the
head's layers; see :func:`xrcompare.runs.build_full_model`). Runs whose frozen base is the
same (backbone, weights, input size and, for random-init controls, seed) can share one base
through a :class:`BaseCache`: the base is built and its weights are loaded once.
"""

from __future__ import annotations

import csv
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xrcompare import CLASSES
from xrcompare.escaping import escape_markdown
from xrcompare.runs import Run, RunError

#: Sample X-rays shipped with the repository (licences in ``samples/README.md``).
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
SAMPLES_INDEX = "samples.csv"

#: Errors that mean "this run cannot give a prediction", shown as one sentence.
MODEL_ERRORS = (RunError, OSError, ValueError, RuntimeError, KeyError)


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    """A shipped sample X-ray and where it comes from."""

    path: Path
    label: str
    title: str
    source: str
    licence: str
    attribution: str

    @property
    def name(self) -> str:
        return self.path.name


def list_samples(folder: str | Path = SAMPLES_DIR) -> list[Sample]:
    """The samples listed in ``<folder>/samples.csv`` whose files exist, in file order."""
    folder = Path(folder)
    index = folder / SAMPLES_INDEX
    if not index.is_file():
        return []
    with index.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    samples = []
    for row in rows:
        path = folder / row["file"]
        if path.is_file():
            samples.append(Sample(path, row["label"], row["title"], row["source"],
                                  row["licence"], row["attribution"]))
    return samples


# --------------------------------------------------------------------------- models


def base_key(run: Run) -> tuple:
    """Runs with equal keys have identical frozen bases (the seed matters only for random)."""
    info = run.info
    weights = info.get("weights", "imagenet")
    seed = info.get("weights_seed", 0) if weights == "random" else None
    return (run.backbone, weights, int(info["image_size"]), seed)


def weights_problem(run: Run) -> str | None:
    """Why the run's base cannot be built here (one sentence), or None.

    Only ImageNet runs need weight files; random-init controls are rebuilt from their seed.
    """
    if run.info.get("weights", "imagenet") != "imagenet":
        return None
    from xrcompare.backbones import weights_status

    try:
        status = weights_status(run.backbone)
    except ValueError as error:  # a backbone this version does not know
        return str(error)
    return None if status.available else status.detail


class BaseCache:
    """Frozen bases shared by runs with the same :func:`base_key`, built on first use."""

    def __init__(self):
        self._bases: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def get(self, run: Run):
        key = base_key(run)
        with self._lock:
            if key not in self._bases:
                from xrcompare.backbones import build_base

                backbone, weights, size, _ = key
                self._bases[key] = build_base(backbone, size, weights,
                                              seed=run.info.get("weights_seed", 0))
            return self._bases[key]

    def __len__(self) -> int:
        return len(self._bases)


def load_model(run: Run, bases: BaseCache | None = None):
    """The run's full classifier; raises WeightsUnavailable (one sentence) if it cannot be."""
    from xrcompare.backbones import WeightsUnavailable
    from xrcompare.runs import build_full_model

    problem = weights_problem(run)
    if problem is not None:
        raise WeightsUnavailable(problem)
    base = bases.get(run) if bases is not None else None
    return build_full_model(run, base=base)


def problem_sentence(run: Run, error: BaseException) -> str:
    """A readable reason why ``run`` gave no prediction."""
    from xrcompare.backbones import WeightsUnavailable

    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, WeightsUnavailable):
        return f"Backbone weights unavailable: {text}"
    return f"The model could not be rebuilt ({type(error).__name__}: {text[:200]})."


# --------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class RunPrediction:
    """One run's answer for one image, or the reason it has none."""

    run_id: str
    title: str
    is_random_control: bool
    labels: tuple[str, ...]
    probabilities: dict[str, float] | None = None
    seconds: float = 0.0
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.probabilities is not None

    @property
    def predicted(self) -> str | None:
        if not self.probabilities:
            return None
        return max(self.probabilities, key=self.probabilities.get)

    @property
    def confidence(self) -> float | None:
        return None if not self.probabilities else max(self.probabilities.values())

    def class_index(self, label: str) -> int:
        if label not in self.labels:
            raise ValueError(f"{self.title} does not predict {label!r}")
        return self.labels.index(label)


def predict_one(run: Run, model, gray: np.ndarray) -> RunPrediction:
    from xrcompare.runs import predict_gray

    start = time.perf_counter()
    probabilities = predict_gray(run, model, gray)
    return RunPrediction(run.run_id, run.title, run.is_random_control, tuple(run.labels),
                         probabilities, time.perf_counter() - start)


def predict_runs(runs: Sequence[Run], gray: np.ndarray,
                 get_model: Callable[[Run], object] = load_model,
                 progress: Callable[[int, int, Run], None] | None = None
                 ) -> list[RunPrediction]:
    """Every run's probabilities for one 8-bit gray image, in the order of ``runs``.

    A run whose model cannot be built (missing backbone weights, a damaged head file) is
    kept, with ``problem`` saying why, never dropped. ``get_model(run)`` is where a caller
    plugs in its model cache.
    """
    results = []
    for number, run in enumerate(runs):
        if progress is not None:
            progress(number, len(runs), run)
        try:
            model = get_model(run)
            results.append(predict_one(run, model, gray))
        except MODEL_ERRORS as error:
            results.append(RunPrediction(run.run_id, run.title, run.is_random_control,
                                         tuple(run.labels), problem=problem_sentence(run,
                                                                                     error)))
    return results


@dataclass(frozen=True)
class Agreement:
    """Where the runs agree: the majority class, who differs, one headline sentence."""

    headline: str
    majority: str | None
    votes: dict[str, list[str]]  # class → titles of the runs that predict it
    unanimous: bool
    unavailable: list[str] = field(default_factory=list)
    controls: list[str] = field(default_factory=list)


def agreement(predictions: Sequence[RunPrediction],
              titles: dict[str, str] | None = None) -> Agreement:
    """Summarise the predicted classes of the trained runs.

    Random-init controls are listed apart (they show what a head on meaningless features
    does) and do not vote. ``titles`` maps run id → shown name.
    """
    titles = titles or {}

    def name(prediction: RunPrediction) -> str:
        return titles.get(prediction.run_id, prediction.title)

    unavailable = [name(p) for p in predictions if not p.ok]
    controls = [f"{name(p)} → {p.predicted}" for p in predictions
                if p.ok and p.is_random_control]
    voters = [p for p in predictions if p.ok and not p.is_random_control]
    votes: dict[str, list[str]] = {}
    for prediction in voters:
        votes.setdefault(prediction.predicted, []).append(name(prediction))
    votes = dict(sorted(votes.items(), key=lambda item: (-len(item[1]), item[0])))
    if not voters:
        return Agreement("No trained model gave a prediction.", None, votes, False,
                         unavailable, controls)
    counts = [len(names) for names in votes.values()]
    majority = next(iter(votes)) if counts.count(counts[0]) == 1 else None
    if len(votes) == 1:  # headline is Markdown: class names from run.json are escaped
        label = escape_markdown(next(iter(votes)))
        headline = (f"The only trained model predicts **{label}**." if len(voters) == 1
                    else f"All {len(voters)} trained models predict **{label}**.")
    else:
        parts = [f"{len(names)} predict{'s' if len(names) == 1 else ''} "
                 f"**{escape_markdown(label)}**" for label, names in votes.items()]
        headline = "The models disagree: " + ", ".join(parts) + "."
    return Agreement(headline, majority, votes, len(votes) == 1, unavailable, controls)


def probability_table(predictions: Sequence[RunPrediction],
                      titles: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per run: name, kind, predicted class, confidence, one column per class."""
    titles = titles or {}
    labels = list(CLASSES)
    for prediction in predictions:
        labels += [label for label in prediction.labels if label not in labels]
    rows = []
    for prediction in predictions:
        row = {"run": titles.get(prediction.run_id, prediction.title),
               "run_id": prediction.run_id,
               "kind": "random-init control" if prediction.is_random_control else "ImageNet",
               "predicted": prediction.predicted or "–",
               "confidence": prediction.confidence}
        for label in labels:
            row[label] = (prediction.probabilities or {}).get(label)
        row["note"] = prediction.problem or ""
        rows.append(row)
    columns = ["run", "run_id", "kind", "predicted", "confidence", *labels, "note"]
    return pd.DataFrame(rows, columns=columns)


def probability_figure(predictions: Sequence[RunPrediction],
                       titles: dict[str, str] | None = None):
    """One horizontal bar per run, split into its class probabilities (they sum to 1).

    Random-init controls are hatched. Runs without a prediction are left out (the page
    lists them with their reason).
    """
    import plotly.graph_objects as go

    from xrcompare.charts import CLASS_COLORS

    titles = titles or {}
    usable = [p for p in predictions if p.ok]
    labels = list(dict.fromkeys(label for p in usable for label in p.labels))
    names = [titles.get(p.run_id, p.title) for p in usable]
    patterns = ["/" if p.is_random_control else "" for p in usable]
    figure = go.Figure()
    for label in labels:
        values = [p.probabilities.get(label, 0.0) for p in usable]
        figure.add_bar(
            y=names, x=values, orientation="h", name=label,
            marker={"color": CLASS_COLORS.get(label), "pattern": {"shape": patterns},
                    "line": {"color": "white", "width": 1}},
            text=[f"{value:.0%}" if value >= 0.12 else "" for value in values],
            textposition="inside", insidetextanchor="middle", textangle=0,
            textfont={"color": "white"},
            hovertemplate=f"%{{y}}<br>p({label}) = %{{x:.1%}}<extra></extra>")
    figure.update_layout(
        template="plotly_white", barmode="stack", font={"size": 14},
        height=110 + 46 * len(usable), bargap=0.25,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        xaxis={"range": [0, 1], "tickformat": ".0%", "title": "probability",
               "fixedrange": True},
        yaxis={"autorange": "reversed", "title": "", "automargin": True, "fixedrange": True},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0,
                "title": {"text": "class "}, "traceorder": "normal"})
    return figure


# --------------------------------------------------------------------------- saliency


@dataclass(frozen=True)
class Explanation:
    """A run's saliency map for one image, method and class."""

    run_id: str
    method: str
    target: str
    saliency: np.ndarray  # (S, S) in 0..1, on the model's square input
    seconds: float

    @property
    def is_blank(self) -> bool:
        return float(self.saliency.max() - self.saliency.min()) < 1e-6


def explain_run(run: Run, model, gray: np.ndarray, method: str, target: str, *,
                progress: Callable[[float], None] | None = None, **options) -> Explanation:
    """One saliency map of ``run`` for class ``target`` (see :mod:`xrcompare.explain`).

    ``options``: ``smooth_samples``, ``smooth_noise`` (SmoothGrad), ``score_max_n``
    (Faster-ScoreCAM). The visualizers are kept per model, so warm calls skip cloning.
    """
    from xrcompare.backbones import get_backbone
    from xrcompare.explain import compute_saliency
    from xrcompare.runs import model_input_for_run

    if target not in run.labels:
        raise ValueError(f"unknown class {target!r}; choose from {', '.join(run.labels)}")
    layer = run.info.get("last_conv_layer") or get_backbone(run.backbone).last_conv_layer
    start = time.perf_counter()
    saliency = compute_saliency(model, model_input_for_run(run, gray), method,
                                run.labels.index(target), penultimate_layer=layer,
                                progress=progress, **options)
    return Explanation(run.run_id, method, target, saliency, time.perf_counter() - start)


#: Which options each method reads (the rest do not change its map).
METHOD_OPTIONS = {"smoothgrad": ("smooth_samples", "smooth_noise"), "scorecam": ("score_max_n",)}


def method_options(method: str, options: dict) -> dict:
    """Only the options that ``method`` uses, so unrelated sliders do not invalidate a map."""
    return {name: options[name] for name in METHOD_OPTIONS.get(method, ()) if name in options}


class SaliencyCache:
    """Saliency maps kept by (image, run, method, class, options); least recently used goes.

    A (224, 224) float32 map is 200 kB: 256 entries hold about 50 MB.
    """

    def __init__(self, max_entries: int = 256):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, Explanation] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(digest: str, run: Run, method: str, target: str, options: dict) -> tuple:
        return (digest, run.run_id, run.modified, method, target,
                tuple(sorted(method_options(method, options).items())))

    def get(self, key: tuple) -> Explanation | None:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            return None

    def put(self, key: tuple, explanation: Explanation) -> None:
        with self._lock:
            self._entries[key] = explanation
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries


def explain_cached(cache: SaliencyCache | None, run: Run, model, gray: np.ndarray,
                   method: str, target: str, *, digest: str | None = None,
                   progress: Callable[[float], None] | None = None,
                   **options) -> Explanation:
    """:func:`explain_run` through ``cache`` (None: no caching)."""
    options = method_options(method, options)
    if cache is None:
        return explain_run(run, model, gray, method, target, progress=progress, **options)
    key = cache.key(digest or image_digest(gray), run, method, target, options)
    explanation = cache.get(key)
    if explanation is None:
        explanation = explain_run(run, model, gray, method, target, progress=progress,
                                  **options)
        cache.put(key, explanation)
    return explanation


def overlay_for_run(run: Run, gray: np.ndarray, saliency: np.ndarray, alpha: float = 0.45,
                    colormap: str = "jet") -> np.ndarray:
    """The map over the image (RGB uint8, the image's size), undoing the run's resize mode."""
    from xrcompare.explain import overlay

    return overlay(gray, saliency, alpha=alpha, colormap=colormap_code(colormap),
                   resize_mode=run.info.get("resize_mode", "squash"))


def raw_map_for_run(run: Run, gray: np.ndarray, saliency: np.ndarray,
                    colormap: str = "jet") -> np.ndarray:
    """The map alone in colour (RGB uint8), on the image's geometry."""
    from xrcompare.explain import map_to_image, saliency_to_rgb

    return saliency_to_rgb(map_to_image(saliency, gray.shape,
                                        run.info.get("resize_mode", "squash")),
                           colormap_code(colormap))


#: OpenCV colour maps offered for the overlays (name → cv2 constant name).
COLORMAPS = {"jet": "COLORMAP_JET", "turbo": "COLORMAP_TURBO", "inferno": "COLORMAP_INFERNO",
             "viridis": "COLORMAP_VIRIDIS"}


def colormap_code(name: str) -> int:
    import cv2

    if name not in COLORMAPS:
        raise ValueError(f"unknown colour map {name!r}; choose from {', '.join(COLORMAPS)}")
    return int(getattr(cv2, COLORMAPS[name]))


def image_digest(gray: np.ndarray) -> str:
    """A short content hash of a decoded image (a cache key for its saliency maps)."""
    array = np.ascontiguousarray(gray)
    digest = hashlib.sha256(str((array.shape, array.dtype.str)).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:24]
