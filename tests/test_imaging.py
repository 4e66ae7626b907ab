"""The one image → tensor path."""

from __future__ import annotations

import os
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
    check_decoded_bytes,
    decode_gray,
    fit_square,
    gray_from_array,
    header_size,
    jpeg_sample_layout,
    pad_box,
    png_sample_layout,
    read_bytes,
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


# --- bounded memory: decoded bytes, float copies, what a path may be ----------------------


def png_header_only(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A PNG whose IHDR announces an image but whose data is a stub (never decoded here)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
            + chunk(b"IEND", b""))


@pytest.fixture
def no_decoding(monkeypatch):
    """Make any OpenCV decode fail the test: refusals must come from the header alone."""
    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called: the image was decoded")

    monkeypatch.setattr(cv2, "imdecode", refuse)


def test_a_sixteen_bit_rgba_memory_bomb_under_the_pixel_cap_is_refused_before_decoding(
        no_decoding):
    # The probe's bomb: 8,900 × 8,900 = 79 MP (under MAX_PIXELS) but 16-bit RGBA: 634 MB.
    assert 8900 * 8900 < MAX_PIXELS
    with pytest.raises(ImageError, match=r"634 MB once decoded .*256 MB limit"):
        decode_gray(png_header_only(8900, 8900, 16, 6), "bomb.png")
    # 8-bit RGB at the same size (238 MB) is within the budget: the header check passes and
    # the (stubbed) decoder is reached.
    with pytest.raises(AssertionError, match="was decoded"):
        decode_gray(png_header_only(8900, 8900, 8, 2), "big.png")


def test_decoded_size_is_read_from_png_and_jpeg_headers():
    assert png_sample_layout(png_header_only(10, 10, 16, 6)) == (4, 2)
    assert png_sample_layout(png_header_only(10, 10, 8, 0)) == (1, 1)
    assert png_sample_layout(png_header_only(10, 10, 8, 3)) == (4, 1)  # palette: maybe RGBA
    path = next((DATA / "cxr3" / "covid").glob("*.jpg"))
    channels, sample_bytes = jpeg_sample_layout(path.read_bytes())
    assert channels in (1, 3) and sample_bytes == 1
    with pytest.raises(ImageError, match="MB once decoded"):
        check_decoded_bytes((8000, 8000), (3, 2), "wide.jpg")  # a 12-bit colour JPEG
    check_decoded_bytes((8000, 8000), (1, 1), "gray.jpg")  # 64 MB: fine


def reference_gray(image: np.ndarray) -> np.ndarray:
    """The conversion spelled out on the whole image at once (what the bands must equal)."""
    alpha = image[:, :, 3:4].astype(np.float32) / 65535.0
    composited = (image[:, :, :3].astype(np.float32) * alpha).astype(np.uint16)
    gray = cv2.cvtColor(composited, cv2.COLOR_BGR2GRAY).astype(np.float64)
    low, high = gray.min(), gray.max()
    return np.clip(np.rint((gray - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


def test_sixteen_bit_rgba_becomes_gray_without_float_copies_of_the_whole_image():
    import tracemalloc

    rng = np.random.default_rng(0)
    image = rng.integers(0, 65535, size=(1500, 1400, 4), dtype=np.uint16)  # 16.8 MB
    tracemalloc.start()
    try:
        gray = gray_from_array(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(gray, reference_gray(image))
    # One float32 RGB copy alone would be 25 MB (the old path made several, over 60 MB);
    # the banded path holds the 16-bit gray (4.2 MB), the output (2.1 MB) and one band's
    # temporaries (about 8 MB).
    assert peak < 20_000_000, f"{peak / 1e6:.1f} MB"


def test_float_images_keep_their_stretch_and_non_finite_values():
    image = np.array([[np.nan, 1.0, 3.0], [np.inf, -np.inf, 2.0]], dtype=np.float32)
    gray = gray_from_array(image)
    assert gray[0].tolist() == [0, 0, 255] and gray[1, 2] == 128
    with pytest.raises(ImageError, match="no finite"):
        gray_from_array(np.full((4, 4), np.nan, np.float32))


def test_read_bytes_refuses_devices_pipes_folders_and_oversized_files(tmp_path):
    with pytest.raises(ImageError, match="not a regular file"):
        read_bytes("/dev/zero")  # would never end
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        read_bytes(fifo)  # would block forever waiting for a writer
    with pytest.raises(ImageError, match="not a regular file"):
        read_bytes(tmp_path)
    big = tmp_path / "big.png"
    big.write_bytes(b"x" * 101)
    with pytest.raises(ImageError, match="larger than"):
        read_bytes(big, limit=100)
    assert read_bytes(big, limit=101) == b"x" * 101
    with pytest.raises(ImageError, match="cannot read missing.png"):
        read_bytes(tmp_path / "missing.png")
