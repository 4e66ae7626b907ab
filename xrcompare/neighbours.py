"""Nearest training images and an out-of-distribution flag, in the frozen base's feature space.

Every image a run sees becomes a **pooled vector**: the frozen base's output (the head's
input) averaged over its spatial grid, 2,048 numbers for ResNet50 and Xception, 512 for VGG16.
A run's **neighbour index** (``neighbours.npz`` in its folder, a few hundred kilobytes) holds
its training split's vectors projected on their first principal components and scaled to unit
length (float16), with the path and class of each training image. From it:

* the *k* nearest training images of any image (cosine similarity): when a "covid" call rests
  on looking like the case-report images of one source, the student sees those images;
* a **distance**, the Mahalanobis distance to the training vectors in those components (each
  component divided by its spread in the training split), and a **threshold**, the 99th
  percentile of the validation split's distances, recorded with the index: an image farther
  than that is *out of distribution*, unlike what the model was trained on, and its prediction
  means little. (On resnet50-cxr3 this flagged an inverted X-ray, a 32-pixel crop, noise, a
  blurred texture and a coffee-cup photo, where the distance to the *k* nearest in the same
  space flagged only the photo: ``tests/test_neighbours.py`` keeps those cases.)

The index is built from the feature cache, the same features the head was trained on
(:func:`build_index`, ``scripts/make_trained.py`` and ``python -m xrcompare neighbours``); a
run folder comes from elsewhere, so :func:`load_index` checks every array before use. No
Streamlit here; the engine gives an upload's pooled vector (:meth:`Engine.pooled`).
"""

from __future__ import annotations

import threading
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from xrcompare.errors import one_line
from xrcompare.runs import Run

INDEX_FILE = "neighbours.npz"
#: Principal components kept: enough for the neighbours, small enough to ship.
COMPONENTS = 64
#: Neighbours shown by default.
K = 5
#: The validation split's share of images called in distribution.
QUANTILE = 0.99
#: Bounds on an index read from a run folder (a copied folder is untrusted).
MAX_INDEX_BYTES = 32 * 1024 * 1024
MAX_UNPACKED_BYTES = 128 * 1024 * 1024
MAX_TRAINING_IMAGES = 200_000
MAX_COMPONENTS = 512
MAX_CHANNELS = 8192
ARRAYS = ("mean", "components", "scales", "vectors", "paths", "labels", "settings")


class NeighbourIndexError(ValueError):
    """A neighbour index that cannot be used (one sentence)."""


