"""Tests for xrcompare.explain on a tiny model: every saliency method, the overlay, model
safety, the kept clone. The real shipped ResNet50 run is tested in test_predict.py."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import cv2
import keras
import numpy as np
import pytest
from conftest import REPO

from xrcompare import explain, predictor
from xrcompare.explain import (
    METHODS,
    compute_saliency,
    map_to_image,
    overlay,
    saliency_to_rgb,
)

if keras.backend.backend() != "tensorflow":
    # Never a silent skip: the suite runs on TensorFlow, and tf-keras-vis needs it.
    pytest.fail(f"tests/test_explain.py needs Keras on the TensorFlow backend "
                f"(KERAS_BACKEND=tensorflow), not {keras.backend.backend()!r}: tf-keras-vis "
                "differentiates with tf.GradientTape", pytrace=False)

SIZE = 32


def build_tiny_model():
    """32×32 input, two named convs, GAP, softmax over 3 classes: one flat graph."""
    from keras import layers

    keras.utils.set_random_seed(7)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(inputs)
    x = layers.MaxPooling2D(name="pool_a")(x)
    x = layers.Conv2D(12, 3, padding="same", activation="relu", name="conv_b")(x)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = layers.Dense(3, activation="softmax", name="head_predictions")(x)
    return keras.Model(inputs, outputs, name="tiny")


@pytest.fixture(scope="module")
def tiny_model():
    return build_tiny_model()


@pytest.fixture(scope="module")
def tiny_inputs():
    image = np.zeros((SIZE, SIZE, 3), dtype=np.float32)
    image[8:20, 10:26] = 1.0  # a bright block on a dark field, plus noise
    image += np.random.default_rng(3).normal(0, 0.2, image.shape).astype(np.float32)
    return image[None]


def predicted_class(model, inputs) -> int:
    return int(np.argmax(model.predict_on_batch(inputs)[0]))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_a_normalised_map(tiny_model, tiny_inputs, method):
    before = np.asarray(tiny_model.predict_on_batch(tiny_inputs))
    saliency = compute_saliency(tiny_model, tiny_inputs, method,
                                predicted_class(tiny_model, tiny_inputs),
                                penultimate_layer="conv_b", smooth_samples=4)
    assert saliency.shape == (SIZE, SIZE)
    assert saliency.dtype == np.float32
    assert np.all(np.isfinite(saliency))
    assert saliency.min() >= 0.0 and saliency.max() <= 1.0
    assert saliency.max() - saliency.min() > 0.1  # not constant
    # The model passed in keeps its softmax and its predictions.
    assert tiny_model.get_layer("head_predictions").activation is keras.activations.softmax
    np.testing.assert_array_equal(np.asarray(tiny_model.predict_on_batch(tiny_inputs)), before)


def test_visualizer_works_on_a_linear_clone(tiny_model, tiny_inputs):
    visualizer = explain.make_visualizer(tiny_model, "gradcam")
    assert visualizer.model is not tiny_model
    assert visualizer.model.get_layer("head_predictions").activation is keras.activations.linear
    logits = np.asarray(visualizer.model.predict_on_batch(tiny_inputs))[0]
    probabilities = np.asarray(tiny_model.predict_on_batch(tiny_inputs))[0]
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(), probabilities, rtol=1e-4)


def test_input_without_batch_axis_is_accepted(tiny_model, tiny_inputs):
    saliency = compute_saliency(tiny_model, tiny_inputs[0], "gradcam", 0, "conv_b")
    assert saliency.shape == (SIZE, SIZE)


def test_penultimate_layer_is_honoured(tiny_model, tiny_inputs):
    target = predicted_class(tiny_model, tiny_inputs)
    last = compute_saliency(tiny_model, tiny_inputs, "gradcam", target, "conv_b")
    default = compute_saliency(tiny_model, tiny_inputs, "gradcam", target, None)
    first = compute_saliency(tiny_model, tiny_inputs, "gradcam", target, "conv_a")
    np.testing.assert_allclose(default, last, atol=1e-6)  # None → last 4-D layer
    assert np.abs(first - last).max() > 0.05


def test_gradcam_on_a_feature_map_is_tf_keras_vis_gradcam(tiny_model, tiny_inputs):
    """The engine's fast path: the gradient of the pre-softmax score on the conv feature
    map alone gives tf-keras-vis's Grad-CAM of the whole model."""
    trunk = keras.Model(tiny_model.input, tiny_model.get_layer("conv_b").output)
    dense = tiny_model.get_layer("head_predictions")

    def logits(features):
        pooled = keras.ops.mean(features, axis=(1, 2))
        return keras.ops.matmul(pooled, dense.kernel) + dense.bias

    features = np.asarray(trunk.predict_on_batch(tiny_inputs))
    for index in range(3):
        ours = explain.gradcam_on_features(logits, features, index, (SIZE, SIZE))
        theirs = compute_saliency(tiny_model, tiny_inputs, "gradcam", index, "conv_b")
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    with pytest.raises(ValueError, match="class_index"):
        explain.gradcam_on_features(logits, features, 3, (SIZE, SIZE))
    with pytest.raises(ValueError, match="one feature map"):
        explain.gradcam_on_features(logits, features[0], 0, (SIZE, SIZE))


