"""The frozen base's forward pass, through an inference engine where one is faster.

The frozen base only ever runs inference, and on a CPU that is where training, evaluation and
prediction spend their time. Two engines compute the same base:

``keras``
    The Keras model's ``predict_on_batch`` in float32: the reference, and the fallback
    whenever no other engine can run (any Keras backend, any device).
``openvino``
    The same base converted once to OpenVINO's model format (cached on disk, never in the
    repository) and run by OpenVINO's CPU plugin, in bfloat16 where the CPU has bfloat16
    instructions (AVX-512 BF16 / AMX), else float32. It is chosen by measurement on the
    development machine (``benchmarks/extract_throughput.py``): bfloat16 OpenVINO runs these
    CNNs about 2–3 times as fast as TensorFlow float32 on the same cores, and its pooled
    features keep a cosine of at least 0.999 with the reference (``tests/test_engine.py``).

Which engine runs: ``XRCOMPARE_ENGINE`` (``auto``, ``openvino`` or ``keras``; default
``auto``), or ``--engine`` for training. ``auto`` is OpenVINO when it is installed and the
Keras backend is TensorFlow on a CPU (conversion reads the TensorFlow graph; a GPU is faster
through Keras itself), else Keras. ``XRCOMPARE_ENGINE_PRECISION`` (``auto``, ``bf16``,
``fp32``) forces OpenVINO's precision and ``XRCOMPARE_ENGINE_HINT`` (``throughput``,
``latency``) its scheduling (see :class:`OpenVINOEngine`).

Features from an engine other than the Keras float32 reference are not bit-identical, so the
engine and precision are part of the feature-cache key (:class:`xrcompare.features.FeatureSpec`)
and of every run's ``run.json``. Gradients (Grad-CAM and the other saliency maps) always go
through Keras.

Only registry bases are ever run here (ImageNet or a seeded random-init control), whole or cut
at the input of the backbone's last block (``FeatureSpec.cut``, for ``--fine-tune
last-block``: a cut base is converted under its own key, ``...-cut-before-<layer>``). A
fine-tuned run's own base (the registry's with its fine-tuned block) is never converted: its
training and evaluation run the unchanged registry part up to the cut here, then the block and
head in Keras (:func:`xrcompare.runs.build_feature_model_for_run`), and the Predict page runs
its whole base in Keras (:mod:`xrcompare.engine`). So no converted model can be confused with
a fine-tuned one.

Nothing here imports OpenVINO or TensorFlow until an engine is made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

ENGINE_VARIABLE = "XRCOMPARE_ENGINE"
PRECISION_VARIABLE = "XRCOMPARE_ENGINE_PRECISION"
HINT_VARIABLE = "XRCOMPARE_ENGINE_HINT"
ENGINE_CHOICES = ("auto", "openvino", "keras")
PRECISION_CHOICES = ("auto", "bf16", "fp32")
#: The reference every other engine is compared with; its features keep today's cache key.
REFERENCE = ("keras", "fp32")
DISPLAY_NAMES = {"keras": "Keras", "openvino": "OpenVINO"}
#: Folder under the feature-cache root that holds converted models.
CONVERTED_FOLDER = "converted"
#: How a batch is shared between OpenVINO's parallel streams (images per request).
OPENVINO_CHUNK = 8
HINTS = ("throughput", "latency")
#: OpenVINO's scheduling for extraction; benchmarks/extract_throughput.py times the other too.
DEFAULT_HINT = "throughput"


class EngineUnavailable(ValueError):
    """An engine that was asked for cannot run here, with a one-line reason."""


def engine_label(engine: str, precision: str) -> str:
    """``"Keras fp32"``, ``"OpenVINO bf16"``: how the engine is named to people."""
    return f"{DISPLAY_NAMES.get(engine, engine)} {precision}"


def requested_engine(requested: str | None = None) -> str:
    """The engine choice: ``requested``, else ``$XRCOMPARE_ENGINE``, else ``auto``."""
    value = requested if requested is not None else os.environ.get(ENGINE_VARIABLE, "")
    value = str(value).strip().lower() or "auto"
    if value not in ENGINE_CHOICES:
        source = "engine" if requested is not None else ENGINE_VARIABLE
        raise EngineUnavailable(f"{source} must be one of {', '.join(ENGINE_CHOICES)}, "
                                f"got {value!r}")
    return value


def openvino_problem() -> str | None:
    """Why OpenVINO cannot run the bases here (one sentence), or None when it can."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install openvino)"
    try:
        import openvino  # noqa: F401
    except Exception as error:  # a broken installation: say so, run on Keras
        return f"OpenVINO cannot be imported ({type(error).__name__}: {str(error)[:120]})"
    import keras

    if keras.backend.backend() != "tensorflow":
        return (f"converting a base to OpenVINO needs the TensorFlow Keras backend, "
                f"not {keras.backend.backend()}")
    return None