@dataclass(frozen=True)
class NeighbourIndex:
    """A run's training split in its base's pooled feature space (see the module docstring)."""

    mean: np.ndarray  # (channels,) float32: the training vectors' mean
    components: np.ndarray  # (components, channels) float32: principal axes
    scales: np.ndarray  # (components,) float32: the training vectors' spread along each axis
    vectors: np.ndarray  # (images, components) float32: projected, unit length
    paths: list[str]  # relative to the run's data folder
    labels: list[str]
    k: int  # neighbours shown by default
    threshold: float  # distances above it are out of distribution
    quantile: float

    @property
    def channels(self) -> int:
        return int(self.components.shape[1])

    def coordinates(self, pooled: np.ndarray) -> np.ndarray:
        """Pooled vectors (n, channels) → their coordinates (n, components) on the axes."""
        pooled = np.asarray(pooled, dtype=np.float32)
        if pooled.ndim == 1:
            pooled = pooled[None, :]
        if pooled.ndim != 2 or pooled.shape[1] != self.channels:
            raise ValueError(f"pooled vectors of {self.channels} numbers expected, got shape "
                             f"{pooled.shape}")
        return (pooled - self.mean) @ self.components.T

    def similarities(self, pooled: np.ndarray) -> np.ndarray:
        """Cosine similarity (n, training images) of pooled vectors to every training image."""
        return _unit(self.coordinates(pooled)) @ self.vectors.T

    def distances(self, pooled: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each pooled vector to the training vectors (n,)."""
        return np.linalg.norm(self.coordinates(pooled) / self.scales, axis=1)

    def nearest(self, pooled: np.ndarray, k: int | None = None) -> list[dict]:
        """The ``k`` nearest training images of one pooled vector, nearest first: ``path``,
        ``label`` and ``similarity``."""
        similarity = self.similarities(pooled)[0]
        count = min(k or self.k, len(similarity))
        order = np.argsort(-similarity, kind="stable")[:count]
        return [{"path": self.paths[i], "label": self.labels[i],
                 "similarity": float(similarity[i])} for i in order]

    def check(self, pooled: np.ndarray) -> dict:
        """``distance``, ``threshold`` and ``out_of_distribution`` of one pooled vector."""
        distance = float(self.distances(pooled)[0])
        return {"distance": round(distance, 3), "threshold": round(self.threshold, 3),
                "out_of_distribution": bool(distance > self.threshold)}


def pooled_features(feature_maps: np.ndarray) -> np.ndarray:
    """Base outputs (n, h, w, c) averaged over the grid: (n, c) float32."""
    maps = np.asarray(feature_maps, dtype=np.float32)
    if maps.ndim != 4:
        raise ValueError(f"feature maps (n, h, w, c) expected, got shape {maps.shape}")
    return maps.mean(axis=(1, 2))


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def fit_index(train_pooled: np.ndarray, paths: Sequence[str], labels: Sequence[str],
              val_pooled: np.ndarray, *, components: int = COMPONENTS, k: int = K,
              quantile: float = QUANTILE) -> NeighbourIndex:
    """The index of training vectors ``train_pooled`` (n, channels), its threshold the
    ``quantile`` of the validation vectors' distances (``val_pooled``)."""
    train = np.asarray(train_pooled, dtype=np.float64)
    if train.ndim != 2 or len(train) < 2:
        raise ValueError("at least two training vectors (n, channels) are needed")
    if not len(paths) == len(labels) == len(train):
        raise ValueError("paths, labels and training vectors differ in length")
    if len(val_pooled) == 0:
        raise ValueError("no validation vectors to set the threshold from")
    if not 0 < quantile < 1:
        raise ValueError(f"the quantile must lie between 0 and 1, got {quantile}")
    mean = train.mean(axis=0)
    _, spread, axes = np.linalg.svd(train - mean, full_matrices=False)
    # Axes along which the training images barely vary would blow the distance up: a few
    # training images (a tiny run) span fewer axes than asked for.
    count = min(int(components), int(np.sum(spread > 1e-3 * spread[0])), len(train) - 1)
    kept = axes[:count].astype(np.float16).astype(np.float32)  # as stored
    scales = np.maximum(spread[:count] / np.sqrt(len(train)), 1e-6).astype(np.float32)
    index = NeighbourIndex(mean=mean.astype(np.float32), components=kept, scales=scales,
                           vectors=np.zeros((0, count), np.float32), paths=list(paths),
                           labels=list(labels), k=int(k), threshold=0.0,
                           quantile=float(quantile))
    vectors = _unit(index.coordinates(train))
    index = replace(index, vectors=vectors.astype(np.float16).astype(np.float32))
    threshold = float(np.quantile(index.distances(val_pooled), quantile))
    return replace(index, threshold=threshold)


def save_index(index: NeighbourIndex, folder: str | Path) -> Path:
    """Write ``neighbours.npz`` into ``folder`` (float16 arrays, no pickles)."""
    target = Path(folder) / INDEX_FILE
    settings = np.array([index.k, index.threshold, index.quantile], dtype=np.float64)
    partial = target.with_suffix(".npz.partial")
    with partial.open("wb") as handle:
        np.savez_compressed(handle, mean=index.mean.astype(np.float32),
                            components=index.components.astype(np.float16),
                            scales=index.scales.astype(np.float32),
                            vectors=index.vectors.astype(np.float16),
                            paths=np.array(index.paths, dtype=str),
                            labels=np.array(index.labels, dtype=str), settings=settings)
    partial.replace(target)
    return target


#: Indexes read, by (file, modification time, size): a page rerun reads no file again.
_LOADED: OrderedDict[tuple, NeighbourIndex] = OrderedDict()
_LOADED_LOCK = threading.Lock()
MAX_LOADED = 32


def load_index(run: Run) -> NeighbourIndex | None:
    """The run's index, None when the run has none; :class:`NeighbourIndexError` (one sentence)
    when its file cannot be used. Kept in memory (the last 32) until the file changes."""
    path = run.path / INDEX_FILE
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_mtime_ns, stat.st_size, run.run_id)
    with _LOADED_LOCK:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
    index = _read_index(run, path, stat.st_size)
    with _LOADED_LOCK:
        _LOADED[key] = index
        while len(_LOADED) > MAX_LOADED:
            _LOADED.popitem(last=False)
    return index


