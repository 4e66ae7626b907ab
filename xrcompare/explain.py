"""Saliency maps with tf-keras-vis: where in the image a class score is most sensitive.

The only TensorFlow-bound module of the package. TensorFlow and tf-keras-vis are imported
inside the functions that need them, so ``import xrcompare.explain`` stays cheap and the rest
of the package works without TensorFlow (for instance with ``KERAS_BACKEND=jax``).

Models are Keras 3 functional models built as one flat graph (backbone layers, then the head
layers) ending in a softmax ``Dense`` over the classes. Inputs are a batch of one image,
already passed through the backbone's ``preprocess_input``.

Notes on tf-keras-vis 0.8.7 with Keras 3 (checked with TensorFlow 2.21 / Keras 3.15):

* ``ReplaceToLinear`` changes the last layer's activation on a *clone* of the model
  (``clone=True`` is the default when a model modifier is given), so the model passed in
  keeps its softmax; ``tests/test_explain.py`` checks that its predictions are unchanged.
* Keras 3 warns "The structure of `inputs` doesn't match the expected structure" because
  tf-keras-vis calls the model on a one-element list; the warning is harmless and silenced.
* ``Scorecam`` calls ``model.predict`` without ``verbose``, so Keras 3 prints a progress bar;
  we give the clone a quiet ``predict``.
* Cloning a ResNet50 takes about 0.5 s on a 2-core CPU, as long as a Grad-CAM itself. The
  linear clone and the visualizers built on it are therefore made once per model and kept
  (:func:`visualizers_for`) for as long as the model lives; this assumes the model's weights
  do not change after its first explanation (true for the frozen, trained models explained
  here). Pass ``reuse=False`` to :func:`compute_saliency` for a fresh clone.
* SmoothGrad runs tf-keras-vis's vanilla ``Saliency`` on batches of noisy copies
  (:data:`SMOOTH_CHUNK` at a time, the noise drawn as tf-keras-vis draws it) instead of its
  one-image-at-a-time loop: about 1.5× faster on CPU, and it can report progress.
* ScoreCAM applies a softmax to the model output itself, so it too needs ``ReplaceToLinear``.
* A named ``penultimate_layer`` is used as is (``seek_penultimate_conv_layer=False``);
  tf-keras-vis would otherwise step back from ``conv5_block3_out`` (an Activation) to the
  last ``Conv2D`` before it, ``conv5_block3_3_conv``, i.e. before batch norm, the residual
  add and the ReLU.
* tf-keras-vis imports ``zoom`` from ``scipy.ndimage.interpolation``, deprecated and due to
  be removed in SciPy 2.0: keep SciPy below 2 while using tf-keras-vis 0.8.7.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Callable

import cv2
import numpy as np

#: Saliency methods, id → display name, in the order to offer them.
METHODS = {
    "saliency": "Vanilla Saliency",
    "smoothgrad": "SmoothGrad",
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "scorecam": "Faster-ScoreCAM",
}

#: Methods that work on the feature maps of a convolutional layer (``penultimate_layer``).
CAM_METHODS = ("gradcam", "gradcam++", "scorecam")

#: Gradient maps are capped at this percentile before scaling to 0..1, as Smilkov et al.
#: (2017) do for display: otherwise a few extreme pixels leave the rest of the map dark.
GRADIENT_PERCENTILE = 99.0

#: Noisy copies per gradient pass in SmoothGrad (a fixed batch shape stays fast on CPU).
SMOOTH_CHUNK = 5

#: ``progress(fraction)`` with fraction in 0..1, called while a slow method runs.
Progress = Callable[[float], None]


def compute_saliency(model, inputs, method: str, class_index: int,
                     penultimate_layer: str | None = None, *, smooth_samples: int = 20,
                     smooth_noise: float = 0.20, score_max_n: int = 10, seed: int | None = 0,
                     progress: Progress | None = None, reuse: bool = True) -> np.ndarray:
    """A float32 (S, S) map in 0..1 of how much each input pixel matters for one class.

    ``inputs`` is one preprocessed image, (1, S, S, C) or (S, S, C). ``penultimate_layer``
    names the convolutional layer the CAM methods read (the backbone's last conv block, e.g.
    ``conv5_block3_out`` for ResNet50); None picks the model's last 4-D output layer.
    ``seed`` fixes SmoothGrad's noise (None: fresh noise each call). ``progress`` is called
    with the fraction done (SmoothGrad reports after each batch of noisy copies).
    ``reuse=False`` builds a fresh linear clone instead of the one kept for ``model``.
    """
    check_method(method)
    check_backend()
    batch = as_batch(inputs)
    class_index = check_class_index(model, class_index)
    if method in CAM_METHODS:
        penultimate_layer = resolve_penultimate_layer(model, penultimate_layer)
    if method == "smoothgrad" and int(smooth_samples) < 1:
        raise ValueError(f"smooth_samples must be at least 1, got {smooth_samples}")
    if method == "smoothgrad" and not 0 < float(smooth_noise) <= 1:
        raise ValueError(f"smooth_noise must be in (0, 1], got {smooth_noise}")

    from tf_keras_vis.utils.scores import CategoricalScore

    score = CategoricalScore(class_index)
    visualizer = visualizers_for(model).get(method) if reuse else make_visualizer(model, method)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The structure of `inputs` doesn't match")
        if method == "saliency":
            raw = visualizer(score, batch, smooth_samples=0)
        elif method == "smoothgrad":
            raw = smooth_gradients(visualizer, score, batch, int(smooth_samples),
                                   float(smooth_noise), seed, progress)
        elif method == "scorecam":
            channels = int(model.get_layer(penultimate_layer).output.shape[-1])
            max_n = min(int(score_max_n), channels)
            if max_n < 1:
                raise ValueError(f"score_max_n must be at least 1, got {score_max_n}")
            raw = visualizer(score, batch, penultimate_layer=penultimate_layer,
                             seek_penultimate_conv_layer=False, max_N=max_n)
        else:
            raw = visualizer(score, batch, penultimate_layer=penultimate_layer,
                             seek_penultimate_conv_layer=False)
    if method in ("saliency", "smoothgrad"):
        raw = cap_outliers(raw, GRADIENT_PERCENTILE)
    if progress is not None:
        progress(1.0)
    return finish_map(raw, batch.shape[1:3])


def gradcam_on_features(score_function, features, class_index: int,
                        size: tuple[int, int]) -> np.ndarray:
    """Grad-CAM from a convolutional feature map, as tf-keras-vis ``Gradcam`` computes it.

    ``features`` is the map at the explained layer, (1, h, w, c); ``score_function(features)``
    gives the class scores before the output activation, (1, classes) (the score tf-keras-vis
    differentiates after ``ReplaceToLinear``). Channel weights are the spatial mean of the
    score's gradient, the map is ReLU(Σ weights · features), zoomed to ``size`` (height,
    width) with linear interpolation as tf-keras-vis does, then scaled to 0..1 by
    :func:`finish_map`. Only the part of the network after the layer is differentiated.
    """
    check_backend()
    import tensorflow as tf
    from scipy.ndimage import zoom

    feature_map = np.asarray(features, dtype=np.float32)
    if feature_map.ndim != 4 or feature_map.shape[0] != 1:
        raise ValueError(f"features must be one feature map (1, h, w, c), got shape "
                         f"{feature_map.shape}")
    tensor = tf.convert_to_tensor(feature_map)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        scores = score_function(tensor)
        classes = int(scores.shape[-1])
        if isinstance(class_index, bool) or not 0 <= int(class_index) < classes:
            raise ValueError(f"class_index must be in 0..{classes - 1}, got {class_index}")
        score = scores[:, int(class_index)]
    gradients = np.asarray(tape.gradient(score, tensor), dtype=np.float32)
    weights = gradients.mean(axis=(1, 2), keepdims=True)
    cam = np.maximum(np.sum(feature_map * weights, axis=-1), 0.0)  # (1, h, w)
    height, width = size
    cam = zoom(cam, (1.0, height / cam.shape[1], width / cam.shape[2]), order=1)
    return finish_map(cam, (height, width))


def cap_outliers(values, percentile: float = GRADIENT_PERCENTILE) -> np.ndarray:
    """``values`` with everything above the given percentile set to that percentile."""
    array = np.nan_to_num(np.asarray(values[0] if isinstance(values, list) else values,
                                     dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.minimum(array, np.float32(np.percentile(array, percentile)))


def smooth_gradients(visualizer, score, batch: np.ndarray, samples: int, noise: float,
                     seed: int | None, progress: Progress | None) -> np.ndarray:
    """SmoothGrad (Smilkov et al. 2017): mean absolute gradient over noisy copies, (S, S).

    As tf-keras-vis: noise σ = ``noise`` × (max − min) of the image, |gradient| per copy,
    mean over copies, then the strongest colour channel.
    """
    rng = np.random.default_rng(seed)
    sigma = noise * float(batch.max() - batch.min())
    total = np.zeros(batch.shape[1:], dtype=np.float64)
    done = 0
    while done < samples:
        count = min(SMOOTH_CHUNK, samples - done)
        noisy = np.repeat(batch, count, axis=0)
        noisy = noisy + rng.normal(0.0, sigma, noisy.shape).astype(np.float32)
        gradients = visualizer(score, noisy, smooth_samples=0, keepdims=True,
                               normalize_map=False)
        total += np.asarray(gradients, dtype=np.float64).sum(axis=0)
        done += count
        if progress is not None:
            progress(done / samples)
    return (total / samples).max(axis=-1)[None].astype(np.float32)


VISUALIZER_CLASSES = {
    "saliency": ("tf_keras_vis.saliency", "Saliency"),
    "smoothgrad": ("tf_keras_vis.saliency", "Saliency"),
    "gradcam": ("tf_keras_vis.gradcam", "Gradcam"),
    "gradcam++": ("tf_keras_vis.gradcam_plus_plus", "GradcamPlusPlus"),
    "scorecam": ("tf_keras_vis.scorecam", "Scorecam"),
}


def visualizer_class(method: str):
    import importlib

    check_method(method)
    module_name, class_name = VISUALIZER_CLASSES[method]
    with warnings.catch_warnings():
        # tf-keras-vis imports zoom from scipy.ndimage.interpolation (deprecated).
        warnings.simplefilter("ignore", DeprecationWarning)
        return getattr(importlib.import_module(module_name), class_name)


def linear_clone(model):
    """A copy of ``model`` whose output activation is linear (tf-keras-vis ``ReplaceToLinear``).

    The model passed in is never modified. The clone's ``predict`` is quiet (ScoreCAM).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from tf_keras_vis.saliency import Saliency
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

    # clone=True: the modifier edits a copy, never the (cached) model passed in.
    clone = Saliency(model, model_modifier=ReplaceToLinear(), clone=True).model
    if clone is model:
        raise RuntimeError("tf-keras-vis did not clone the model; refusing to modify it")
    predict = clone.predict
    clone.predict = lambda *args, **kwargs: predict(*args, **{"verbose": 0, **kwargs})
    return clone