def test_scorecam_max_n_is_capped_at_the_channel_count(tiny_model, tiny_inputs):
    saliency = compute_saliency(tiny_model, tiny_inputs, "scorecam", 0, "conv_b",
                                score_max_n=500)
    assert saliency.shape == (SIZE, SIZE) and np.all(np.isfinite(saliency))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"method": "lime"}, "unknown saliency method"),
        ({"class_index": 3}, "class_index"),
        ({"class_index": -1}, "class_index"),
        ({"penultimate_layer": "conv5_block3_out"}, "no layer named"),
        ({"penultimate_layer": "head_pool"}, "not 4-D"),
    ],
)
def test_bad_arguments_raise_value_error(tiny_model, tiny_inputs, arguments, message):
    call = {"method": "gradcam", "class_index": 0, "penultimate_layer": "conv_b", **arguments}
    with pytest.raises(ValueError, match=message):
        compute_saliency(tiny_model, tiny_inputs, **call)


def test_batch_of_two_is_refused(tiny_model, tiny_inputs):
    with pytest.raises(ValueError, match="one image"):
        compute_saliency(tiny_model, np.repeat(tiny_inputs, 2, axis=0), "saliency", 0)


def test_flat_map_becomes_zeros():
    assert not explain.finish_map(np.full((1, 8, 8), 0.5), (8, 8)).any()
    result = predictor.Explanation("run", "gradcam", "covid", np.zeros((8, 8), np.float32), 0.1)
    assert result.is_blank


# --- pictures ---------------------------------------------------------------------------


def test_saliency_to_rgb():
    ramp = np.linspace(0, 1, 64, dtype=np.float32)[None, :].repeat(16, axis=0)
    picture = saliency_to_rgb(ramp)
    assert picture.shape == (16, 64, 3) and picture.dtype == np.uint8
    red, _, blue = picture[0, 0].astype(int)
    assert blue > red  # JET: low values are blue
    red, _, blue = picture[0, -1].astype(int)
    assert red > blue  # high values are red


def test_overlay_has_the_gray_image_size():
    gray = np.tile(np.arange(80, dtype=np.uint8) * 3, (50, 1))
    saliency = np.random.default_rng(0).random((SIZE, SIZE)).astype(np.float32)
    picture = overlay(gray, saliency)
    assert picture.shape == (50, 80, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(overlay(gray, saliency, alpha=0.0),
                                  cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB))
    with pytest.raises(ValueError, match="alpha"):
        overlay(gray, saliency, alpha=1.5)
    with pytest.raises(ValueError, match="2-D uint8"):
        overlay(gray.astype(np.float32), saliency)


def test_pad_mode_map_lines_up_with_the_image():
    from xrcompare.imaging import fit_square

    # A wide image whose right half is bright; padded to a square, then mapped back.
    gray = np.zeros((100, 200), dtype=np.uint8)
    gray[:, 100:] = 255
    square = fit_square(gray, 64, "pad").astype(np.float32) / 255.0
    back = map_to_image(square, gray.shape, "pad")
    assert back.shape == (100, 200)
    assert back[:, 110:].min() > 0.9 and back[:, :90].max() < 0.1
    # Without undoing the padding, the black bars would darken the top and bottom rows.
    assert map_to_image(square, gray.shape, "squash")[0, 150] < 0.1