def _read_index(run: Run, path: Path, size: int) -> NeighbourIndex:
    if not path.is_file():
        raise NeighbourIndexError(f"{INDEX_FILE} of {run.run_id} is not a file")
    if size > MAX_INDEX_BYTES:
        raise NeighbourIndexError(f"{INDEX_FILE} of {run.run_id} is larger than "
                          f"{MAX_INDEX_BYTES // 2**20} MB")
    try:
        with zipfile.ZipFile(path) as archive:  # a small file may unpack to gigabytes
            unpacked = sum(member.file_size for member in archive.infolist())
        if unpacked > MAX_UNPACKED_BYTES:
            raise NeighbourIndexError(f"{INDEX_FILE} of {run.run_id} unpacks to more than "
                                      f"{MAX_UNPACKED_BYTES // 2**20} MB")
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in ARRAYS if name not in data.files]
            if missing:
                raise NeighbourIndexError(f"{INDEX_FILE} of {run.run_id} lacks "
                                          f"{', '.join(missing)}")
            arrays = {name: data[name] for name in ARRAYS}
    except NeighbourIndexError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise NeighbourIndexError(f"{INDEX_FILE} of {run.run_id} cannot be read "
                                  f"({one_line(error)})") from None
    mean = arrays["mean"]
    channels = mean.shape[0] if mean.ndim == 1 else -1
    return _checked(run, arrays, channels)


def _checked(run: Run, arrays: dict, channels: int) -> NeighbourIndex:
    def bad(what: str) -> NeighbourIndexError:
        return NeighbourIndexError(f"{INDEX_FILE} of {run.run_id} is not a neighbour index: {what}")

    mean, components, vectors = arrays["mean"], arrays["components"], arrays["vectors"]
    scales = arrays["scales"]
    paths, labels, settings = arrays["paths"], arrays["labels"], arrays["settings"]
    if not 0 < channels <= MAX_CHANNELS:
        raise bad(f"its mean has shape {mean.shape}")
    if run.is_cnn and channels != run.feature_shape[2]:
        raise bad(f"{channels} channels, the run's base gives {run.feature_shape[2]}")
    if components.ndim != 2 or components.shape[1] != channels \
            or not 0 < components.shape[0] <= MAX_COMPONENTS:
        raise bad(f"components of shape {components.shape}")
    if scales.shape != (components.shape[0],):
        raise bad(f"scales of shape {scales.shape}")
    if vectors.ndim != 2 or vectors.shape[1] != components.shape[0] \
            or not 2 <= vectors.shape[0] <= MAX_TRAINING_IMAGES:
        raise bad(f"training vectors of shape {vectors.shape}")
    if paths.shape != (len(vectors),) or labels.shape != (len(vectors),) \
            or paths.dtype.kind != "U" or labels.dtype.kind != "U":
        raise bad("paths and labels do not match the training vectors")
    if settings.shape != (3,) or not np.all(np.isfinite(settings)):
        raise bad("its settings are not three numbers")
    k, threshold, quantile = int(settings[0]), float(settings[1]), float(settings[2])
    if not 1 <= k <= 50 or not 0 < threshold < 1e6 or not 0 < quantile < 1:
        raise bad(f"k {k}, threshold {threshold:g}, quantile {quantile:g}")
    numbers = [np.asarray(array, dtype=np.float32)
               for array in (mean, components, scales, vectors)]
    if not all(np.all(np.isfinite(array)) for array in numbers):
        raise bad("it holds numbers that are not finite")
    if not np.all(numbers[2] > 0):
        raise bad("its scales are not all positive")
    unknown = sorted(set(labels.tolist()) - set(run.labels))
    if unknown:
        raise bad(f"classes {', '.join(unknown)} are not the run's")
    return NeighbourIndex(mean=numbers[0], components=numbers[1], scales=numbers[2],
                          vectors=numbers[3],
                          paths=[str(path) for path in paths.tolist()],
                          labels=[str(label) for label in labels.tolist()], k=k,
                          threshold=threshold, quantile=quantile)