def _has_gpu() -> bool:
    try:
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    except Exception:  # a broken driver: treat as no GPU
        return False


def openvino_precision(requested: str | None = None) -> str:
    """``bf16`` where OpenVINO's CPU plugin runs bfloat16 natively, else ``fp32``
    (or what ``requested`` / ``$XRCOMPARE_ENGINE_PRECISION`` forces)."""
    value = requested if requested is not None else os.environ.get(PRECISION_VARIABLE, "")
    value = str(value).strip().lower() or "auto"
    if value not in PRECISION_CHOICES:
        raise EngineUnavailable(f"{PRECISION_VARIABLE} must be one of "
                                f"{', '.join(PRECISION_CHOICES)}, got {value!r}")
    if value != "auto":
        return value
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in capabilities else "fp32"


def choose(requested: str | None = None) -> tuple[str, str]:
    """(engine, precision) that extraction uses here for the choice ``requested``.

    ``auto`` falls back to the Keras reference quietly; an explicit ``openvino`` that cannot
    run raises :class:`EngineUnavailable` with the reason.
    """
    choice = requested_engine(requested)
    if choice == "keras":
        return REFERENCE
    problem = openvino_problem()
    if problem is None and choice == "auto" and _has_gpu():
        problem = "a GPU is faster through Keras"
    if problem is not None:
        if choice == "openvino":
            raise EngineUnavailable(f"the OpenVINO engine cannot run here: {problem}")
        return REFERENCE
    return "openvino", openvino_precision()


def with_engine(spec, requested: str | None = None):
    """``spec`` (a :class:`xrcompare.features.FeatureSpec`) for the engine chosen here."""
    engine, precision = choose(requested)
    return dataclasses.replace(spec, engine=engine, precision=precision)


def describe_difference(trained: str, used: str, doing: str = "evaluated") -> str | None:
    """``"trained with Keras fp32, evaluated with OpenVINO bf16"`` when the labels differ."""
    if trained == used:
        return None
    return f"trained with {trained}, {doing} with {used}"


# --------------------------------------------------------------------------- engines


class Engine(Protocol):
    """The frozen base's forward pass: 8-bit gray squares (N, S, S)
    (:func:`xrcompare.imaging.to_model_square`) → the base's output (N, h, w, c).

    Each engine turns the squares into its model input itself (the gray value in the three
    channels, then the backbone's preprocessing, :meth:`xrcompare.backbones.Backbone.
    model_inputs`): Keras in NumPy, OpenVINO in its own graph, where it costs next to
    nothing (:meth:`xrcompare.backbones.Backbone.gray_affine`). Keras gives float32,
    OpenVINO float16, as the feature cache stores features (converted in its graph).
    """

    name: str
    precision: str

    @property
    def label(self) -> str: ...

    @property
    def output_shape(self) -> tuple[int, ...]: ...

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    def predict_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]: ...

    def info(self) -> dict: ...


class KerasEngine:
    """The Keras base itself: the reference (float32) and the fallback."""

    name = "keras"

    def __init__(self, base, to_inputs: Callable[[np.ndarray], np.ndarray]):
        import keras

        self.base = base
        #: 8-bit gray squares → the base's input batch (Backbone.model_inputs).
        self.to_inputs = to_inputs
        policy = keras.config.dtype_policy().name
        self.precision = {"float32": "fp32", "mixed_bfloat16": "mixed-bf16",
                          "mixed_float16": "mixed-fp16"}.get(policy, policy)

    @property
    def label(self) -> str:
        return engine_label(self.name, self.precision)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """One image's base output shape, e.g. (7, 7, 2048)."""
        return tuple(int(size) for size in self.base.output.shape[1:])

    #: Images per batch this engine runs best with when fed a stream (None: any).
    stream_batch = None

    def predict(self, squares: np.ndarray) -> np.ndarray:
        return np.asarray(self.base.predict_on_batch(self.to_inputs(squares)),
                          dtype=np.float32)

    def predict_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Each batch of squares' output in order (one :meth:`predict` each)."""
        for batch in batches:
            yield self.predict(batch)

    def info(self) -> dict:
        import keras

        return {"engine": self.name, "precision": self.precision, "label": self.label,
                "engine_version": f"keras {keras.__version__}"}