def test_import_does_not_load_tensorflow():
    code = "import sys, xrcompare.explain; sys.exit('tensorflow' in sys.modules)"
    environment = {**os.environ, "KERAS_BACKEND": "jax"}
    finished = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environment,
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr


# --- the kept clone and SmoothGrad's progress ------------------------------------------


def test_the_linear_clone_is_made_once_per_model_and_dropped_with_it():
    import gc

    model = build_tiny_model()
    kept = explain.visualizers_for(model)
    assert explain.visualizers_for(model) is kept
    assert kept.model is not model
    assert kept.model.get_layer("head_predictions").activation is keras.activations.linear
    assert model.get_layer("head_predictions").activation is keras.activations.softmax
    assert kept.get("saliency") is kept.get("smoothgrad")  # one Saliency object serves both
    assert kept.get("gradcam") is kept.get("gradcam")
    gc.collect()  # models other tests left behind go first, so the count is ours
    count = len(explain._VISUALIZERS)
    del model, kept
    gc.collect()
    assert len(explain._VISUALIZERS) == count - 1


def test_fresh_and_kept_clones_give_the_same_map(tiny_model, tiny_inputs):
    kept = compute_saliency(tiny_model, tiny_inputs, "gradcam++", 1, "conv_b")
    fresh = compute_saliency(tiny_model, tiny_inputs, "gradcam++", 1, "conv_b", reuse=False)
    np.testing.assert_allclose(kept, fresh, atol=1e-6)


def test_smoothgrad_reports_progress_and_is_reproducible(tiny_model, tiny_inputs):
    reports = []
    first = compute_saliency(tiny_model, tiny_inputs, "smoothgrad", 0, smooth_samples=12,
                             progress=reports.append)
    # 12 copies in batches of SMOOTH_CHUNK (5): 5/12, 10/12, 12/12, then the final 1.0.
    assert reports == pytest.approx([5 / 12, 10 / 12, 1.0, 1.0])
    again = compute_saliency(tiny_model, tiny_inputs, "smoothgrad", 0, smooth_samples=12)
    np.testing.assert_array_equal(first, again)  # seed=0 by default
    other = compute_saliency(tiny_model, tiny_inputs, "smoothgrad", 0, smooth_samples=12,
                             seed=1)
    assert np.abs(other - first).max() > 1e-4


def test_smoothgrad_matches_tf_keras_vis_own_loop(tiny_model, tiny_inputs):
    """Batched noisy copies give what tf-keras-vis's one-at-a-time SmoothGrad gives."""
    from tf_keras_vis.utils.scores import CategoricalScore

    samples = 200  # enough copies that the two noise draws average out
    ours = compute_saliency(tiny_model, tiny_inputs, "smoothgrad", 2, smooth_samples=samples)
    visualizer = explain.make_visualizer(tiny_model, "smoothgrad")
    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The structure of `inputs` doesn't match")
        raw = visualizer(CategoricalScore(2), tiny_inputs, smooth_samples=samples,
                         smooth_noise=0.2)
    theirs = explain.finish_map(raw, (SIZE, SIZE))
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.95


@pytest.mark.parametrize(("options", "message"), [
    ({"smooth_samples": 0}, "smooth_samples"),
    ({"smooth_noise": 0.0}, "smooth_noise"),
    ({"smooth_noise": 1.5}, "smooth_noise"),
])
def test_bad_smoothgrad_options_raise_value_error(tiny_model, tiny_inputs, options, message):
    with pytest.raises(ValueError, match=message):
        compute_saliency(tiny_model, tiny_inputs, "smoothgrad", 0, **options)


def test_gradient_maps_are_capped_so_one_hot_pixel_does_not_darken_the_rest():
    values = np.random.default_rng(5).random((1, 40, 40)).astype(np.float32)
    values[0, 3, 3] = 1000.0
    capped = explain.cap_outliers(values)
    assert capped.max() < 1.0 and capped.shape == values.shape
    scaled = explain.finish_map(capped, (40, 40))
    assert scaled.mean() > 0.3  # without the cap it would be about 0.0005
    assert explain.finish_map(values, (40, 40)).mean() < 0.01
