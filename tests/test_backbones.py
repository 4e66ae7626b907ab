"""The registry and where ImageNet weights come from."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import WEIGHTS

from xrcompare.backbones import (
    REGISTRY,
    WeightsUnavailable,
    build_base,
    get_backbone,
    weights_status,
)


def test_registry_holds_the_issue_backbones():
    assert {"vgg16", "vgg19", "resnet50", "resnet101", "resnet152", "resnet50v2",
            "xception", "densenet121", "mobilenetv2"} <= set(REGISTRY)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_backbone_builds_with_its_last_conv_layer_and_parameter_count(name):
    # Built without weights at the smallest input it takes: the convolutional base has the same
    # parameters at every input size, so the registry's count (the leaderboard's "base params")
    # is checked here, and so is the Grad-CAM layer.
    backbone = get_backbone(name)
    base = build_base(name, backbone.min_size, "random")
    assert base.get_layer(backbone.last_conv_layer) is not None
    assert len(base.output.shape) == 4
    assert base.count_params() == backbone.base_params


def test_names_are_forgiving_but_unknown_ones_say_what_exists():
    assert get_backbone("ResNet-50").name == "resnet50"
    with pytest.raises(ValueError, match="choose from vgg16"):
        get_backbone("alexnet")


def test_preprocess_works_on_a_copy():
    batch = np.full((1, 8, 8, 3), 100.0, dtype=np.float32)
    out = get_backbone("resnet50").preprocess(batch)
    assert np.all(batch == 100.0)
    assert not np.allclose(out, batch)


def test_weights_status_with_and_without_a_local_file(monkeypatch, tmp_path):
    monkeypatch.setenv("XRCOMPARE_WEIGHTS_DIR", str(WEIGHTS))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    assert weights_status("resnet50").source == "file"
    vgg = weights_status("vgg16")
    assert not vgg.available and "vgg16_imagenet_notop.weights.h5" in vgg.detail
    monkeypatch.delenv("XRCOMPARE_WEIGHTS_DIR")
    assert weights_status("vgg16").source == "download"


def test_missing_weights_give_one_clear_line_naming_variable_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("XRCOMPARE_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    with pytest.raises(WeightsUnavailable) as error:
        build_base("vgg16", 32)
    message = str(error.value)
    assert "XRCOMPARE_WEIGHTS_DIR" in message and "vgg16_imagenet_notop.weights.h5" in message
    assert "\n" not in message


def test_real_resnet50_imagenet_weights_load_and_differ_from_random():
    imagenet = build_base("resnet50", 64)
    random = build_base("resnet50", 64, "random")
    assert not imagenet.trainable
    kernel = imagenet.get_layer("conv1_conv").get_weights()[0]
    assert not np.allclose(kernel, random.get_layer("conv1_conv").get_weights()[0])
    # ImageNet first-layer filters are smooth edge/colour detectors with a known scale.
    assert 0.05 < float(np.abs(kernel).mean()) < 0.5
