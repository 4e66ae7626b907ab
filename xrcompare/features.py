"""Frozen-base feature extraction, once per image, with an on-disk cache.

The cache key is the image's content hash (SHA-256 of its bytes) plus everything that
changes the features: backbone, weights (ImageNet or the seeded random-init control),
input size, resize mode, input scaling (when not the backbone's own), a masked-input control
(when there is one), for augmented views the recipe and view number, when it is not
the Keras float32 reference, the inference engine and its precision
(:mod:`xrcompare.inference_engine`), and for ``--fine-tune last-block`` the cut point: the
base run only up to the input of the backbone's last block
(:attr:`xrcompare.backbones.Backbone.fine_tune_cut`), whose activations the block is then
fine-tuned on. The head then trains on cached features for any number
of epochs, instead of re-running the frozen base every epoch.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from xrcompare.backbones import PREPROCESS_MODES, get_backbone
from xrcompare.imaging import ImageError, apply_mask, decode_gray, read_bytes, to_model_square
from xrcompare.inference_engine import is_engine, make_engine
from xrcompare.paths import CACHE_DIR_VARIABLE, cache_dir  # noqa: F401 - re-exported

#: Bump when the mild augmentation recipe changes, so cached augmented views are not reused.
AUGMENT_VERSION = 1
#: Bump when the blog's rotation recipe changes. 2: the rotation is of the 8-bit square
#: (the engines' input), no longer of its float copy: within a gray level of version 1's,
#: with the same angles (its seeds keep version 1's tag, ``blog1``).
BLOG_AUGMENT_VERSION = 2
#: Bump when the debiasing recipe changes.
DEBIAS_AUGMENT_VERSION = 1
#: The debiasing recipe's ranges: JPEG quality, contrast factor, brightness shift (of 255).
DEBIAS_JPEG_QUALITY = (30, 70)
DEBIAS_CONTRAST = (0.75, 1.25)
DEBIAS_BRIGHTNESS = (-30.0, 30.0)
#: Features are stored as float16 (half the disk); every reader sees the same rounding.
CACHE_DTYPE = np.float16

Progress = Callable[[dict], None]
LOG = logging.getLogger("xrcompare.features")
#: Errors that mean the disk (or the user's quota) is full.
DISK_FULL_ERRORS = (errno.ENOSPC, errno.EDQUOT)


class CacheWriteError(OSError):
    """A feature-cache entry could not be written; the message names the cache folder."""


def cache_root() -> Path:
    """The feature cache's folder (:func:`xrcompare.paths.cache_dir`)."""
    return cache_dir()


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that determines a frozen base's output for an image."""

    backbone: str
    image_size: int
    resize_mode: str = "squash"
    weights: str = "imagenet"
    seed: int = 0  # only for the random-init control
    preprocess: str = "backbone"  # see xrcompare.backbones.Backbone.preprocess
    augment: str = "mild"  # the recipe of augmented views (views ≥ 1 only)
    mask: str = "none"  # a masked-input control (xrcompare.imaging.MASK_MODES)
    engine: str = "keras"  # the base's forward pass (xrcompare.inference_engine); keras = reference
    precision: str = "fp32"
    #: "" : the base's output. Else the first layer of the fine-tuned last block: the base
    #: runs up to that layer's input (the cut point) and its activations are cached.
    cut: str = ""

    def key(self) -> str:
        """The cache folder of this spec. A field at its default adds nothing, so caches made
        before the field existed stay valid. The augmentation recipe is part of each view's
        folder (:meth:`view_folder`), not of the key: original images share one cache."""
        if self.weights == "imagenet":
            weights = "imagenet"
        else:  # seeded initialisers differ between Keras backends and versions
            import keras

            weights = (f"random-seed{self.seed}-{keras.backend.backend()}"
                       f"-keras{keras.__version__}")
        key = f"{self.backbone}-{weights}-{self.image_size}px-{self.resize_mode}"
        if self.preprocess != "backbone":
            key += f"-{self.preprocess}"
        if self.mask != "none":
            key += f"-mask-{self.mask}"
        if (self.engine, self.precision) != ("keras", "fp32"):  # not bit-identical features
            key += f"-{self.engine}-{self.precision}"
        if self.cut:  # activations at the cut point, not the base's output
            key += f"-cut-before-{self.cut}"
        return key

    def view_folder(self, view: int) -> str:
        """The cache sub-folder of a view: ``original``, or the recipe, its version and the
        view number (mild views keep their historical name ``aug1-viewN``)."""
        if view == 0:
            return "original"
        recipe = AUGMENTATIONS[self.augment]
        return f"{recipe.tag}-view{view}"


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


