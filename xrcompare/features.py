"""Frozen-base feature extraction, once per image, with an on-disk cache.

The cache key is the image's content hash (SHA-256 of its bytes) plus everything that
changes the features: backbone, weights (ImageNet or the seeded random-init control),
input size, resize mode, augmentation view and, when it is not the Keras float32 reference,
the inference engine and its precision (:mod:`xrcompare.inference_engine`). The head then trains on
cached features for any number of epochs, instead of re-running the frozen base every epoch.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from xrcompare.backbones import get_backbone
from xrcompare.imaging import ImageError, decode_gray, read_bytes, to_model_input
from xrcompare.inference_engine import is_engine, make_engine

CACHE_DIR_VARIABLE = "XRCOMPARE_CACHE_DIR"
#: Bump when the augmentation recipe changes, so cached augmented views are not reused.
AUGMENT_VERSION = 1
#: Features are stored as float16 (half the disk); every reader sees the same rounding.
CACHE_DTYPE = np.float16

Progress = Callable[[dict], None]


def cache_root() -> Path:
    value = os.environ.get(CACHE_DIR_VARIABLE, "").strip()
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xrcompare" / "features"


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that determines a frozen base's output for an image."""

    backbone: str
    image_size: int
    resize_mode: str = "squash"
    weights: str = "imagenet"
    seed: int = 0  # only for the random-init control
    engine: str = "keras"  # the base's forward pass (xrcompare.inference_engine); keras = reference
    precision: str = "fp32"

    def key(self) -> str:
        if self.weights == "imagenet":
            weights = "imagenet"
        else:  # seeded initialisers differ between Keras backends and versions
            import keras

            weights = (f"random-seed{self.seed}-{keras.backend.backend()}"
                       f"-keras{keras.__version__}")
        key = f"{self.backbone}-{weights}-{self.image_size}px-{self.resize_mode}"
        if (self.engine, self.precision) != ("keras", "fp32"):  # not bit-identical features
            key += f"-{self.engine}-{self.precision}"
        return key