class OpenVINOEngine:
    """A converted base compiled by OpenVINO's CPU plugin.

    ``hint="throughput"`` (extraction) runs one stream per core group, two inference requests
    each, and shares batches between them in chunks of :data:`OPENVINO_CHUNK` images;
    ``hint="latency"`` (one image at a time) runs one stream on all cores. Calls are
    serialised by a lock, so one engine can be shared between threads. OpenVINO releases the
    GIL while it computes, so decoding threads overlap with it.

    The compiled model takes 8-bit RGB and computes the backbone's preprocessing
    (``gray_affine``: per-channel scale and offset, exact for gray inputs) in its input
    stage, and gives float16: on the 2-core CPU, ResNet50's bare forward ran as fast as on
    preprocessed float32 batches, with bit-identical features, while the extraction no
    longer spends about 0.7 ms of a core per image converting, preprocessing and rounding
    in NumPy.
    """

    name = "openvino"

    def __init__(self, xml: Path, precision: str, *,
                 gray_affine: tuple[np.ndarray, np.ndarray], hint: str = DEFAULT_HINT,
                 conversion_seconds: float | None = None, converted_now: bool = False):
        import openvino as ov

        if hint not in HINTS:
            raise ValueError(f"hint must be one of {', '.join(HINTS)}, got {hint!r}")
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"OpenVINO precision must be bf16 or fp32, got {precision!r}")
        self.precision = precision
        self.hint = hint
        self.xml = Path(xml)
        self.conversion_seconds = conversion_seconds
        self.converted_now = converted_now
        started = time.perf_counter()
        core = ov.Core()
        # Unpinned threads move off a core that another process is using: on the shared
        # 2-core development machine that measured 10-20% faster under load.
        tuning = {"ENABLE_CPU_PINNING": False}
        if hint == "latency":  # one stream on all cores: balance its work dynamically
            tuning["TBB_PARTITIONER"] = "AUTO"
        supported = set(core.get_property("CPU", "SUPPORTED_PROPERTIES"))
        config = {"PERFORMANCE_HINT": hint.upper(),
                  "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  **{key: value for key, value in tuning.items() if key in supported}}
        threads = os.environ.get("XRCOMPARE_ENGINE_THREADS", "").strip()
        if threads.isdigit() and int(threads) > 0:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.gray_affine = tuple(np.asarray(part, dtype=np.float32).reshape(3)
                                 for part in gray_affine)
        self._compiled = core.compile_model(self._with_input_stage(core.read_model(self.xml)),
                                            "CPU", config)
        self.streams = max(1, int(self._compiled.get_property("NUM_STREAMS")))
        # Two requests per stream when there are several: a stream finds the next chunk
        # queued when it finishes one, while this side collects outputs and feeds it.
        self._requests = [self._compiled.create_infer_request()
                          for _ in range(2 * self.streams if self.streams > 1 else 1)]
        self._lock = threading.Lock()
        self.compile_seconds = time.perf_counter() - started
        self.version = ov.__version__.split("-")[0]

    def _with_input_stage(self, model):
        """``model`` taking 8-bit RGB (N, S, S, 3), preprocessed in its graph, and giving
        float16 (OpenVINO's pre/post-processing, folded into its first and last steps)."""
        import openvino as ov

        scale, offset = self.gray_affine
        if np.any(scale == 0):
            raise ValueError("a preprocessing scale of 0 would erase the image")
        steps = ov.preprocess.PrePostProcessor(model)
        steps.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        steps.input().model().set_layout(ov.Layout("NHWC"))
        # OpenVINO computes (x - mean) / scale: the same line as x * scale + offset
        steps.input().preprocess().convert_element_type(ov.Type.f32) \
            .mean([float(value) for value in -offset / scale]) \
            .scale([float(value) for value in 1.0 / scale])
        steps.output(0).tensor().set_element_type(ov.Type.f16)
        return steps.build()

    @property
    def label(self) -> str:
        return engine_label(self.name, self.precision)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """One image's base output shape, e.g. (7, 7, 2048) (the batch size is dynamic)."""
        shape = self._compiled.output(0).get_partial_shape()
        return tuple(int(dimension.get_length()) for dimension in list(shape)[1:])

    @property
    def stream_batch(self) -> int | None:
        """Images per batch this engine runs best with when fed a stream: one chunk per
        request with parallel streams (the first starts as soon as its few images are
        ready), any with one stream."""
        return OPENVINO_CHUNK if self.streams > 1 else None

    def predict(self, squares: np.ndarray) -> np.ndarray:
        [output] = self.predict_stream([squares])
        return output

    def predict_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Each batch of 8-bit gray squares' output (float16), in order, with the requests
        kept busy across batches.

        Chunks go to the requests in turn (a request's next chunk waits for its last one,
        the oldest running); a batch's output is given once all its chunks are collected, so
        the streams stay busy while the caller works on it and prepares the next batch, and
        none idles at a batch's end waiting for the others, as when each batch is waited for
        whole. A failed inference raises from its request's wait.
        """
        from xrcompare.imaging import gray_to_rgb

        with self._lock:
            idle = list(reversed(self._requests))
            running: deque = deque()  # (request, batch number), oldest first
            outputs: dict[int, list[np.ndarray]] = {}
            chunks: dict[int, int] = {}

            def finish_oldest() -> None:
                request, number = running.popleft()
                request.wait()
                outputs[number].append(np.array(request.get_output_tensor(0).data))
                idle.append(request)

            def finished(number: int) -> np.ndarray:
                while len(outputs[number]) < chunks[number]:
                    finish_oldest()
                del chunks[number]
                parts = outputs.pop(number)
                return parts[0] if len(parts) == 1 else np.concatenate(parts)

            given = 0
            try:
                for number, squares in enumerate(batches):
                    squares = np.asarray(squares)
                    if squares.ndim != 3 or len(squares) == 0 or squares.dtype != np.uint8:
                        raise ValueError("expected a non-empty batch of 8-bit gray squares "
                                         f"(n, h, w), got {squares.dtype} {squares.shape}")
                    batch = gray_to_rgb(squares, np.uint8)  # the model's RGB
                    chunk = self.stream_batch or len(batch)
                    starts = range(0, len(batch), chunk)
                    outputs[number], chunks[number] = [], len(starts)
                    for start in starts:
                        if not idle:
                            finish_oldest()
                        request = idle.pop()
                        request.start_async({0: batch[start:start + chunk]})
                        running.append((request, number))
                    while len(outputs.get(given, ())) == chunks.get(given):  # collected
                        yield finished(given)
                        given += 1
                while chunks:
                    yield finished(given)
                    given += 1
            finally:  # stopped early or failed: nothing left running on the requests
                for request, _ in running:
                    try:
                        request.wait()
                    except Exception:  # noqa: BLE001, S110 - already failing or abandoned
                        pass

    def info(self) -> dict:
        return {"engine": self.name, "precision": self.precision, "label": self.label,
                "engine_version": f"openvino {self.version}", "hint": self.hint,
                "streams": self.streams,
                "conversion_s": (None if self.conversion_seconds is None
                                 else round(self.conversion_seconds, 2)),
                "converted_model": "converted now" if self.converted_now else "from the cache",
                "compile_s": round(self.compile_seconds, 2)}


def is_engine(value) -> bool:
    """Whether ``value`` is an engine made here (rather than, say, a Keras model)."""
    return isinstance(value, (KerasEngine, OpenVINOEngine))


def make_engine(spec, *, base=None, hint: str | None = None,
                output_layer: str | None = None) -> Engine:
    """The engine ``spec`` names (``spec.engine``, ``spec.precision``) for its frozen base.

    ``base``: a Keras base already built for ``spec`` (used, or converted, instead of
    building another). ``hint``: OpenVINO's ``throughput`` (batches; the default, or
    ``$XRCOMPARE_ENGINE_HINT``) or ``latency`` (one image at a time). ``output_layer``: a
    layer of the base whose output the engine gives instead of the base's (the Predict page's
    trunk, e.g. VGG16's ``block5_conv3`` before its last pool); OpenVINO only.

    Raises :class:`xrcompare.backbones.WeightsUnavailable` when ImageNet weights are missing
    and :class:`EngineUnavailable` when the engine cannot run here.
    """
    engine = getattr(spec, "engine", "keras")
    if engine == "keras":
        if output_layer is not None:
            raise ValueError("the Keras engine runs the whole base: cut it before making one")
        if base is None:
            from xrcompare.backbones import build_base

            base = build_base(spec.backbone, spec.image_size, spec.weights, seed=spec.seed)
        return KerasEngine(spec_model(spec, base), model_inputs(spec))
    if engine != "openvino":
        raise EngineUnavailable(f"unknown engine {engine!r}; choose from "
                                f"{', '.join(ENGINE_CHOICES[1:])}")
    problem = openvino_problem()
    if problem is not None:
        raise EngineUnavailable(f"the OpenVINO engine cannot run here: {problem}")
    hint = (hint or os.environ.get(HINT_VARIABLE, "").strip().lower() or DEFAULT_HINT)
    if hint not in HINTS:
        raise EngineUnavailable(f"{HINT_VARIABLE} must be one of {', '.join(HINTS)}, "
                                f"got {hint!r}")
    xml, seconds, converted_now = converted_model(spec, base=base, output_layer=output_layer)
    return OpenVINOEngine(xml, spec.precision, gray_affine=gray_affine(spec), hint=hint,
                          conversion_seconds=seconds, converted_now=converted_now)


def model_inputs(spec) -> Callable[[np.ndarray], np.ndarray]:
    """``spec``'s 8-bit gray squares → its base's input batch, in NumPy (the Keras engine;
    :meth:`xrcompare.backbones.Backbone.model_inputs`)."""
    from xrcompare.backbones import get_backbone

    backbone, mode = get_backbone(spec.backbone), getattr(spec, "preprocess", "backbone")
    return lambda squares: backbone.model_inputs(squares, mode)


def gray_affine(spec) -> tuple[np.ndarray, np.ndarray]:
    """``spec``'s preprocessing as the per-channel (scale, offset) an engine computes in its
    graph (:meth:`xrcompare.backbones.Backbone.gray_affine`)."""
    from xrcompare.backbones import get_backbone

    return get_backbone(spec.backbone).gray_affine(getattr(spec, "preprocess", "backbone"))


def spec_model(spec, base):
    """What ``spec`` runs of a registry ``base``: the base itself, or, with ``spec.cut``, the
    base up to the input of that layer (:func:`xrcompare.backbones.cut_model`)."""
    if not getattr(spec, "cut", ""):
        return base
    from xrcompare.backbones import cut_model

    return cut_model(base, spec.cut)


# --------------------------------------------------------------------------- conversion cache


def converted_root() -> Path:
    from xrcompare.features import cache_root

    return cache_root() / CONVERTED_FOLDER


_FILE_HASHES: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) for this process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def _weights_file(backbone: str) -> Path | None:
    """The ImageNet weights file :func:`xrcompare.backbones.build_base` would load, if known
    without building anything."""
    from xrcompare.backbones import keras_cache_file, local_weights_file, weights_status

    source = weights_status(backbone).source
    candidates = {"file": local_weights_file(backbone),
                  "keras-cache": keras_cache_file(backbone)}
    path = candidates.get(source)
    return path if path is not None and path.is_file() else None


def _weights_digest_of_model(base) -> str:
    digest = hashlib.sha256()
    for weight in base.weights:
        digest.update(np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight)
                      .tobytes())
    return digest.hexdigest()


def keras_version() -> str:
    """Keras's version, without importing Keras when it is not loaded yet (with TensorFlow,
    about 4 s on the 2-core CPU): what a converted model's key records."""
    module = sys.modules.get("keras")
    if module is not None and getattr(module, "__version__", None):
        return module.__version__
    from importlib.metadata import version

    return version("keras")