def augment_blog(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The 2020 blog's augmentation: a rotation drawn uniformly within ±15° about the centre,
    the border filled by repeating the edge pixels (Keras ``ImageDataGenerator(
    rotation_range=15, fill_mode="nearest")``). Applied, as the blog did, to the image already
    resized to the model's square input."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-15, 15), 1.0)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def augment_debias(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """nCoV-NET's "debiasing" view (2021): the image re-compressed as JPEG at a random
    quality in 30–70, then a random contrast (×0.75–1.25) and brightness (±30 of 255).

    Its aim is not more anatomy but less source: images from one hospital or one journal
    share a compression and an exposure, and a model can learn those instead of the lungs.
    Randomising them across every class takes that shortcut away. No geometry, no flips.
    """
    low, high = DEBIAS_JPEG_QUALITY
    quality = int(rng.integers(low, high + 1))
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(gray, dtype=np.uint8),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
    recompressed = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE) if ok else None
    if recompressed is None or recompressed.shape != gray.shape:
        raise ImageError("the image could not be re-compressed as JPEG for a debiasing view")
    contrast = rng.uniform(*DEBIAS_CONTRAST)
    brightness = rng.uniform(*DEBIAS_BRIGHTNESS)
    mean = float(recompressed.mean())  # contrast about the image's own mean, then the shift
    shifted = (recompressed.astype(np.float32) - mean) * contrast + mean + brightness
    return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Augmentation:
    """One augmentation recipe for cached views."""

    tag: str  # cache folder prefix, with the recipe's version
    seed_tag: str  # mixed into each view's seed
    function: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    after_resize: bool  # applied to the square model input (True) or the decoded gray image
    description: str


#: The recipes ``--augment`` chooses from (keys: xrcompare.protocol.PROTOCOL_CHOICES).
AUGMENTATIONS: dict[str, Augmentation] = {
    "mild": Augmentation(f"aug{AUGMENT_VERSION}", str(AUGMENT_VERSION), augment_gray, False,
                         "small rotation (±8°), zoom, shift, brightness/contrast; no flips"),
    "blog": Augmentation(f"augblog{BLOG_AUGMENT_VERSION}", "blog1", augment_blog, True,
                         "rotation only, uniform within ±15°, border replicated (the 2020 "
                         "blog's rotation_range=15, fill_mode nearest)"),
    "debias": Augmentation(f"augdebias{DEBIAS_AUGMENT_VERSION}",
                           f"debias{DEBIAS_AUGMENT_VERSION}", augment_debias, False,
                           "debiasing (nCoV-NET): JPEG re-compression at quality 30–70, "
                           "contrast ×0.75–1.25, brightness ±30; no geometry"),
}


def _view_seed(digest: str, view: int, seed_tag: str = str(AUGMENT_VERSION)) -> int:
    return int(hashlib.sha256(f"{digest}:{view}:{seed_tag}".encode()).hexdigest()[:8], 16)


def file_digest(path: str | Path) -> str | None:
    """The content hash an image is cached under (None when the file cannot be read)."""
    try:
        return hashlib.sha256(read_bytes(path)).hexdigest()
    except ImageError:
        return None


@dataclass
class ExtractionResult:
    features: np.ndarray  # (n_ok, h, w, c) float32, rows in the order of ``ok``
    ok: list[int]  # indices into the requested paths that produced features
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0
    #: One sentence per cache fault met (bad entries recomputed, entries not written).
    cache_notes: list[str] = field(default_factory=list)


class FeatureExtractor:
    """Runs one frozen base over images, reading and writing the feature cache.

    The base runs through the engine ``spec`` names
    (:func:`xrcompare.inference_engine.make_engine`); ``base`` is a Keras base already built
    for ``spec`` (used, or converted, instead of building one) or a ready engine. ``runner``
    (:class:`xrcompare.ray_extract.RayExtraction`) computes the images the cache lacks on
    Ray Data workers instead; the cache reads and the result are the same code either way.
    """

    def __init__(self, spec: FeatureSpec, *, batch_size: int = 32, cache_dir: Path | None = None,
                 base=None, workers: int | None = None, runner=None):
        if spec.augment not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, "
                             f"got {spec.augment!r}")
        if spec.preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}, "
                             f"got {spec.preprocess!r}")
        get_backbone(spec.backbone)  # an unknown backbone is refused here
        self.spec = spec
        self.batch_size = max(1, int(batch_size))
        # Threads that decode and resize upcoming batches while the base runs (OpenCV
        # releases the GIL). One is enough on a 2-core CPU; a GPU box wants more.
        self.workers = max(1, int(workers or os.environ.get("XRCOMPARE_DECODE_WORKERS", 1)))
        self.cache_root = cache_dir or cache_root()
        self.cache_dir = self.cache_root / spec.key()
        self._base = base
        self._engine = base if is_engine(base) else None
        #: Computes the pending images elsewhere when set (a
        #: :class:`xrcompare.ray_extract.RayExtraction`: Ray Data workers that write this
        #: cache); None: this process runs the base.
        self.runner = runner

    @property
    def extracted_on(self) -> str:
        """Where this extractor computes features, for ``run.json``: ``"this process"`` or
        the runner's label (``"ray (2 workers local)"``)."""
        return self.runner.label if self.runner is not None else "this process"

    @property
    def engine(self):
        """The base's forward pass (built, or converted, on first use)."""
        if self._engine is None:
            self._engine = make_engine(self.spec, base=self._base)
        return self._engine

    base = engine  # older name

    def _cache_file(self, digest: str, view: int) -> Path:
        return self.cache_dir / self.spec.view_folder(view) / digest[:2] / f"{digest}.npy"

    def is_cached(self, digest: str, view: int = 0) -> bool:
        """Whether the cache holds an entry for the image with content ``digest`` (see
        :func:`file_digest`) and ``view``; nothing is built or read."""
        return self._cache_file(digest, view).is_file()

    def _model_square(self, data: bytes, name: str, digest: str, view: int) -> np.ndarray:
        """The 8-bit gray square the engine is fed for ``view`` of an image
        (:func:`xrcompare.imaging.to_model_square`; the engine preprocesses it)."""
        gray = decode_gray(data, name)
        size, resize_mode, mask = self.spec.image_size, self.spec.resize_mode, self.spec.mask
        if not view:
            return to_model_square(gray, size, resize_mode, mask)
        recipe = AUGMENTATIONS[self.spec.augment]
        rng = np.random.default_rng(_view_seed(digest, view, recipe.seed_tag))
        if not recipe.after_resize:
            return to_model_square(recipe.function(gray, rng), size, resize_mode, mask)
        # The mask stays where it is: applied after a rotation of the square input.
        return apply_mask(recipe.function(to_model_square(gray, size, resize_mode), rng), mask)

    def _prepare_batch(self, jobs: list[tuple[int, bytes, str, str, int]]):
        squares, kept, failed = [], [], []
        for position, data, name, digest, view in jobs:
            try:
                squares.append(self._model_square(data, name, digest, view))
                kept.append((position, digest, view))
            except ImageError as error:
                failed.append((position, str(error)))
        return (np.stack(squares) if squares else None), kept, failed

    def extract(self, paths: Sequence[str | Path], *, views: Sequence[int] = (0,),
                progress: Progress | None = None, label: str = "") -> ExtractionResult:
        """Features for every (path, view) pair, path-major: row = path × len(views) + view."""
        started = time.perf_counter()
        views = list(views)
        total = len(paths) * len(views)
        features: dict[int, np.ndarray] = {}
        failed: dict[int, str] = {}
        pending: list[tuple[int, bytes, str, str, int]] = []
        loaded: dict[int, tuple[int, str, int]] = {}  # position → (path index, digest, view)
        bad_entries: list[str] = []
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
                    entry, problem = self._load_entry(cache_file)
                    if entry is not None:
                        features[position] = entry
                        loaded[position] = (index, digest, view)
                        continue
                    bad_entries.append(f"{cache_file.name} ({problem})")
                    cache_file.unlink(missing_ok=True)  # a bad entry: recompute it
                # a runner's workers read the file themselves: no bytes held here
                pending.append((position, data if self.runner is None else b"",
                                Path(path).name, digest, view))
        # A runner computes elsewhere: the base is not built here to check shapes (the
        # computed rows are compared with the cached ones after, _run_elsewhere).
        computing = bool(pending) and self.runner is None
        for position in self._misshapen(features, loaded, computing):
            index, digest, view = loaded.pop(position)
            entry = features.pop(position)
            cache_file = self._cache_file(digest, view)
            bad_entries.append(f"{cache_file.name} (shape {entry.shape})")
            cache_file.unlink(missing_ok=True)
            try:
                data = read_bytes(paths[index])
                pending.append((position, data if self.runner is None else b"",
                                Path(paths[index]).name, digest, view))
            except ImageError as error:
                failed[position] = str(error)
        pending.sort(key=lambda job: job[0])
        cached = len(features)
        notes: list[str] = []
        if bad_entries:
            notes.append(f"feature cache at {self.cache_dir}: {len(bad_entries)} damaged "
                         f"entr{'y' if len(bad_entries) == 1 else 'ies'} recomputed "
                         f"({'; '.join(bad_entries[:3])})")
            LOG.warning(notes[-1])
        self._report(progress, label, cached + len(failed), total, cached)

        done = cached + len(failed)
        stacked: np.ndarray | None = None
        computed: set[int] = set()  # positions computed into ``stacked``
        if pending and self.runner is not None:
            rows = [(position, str(paths[position // len(views)]), digest, view)
                    for position, _, _, digest, view in pending]
            cached -= self._run_elsewhere(rows, paths, features, failed, loaded, notes,
                                          lambda count: self._report(
                                              progress, label, done + count, total, cached))
        elif pending:
            # Batches as the engine runs best when fed a stream (OpenVINO: a few images per
            # request, so it starts after a few are decoded, not a whole batch).
            size = min(self.batch_size, self.engine.stream_batch or self.batch_size)
            batches = [pending[i:i + size] for i in range(0, len(pending), size)]
            # The result, filled as rows are computed, while the engine runs on (filling it
            # at the end cost about a tenth of a 256-image ResNet50 extraction on 2 cores).
            stacked = np.empty((total, *self.engine.output_shape), dtype=np.float32)
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                writes = []
                queued: deque = deque()  # (kept, images) of the batches given to the engine

                def prepared():
                    # Decode and resize upcoming batches on workers while the base runs.
                    ahead = self.workers
                    futures = deque(pool.submit(self._prepare_batch, b) for b in batches[:ahead])
                    for number in range(len(batches)):
                        batch, kept, batch_failed = futures.popleft().result()
                        if number + ahead < len(batches):
                            futures.append(pool.submit(self._prepare_batch,
                                                       batches[number + ahead]))
                        for position, reason in batch_failed:
                            failed[position] = reason
                        queued.append((kept, len(batches[number])))
                        if batch is None:  # nothing readable in it
                            continue
                        yield batch

                # closed however the loop ends: the engine's lock is not held by a
                # suspended stream after a failure here
                with closing(self.engine.predict_stream(prepared())) as outputs:
                    for output in outputs:
                        while not queued[0][0]:  # before it, batches of unreadable files only
                            done += queued.popleft()[1]
                        kept, images = queued.popleft()
                        # Kept as the cache stores them (float16), so a cold run equals a
                        # warm one; widened to float32 once, in the result.
                        output = output.astype(CACHE_DTYPE, copy=False)
                        positions = [position for position, _, _ in kept]
                        stacked[positions] = output
                        computed.update(positions)
                        writes.append(pool.submit(self._store_batch, kept, output))
                        done += images
                        self._report(progress, label, done, total, cached)
                if queued:  # the last batches held unreadable files only
                    done += sum(images for _, images in queued)
                    self._report(progress, label, done, total, cached)
                write_errors = []
                for write in writes:
                    try:
                        write.result()
                    except CacheWriteError as error:
                        write_errors.append(str(error))
                if write_errors:  # the features are computed: the run goes on without caching
                    notes.append(f"{write_errors[0]}; {len(write_errors)} batch(es) of "
                                 "features were not cached (this run is not affected)")
                    LOG.warning(notes[-1])
        ok = sorted([*features, *computed])
        if stacked is not None:  # computed here: the cached rows join them
            for position in list(features):
                stacked[position] = features.pop(position)
            if len(ok) < total:
                stacked = stacked[ok]
        elif ok:  # one float32 array, filled row by row (no second copy of every row)
            stacked = np.empty((len(ok), *features[ok[0]].shape), dtype=np.float32)
            for row, position in enumerate(ok):
                stacked[row] = features.pop(position)
        else:
            stacked = np.zeros((0,), dtype=np.float32)
        return ExtractionResult(
            features=stacked, ok=ok,
            failed=[(str(paths[i // len(views)]), reason) for i, reason in sorted(failed.items())],
            cached=cached, computed=len(ok) - cached, seconds=time.perf_counter() - started,
            cache_notes=notes)

    def _run_elsewhere(self, rows: list[tuple[int, str, str, int]], paths: Sequence,
                       features: dict[int, np.ndarray], failed: dict[int, str],
                       loaded: dict[int, tuple[int, str, int]], notes: list[str],
                       report: Callable[[int], None]) -> int:
        """Compute ``rows`` (position, path, digest, view) with :attr:`runner` into
        ``features`` / ``failed``; cached entries whose shape is not the computed one are
        removed and computed too. Returns how many cached entries were so replaced."""
        write_errors: list[str] = []
        count = replaced = 0
        while rows:
            shapes = set()
            for batch in self.runner.run(self, rows):
                for position, row in zip(batch.positions, batch.features, strict=True):
                    features[position] = np.asarray(row, dtype=CACHE_DTYPE)
                    shapes.add(features[position].shape)
                for position, reason in batch.failed:
                    failed[position] = reason
                if batch.note:
                    write_errors.append(batch.note)
                count += len(batch.positions) + len(batch.failed)
                report(count)
            rows = []
            for position in [p for p in loaded if shapes and features[p].shape not in shapes]:
                index, digest, view = loaded.pop(position)
                cache_file = self._cache_file(digest, view)
                notes.append(f"feature cache at {self.cache_dir}: entry {cache_file.name} "
                             f"(shape {features.pop(position).shape}) recomputed")
                cache_file.unlink(missing_ok=True)
                rows.append((position, str(paths[index]), digest, view))
            replaced += len(rows)
        if write_errors:
            notes.append(f"{write_errors[0]}; {len(write_errors)} batch(es) of "
                         "features were not cached (this run is not affected)")
            LOG.warning(notes[-1])
        return replaced

    def _load_entry(self, cache_file: Path) -> tuple[np.ndarray | None, str | None]:
        """A cache entry (float16, read into memory), or (None, why) when it is unreadable or
        not a float16 feature map. Memory-mapped first, so a huge bogus file is never read
        whole."""
        try:
            entry = np.load(cache_file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            return None, f"unreadable: {str(error).splitlines()[0][:60] if str(error) else ''}"
        if entry.dtype != CACHE_DTYPE or entry.ndim != 3:
            return None, f"{entry.dtype} {tuple(entry.shape)}, expected a float16 feature map"
        return np.array(entry, dtype=CACHE_DTYPE), None

    def _misshapen(self, features: dict[int, np.ndarray], loaded: dict, computing: bool
                   ) -> list[int]:
        """Positions of loaded entries whose shape is not the base's output shape.

        The base's shape is asked for when the base runs anyway (``computing``) or when the
        entries disagree; entries that all agree are trusted without building the base.
        """
        shapes = Counter(features[position].shape for position in loaded)
        if not shapes or (len(shapes) == 1 and not computing and self._base is None):
            return []
        expected = tuple(self.engine.output_shape)
        return [position for position in loaded if features[position].shape != expected]

    def _store_batch(self, kept: list[tuple[int, str, int]], output: np.ndarray) -> None:
        for (_, digest, view), row in zip(kept, output, strict=True):
            self._store(self._cache_file(digest, view), row)

    def _store(self, cache_file: Path, row: np.ndarray) -> None:
        """Write one entry atomically (temporary file, then rename); on failure the
        temporary is removed and :class:`CacheWriteError` names the cache folder."""
        temporary = cache_file.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp.npy")
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            np.save(temporary, np.asarray(row, dtype=CACHE_DTYPE))
            os.replace(temporary, cache_file)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            if error.errno in DISK_FULL_ERRORS:
                raise CacheWriteError(f"disk full at {self.cache_root}") from None
            raise CacheWriteError(f"cannot write the feature cache at {self.cache_root} "
                                  f"({error.strerror or error})") from None

    def _report(self, progress: Progress | None, label: str, done: int, total: int,
                cached: int) -> None:
        if progress is not None:
            progress({"phase": "extract", "backbone": self.spec.backbone, "what": label,
                      "done": done, "total": total, "cached": cached})