def augment_gray(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mild, anatomy-preserving view: small rotation, zoom, shift, brightness/contrast.

    No flips: a mirrored chest puts the heart on the wrong side.
    """
    height, width = gray.shape
    angle = rng.uniform(-8, 8)
    scale = rng.uniform(0.92, 1.08)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    matrix[:, 2] += (rng.uniform(-0.05, 0.05) * width, rng.uniform(-0.05, 0.05) * height)
    moved = cv2.warpAffine(gray, matrix, (width, height), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    contrast, brightness = rng.uniform(0.9, 1.1), rng.uniform(-12, 12)
    return np.clip(moved.astype(np.float32) * contrast + brightness, 0, 255).astype(np.uint8)


def _view_seed(digest: str, view: int) -> int:
    return int(hashlib.sha256(f"{digest}:{view}:{AUGMENT_VERSION}".encode()).hexdigest()[:8], 16)


@dataclass
class ExtractionResult:
    features: np.ndarray  # (n_ok, h, w, c) float32, rows in the order of ``ok``
    ok: list[int]  # indices into the requested paths that produced features
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0


class FeatureExtractor:
    """Runs one frozen base over images, reading and writing the feature cache.

    The base runs through the engine ``spec`` names (:func:`xrcompare.inference_engine.make_engine`);
    ``base`` is a Keras base already built for ``spec`` (used, or converted, instead of
    building one) or a ready engine.
    """

    def __init__(self, spec: FeatureSpec, *, batch_size: int = 32, cache_dir: Path | None = None,
                 base=None, workers: int | None = None):
        self.spec = spec
        self.backbone = get_backbone(spec.backbone)
        self.batch_size = max(1, int(batch_size))
        # Threads that decode and preprocess upcoming batches while the base runs (OpenCV
        # releases the GIL). One is enough on a 2-core CPU; a GPU box wants more.
        self.workers = max(1, int(workers or os.environ.get("XRCOMPARE_DECODE_WORKERS", 1)))
        self.cache_dir = (cache_dir or cache_root()) / spec.key()
        self._base = base
        self._engine = base if is_engine(base) else None

    @property
    def engine(self):
        """The base's forward pass (built, or converted, on first use)."""
        if self._engine is None:
            self._engine = make_engine(self.spec, base=self._base)
        return self._engine

    base = engine  # older name

    def _cache_file(self, digest: str, view: int) -> Path:
        folder = "original" if view == 0 else f"aug{AUGMENT_VERSION}-view{view}"
        return self.cache_dir / folder / digest[:2] / f"{digest}.npy"

    def _model_input(self, data: bytes, name: str, digest: str, view: int) -> np.ndarray:
        gray = decode_gray(data, name)
        if view:
            gray = augment_gray(gray, np.random.default_rng(_view_seed(digest, view)))
        return to_model_input(gray, self.spec.image_size, self.spec.resize_mode)

    def _prepare_batch(self, jobs: list[tuple[int, bytes, str, str, int]]):
        inputs, kept, failed = [], [], []
        for position, data, name, digest, view in jobs:
            try:
                inputs.append(self._model_input(data, name, digest, view))
                kept.append((position, digest, view))
            except ImageError as error:
                failed.append((position, str(error)))
        batch = self.backbone.preprocess(np.stack(inputs)) if inputs else None
        return batch, kept, failed

    def extract(self, paths: Sequence[str | Path], *, views: Sequence[int] = (0,),
                progress: Progress | None = None, label: str = "") -> ExtractionResult:
        """Features for every (path, view) pair, path-major: row = path × len(views) + view."""
        started = time.perf_counter()
        views = list(views)
        total = len(paths) * len(views)
        features: dict[int, np.ndarray] = {}
        failed: dict[int, str] = {}
        pending: list[tuple[int, bytes, str, str, int]] = []
        cached = 0
        for index, path in enumerate(paths):
            try:
                data = read_bytes(path)
            except ImageError as error:
                for offset in range(len(views)):
                    failed[index * len(views) + offset] = str(error)
                continue
            digest = hashlib.sha256(data).hexdigest()
            for offset, view in enumerate(views):
                position = index * len(views) + offset
                cache_file = self._cache_file(digest, view)
                if cache_file.is_file():
                    try:
                        features[position] = np.load(cache_file).astype(np.float32)
                        cached += 1
                        continue
                    except (OSError, ValueError):
                        cache_file.unlink(missing_ok=True)  # corrupt cache entry: recompute
                pending.append((position, data, Path(path).name, digest, view))
        self._report(progress, label, cached + len(failed), total, cached)

        batches = [pending[i:i + self.batch_size] for i in range(0, len(pending), self.batch_size)]
        done = cached + len(failed)
        if batches:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                # Decode and preprocess upcoming batches on workers while the base runs.
                ahead, writes = self.workers, []
                futures = [pool.submit(self._prepare_batch, b) for b in batches[:ahead]]
                for number in range(len(batches)):
                    batch, kept, batch_failed = futures[number].result()
                    futures[number] = None  # free the batch once used
                    if number + ahead < len(batches):
                        futures.append(pool.submit(self._prepare_batch, batches[number + ahead]))
                    for position, reason in batch_failed:
                        failed[position] = reason
                    if batch is not None:
                        output = self.engine.predict(batch)
                        # Round as the cache stores them, so a cold run equals a warm one.
                        output = output.astype(CACHE_DTYPE).astype(np.float32)
                        for (position, _, _), row in zip(kept, output, strict=True):
                            features[position] = row
                        writes.append(pool.submit(self._store_batch, kept, output))
                    done += len(batches[number])
                    self._report(progress, label, done, total, cached)
                for write in writes:
                    write.result()  # surface cache-write errors
        ok = sorted(features)
        stacked = (np.stack([features[i] for i in ok]) if ok
                   else np.zeros((0,), dtype=np.float32))
        return ExtractionResult(
            features=stacked, ok=ok,
            failed=[(str(paths[i // len(views)]), reason) for i, reason in sorted(failed.items())],
            cached=cached, computed=len(ok) - cached, seconds=time.perf_counter() - started)

    def _store_batch(self, kept: list[tuple[int, str, int]], output: np.ndarray) -> None:
        for (_, digest, view), row in zip(kept, output, strict=True):
            self._store(self._cache_file(digest, view), row)

    @staticmethod
    def _store(cache_file: Path, row: np.ndarray) -> None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp.npy")
        np.save(temporary, row.astype(CACHE_DTYPE))
        os.replace(temporary, cache_file)

    def _report(self, progress: Progress | None, label: str, done: int, total: int,
                cached: int) -> None:
        if progress is not None:
            progress({"phase": "extract", "backbone": self.spec.backbone, "what": label,
                      "done": done, "total": total, "cached": cached})