def model_key(spec, base=None, output_layer: str | None = None) -> tuple[str, object]:
    """The converted model's cache key and the Keras base (built here if it had to be).

    Keyed by what fixes the graph and its weights: backbone, input size, the weights (a hash
    of the ImageNet file, or the random-init seed with its Keras backend and version), and
    the Keras and OpenVINO versions, the cut point when the base is cut before its last
    block (``spec.cut``), and the layer whose output it gives (``output_layer``) when
    not the base's. Resize mode and precision do not change the converted model
    (precision is chosen when it is compiled), so one conversion serves them all. For
    ImageNet weights found on disk nothing imports Keras.
    """
    import openvino as ov

    if spec.weights == "imagenet":
        weights_file = _weights_file(spec.backbone)
        if weights_file is None:  # e.g. Keras's first download: build (and download) it
            if base is None:
                from xrcompare.backbones import build_base

                base = build_base(spec.backbone, spec.image_size, spec.weights, seed=spec.seed)
            weights_file = _weights_file(spec.backbone)
        weights = ("w" + file_digest(weights_file)[:16] if weights_file is not None
                   else "m" + _weights_digest_of_model(base)[:16])
    else:
        import keras

        weights = f"random-seed{spec.seed}-{keras.backend.backend()}"
    version = ov.__version__.split("-")[0]
    key = (f"{spec.backbone}-{spec.image_size}px-{weights}-keras{keras_version()}"
           f"-openvino{version}")
    if getattr(spec, "cut", ""):  # the registry base cut before its last block
        key += f"-cut-before-{spec.cut}"
    if output_layer is not None:
        if not output_layer.replace("_", "").isalnum():
            raise ValueError("a layer name has letters, digits and underscores, got "
                             f"{output_layer!r}")
        key += f"-to-{output_layer}"
    return key, base


