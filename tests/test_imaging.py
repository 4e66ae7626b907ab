"""The one image → tensor path."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from conftest import DATA, FIXTURES

from xrcompare.imaging import (
    MAX_PIXELS,
    PNG_SIGNATURE,
    ImageError,
    decode_gray,
    fit_square,
    header_size,
    pad_box,
    read_gray,
    to_model_input,
)


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


# --- headers and decoding failures --------------------------------------------------------


def png_announcing(width: int, height: int) -> bytes:
    """A PNG whose header announces (width, height) but holds almost no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
            + chunk(b"IEND", b""))


def bmp_announcing(width: int, height: int) -> bytes:
    """A BMP (a format whose header imaging does not read) announcing (width, height)."""
    ok, encoded = cv2.imencode(".bmp", np.zeros((4, 4), np.uint8))
    data = bytearray(encoded.tobytes())
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def test_header_size_reads_png_and_jpeg():
    path = next((DATA / "cxr3" / "covid").glob("*.jpg"))
    gray = read_gray(path)
    assert header_size(path.read_bytes()) == (gray.shape[1], gray.shape[0])
    ok, encoded = cv2.imencode(".png", np.zeros((30, 70), np.uint8))
    assert header_size(encoded.tobytes()) == (70, 30)
    assert header_size(b"hello") is None


def test_a_huge_header_is_refused_before_decoding():
    with pytest.raises(ImageError, match="megapixel limit"):
        decode_gray(png_announcing(10_000, 10_000), "bomb.png")  # 100 MP > MAX_PIXELS
    assert 10_000 * 10_000 > MAX_PIXELS


def test_an_opencv_error_is_an_unreadable_image():
    # OpenCV raises cv2.error (not None) for a header over its own pixel limit.
    with pytest.raises(cv2.error):
        cv2.imdecode(np.frombuffer(bmp_announcing(50_000, 50_000), np.uint8),
                     cv2.IMREAD_UNCHANGED)
    with pytest.raises(ImageError, match="not a readable"):
        decode_gray(bmp_announcing(50_000, 50_000), "odd.bmp")


def test_bad_files_in_a_dataset_are_skipped_and_listed(tmp_path):
    from xrcompare.features import FeatureExtractor, FeatureSpec

    good = sorted((FIXTURES / "tiny_cxr" / "normal").glob("*.jpg"))[0]
    bomb, odd = tmp_path / "bomb.png", tmp_path / "odd.png"
    bomb.write_bytes(png_announcing(10_000, 10_000))
    odd.write_bytes(bmp_announcing(50_000, 50_000))
    result = FeatureExtractor(FeatureSpec("resnet50", 32), cache_dir=tmp_path).extract(
        [bomb, good, odd])
    assert result.ok == [1]
    reasons = dict(result.failed)
    assert "megapixel" in reasons[str(bomb)] and "not a readable" in reasons[str(odd)]


# --- the padding geometry ---------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "size"),
                         [(50, 200, 100), (200, 50, 100), (300, 301, 224), (7, 3, 224)])
def test_pad_box_is_where_fit_square_puts_the_image(height, width, size):
    top, left, new_h, new_w = pad_box(height, width, size)
    assert max(new_h, new_w) == size and top + new_h <= size and left + new_w <= size
    square = fit_square(np.full((height, width), 255, np.uint8), size, "pad")
    inside = np.zeros((size, size), bool)
    inside[top:top + new_h, left:left + new_w] = True
    assert square[inside].min() > 0 and square[~inside].max() == 0
    with pytest.raises(ValueError, match="positive"):
        pad_box(0, width, size)
