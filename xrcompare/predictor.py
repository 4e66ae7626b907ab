"""One X-ray through many runs: predictions, where they agree, and saliency maps.

What the *Predict & explain* page, the CLI's ``predict``/``explain``,
``benchmarks/predict_explain.py`` and the tests share. No Streamlit here: the page keeps one
:class:`xrcompare.engine.Engine` and the result caches below per server process.

The models come from an :class:`~xrcompare.engine.Engine`: each run's classifier split at
its last convolutional layer into a trunk shared by every run with the same frozen base and
a small per-run tail, so a prediction costs one base pass per distinct (base, input) and
Grad-CAM only the tail's gradient. The other saliency methods use the run's flat full model.
Results are cached by (image, run, method, options), so redrawing never reruns a model.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xrcompare.engine import LRU, Engine, array_digest, weights_problem  # noqa: F401
from xrcompare.escaping import escape_markdown
from xrcompare.paths import SAMPLES_DIR
from xrcompare.runs import Run, RunError

#: Sample X-rays shipped with the repository (licences in ``samples/README.md``).
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


def file_digest(data: bytes) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(data).hexdigest()


def find_sample(data: bytes, samples: Sequence[Sample] | None = None) -> Sample | None:
    """The shipped sample whose file has exactly these bytes (an upload of a sample), or
    None."""
    digest = file_digest(data)
    for sample in list_samples() if samples is None else samples:
        try:
            if file_digest(sample.path.read_bytes()) == digest:
                return sample
        except OSError:
            continue
    return None


#: How :func:`sample_splits` names where a run met an image, in the order to list them.
SPLIT_NAMES = {"train": "training split", "val": "validation split", "test": "test split",
               "heldout": "held-out test folder"}


def sample_splits(sample: Sample, runs: Sequence[Run]) -> dict[str, str]:
    """Run id → where that run met the sample's original image (``"train"``, ``"val"``,
    ``"test"`` or ``"heldout"``; see :meth:`xrcompare.runs.Run.split_of`), for the runs that
    met it at all. The sample is matched by its original file in the shared data (its
    ``source``, e.g. ``cxr3/covid/x.jpg``) against each run's predictions.csv."""
    folder, _, path = sample.source.partition("/")
    found = {}
    for run in runs:
        split = run.split_of(folder, path)
        if split is not None:
            found[run.run_id] = split
    return found


def splits_sentence(splits: dict[str, str], titles: dict[str, str], folder: str,
                    unseen: Sequence[str] = ()) -> str:
    """One Markdown sentence per split: which runs met the image there (``titles``: run id →
    shown name; ``folder``: the held-out folder's name), then the ``unseen`` runs' names."""
    parts = []
    for split, name in SPLIT_NAMES.items():
        names = [titles.get(run_id, run_id) for run_id, where in splits.items() if where == split]
        if not names:
            continue
        where = f"held-out folder *{folder}*" if split == "heldout" else name
        line = f"In the **{where}** of {', '.join(names)}"
        if split == "train":
            line += ": those models were fitted on it, so their answer here tests nothing"
        elif split == "val":
            line += ": it helped choose those models' epoch"
        parts.append(line + ".")
    if unseen:
        parts.append(f"Not in the data of {', '.join(unseen)}.")
    return " ".join(parts)


# --------------------------------------------------------------------------- models


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
    is_control: bool  # a control (random-init, masked input, statistics): shown, not voting
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


class ResultCache(LRU):
    """Results kept by key, least recently used going first (predictions: a few hundred
    bytes each; maps: 200 kB for 224 px, so 256 of them hold about 50 MB)."""

    def __init__(self, max_entries: int = 256):
        super().__init__(max_entries)


def prediction_key(digest: str, run: Run) -> tuple:
    return (digest, run.run_id, run.modified)


def predict_run(engine: Engine, run: Run, gray: np.ndarray, *,
                cache: ResultCache | None = None, digest: str | None = None) -> RunPrediction:
    """``run``'s probabilities for one 8-bit gray image through ``engine``.

    A run whose model cannot be built (missing backbone weights, a damaged head file) gets
    ``problem`` saying why, never an exception. With ``cache``, a known (image, run) is
    answered without touching a model.
    """
    key = prediction_key(digest or image_digest(gray), run) if cache is not None else None
    if key is not None:
        known = cache.get(key)
        if known is not None:
            return known
    start = time.perf_counter()
    try:
        probabilities = engine.probabilities(run, gray)
    except MODEL_ERRORS as error:
        return RunPrediction(run.run_id, run.title, run.is_control, tuple(run.labels),
                             problem=problem_sentence(run, error))
    result = RunPrediction(run.run_id, run.title, run.is_control, tuple(run.labels),
                           probabilities, time.perf_counter() - start)
    if key is not None:
        cache.put(key, result)
    return result


