"""Masked-input controls in the one image-to-tensor path: a mask changes the model input where
it should and nowhere else, in training views, evaluation and prediction alike."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, FIXTURES

from xrcompare.charts import mask_examples
from xrcompare.config import TrainConfig, add_train_arguments, config_from_arguments
from xrcompare.features import FeatureExtractor, FeatureSpec
from xrcompare.imaging import (
    LUNG_BOX,
    MASK_MODES,
    apply_mask,
    mask_box,
    read_gray,
    to_model_input,
)

TINY = FIXTURES / "tiny_cxr"


def noisy_image(height=300, width=260, seed=0) -> np.ndarray:
    """Every pixel bright and distinct from black, so a zeroed pixel is always a change."""
    return np.random.default_rng(seed).integers(30, 256, size=(height, width), dtype=np.uint8)


def inside(size: int) -> np.ndarray:
    top, left, bottom, right = mask_box(size)
    region = np.zeros((size, size), dtype=bool)
    region[top:bottom, left:right] = True
    return region


@pytest.mark.parametrize("size", [64, 224, 299])
def test_the_box_is_the_documented_fractions_of_the_square(size):
    top, left, bottom, right = mask_box(size)
    assert (left, top, right, bottom) == tuple(round(f * size) for f in LUNG_BOX)
    assert 0 < left < right < size and 0 < top < bottom < size
    assert LUNG_BOX == (0.12, 0.10, 0.88, 0.90)


@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("resize_mode", ["squash", "pad"])
def test_a_mask_changes_the_model_input_where_it_should_and_nowhere_else(size, resize_mode):
    gray = noisy_image()
    plain = to_model_input(gray, size, resize_mode)
    region = inside(size)
    lit = plain[:, :, 0] > 0  # pad mode's bars are black already: nothing to change there
    out = to_model_input(gray, size, resize_mode, "lungs-out")
    only = to_model_input(gray, size, resize_mode, "lungs-only")
    changed_out = np.any(out != plain, axis=2)
    changed_only = np.any(only != plain, axis=2)
    # lungs-out: every lit pixel inside the box is now black, nothing outside moved
    assert np.array_equal(changed_out, region & lit)
    assert np.all(out[region] == 0) and np.array_equal(out[~region], plain[~region])
    # lungs-only: the exact complement
    assert np.array_equal(changed_only, ~region & lit)
    assert np.all(only[~region] == 0) and np.array_equal(only[region], plain[region])
    assert np.array_equal(to_model_input(gray, size, resize_mode, "none"), plain)
    assert out.dtype == np.float32 and out.shape == (size, size, 3)


def test_apply_mask_copies_and_refuses_unknown_or_non_square_input():
    square = np.full((50, 50), 200, dtype=np.uint8)
    masked = apply_mask(square, "lungs-out")
    assert square.min() == 200 and masked.min() == 0  # the input is left alone
    assert apply_mask(square, "none") is square
    with pytest.raises(ValueError, match="mask must be one of none, lungs-out, lungs-only"):
        apply_mask(square, "heart-only")
    with pytest.raises(ValueError, match="square"):
        apply_mask(np.zeros((40, 50), np.uint8), "lungs-only")


def test_the_feature_spec_key_adds_the_mask_only_when_there_is_one():
    plain = FeatureSpec("resnet50", 224)
    assert plain.key() == "resnet50-imagenet-224px-squash"  # old caches stay valid
    assert FeatureSpec("resnet50", 224, mask="none").key() == plain.key()
    keys = {FeatureSpec("resnet50", 224, mask=mask).key() for mask in MASK_MODES}
    assert keys == {plain.key(), f"{plain.key()}-mask-lungs-out",
                    f"{plain.key()}-mask-lungs-only"}


@pytest.mark.parametrize("augment", ["mild", "blog"])
def test_training_views_keep_the_mask_in_place(augment):
    """Augmented views (rotations before or after the resize) are masked after augmenting:
    the box stays black (lungs-out) or the frame stays black (lungs-only)."""
    data = (TINY / "covid").glob("*.jpg").__next__().read_bytes()
    size = 64
    region = inside(size)
    for mask in ("lungs-out", "lungs-only"):
        extractor = FeatureExtractor(FeatureSpec("resnet50", size, augment=augment, mask=mask))
        for view in (0, 1, 2):
            picture = extractor._model_square(data, "x.jpg", "ab" * 32, view)
            hidden = region if mask == "lungs-out" else ~region
            assert np.all(picture[hidden] == 0), (mask, view)
            assert picture[~hidden].max() > 0


def test_masks_on_real_images_leave_the_markers_outside_the_box():
    """On a real Kermany image with an "R" marker near the edge, lungs-only removes the
    edge; the examples drawn on the Dataset page come from the same path."""
    gray = read_gray(sorted((DATA / "kaggle_test" / "NORMAL").glob("*.jpg"))[0])
    pictures = mask_examples(gray, 224)
    assert set(pictures) == {"box", "lungs-out", "lungs-only"}
    region = inside(224)
    for picture in pictures.values():
        assert picture.shape == (224, 224, 3) and picture.dtype == np.uint8
    # away from the drawn outline, the masked pictures are the model inputs
    core = np.zeros_like(region)
    core[30:194, 34:190] = True
    assert np.all(pictures["lungs-out"][core & region] == 0)
    expected = to_model_input(gray, 224, "squash", "lungs-only").astype(np.uint8)
    assert np.array_equal(pictures["lungs-only"][core], expected[core])


def test_the_mask_is_a_training_setting_with_its_flag_and_choices():
    import argparse

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--data", str(TINY), "--backbone", "resnet50", "--mask",
                              "lungs-only"])
    config = config_from_arguments(args)
    assert config.mask == "lungs-only" and config.is_control
    assert TrainConfig(data=TINY, backbones=["resnet50"]).mask == "none"
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", str(TINY), "--backbone", "resnet50", "--mask", "eyes"])
    config.mask = "eyes"
    with pytest.raises(ValueError, match="mask must be one of none, lungs-out, lungs-only"):
        config.validate()
