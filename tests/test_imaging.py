"""The one image → tensor path."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import DATA

from xrcompare.imaging import ImageError, decode_gray, fit_square, read_gray, to_model_input


def test_real_jpeg_becomes_a_square_three_channel_float_input():
    path = next((DATA / "cxr3" / "covid").glob("*.jpg"))
    gray = read_gray(path)
    assert gray.dtype == np.uint8 and gray.ndim == 2
    tensor = to_model_input(gray, 224)
    assert tensor.shape == (224, 224, 3) and tensor.dtype == np.float32
    assert np.array_equal(tensor[..., 0], tensor[..., 2])
    assert 0 <= tensor.min() and tensor.max() <= 255


def test_pad_keeps_aspect_ratio_with_black_borders():
    wide = np.full((50, 200), 200, dtype=np.uint8)
    padded = fit_square(wide, 100, "pad")
    assert padded.shape == (100, 100)
    assert padded[0].max() == 0 and padded[50].min() == 200
    assert fit_square(wide, 100, "squash").min() == 200
    with pytest.raises(ValueError, match="resize_mode"):
        fit_square(wide, 100, "crop")


def test_sixteen_bit_png_is_stretched_to_eight_bits():
    ramp = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    ok, encoded = cv2.imencode(".png", ramp)
    gray = decode_gray(encoded.tobytes(), "ramp.png")
    assert gray.dtype == np.uint8 and gray.min() == 0 and gray.max() == 255


def test_unreadable_bytes_raise_image_error():
    with pytest.raises(ImageError, match="empty"):
        decode_gray(b"", "empty.png")
    with pytest.raises(ImageError, match="not a readable"):
        decode_gray(b"hello, not an image", "notes.png")
