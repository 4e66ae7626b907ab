"""xrcompare.engine: each run's classifier split at its last conv layer into a shared trunk
and a per-run tail. The split must change nothing: the same probabilities as the flat full
model, and Grad-CAM from the tail's gradient equal to tf-keras-vis Grad-CAM on the flat model
at the same layer, for VGG16 (whose last conv layer is not the base's output), ResNet50 and
Xception, with both heads; real images, random-init bases at small sizes (the maths does not
depend on the weights) and the shipped ImageNet ResNet50 runs in tests/test_predict.py."""

from __future__ import annotations

import threading

import keras
import numpy as np
import pytest
from conftest import FIXTURES

from xrcompare import engine as engine_module
from xrcompare.backbones import build_base, get_backbone
from xrcompare.engine import LRU, Engine, build_tail, build_trunk
from xrcompare.explain import compute_saliency, gradcam_on_features
from xrcompare.imaging import read_gray, to_model_input
from xrcompare.train import attach_head, build_head

XRAY = FIXTURES / "tiny_cxr" / "pneumonia" / "kermany_person1008_virus_1691.jpg"

CASES = [  # backbone, input size, head
    ("vgg16", 64, "blog"),
    ("vgg16", 64, "gap"),
    ("resnet50", 64, "gap"),
    ("xception", 96, "gap"),
]


def random_classifier(backbone: str, size: int, head_kind: str):
    """A random-init base and a head with random (seeded) weights, like a run's."""
    base = build_base(backbone, size, "random", seed=11)
    head = build_head(head_kind, tuple(base.output.shape[1:]), 3)
    rng = np.random.default_rng(5)
    head.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32)
                      for w in head.get_weights()])
    return base, head


def xray_input(backbone: str, size: int) -> np.ndarray:
    image = to_model_input(read_gray(XRAY), size, "squash")
    return get_backbone(backbone).preprocess(image[None])


@pytest.mark.parametrize(("backbone", "size", "head_kind"), CASES,
                         ids=[f"{b}-{s}px-{h}" for b, s, h in CASES])
def test_trunk_and_tail_reproduce_the_flat_model_and_its_gradcam(backbone, size, head_kind):
    base, head = random_classifier(backbone, size, head_kind)
    layer = get_backbone(backbone).last_conv_layer
    flat = attach_head(base, head)
    trunk = build_trunk(base, layer)
    tail = build_tail(base, layer, head)
    inputs = xray_input(backbone, size)

    features = np.asarray(trunk.predict_on_batch(inputs))
    assert features.shape[1:] == tuple(base.get_layer(layer).output.shape[1:])
    if backbone == "vgg16":  # the cut is before block5_pool, so the tail holds the pool
        assert features.shape[1] == 2 * base.output.shape[1]
    expected = np.asarray(flat.predict_on_batch(inputs))
    np.testing.assert_allclose(tail.probabilities(features), expected, rtol=1e-5, atol=1e-6)

    compared = 0
    for class_index in range(3):
        ours = gradcam_on_features(tail.logits, features, class_index, (size, size))
        theirs = compute_saliency(flat, inputs, "gradcam", class_index, layer)
        assert ours.shape == theirs.shape == (size, size)
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
        if theirs.std() > 0.01:  # a map that is not blank: the same picture
            assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99
            compared += 1
    assert compared >= 1  # at least one class gives a real map to compare


def test_the_trunk_shares_the_bases_layers_and_weights():
    base, head = random_classifier("vgg16", 64, "gap")
    trunk = build_trunk(base, "block5_conv3")
    assert trunk.get_layer("block1_conv1") is base.get_layer("block1_conv1")
    assert trunk.output.shape[1:] == base.get_layer("block5_conv3").output.shape[1:]
    resnet = build_base("resnet50", 32, "random", seed=1)
    assert build_trunk(resnet, "conv5_block3_out") is resnet  # nothing to cut
    inputs = keras.Input((8, 8, 3))
    flat = keras.layers.Flatten(name="flat")(keras.layers.Conv2D(2, 3, name="conv")(inputs))
    with pytest.raises(ValueError, match="not 4-D"):
        build_trunk(keras.Model(inputs, flat), "flat")
    with pytest.raises(ValueError, match="Dense"):
        build_tail(base, "block5_conv3", keras.Sequential([keras.Input((2, 2, 512)),
                                                           keras.layers.Flatten()]))


def test_lru_keeps_the_most_recent_entries():
    cache = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and "a" in cache and "c" in cache and len(cache) == 2
    with pytest.raises(ValueError, match="max_entries"):
        LRU(0)


def test_model_calls_run_on_one_model_thread():
    engine = Engine()
    names = {engine.call(lambda: threading.current_thread().name) for _ in range(3)}
    names.add(engine.submit(lambda: threading.current_thread().name).result())
    assert len(names) == 1 and next(iter(names)).startswith("xrcompare-model")
    # A call made from the model thread runs at once instead of waiting for itself.
    assert engine.call(lambda: engine.call(lambda: 42)) == 42
    with pytest.raises(ZeroDivisionError):
        engine.call(lambda: 1 / 0)


def test_array_digest_changes_with_values_shape_and_dtype():
    array = np.zeros((2, 3), np.float32)
    digest = engine_module.array_digest
    assert digest(array) == digest(array.copy())
    assert digest(array) != digest(array.reshape(3, 2))
    assert digest(array) != digest(array.astype(np.float64))