def make_visualizer(model, method: str):
    """A fresh tf-keras-vis object for a method, on a new linear clone of ``model``."""
    return visualizer_class(method)(linear_clone(model), model_modifier=None)


class Visualizers:
    """One linear clone of a model and the tf-keras-vis objects on it, made on first use."""

    def __init__(self, model):
        self.model = linear_clone(model)
        self._by_method: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, method: str):
        visualizer_type = visualizer_class(method)
        with self._lock:
            if visualizer_type not in self._by_method:
                self._by_method[visualizer_type] = visualizer_type(self.model,
                                                                   model_modifier=None)
            return self._by_method[visualizer_type]


_VISUALIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_VISUALIZERS_LOCK = threading.Lock()


def visualizers_for(model) -> Visualizers:
    """The :class:`Visualizers` kept for ``model`` (made once; dropped with the model)."""
    with _VISUALIZERS_LOCK:
        entry = _VISUALIZERS.get(model)
        if entry is None:
            entry = Visualizers(model)
            _VISUALIZERS[model] = entry
        return entry


# --- checks -----------------------------------------------------------------------------


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose from {', '.join(METHODS)}")


def check_backend() -> None:
    """tf-keras-vis differentiates with ``tf.GradientTape``: Keras must run on TensorFlow."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("saliency maps need Keras on the TensorFlow backend "
                           f"(KERAS_BACKEND=tensorflow), not {keras.backend.backend()!r}")


def as_batch(inputs) -> np.ndarray:
    """One image as a float32 batch (1, S, S, C)."""
    batch = np.asarray(inputs, dtype=np.float32)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[0] != 1:
        raise ValueError(f"inputs must be one image, (1, S, S, C) or (S, S, C); "
                         f"got shape {np.shape(inputs)}")
    if not np.all(np.isfinite(batch)):
        raise ValueError("inputs contain NaN or infinite values")
    return batch


def check_class_index(model, class_index) -> int:
    classes = int(model.outputs[0].shape[-1])
    if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)):
        raise ValueError(f"class_index must be an integer, got {class_index!r}")
    if not 0 <= int(class_index) < classes:
        raise ValueError(f"class_index must be in 0..{classes - 1}, got {class_index}")
    return int(class_index)


def resolve_penultimate_layer(model, name: str | None) -> str:
    """The named layer (checked to give 4-D feature maps) or the last such layer."""
    if name is None:
        for layer in reversed(model.layers):
            if len(layer.output.shape) == 4:
                return layer.name
        raise ValueError("the model has no layer with 4-D output for the CAM methods")
    try:
        layer = model.get_layer(name)
    except ValueError:
        raise ValueError(f"the model has no layer named {name!r}") from None
    if len(layer.output.shape) != 4:
        raise ValueError(f"layer {name!r} gives shape {tuple(layer.output.shape)}, not 4-D "
                         "feature maps")
    return name


def finish_map(raw, size: tuple[int, int]) -> np.ndarray:
    """A tf-keras-vis result → float32 (H, W) in 0..1, finite (a flat map becomes zeros)."""
    saliency = np.asarray(raw[0] if isinstance(raw, list) else raw, dtype=np.float32)
    saliency = np.squeeze(saliency)
    if saliency.ndim == 3:  # keepdims-style output: strongest channel
        saliency = saliency.max(axis=-1)
    if saliency.ndim != 2:
        raise ValueError(f"unexpected saliency shape {np.shape(raw)}")
    saliency = np.nan_to_num(saliency, nan=0.0, posinf=0.0, neginf=0.0)
    height, width = size
    if saliency.shape != (height, width):
        saliency = cv2.resize(saliency, (width, height), interpolation=cv2.INTER_LINEAR)
    low, high = float(saliency.min()), float(saliency.max())
    if high - low < 1e-12:
        return np.zeros((height, width), dtype=np.float32)
    return np.clip((saliency - low) / (high - low), 0.0, 1.0).astype(np.float32)


# --- pictures ---------------------------------------------------------------------------


def saliency_to_rgb(saliency: np.ndarray, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """A 0..1 map as an RGB uint8 heat map of the same size."""
    values = np.nan_to_num(np.asarray(saliency, dtype=np.float32), nan=0.0)
    if values.ndim != 2:
        raise ValueError(f"saliency must be 2-D, got shape {values.shape}")
    levels = np.clip(np.rint(np.clip(values, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, colormap), cv2.COLOR_BGR2RGB)


def map_to_image(saliency: np.ndarray, image_shape: tuple[int, ...],
                 resize_mode: str = "squash") -> np.ndarray:
    """Bring a square model-input map back onto the original image's (H, W) geometry.

    Undoes :func:`xrcompare.imaging.fit_square`: with ``"pad"`` the black bars are cropped
    away first, so the map lines up with the image.
    """
    from xrcompare.imaging import RESIZE_MODES, pad_box

    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    values = np.asarray(saliency, dtype=np.float32)
    height, width = image_shape[:2]
    if resize_mode == "pad":
        top, left, new_h, new_w = pad_box(height, width, values.shape[0])
        values = values[top:top + new_h, left:left + new_w]
    resized = cv2.resize(values, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0)


def overlay(gray_uint8: np.ndarray, saliency: np.ndarray, alpha: float = 0.45,
            colormap: int = cv2.COLORMAP_JET, resize_mode: str = "squash") -> np.ndarray:
    """The heat map blended over the gray image: RGB uint8 at the gray image's size.

    ``resize_mode`` must be the one used to make the model input (see :func:`map_to_image`).
    """
    gray = np.asarray(gray_uint8)
    if gray.ndim == 3 and gray.shape[2] == 1:
        gray = gray[:, :, 0]
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"gray_uint8 must be a 2-D uint8 image, got {gray.dtype} {gray.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    heat = saliency_to_rgb(map_to_image(saliency, gray.shape, resize_mode), colormap)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(base, 1.0 - alpha, heat, alpha, 0.0)