def build_index(run: Run, *, data_root: str | Path | None = None, progress=None,
                components: int = COMPONENTS, k: int = K) -> NeighbourIndex:
    """The run's index from its training and validation splits' features (the feature cache,
    computed where missing), as its head saw them (unaugmented view)."""
    from xrcompare.features import FeatureExtractor

    if not run.is_cnn:
        raise ValueError(f"{run.title} has no frozen base: no neighbours")
    if run.is_fine_tuned:  # its cached features are cut activations, not its base's output
        raise ValueError(f"{run.run_id} fine-tuned its last block: a neighbour index is built "
                         "only for frozen-base runs (use the same backbone's frozen run)")
    folder = run.data_folder(data_root=data_root)
    if folder is None:
        raise ValueError(f"the data folder of {run.run_id} ({run.data_name}) is not here")
    files = run.split_files
    train, val = list(files.get("train") or []), list(files.get("val") or [])
    if len(train) < 2 or not val:
        raise ValueError(f"{run.run_id} recorded no training and validation files")
    rows = run.predictions.drop_duplicates("path").set_index("path")
    extractor = FeatureExtractor(run.feature_spec())
    pooled = {}
    for split, names in (("train", train), ("val", val)):
        result = extractor.extract([folder / name for name in names], progress=progress,
                                   label=split)
        if result.failed:
            raise ValueError(f"{len(result.failed)} {split} images of {run.run_id} could not "
                             f"be read, e.g. {result.failed[0][0]}: {result.failed[0][1]}")
        pooled[split] = pooled_features(result.features)
    labels = [str(rows.loc[name, "label"]) if name in rows.index
              else Path(name).parent.name.lower() for name in train]
    return fit_index(pooled["train"], train, labels, pooled["val"], components=components, k=k)


def neighbours_of(run: Run, gray, engine, k: int | None = None) -> dict:
    """``out_of_distribution``, ``distance``, ``threshold``, ``nearest`` (the k nearest
    training images) and ``neighbours_note`` of an image for ``run``: Nones and a note when
    the run has no usable neighbour index."""
    empty = {"out_of_distribution": None, "distance": None, "threshold": None,
             "nearest": None}
    if not run.is_cnn:
        return {**empty, "neighbours_note": "the image-statistics baseline has no feature space"}
    try:
        index = load_index(run)
    except NeighbourIndexError as error:
        return {**empty, "neighbours_note": str(error)}
    if index is None:
        return {**empty, "neighbours_note": f"{run.run_id} has no neighbour index (python -m "
                                            f"xrcompare neighbours {run.run_id} --build)"}
    pooled = engine.pooled(run, gray)
    return {**index.check(pooled), "nearest": index.nearest(pooled, k), "neighbours_note": None}
