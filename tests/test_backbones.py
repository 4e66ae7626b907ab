"""The registry and where ImageNet weights come from."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import REPO, WEIGHTS

from xrcompare import backbones
from xrcompare.backbones import (
    REGISTRY,
    WeightsUnavailable,
    build_base,
    get_backbone,
    local_weights_file,
    weights_dirs,
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
    assert base.output.shape[-1] == backbone.feature_channels


def test_names_are_forgiving_but_unknown_ones_say_what_exists():
    assert get_backbone("ResNet-50").name == "resnet50"
    with pytest.raises(ValueError, match="choose from vgg16"):
        get_backbone("alexnet")


def test_preprocess_works_on_a_copy():
    batch = np.full((1, 8, 8, 3), 100.0, dtype=np.float32)
    out = get_backbone("resnet50").preprocess(batch)
    assert np.all(batch == 100.0)
    assert not np.allclose(out, batch)


def test_weights_status_with_and_without_a_local_file(resnet50_only_weights, monkeypatch):
    assert weights_status("resnet50").source == "file"
    vgg = weights_status("vgg16")
    assert not vgg.available and vgg.source == "missing"
    assert "vgg16_imagenet_notop.weights.h5" in vgg.detail
    assert str(resnet50_only_weights) in vgg.detail
    monkeypatch.delenv("XRCOMPARE_WEIGHTS_DIR")
    monkeypatch.setattr(backbones, "DEFAULT_WEIGHTS_DIRS", (resnet50_only_weights,))
    assert weights_status("vgg16").source == "download"


def link_weights(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        file_name = f"{name}_imagenet_notop.weights.h5"
        (folder / file_name).symlink_to(WEIGHTS / file_name)
    return folder


def test_several_folders_first_holding_the_file_wins(monkeypatch, tmp_path):
    first = link_weights(tmp_path / "first", "resnet50")
    second = link_weights(tmp_path / "second", "resnet50", "vgg16")
    absent = tmp_path / "absent"
    monkeypatch.setenv("XRCOMPARE_WEIGHTS_DIR", os.pathsep.join(map(str, [absent, first,
                                                                         second])))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    assert weights_dirs() == [absent, first, second]
    assert local_weights_file("resnet50") == first / "resnet50_imagenet_notop.weights.h5"
    assert local_weights_file("vgg16") == second / "vgg16_imagenet_notop.weights.h5"
    assert weights_status("vgg16").detail.endswith(str(second / "vgg16_imagenet_notop.weights.h5"))
    # A missing file: one line naming every folder searched, in order, and the variable.
    missing = weights_status("vgg19")
    assert not missing.available and "\n" not in missing.detail
    assert missing.detail.index(str(absent)) < missing.detail.index(str(first)) \
        < missing.detail.index(str(second))
    assert "XRCOMPARE_WEIGHTS_DIR" in missing.detail
    # build_base loads the FIRST folder's file: a damaged one there is reported, not skipped.
    (first / "resnet50_imagenet_notop.weights.h5").unlink()
    (first / "resnet50_imagenet_notop.weights.h5").write_bytes(b"not an HDF5 file")
    with pytest.raises(WeightsUnavailable, match=f"cannot load {first}"):
        build_base("resnet50", 32)


def test_unset_variable_searches_the_default_folders_that_exist(monkeypatch, tmp_path):
    assert backbones.DEFAULT_WEIGHTS_DIRS == (REPO / ".weights", REPO.parent / "shared" / "weights")
    monkeypatch.delenv("XRCOMPARE_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    # The real defaults: ../shared/weights beside the repository is searched.
    assert (WEIGHTS.resolve() in [folder.resolve() for folder in weights_dirs()])
    assert weights_status("resnet50").source == "file"
    # Only folders that exist, in order; a file in none of them falls back to Keras's download.
    project = tmp_path / "repo" / ".weights"
    shared = link_weights(tmp_path / "shared" / "weights", "resnet50", "vgg16")
    monkeypatch.setattr(backbones, "DEFAULT_WEIGHTS_DIRS", (project, shared))
    assert weights_dirs() == [shared]
    link_weights(project, "vgg16")
    assert weights_dirs() == [project, shared]
    assert local_weights_file("vgg16") == project / "vgg16_imagenet_notop.weights.h5"
    assert local_weights_file("resnet50") == shared / "resnet50_imagenet_notop.weights.h5"
    download = weights_status("vgg19")
    assert download.available and download.source == "download"
    assert str(project) in download.detail and str(shared) in download.detail


def test_missing_weights_give_one_clear_line_naming_variable_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("XRCOMPARE_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    with pytest.raises(WeightsUnavailable) as error:
        build_base("vgg16", 32)
    message = str(error.value)
    assert "XRCOMPARE_WEIGHTS_DIR" in message and "vgg16_imagenet_notop.weights.h5" in message
    assert str(tmp_path) in message
    assert "\n" not in message


def test_preprocess_scale01_is_x_over_255_and_unknown_modes_are_refused():
    batch = np.full((1, 4, 4, 3), 51.0, dtype=np.float32)
    scaled = get_backbone("vgg16").preprocess(batch, "scale01")
    assert np.allclose(scaled, 0.2) and np.all(batch == 51.0)
    assert not np.allclose(get_backbone("vgg16").preprocess(batch), scaled)
    with pytest.raises(ValueError, match="preprocess must be one of backbone, scale01"):
        get_backbone("vgg16").preprocess(batch, "imagenet")


def test_real_resnet50_imagenet_weights_load_and_differ_from_random():
    imagenet = build_base("resnet50", 64)
    random = build_base("resnet50", 64, "random")
    assert not imagenet.trainable
    kernel = imagenet.get_layer("conv1_conv").get_weights()[0]
    assert not np.allclose(kernel, random.get_layer("conv1_conv").get_weights()[0])
    # ImageNet first-layer filters are smooth edge/colour detectors with a known scale.
    assert 0.05 < float(np.abs(kernel).mean()) < 0.5