def predict_runs(runs: Sequence[Run], gray: np.ndarray, engine: Engine | None = None, *,
                 cache: ResultCache | None = None,
                 progress: Callable[[int, int, Run], None] | None = None
                 ) -> list[RunPrediction]:
    """Every run's probabilities for one 8-bit gray image, in the order of ``runs``.

    Runs sharing a trunk and a model input share one base pass (the engine keeps the
    feature map). Unusable runs are kept with their ``problem``, never dropped.
    """
    engine = engine or Engine()
    digest = image_digest(gray)
    results = []
    for number, run in enumerate(runs):
        if progress is not None:
            progress(number, len(runs), run)
        results.append(predict_run(engine, run, gray, cache=cache, digest=digest))
    return results


def format_probability(value: float | None) -> str:
    """A probability as a percentage with one decimal, never 0% or 100% (``>99.9%``,
    ``<0.1%``): a softmax never reaches either, and an output of exactly 1 or 0 is float32
    rounding, not certainty."""
    if value is None or not np.isfinite(value):
        return "–"
    value = float(value)
    if value > 0.9995:
        return ">99.9%"
    if value < 0.0005:
        return "<0.1%"
    return f"{value * 100:.1f}%"


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

    Controls (random-init, masked inputs, the statistics baseline) are listed apart (they show
    what a model without the real signal does)
    does) and do not vote. ``titles`` maps run id → shown name.
    """
    titles = titles or {}

    def name(prediction: RunPrediction) -> str:
        return titles.get(prediction.run_id, prediction.title)

    unavailable = [name(p) for p in predictions if not p.ok]
    controls = [f"{name(p)} → {p.predicted}" for p in predictions
                if p.ok and p.is_control]
    voters = [p for p in predictions if p.ok and not p.is_control]
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
    labels: list[str] = []  # every run's classes, in the order first met
    for prediction in predictions:
        labels += [label for label in prediction.labels if label not in labels]
    rows = []
    for prediction in predictions:
        row = {"run": titles.get(prediction.run_id, prediction.title),
               "run_id": prediction.run_id,
               "kind": "control" if prediction.is_control else "model",
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

    Controls are hatched. Runs without a prediction are left out (the page
    lists them with their reason).
    """
    import plotly.graph_objects as go

    from xrcompare.charts import class_colors

    titles = titles or {}
    usable = [p for p in predictions if p.ok]
    labels = list(dict.fromkeys(label for p in usable for label in p.labels))
    colors = class_colors(labels)
    names = [titles.get(p.run_id, p.title) for p in usable]
    patterns = ["/" if p.is_control else "" for p in usable]
    figure = go.Figure()
    for label in labels:
        values = [p.probabilities.get(label, 0.0) for p in usable]
        figure.add_bar(
            y=names, x=values, orientation="h", name=label,
            marker={"color": colors[label], "pattern": {"shape": patterns},
                    "line": {"color": "white", "width": 1}},
            text=[format_probability(value) if value >= 0.12 else "" for value in values],
            customdata=[format_probability(value) for value in values],
            textposition="inside", insidetextanchor="middle", textangle=0,
            textfont={"color": "white"},
            hovertemplate=f"%{{y}}<br>p({label}) = %{{customdata}}<extra></extra>")
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


def explain_run(engine: Engine, run: Run, gray: np.ndarray, method: str, target: str, *,
                progress: Callable[[float], None] | None = None, **options) -> Explanation:
    """One saliency map of ``run`` for class ``target`` (see :mod:`xrcompare.explain`).

    Grad-CAM comes from the engine's fast path (the tail's gradient on the cached feature
    map of the run's last conv layer); the other methods run tf-keras-vis on the run's flat
    full model. ``options``: ``smooth_samples``, ``smooth_noise`` (SmoothGrad),
    ``score_max_n`` (Faster-ScoreCAM). ``progress(fraction)`` is called from the engine's
    model thread.
    """
    from xrcompare.explain import check_method

    check_method(method)
    if target not in run.labels:
        raise ValueError(f"unknown class {target!r}; choose from {', '.join(run.labels)}")
    index = run.labels.index(target)
    start = time.perf_counter()
    if method == "gradcam":
        saliency = engine.gradcam(run, gray, index)
        if progress is not None:
            progress(1.0)
    else:
        saliency = engine.flat_saliency(run, gray, method, index, progress=progress,
                                        **method_options(method, options))
    return Explanation(run.run_id, method, target, saliency, time.perf_counter() - start)


