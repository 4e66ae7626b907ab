"""The Predict page's first results after a start, before Keras is loaded: the image-to-tensor
path in NumPy (bit for bit Keras's ``preprocess_input``), the head and the rest of the base in
NumPy (equal to the Keras tail), and the trunk straight from its converted model on disk
(:meth:`xrcompare.engine.Engine.early_trunk`), on real images and real ImageNet weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from xrcompare.backbones import PREPROCESS_STYLES, REGISTRY, get_backbone, imagenet_preprocess
from xrcompare.engine import Engine, build_after, max_pool, numpy_tail
from xrcompare.imaging import read_gray
from xrcompare.predictor import list_samples
from xrcompare.runs import load_run
from xrcompare.train import HEADS, build_head, head_probabilities

TRAINED = REPO / "trained"


@pytest.mark.parametrize("module", sorted(PREPROCESS_STYLES))
def test_numpy_preprocessing_is_keras_preprocess_input_bit_for_bit(module):
    import keras

    batch = np.random.default_rng(3).integers(0, 256, (2, 9, 7, 3)).astype(np.float32)
    kept = batch.copy()
    expected = getattr(keras.applications, module).preprocess_input(batch.copy())
    got = imagenet_preprocess(batch, PREPROCESS_STYLES[module])
    assert got.dtype == np.float32 and np.array_equal(got, np.asarray(expected))
    assert np.array_equal(batch, kept)  # the caller's array is untouched


def test_every_registered_backbone_has_a_preprocessing_style():
    assert {backbone.module for backbone in REGISTRY.values()} <= set(PREPROCESS_STYLES)
    with pytest.raises(ValueError, match="unknown preprocessing style"):
        imagenet_preprocess(np.zeros((1, 2, 2, 3)), "imagenet")


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("shape", [(7, 7, 32), (10, 10, 16), (3, 5, 8)])
def test_numpy_head_equals_the_keras_head(kind, shape):
    head = build_head(kind, shape, 4)
    rng = np.random.default_rng(5)
    head.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                      for w in head.get_weights()])
    arrays = {layer.name: [np.asarray(w) for w in layer.get_weights()]
              for layer in head.layers if layer.get_weights()}
    features = rng.normal(0, 1, (3, *shape)).astype(np.float32)
    expected = np.asarray(head.predict_on_batch(features))
    got = head_probabilities(kind, arrays, features)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)


def test_max_pool_is_keras_max_pooling():
    import keras

    features = np.random.default_rng(1).normal(size=(2, 15, 14, 3)).astype(np.float32)
    expected = keras.layers.MaxPooling2D(2)(features)
    np.testing.assert_array_equal(max_pool(features, 2), np.asarray(expected))


@pytest.mark.parametrize("run_id", ["resnet50-cxr3", "vgg16-cxr3", "vgg16-seed001-blog2020",
                                    "xception-cxr3-299px"])
def test_numpy_tail_equals_the_keras_tail_of_shipped_runs(run_id):
    """The registry's ``pool_after_last_conv`` and the head in NumPy give the Keras tail's
    probabilities (VGG16: block5_pool then the head; both head kinds)."""
    run = load_run(TRAINED / run_id)
    engine = Engine(engine="keras")
    shape = tuple(engine.trunk(run).output.shape[1:])
    pool = get_backbone(run.backbone).pool_after_last_conv
    after = build_after(engine.base(run), run.last_conv_layer)
    if pool:  # the base after the trunk is one max pool of that size, nothing else
        assert [type(layer).__name__ for layer in after.layers[1:]] == ["MaxPooling2D"]
        assert after.layers[1].pool_size == (pool, pool) == after.layers[1].strides
    else:
        assert after is None
    features = np.abs(np.random.default_rng(7).normal(0, 2, (3, *shape))).astype(np.float32)
    expected = engine.tail(run).probabilities(features)
    np.testing.assert_allclose(numpy_tail(run, features), expected, atol=2e-6)


FIRST_RESULTS = """
import json, sys, time
from xrcompare.engine import Engine
from xrcompare.imaging import read_gray
from xrcompare.runs import load_run
engine = Engine(engine="openvino")
out = {}
for run_id in sys.argv[2:]:
    run = load_run(sys.argv[1] + "/" + run_id)
    started = time.perf_counter()
    scores = engine.probabilities(run, read_gray(SAMPLE))
    out[run_id] = {"scores": scores, "label": engine.engine_label(run),
                   "seconds": time.perf_counter() - started}
out["loaded"] = sorted(name for name in ("keras", "tensorflow", "sklearn") if name in sys.modules)
print(json.dumps(out))
"""


def test_first_results_need_no_keras_and_match_the_warmed_up_engine():
    """With the converted trunks on disk (a previous start made them), a fresh process gets
    ResNet50's and VGG16's probabilities without importing Keras or TensorFlow, and they
    match the engine after its warm-up (Keras trunk built, then moved to the same engine)."""
    from xrcompare.inference_engine import choose

    if choose("openvino")[0] != "openvino":
        pytest.fail("OpenVINO is a requirement: it must run here")
    runs = [load_run(TRAINED / run_id) for run_id in ("resnet50-cxr3", "vgg16-cxr3")]
    sample = list_samples()[0].path
    warmed = Engine(engine="openvino")
    warmed.warm_up(runs)
    assert all(warmed.engine_label(run).startswith("OpenVINO") for run in runs)
    expected = {run.run_id: warmed.probabilities(run, read_gray(sample)) for run in runs}

    code = FIRST_RESULTS.replace("SAMPLE", repr(str(sample)))
    result = subprocess.run([sys.executable, "-c", code, str(TRAINED),
                             *(run.run_id for run in runs)], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["loaded"] == []  # neither Keras nor TensorFlow (nor scikit-learn)
    for run in runs:
        got = found[run.run_id]
        assert got["label"].startswith("OpenVINO")
        assert max(got["scores"], key=got["scores"].get) == \
            max(expected[run.run_id], key=expected[run.run_id].get)
        for label in run.labels:
            assert abs(got["scores"][label] - expected[run.run_id][label]) < 1e-4


def test_runs_that_need_keras_get_no_early_trunk():
    """A random-init control, a fine-tuned run, and the Keras engine choice go through
    Keras; so does a run whose Keras trunk is already built."""
    engine = Engine(engine="openvino")
    for run_id in ("resnet50-cxr3-random-control", "vgg16-cxr3-finetune"):
        assert engine.early_trunk(load_run(TRAINED / run_id)) is None
    run = load_run(TRAINED / "resnet50-cxr3")
    assert Engine(engine="keras").early_trunk(run) is None
    engine.trunk(run)
    assert engine.early_trunk(run) is None


@pytest.mark.parametrize("mode", ["backbone", "scale01"])
@pytest.mark.parametrize("name", ["resnet50", "xception", "densenet121"])
def test_preprocessing_in_place_gives_what_the_copy_gives(name, mode):
    backbone = get_backbone(name)
    batch = np.random.default_rng(2).integers(0, 256, (2, 5, 4, 3)).astype(np.float32)
    expected = backbone.preprocess(batch, mode)
    own = batch.copy()
    got = backbone.preprocess(own, mode, copy=False)
    assert got is own and np.array_equal(got, expected)
