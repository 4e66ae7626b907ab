"""The prediction engine: every run's classifier split at its last convolutional layer.

A run's classifier is a frozen base followed by a small head. Here it is cut in two at the
base's last convolutional layer (from the registry: VGG16 ``block5_conv3``, ResNet50
``conv5_block3_out``, Xception ``block14_sepconv2_act``):

* the **trunk**: the frozen base from its input to that layer. Runs whose bases are the same
  (backbone, weights, input size and, for random-init controls, seed: :func:`base_key`)
  share one trunk, built once per process. A fine-tuned run (``--fine-tune last-block``)
  has its own base, the registry's with its stored last block
  (:func:`xrcompare.runs.build_base_for_run`), keyed by the run: it never shares a trunk
  with the frozen runs of its backbone, nor they with it;
* the **tail**: the rest of the base after that layer (VGG16's ``block5_pool``; nothing for
  ResNet50 or Xception) and the head's layers, a few kilobytes of work.

One image through many runs is then one trunk forward pass per distinct (trunk, model input)
(the model input covers the resize mode and the preprocessing: runs that feed the same base
the same tensor share the pass), and one tail per run. The trunk's output, the convolutional
feature map, is kept (:class:`Engine` caches it), so Grad-CAM needs only the gradient of the
tail's class score with respect to that map (:func:`xrcompare.explain.gradcam_on_features`):
no second pass through the base. The other saliency methods (tf-keras-vis) work on the flat
full model (:func:`xrcompare.runs.build_full_model`), built on the same shared base.

Every model call runs on the engine's one **model thread** (:meth:`Engine.call`,
:meth:`Engine.submit`): the model work of all sessions queues instead of fighting over the
cores, and a map being computed is finished and cached even when the page that asked for it
has moved on (Streamlit interrupts a page's run when a widget changes).

The trunk is the only heavy part, and it only ever runs forward: once a trunk is built, the
warm-up moves it onto the inference engine chosen for this machine (:meth:`Engine.accelerate`:
OpenVINO, bfloat16 where the CPU has it, :mod:`xrcompare.inference_engine`; converted once
per machine and cached on disk, compiled once per process), and its feature maps come from
there. Until then, and wherever no engine is faster (``XRCOMPARE_ENGINE=keras``, another
Keras backend, a GPU), the Keras trunk runs. The tails, Grad-CAM's gradient and the other
saliency maps run in Keras.

The first results after a start do not wait for Keras: loading TensorFlow and Keras and
building a base take about 5 s on the 2-core CPU, compiling a converted trunk already on disk
0.2 s. So until a run's Keras trunk is built, its probabilities come from that converted
trunk (:meth:`Engine.early_trunk`) and the tail in NumPy (:func:`numpy_tail`: the registry's
pool after the last conv, then the head's weights read from its file); the warm-up then keeps
the compiled trunk as the accelerated one. Runs that need Keras for their base (random-init
controls, fine-tuned runs) or have nothing converted yet take the Keras path at once.

Predictions are backend-neutral Keras; Grad-CAM's gradient needs TensorFlow, like the rest
of the saliency maps. Building models is serialised by one lock: a random-init base is built
from the global random seed, so two builds must never interleave. No Streamlit here: the app
keeps one :class:`Engine` per server process and warms it in a background thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from xrcompare.runs import Run

#: One lock for every model build in this process (see the module docstring).
BUILD_LOCK = threading.RLock()
LOG = logging.getLogger("xrcompare.engine")


def base_key(run: Run) -> tuple:
    """Runs with equal keys have identical bases (the seed matters only for random; a
    fine-tuned run's base is its own, keyed by its folder and when it was written)."""
    seed = run.weights_seed if run.is_random_control else None
    own = ("fine-tuned", str(run.path), run.modified) if run.is_fine_tuned else None
    return (run.backbone, run.weights, run.image_size, seed, own)


def trunk_key(run: Run) -> tuple:
    """Runs with equal keys share one trunk: the same base, cut at the same layer."""
    return (*base_key(run), run.last_conv_layer)


def input_key(run: Run) -> tuple:
    """Runs with equal keys give the same trunk the same input for the same image: the
    trunk and the preprocessing (which the inference engine computes in its graph)."""
    return (*trunk_key(run), run.preprocess)


def weights_problem(run: Run) -> str | None:
    """Why the run's base cannot be built here (one sentence), or None.

    ImageNet runs need weight files; a random-init control needs the Keras backend and
    version it was made with (:func:`xrcompare.runs.rebuild_problem`).
    """
    from xrcompare.runs import rebuild_problem

    if run.is_random_control:
        return rebuild_problem(run)
    from xrcompare.backbones import weights_status

    try:
        status = weights_status(run.backbone)
    except ValueError as error:  # a backbone this version does not know
        return str(error)
    return None if status.available else status.detail


# --------------------------------------------------------------------------- the split


def build_trunk(base, layer_name: str):
    """``base`` from its input to ``layer_name``'s output, sharing the base's layers."""
    import keras

    layer = base.get_layer(layer_name)
    if len(layer.output.shape) != 4:
        raise ValueError(f"layer {layer_name!r} of {base.name} gives shape "
                         f"{tuple(layer.output.shape)}, not 4-D feature maps")
    if layer.output is base.output:
        return base
    return keras.Model(base.input, layer.output, name=f"{base.name}_to_{layer_name}")


@dataclass(frozen=True)
class Tail:
    """A run's classifier after the trunk: feature map → class scores.

    ``model`` maps the trunk's feature map to the vector the head's last ``Dense`` reads;
    :meth:`logits` applies that layer's kernel and bias without its activation (the score
    tf-keras-vis explains after ``ReplaceToLinear``), :meth:`probabilities` with it.
    """

    model: object
    dense: object

    def logits(self, features):
        from keras import ops

        vector = self.model(features, training=False)
        scores = ops.matmul(vector, self.dense.kernel)
        return ops.add(scores, self.dense.bias) if self.dense.use_bias else scores

    def probabilities(self, features) -> np.ndarray:
        from keras import ops

        return np.asarray(ops.convert_to_numpy(self.dense.activation(self.logits(features))),
                          dtype=np.float32)


def build_after(base, layer_name: str):
    """The part of ``base`` after ``layer_name`` as a model (feature map → base output), or
    None when that layer is the base's output (ResNet50, Xception)."""
    import keras

    layer = base.get_layer(layer_name)
    if layer.output is base.output:
        return None
    return keras.Model(layer.output, base.output, name=f"{base.name}_after_{layer_name}")


def build_tail(base, layer_name: str, head) -> Tail:
    """The part of ``base`` after ``layer_name`` and the head's layers, on the feature map.

    Layers are shared with ``base`` and ``head`` (no weights are copied). The head must end
    in a ``Dense`` layer, as every head of :func:`xrcompare.train.build_head` does.
    """
    import keras

    layer = base.get_layer(layer_name)
    dense = head.layers[-1]
    if not isinstance(dense, keras.layers.Dense):
        raise ValueError(f"the head {head.name} must end in a Dense layer, "
                         f"not {type(dense).__name__}")
    inputs = keras.Input(shape=tuple(layer.output.shape[1:]), name="conv_features")
    x = inputs
    after = build_after(base, layer_name)  # e.g. VGG16's block5_pool after block5_conv3
    if after is not None:
        x = after(x)
    for head_layer in head.layers[1:-1]:
        x = head_layer(x)
    return Tail(keras.Model(inputs, x, name=f"tail_{head.name}"), dense)


def max_pool(features: np.ndarray, size: int) -> np.ndarray:
    """Keras's ``MaxPooling2D(size)`` (stride ``size``, valid padding) on (n, h, w, c)."""
    count, height, width, channels = features.shape
    rows, columns = height // size, width // size
    return features[:, :rows * size, :columns * size].reshape(
        count, rows, size, columns, size, channels).max(axis=(2, 4))


def numpy_tail(run: Run, features: np.ndarray, head_arrays: dict | None = None) -> np.ndarray:
    """``run``'s :class:`Tail` in NumPy: its trunk's feature maps (n, h, w, c) →
    probabilities (n, classes), the rest of the base (the registry's
    ``pool_after_last_conv``) then the head (:func:`xrcompare.train.head_probabilities`).
    What the first results after a start use while Keras loads; tested equal to the Keras
    tail on every shipped run."""
    from xrcompare.backbones import get_backbone
    from xrcompare.train import head_probabilities

    pool = get_backbone(run.backbone).pool_after_last_conv
    features = np.asarray(features, dtype=np.float32)
    if pool:
        features = max_pool(features, pool)
    return head_probabilities(run.head, head_arrays or run.head_arrays(), features)


# --------------------------------------------------------------------------- caches


class LRU:
    """A small thread-safe least-recently-used mapping with at most ``max_entries``."""

    def __init__(self, max_entries: int):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return self._entries[key]

    def put(self, key, value) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def array_digest(array: np.ndarray) -> str:
    """A content hash of an array (shape and dtype included)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(str((array.shape, array.dtype.str)).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:24]


@dataclass
class _Trunk:
    base: object
    model: object
    lock: threading.Lock
    traced: bool = False
    #: The trunk on the inference engine (:meth:`Engine.accelerate`), once it is ready, per
    #: preprocessing mode (the engine computes a run's preprocessing in its own graph, so
    #: runs sharing the trunk but not the preprocessing share the converted model only).
    fast: dict[str, object] = field(default_factory=dict)


# --------------------------------------------------------------------------- the engine


class Engine:
    """Shared trunks, per-run tails, flat models and feature maps, built on first use.

    Thread-safe: the app keeps one per server process for every session. Bounded: at most
    ``max_trunks`` bases, ``max_tails`` tails, ``max_flat_models`` flat models (each with its
    tf-keras-vis clone, as large as a base) and ``max_features`` feature maps (under 1 MB
    each) are kept; the least recently used go first.
    """

    def __init__(self, *, max_trunks: int = 8, max_tails: int = 32, max_flat_models: int = 4,
                 max_features: int = 48, engine: str | None = None):
        self._trunks = LRU(max_trunks)
        self._tails = LRU(max_tails)
        self._flat = LRU(max_flat_models)
        self._features = LRU(max_features)
        self._statistics = LRU(8)  # image-statistics baselines' JSON models
        self._after: dict[tuple, object] = {}  # trunk key → the base after its trunk (or None)
        #: Input key (:func:`input_key`) → the trunk on the inference engine, compiled
        #: straight from its converted model on disk before Keras is loaded
        #: (:meth:`early_trunk`); None: it cannot be.
        self._early: dict[tuple, object | None] = {}
        self._head_arrays = LRU(max_tails)
        self._lock = threading.Lock()
        self._trunk_locks: dict[tuple, threading.Lock] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xrcompare-model",
                                          initializer=self._mark_worker)
        self._worker_ident: int | None = None
        self.trunks_built = 0  # how many bases were built (a shared one counts once)
        self.forward_passes = 0  # how many images went through a trunk
        #: The inference engine choice for trunks (``auto``, ``openvino``, ``keras``; None:
        #: ``$XRCOMPARE_ENGINE``, see :func:`xrcompare.inference_engine.choose`).
        self.engine_choice = engine
        self._engine_chosen: tuple[str, str] | None = None

    # ------------------------------------------------------------------ the model thread

    def _mark_worker(self) -> None:
        self._worker_ident = threading.get_ident()

    def call(self, function: Callable, *args, **kwargs):
        """``function(*args, **kwargs)`` run on the engine's model thread (see the module
        docstring); its result or its exception. Calls queue, first come first served.
        Called from the model thread itself, it runs at once."""
        if threading.get_ident() == self._worker_ident:
            return function(*args, **kwargs)
        return self._worker.submit(function, *args, **kwargs).result()

    def submit(self, function: Callable, *args, **kwargs) -> Future:
        """``function(*args, **kwargs)`` queued on the model thread; its future. What the
        function caches stays cached even when the caller stops waiting."""
        return self._worker.submit(function, *args, **kwargs)

    # ------------------------------------------------------------------ models

    def _trunk(self, run: Run) -> _Trunk:
        key = trunk_key(run)
        entry = self._trunks.get(key)
        if entry is not None:
            return entry
        with self._lock:
            key_lock = self._trunk_locks.setdefault(key, threading.Lock())
        with key_lock:  # one build per key, even when a page and the warm-up ask at once
            entry = self._trunks.get(key)
            if entry is None:
                from xrcompare.backbones import WeightsUnavailable
                from xrcompare.runs import build_base_for_run, check_rebuildable

                problem = weights_problem(run)
                if problem is not None:
                    raise WeightsUnavailable(problem)
                check_rebuildable(run)
                with BUILD_LOCK:  # the registry's base (a fine-tuned run's: with its block)
                    base = build_base_for_run(run)
                    model = build_trunk(base, run.last_conv_layer)
                entry = _Trunk(base, model, threading.Lock())
                self._trunks.put(key, entry)
                self.trunks_built += 1
            return entry

    def trunk(self, run: Run):
        """The run's trunk (a ``keras.Model``: image batch → last conv feature map)."""
        return self._trunk(run).model

    def base(self, run: Run):
        """The run's frozen base, shared with its trunk and flat model."""
        return self._trunk(run).base

    def tail(self, run: Run) -> Tail:
        """The run's :class:`Tail`, built on its (shared) base and its head weights."""
        key = (run.run_id, run.modified)
        tail = self._tails.get(key)
        if tail is None:
            from xrcompare.runs import build_head_for_run

            base = self.base(run)
            with BUILD_LOCK:
                tail = build_tail(base, run.last_conv_layer, build_head_for_run(run))
            self._tails.put(key, tail)
        return tail

    def flat_model(self, run: Run):
        """The run's full classifier as one flat graph (for tf-keras-vis), on the shared base."""
        key = (run.run_id, run.modified)
        model = self._flat.get(key)
        if model is None:
            from xrcompare.runs import build_full_model

            base = self.base(run)
            with BUILD_LOCK:
                model = build_full_model(run, base=base)
            self._flat.put(key, model)
        return model

    def conv_grid(self, run: Run) -> tuple[int, int]:
        """(rows, columns) of the feature map the run's CAM maps come from (its trunk's
        output): 7 × 7 for ResNet50 at 224 px, 14 × 14 for VGG16 (before its last pool)."""
        shape = self.trunk(run).output.shape
        return int(shape[1]), int(shape[2])

    def _statistics_model(self, run: Run):
        key = ("statistics", run.run_id, run.modified)
        model = self._statistics.get(key)
        if model is None:
            model = run.statistics_model()
            self._statistics.put(key, model)
        return model

    def is_warm(self, run: Run) -> bool:
        """Whether the run's trunk is built and traced and its tail built."""
        if run.is_statistics:
            return True
        entry = self._trunks.get(trunk_key(run))
        return bool(entry and entry.traced) and (run.run_id, run.modified) in self._tails

    def trunk_engine(self) -> tuple[str, str]:
        """(engine, precision) trunks are moved to here (``("keras", "fp32")``: they stay)."""
        if self._engine_chosen is None:
            from xrcompare.inference_engine import REFERENCE, EngineUnavailable, choose

            try:
                self._engine_chosen = choose(self.engine_choice)
            except EngineUnavailable as error:  # an explicit engine that cannot run here
                LOG.warning("trunks stay on Keras: %s", error)
                self._engine_chosen = REFERENCE
        return self._engine_chosen

    def engine_label(self, run: Run) -> str | None:
        """How ``run``'s trunk runs now (``"OpenVINO bf16"``, ``"Keras fp32"``), or None when
        it is not built (or the run has no CNN)."""
        from xrcompare.inference_engine import REFERENCE, engine_label

        entry = self._trunks.get(trunk_key(run)) if run.is_cnn else None
        if entry is None:
            early = self._early.get(input_key(run)) if run.is_cnn else None
            return early.label if early is not None else None
        fast = entry.fast.get(run.preprocess)
        return fast.label if fast is not None else engine_label(*REFERENCE)

    def early_trunk(self, run: Run):
        """``run``'s trunk on the inference engine, compiled from its converted model already
        on disk, while its Keras trunk is not built: the first results after a start come
        from it and a NumPy tail (:func:`numpy_tail`) without waiting for TensorFlow and
        Keras to load (about 5 s on the 2-core CPU, against 0.2 s to compile). The warm-up
        then keeps it as the accelerated trunk (:meth:`accelerate`).

        None when there is none: the engine choice is Keras, the run is not an ImageNet
        frozen base (a random-init control, a fine-tuned run), nothing is converted yet, or
        its Keras trunk is built already."""
        if not run.is_cnn or run.is_fine_tuned or run.weights != "imagenet":
            return None
        key = input_key(run)
        if key in self._early:
            return self._early[key]
        if self._trunks.get(trunk_key(run)) is not None:
            return None
        return self.call(self._compile_early, run, key)

    def _compile_early(self, run: Run, key: tuple):
        if key in self._early:
            return self._early[key]
        from xrcompare.backbones import get_backbone
        from xrcompare.inference_engine import (
            OpenVINOEngine,
            gray_affine,
            openvino_precision,
            ready_converted_model,
            requested_engine,
        )

        early = None
        try:
            chosen = self._engine_chosen
            if requested_engine(self.engine_choice) != "keras" \
                    and (chosen is None or chosen[0] == "openvino"):
                precision = chosen[1] if chosen is not None else openvino_precision()
                spec = dataclasses.replace(run.feature_spec(), engine="openvino",
                                           precision=precision)
                output_layer = (run.last_conv_layer
                                if get_backbone(run.backbone).pool_after_last_conv else None)
                xml = ready_converted_model(spec, output_layer)
                if xml is not None:
                    early = OpenVINOEngine(xml, precision, gray_affine=gray_affine(spec),
                                           hint="latency")
                    expected = tuple(run.feature_shape)
                    pool = get_backbone(run.backbone).pool_after_last_conv or 1
                    shape = tuple(early.output_shape)
                    if (shape[0] // pool, shape[1] // pool, shape[2]) != expected:
                        LOG.warning("the converted trunk of %s gives %s, not %s: not used",
                                    run.run_id, shape, expected)
                        early = None
        except Exception as error:  # noqa: BLE001 - the Keras trunk is the fallback
            from xrcompare.errors import one_line

            LOG.warning("no early trunk for %s: %s", run.run_id, one_line(error))
            early = None
        self._early[key] = early
        return early

    def accelerate(self, run: Run) -> bool:
        """Move ``run``'s trunk onto the inference engine (:meth:`trunk_engine`), converting it
        once per machine (cached on disk) and compiling it for one image at a time. True when
        its feature maps now come from that engine; False when they stay on Keras. Raises
        when the engine fails (the trunk then stays on Keras)."""
        if not run.is_cnn or run.is_fine_tuned:
            # A fine-tuned run's base is its own (the registry's plus its block): converted
            # models are keyed by the registry's weights, so it stays on Keras.
            return False
        engine, precision = self.trunk_engine()
        if engine == "keras":
            return False
        entry = self._trunk(run)
        if run.preprocess in entry.fast:
            return True
        from xrcompare.inference_engine import make_engine

        fast = self._early.get(input_key(run))
        if fast is None or fast.precision != precision:
            spec = dataclasses.replace(run.feature_spec(), engine=engine, precision=precision)
            output_layer = None if entry.model is entry.base else run.last_conv_layer
            with BUILD_LOCK:  # conversion traces the Keras graph: never beside another build
                fast = make_engine(spec, base=entry.base, hint="latency",
                                   output_layer=output_layer)
        expected = tuple(int(size) for size in entry.model.output.shape[1:])
        if tuple(fast.output_shape) != expected:
            raise ValueError(f"the {fast.label} trunk of {run.run_id} gives feature maps of "
                             f"shape {tuple(fast.output_shape)}, not {expected}")
        entry.fast[run.preprocess] = fast
        return True

    def warm_up(self, runs: Iterable[Run], *, stop: threading.Event | None = None,
                progress: Callable[[Run, str | None], None] | None = None) -> None:
        """Build every run's trunk and tail and trace each trunk once, in ``runs`` order.

        A run that cannot be built is skipped (its page shows why). ``stop`` ends early;
        ``progress(run, problem)`` is called after each run. Then, every trunk being usable,
        each moves onto the inference engine (:meth:`accelerate`; a failure leaves it on
        Keras and is logged).
        """
        from xrcompare.runs import model_input_for_run

        runs = list(runs)
        for run in runs:
            if stop is not None and stop.is_set():
                return
            if not run.is_cnn:  # the statistics baseline has no network to build
                continue
            problem = None
            try:
                self.tail(run)
                entry = self._trunk(run)
                if not entry.traced:
                    size = run.image_size
                    blank = model_input_for_run(run, np.zeros((size, size), np.uint8))
                    self.call(self._trace, entry, blank)
                    self.call(self.tail(run).probabilities,
                              np.zeros(tuple(entry.model.output.shape[1:]), np.float32)[None])
            except Exception as error:  # noqa: BLE001 - a bad run must not stop the others
                from xrcompare.errors import one_line

                problem = one_line(error)
            if progress is not None:
                progress(run, problem)
        for run in runs:
            if stop is not None and stop.is_set():
                return
            if not run.is_cnn or (entry := self._trunks.get(trunk_key(run))) is None \
                    or run.preprocess in entry.fast:
                continue
            try:
                self.accelerate(run)
            except Exception as error:  # noqa: BLE001 - the Keras trunk keeps working
                from xrcompare.errors import one_line

                LOG.warning("the trunk of %s stays on Keras: %s", run.run_id, one_line(error))

    @staticmethod
    def _trace(entry: _Trunk, inputs: np.ndarray) -> None:
        with entry.lock:
            if not entry.traced:
                entry.model.predict_on_batch(inputs)
                entry.traced = True

    # ------------------------------------------------------------------ work

    def features(self, run: Run, gray: np.ndarray) -> np.ndarray:
        """The trunk's feature map (1, h, w, c) float32 for an 8-bit gray image.

        Cached by (trunk, preprocessing, model square): runs sharing them get the same
        array without a second forward pass. Do not modify the returned array.
        """
        from xrcompare.runs import model_square_for_run

        squares = model_square_for_run(run, gray)
        key = (input_key(run), array_digest(squares))
        features = self._features.get(key)
        if features is not None:
            return features
        entry = self._trunk(run)
        return self.call(self._forward, entry, run, squares, key)

    def _head_of(self, run: Run) -> dict:
        key = (run.run_id, run.modified)
        arrays = self._head_arrays.get(key)
        if arrays is None:
            arrays = run.head_arrays()
            self._head_arrays.put(key, arrays)
        return arrays

    def _early_features(self, run: Run, gray: np.ndarray, early) -> np.ndarray:
        """Like :meth:`features`, from :meth:`early_trunk` (cached under the same key: the
        Keras trunk, once built, finds them, as it would find the accelerated trunk's)."""
        from xrcompare.runs import model_square_for_run

        squares = model_square_for_run(run, gray)
        key = (input_key(run), array_digest(squares))
        features = self._features.get(key)
        if features is not None:
            return features

        def forward() -> np.ndarray:
            found = self._features.get(key)
            if found is not None:
                return found
            output = np.asarray(early.predict(squares), dtype=np.float32)
            output.setflags(write=False)
            self._features.put(key, output)
            self.forward_passes += 1
            return output

        return self.call(forward)

    def _forward(self, entry: _Trunk, run: Run, squares: np.ndarray, key: tuple) -> np.ndarray:
        with entry.lock:
            features = self._features.get(key)
            if features is None:
                fast = entry.fast.get(run.preprocess)
                if fast is not None:  # it preprocesses the squares in its own graph
                    output = fast.predict(squares)
                else:
                    from xrcompare.backbones import get_backbone

                    inputs = get_backbone(run.backbone).model_inputs(squares, run.preprocess)
                    output = self._keras_forward(entry, inputs)
                features = np.asarray(output, dtype=np.float32)
                features.setflags(write=False)
                self._features.put(key, features)
                self.forward_passes += 1
        return features

    @staticmethod
    def _keras_forward(entry: _Trunk, inputs: np.ndarray):
        if entry.traced:
            return entry.model.predict_on_batch(inputs)
        return entry.model(inputs, training=False)  # one eager call is cheaper than tracing

    def features_batch(self, run: Run, grays) -> np.ndarray:
        """The trunk's feature maps (N, h, w, c) of several 8-bit gray images, each through
        :meth:`features` (cached per image: a run sharing the trunk and the model input
        finds them).

        Each image goes through the trunk on its own, in the batch of one the warm-up traced:
        on the 2-core CPU, 16 ResNet50 passes of one image took 2.7 s against 3.4–4.2 s for
        one batch of 16, and a new batch size first costs a retrace (7 s per trunk)."""
        if len(grays) == 0:
            raise ValueError("no images to predict")
        return np.concatenate([self.features(run, gray) for gray in grays])

    def probabilities_batch(self, run: Run, grays) -> np.ndarray:
        """``run``'s probabilities (N, classes) of several 8-bit gray images, in
        :attr:`Run.labels` order: their feature maps (:meth:`features_batch`), then one tail
        call for all of them."""
        if run.is_statistics:
            from xrcompare.runs import predict_gray

            model = self._statistics_model(run)
            return np.array([[predict_gray(run, model, gray)[label] for label in run.labels]
                             for gray in grays], dtype=np.float32)
        features = self.features_batch(run, grays)
        values = self.call(self.tail(run).probabilities, features)
        if values.shape != (len(grays), len(run.labels)):
            raise ValueError(f"{run.run_id} gives scores of shape {values.shape} for "
                             f"{len(grays)} images of {len(run.labels)} classes")
        return values

    def probabilities(self, run: Run, gray: np.ndarray) -> dict[str, float]:
        """Class → probability of ``run`` for an 8-bit gray image (the image-statistics
        baseline needs no CNN: its model is small and read once per run)."""
        if run.is_statistics:
            from xrcompare.runs import predict_gray

            return predict_gray(run, self._statistics_model(run), gray)
        early = self.early_trunk(run) if self._trunks.get(trunk_key(run)) is None else None
        if early is not None:  # the first results after a start: no Keras needed
            features = self._early_features(run, gray, early)
            values = self.call(numpy_tail, run, features, self._head_of(run))[0]
        else:
            features = self.features(run, gray)
            values = self.call(self.tail(run).probabilities, features)[0]
        if values.shape != (len(run.labels),):
            raise ValueError(f"{run.run_id} gives {values.shape[0]} scores for "
                             f"{len(run.labels)} classes")
        return {label: float(value) for label, value in zip(run.labels, values, strict=True)}

    def pooled(self, run: Run, gray: np.ndarray) -> np.ndarray:
        """The base's output for an 8-bit gray image averaged over its grid, (channels,)
        float32: the vector of :mod:`xrcompare.neighbours`, from the cached feature map (the
        rest of the base after the trunk is one pooling layer at most)."""
        from xrcompare.neighbours import pooled_features

        features = self.features(run, gray)
        key = trunk_key(run)
        if key not in self._after:
            base = self.base(run)
            with BUILD_LOCK:
                self._after[key] = build_after(base, run.last_conv_layer)
        after = self._after[key]
        if after is not None:
            features = self.call(lambda: np.asarray(after(features, training=False)))
        return pooled_features(features)[0]

    def gradcam(self, run: Run, gray: np.ndarray, class_index: int) -> np.ndarray:
        """Grad-CAM of ``run`` for one class at its last conv layer: (S, S) float32 in 0..1
        on the model's square input, from the cached feature map (no second base pass)."""
        from xrcompare.explain import gradcam_on_features

        tail = self.tail(run)
        features = self.features(run, gray)
        size = run.image_size
        return self.call(gradcam_on_features, tail.logits, features, class_index, (size, size))

    def flat_saliency(self, run: Run, gray: np.ndarray, method: str, class_index: int, *,
                      progress: Callable[[float], None] | None = None, **options) -> np.ndarray:
        """A tf-keras-vis map (:func:`xrcompare.explain.compute_saliency`) on the run's flat
        full model, at its last conv layer for the CAM methods, on the model thread
        (``progress`` is called from that thread)."""
        from xrcompare.explain import compute_saliency
        from xrcompare.runs import model_input_for_run

        model = self.flat_model(run)
        inputs = model_input_for_run(run, gray)
        return self.call(compute_saliency, model, inputs, method, class_index,
                         penultimate_layer=run.last_conv_layer, progress=progress, **options)