#: Which options each method reads (the rest do not change its map).
METHOD_OPTIONS = {"smoothgrad": ("smooth_samples", "smooth_noise"), "scorecam": ("score_max_n",)}


def method_options(method: str, options: dict) -> dict:
    """Only the options that ``method`` uses, so unrelated sliders do not invalidate a map."""
    return {name: options[name] for name in METHOD_OPTIONS.get(method, ()) if name in options}


class SaliencyCache(ResultCache):
    """Saliency maps kept by (image, run, method, class, options); least recently used goes.

    A (224, 224) float32 map is 200 kB: 256 entries hold about 50 MB.
    """

    @staticmethod
    def key(digest: str, run: Run, method: str, target: str, options: dict) -> tuple:
        return (digest, run.run_id, run.modified, method, target,
                tuple(sorted(method_options(method, options).items())))


def explain_cached(cache: SaliencyCache | None, engine: Engine, run: Run, gray: np.ndarray,
                   method: str, target: str, *, digest: str | None = None,
                   progress: Callable[[float], None] | None = None,
                   **options) -> Explanation:
    """:func:`explain_run` through ``cache`` (None: no caching)."""
    options = method_options(method, options)
    if cache is None:
        return explain_run(engine, run, gray, method, target, progress=progress, **options)
    key = cache.key(digest or image_digest(gray), run, method, target, options)
    explanation = cache.get(key)
    if explanation is None:
        explanation = explain_run(engine, run, gray, method, target, progress=progress,
                                  **options)
        cache.put(key, explanation)
    return explanation


def overlay_for_run(run: Run, gray: np.ndarray, saliency: np.ndarray, alpha: float = 0.45,
                    colormap: str = "jet") -> np.ndarray:
    """The map over the image (RGB uint8, the image's size), undoing the run's resize mode."""
    from xrcompare.explain import overlay

    return overlay(gray, saliency, alpha=alpha, colormap=colormap_code(colormap),
                   resize_mode=run.resize_mode)


def raw_map_for_run(run: Run, gray: np.ndarray, saliency: np.ndarray,
                    colormap: str = "jet") -> np.ndarray:
    """The map alone in colour (RGB uint8), on the image's geometry."""
    from xrcompare.explain import map_to_image, saliency_to_rgb

    return saliency_to_rgb(map_to_image(saliency, gray.shape,
                                        run.resize_mode),
                           colormap_code(colormap))


#: Maps are drawn over a copy of the image at most this many pixels on its longest side: a
#: map is shown a few hundred pixels wide, and a 2048-pixel overlay per run would cost far
#: more to blend, encode and send than it shows.
DISPLAY_SIDE = 512


def display_image(gray: np.ndarray, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    """``gray`` shrunk (aspect kept, area interpolation) so its longest side is at most
    ``max_side``; the image itself when it is small enough. The maps line up with it as with
    the original (:func:`xrcompare.explain.map_to_image` works in relative geometry)."""
    import cv2

    height, width = gray.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


#: OpenCV colour maps offered for the overlays (name → cv2 constant name).
COLORMAPS = {"jet": "COLORMAP_JET", "turbo": "COLORMAP_TURBO", "inferno": "COLORMAP_INFERNO",
             "viridis": "COLORMAP_VIRIDIS"}


def colormap_code(name: str) -> int:
    import cv2

    if name not in COLORMAPS:
        raise ValueError(f"unknown colour map {name!r}; choose from {', '.join(COLORMAPS)}")
    return int(getattr(cv2, COLORMAPS[name]))


def image_digest(gray: np.ndarray) -> str:
    """A short content hash of a decoded image (a cache key for its results)."""
    return array_digest(gray)


def colormap_colors(name: str, stops: int = 11) -> list[str]:
    """``stops`` colours (``#rrggbb``) of a colour map from its low to its high end, as
    :func:`overlay_for_run` paints them: for a colour bar beside the maps."""
    import cv2

    if stops < 2:
        raise ValueError("a colour bar needs at least 2 stops")
    levels = np.rint(np.linspace(0, 255, stops)).astype(np.uint8)[:, None]
    colours = cv2.cvtColor(cv2.applyColorMap(levels, colormap_code(name)), cv2.COLOR_BGR2RGB)
    return ["#" + "".join(f"{int(value):02x}" for value in colour) for colour in colours[:, 0]]
