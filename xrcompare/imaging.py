"""The one place that decides how an image becomes a model input.

Training, evaluation, the CLI and the upload page all call :func:`read_gray` (or decode
their bytes to the same 8-bit grayscale array) and then :func:`to_model_input`, so
training and prediction cannot drift apart. The backbone's own ``preprocess_input``
is applied afterwards by :mod:`xrcompare.backbones`, on a copy.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: How an image is fitted to the square model input.
RESIZE_MODES = ("squash", "pad")

#: Images with more pixels than this are refused before decoding (decompression bombs).
MAX_PIXELS = 80_000_000


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


class ImageError(ValueError):
    """An image that cannot be used, with a message fit to show a user."""


def gray_from_array(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, BGR, BGRA; 8 or 16 bit; float) → 8-bit grayscale (H, W)."""
    if image is None or image.size == 0:
        raise ImageError("the image has no pixels")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3:
        if array.shape[2] == 4:
            # Composite transparent pixels onto black, as the shared data was prepared.
            alpha = array[:, :, 3:4].astype(np.float32) / float(np.iinfo(array.dtype).max
                                                               if array.dtype.kind in "ui" else 1.0)
            array = (array[:, :, :3].astype(np.float32) * alpha).astype(array.dtype)
        elif array.shape[2] != 3:
            raise ImageError(f"unsupported number of channels: {array.shape[2]}")
        array = cv2.cvtColor(array, cv2.COLOR_BGR2GRAY)
    if array.ndim != 2:
        raise ImageError(f"unsupported image shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    # 16-bit or float data: stretch its own range to 0..255.
    data = array.astype(np.float64)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        raise ImageError("the image holds no finite pixel values")
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(data, nan=low) - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# --- headers: the size an image announces, read before decoding -------------------------


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the PNG IHDR chunk, or None if the header is malformed."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def jpeg_header(data: bytes) -> tuple[tuple[int, int] | None, int | None]:
    """Walk the JPEG segments: ((width, height) from the first SOF, offset of the first SOS).

    Walking (rather than searching) skips thumbnails embedded in EXIF segments.
    """
    size, position = None, 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return size, None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            position += 2
            continue
        if marker == 0xDA:
            return size, position
        if marker == 0xD9:
            return size, None
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        is_frame = 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)
        if is_frame and size is None and position + 9 <= len(data):
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            size = (width, height)
        position += 2 + length
    return size, None


def check_pixel_count(size: tuple[int, int], name: str) -> None:
    """Refuse images whose header announces more than MAX_PIXELS pixels."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{name} is {width:,} × {height:,} pixels ({width * height / 1e6:,.0f} megapixels), "
            f"more than the {MAX_PIXELS / 1e6:.0f} megapixel limit."
        )


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) announced by a PNG or JPEG header; None for other or damaged data."""
    if data.startswith(PNG_SIGNATURE):
        return png_size(data)
    if data.startswith(JPEG_SIGNATURE):
        return jpeg_header(data)[0]
    return None


# --- decoding ---------------------------------------------------------------------------


def decode_gray(data: bytes, name: str = "image") -> np.ndarray:
    """Decode PNG/JPEG bytes as 8-bit grayscale (H, W); raise :class:`ImageError` if unusable.

    A PNG/JPEG header announcing more than :data:`MAX_PIXELS` pixels is refused before
    decoding; anything OpenCV cannot decode (or refuses with ``cv2.error``) is unreadable.
    """
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    size = header_size(data)
    if size is not None:
        check_pixel_count(size, name)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # e.g. a header OpenCV refuses (over its own pixel limit)
        image = None
    if image is None:
        raise ImageError(f"{name} is not a readable PNG/JPEG image")
    return gray_from_array(image)


def read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read {path.name}: {error.strerror or error}") from None


def read_gray(path: str | Path) -> np.ndarray:
    """Read an image file as 8-bit grayscale (H, W); raise :class:`ImageError` if unusable."""
    return decode_gray(read_bytes(path), Path(path).name)


def fit_square(gray: np.ndarray, size: int, resize_mode: str = "squash") -> np.ndarray:
    """Resize an 8-bit gray image to (size, size): squashed, or aspect kept with black padding."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    height, width = gray.shape[:2]
    if resize_mode == "squash":
        interpolation = cv2.INTER_AREA if height * width > size * size else cv2.INTER_LINEAR
        return cv2.resize(gray, (size, size), interpolation=interpolation)
    top, left, new_h, new_w = pad_box(height, width, size)
    interpolation = cv2.INTER_AREA if max(height, width) > size else cv2.INTER_LINEAR
    resized = cv2.resize(gray, (new_w, new_h), interpolation=interpolation)
    canvas = np.zeros((size, size), dtype=np.uint8)
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


def pad_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Where ``"pad"`` mode puts a (height, width) image in the (size, size) square:
    (top, left, new_height, new_width) of the resized image, the rest being black bars."""
    if min(height, width, size) < 1:
        raise ValueError(f"sizes must be positive, got {height}×{width} into {size}")
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def to_model_input(gray: np.ndarray, size: int, resize_mode: str = "squash") -> np.ndarray:
    """8-bit gray (H, W) → float32 (size, size, 3) RGB in 0..255, before ``preprocess_input``."""
    square = fit_square(gray, size, resize_mode)
    return np.repeat(square[:, :, None], 3, axis=2).astype(np.float32)


def load_model_input(path: str | Path, size: int, resize_mode: str = "squash") -> np.ndarray:
    """Read a file and return its model input (see :func:`to_model_input`)."""
    return to_model_input(read_gray(path), size, resize_mode)