def ready_converted_model(spec, output_layer: str | None = None) -> Path | None:
    """The converted model of ``spec``'s ImageNet base (up to ``output_layer``) when one is
    already on disk, else None; never converts, builds or imports Keras. What the Predict
    page's first results run on while Keras loads (:meth:`xrcompare.engine.Engine.
    early_trunk`)."""
    import importlib.util

    if spec.weights != "imagenet" or getattr(spec, "cut", "") \
            or importlib.util.find_spec("openvino") is None \
            or _weights_file(spec.backbone) is None:
        return None
    key, _ = model_key(spec, None, output_layer)
    folder = converted_root() / key
    return folder / "model.xml" if _complete(folder) else None


def converted_model(spec, *, base=None, output_layer: str | None = None
                    ) -> tuple[Path, float | None, bool]:
    """The OpenVINO model of ``spec``'s base (up to ``output_layer``'s output, when given):
    (xml path, conversion seconds, converted now).

    Converted once per key (see :func:`model_key`) under ``<feature cache>/converted/``; two
    processes converting at once take turns on a lock file, and each writes into a temporary
    folder that is renamed when complete, so a reader never sees half a model.
    """
    key, base = model_key(spec, base, output_layer)
    root = converted_root()
    folder = root / key
    xml = folder / "model.xml"
    if _complete(folder):
        return xml, _recorded_seconds(folder), False
    root.mkdir(parents=True, exist_ok=True)
    with _FileLock(root / f".{key}.lock"):
        if _complete(folder):  # another process converted it while we waited
            return xml, _recorded_seconds(folder), False
        if base is None:
            from xrcompare.backbones import build_base

            base = build_base(spec.backbone, spec.image_size, spec.weights, seed=spec.seed)
        started = time.perf_counter()
        temporary = root / f".tmp-{key}-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
        try:
            import openvino as ov

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Keras's "structure of inputs" notice
                model = ov.convert_model(_up_to(spec_model(spec, base), output_layer))
            ov.save_model(model, temporary / "model.xml", compress_to_fp16=False)
            seconds = time.perf_counter() - started
            (temporary / "conversion.json").write_text(json.dumps({
                "key": key, "backbone": spec.backbone, "image_size": spec.image_size,
                "weights": spec.weights, "cut_before": getattr(spec, "cut", "") or None,
                "output_layer": output_layer, "seconds": round(seconds, 2),
                "converted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete leftover
            os.replace(temporary, folder)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    return xml, seconds, True


def _up_to(base, output_layer: str | None):
    """``base`` from its input to ``output_layer``'s output (the base itself without one)."""
    if output_layer is None:
        return base
    import keras

    output = base.get_layer(output_layer).output
    return base if output is base.output else keras.Model(base.input, output)


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("model.xml", "model.bin",
                                                      "conversion.json"))


def _recorded_seconds(folder: Path) -> float | None:
    try:
        value = json.loads((folder / "conversion.json").read_text()).get("seconds")
        return float(value) if isinstance(value, (int, float)) else None
    except (OSError, ValueError):
        return None


class _FileLock:
    """An exclusive advisory lock on a file (``fcntl``; a no-op where there is none)."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    def __enter__(self):
        self._handle = open(self.path, "a+b")  # noqa: SIM115 - held until __exit__
        try:
            import fcntl

            fcntl.flock(self._handle, fcntl.LOCK_EX)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc):
        try:
            import fcntl

            fcntl.flock(self._handle, fcntl.LOCK_UN)
        except ImportError:
            pass
        self._handle.close()
        return False
