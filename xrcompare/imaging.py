"""The one place that decides how an image becomes a model input.

Training, evaluation, the CLI and the upload page all call :func:`read_gray` (or decode
their bytes to the same 8-bit grayscale array) and then :func:`to_model_square` (fit to the
square input, then the run's mask, if any), so training, prediction and saliency cannot drift
apart. From that 8-bit square, :func:`to_model_input` gives the float32 RGB a Keras model's
``preprocess_input`` takes (applied by :mod:`xrcompare.backbones`, on a copy); the inference
engines take the squares themselves (:mod:`xrcompare.inference_engine`).
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: How an image is fitted to the square model input.
RESIZE_MODES = ("squash", "pad")

#: Masked-input controls (after Maguolo & Nanni 2021): ``"none"`` keeps the whole square input;
#: ``"lungs-out"`` blacks out :data:`LUNG_BOX` (the lung fields); ``"lungs-only"`` keeps only
#: that box and blacks out the borders and corners, where burned-in text and markers sit.
MASK_MODES = ("none", "lungs-out", "lungs-only")
#: The default: no mask.
NO_MASK = "none"
#: The central box over the lung fields, as fractions of the square model input
#: (left, top, right, bottom): x 0.12–0.88, y 0.10–0.90. Chosen by looking at squashed cxr3
#: (adults and children) and kaggle_test images: it covers both lung fields, the heart and the
#: mediastinum, and leaves out the corners and edges where the "R"/"L" markers, arrows and
#: captions sit (the Dataset page draws it over real images).
LUNG_BOX = (0.12, 0.10, 0.88, 0.90)

#: Images with more pixels than this are refused before decoding (decompression bombs).
MAX_PIXELS = 80_000_000
#: Images whose decoded pixels would take more bytes than this (pixels × channels × bytes per
#: sample, read from the header) are refused before decoding: a 16-bit RGBA PNG under the
#: pixel limit can still need gigabytes.
MAX_DECODED_BYTES = 256_000_000
#: Files larger than this are refused without being read whole (uploads, CLI, training).
MAX_FILE_BYTES = 50_000_000
#: Large images are converted to gray in bands of about this many pixels, so no float copy
#: of a whole image is ever made.
CHUNK_PIXELS = 1 << 18


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


class ImageError(ValueError):
    """An image that cannot be used, with a message fit to show a user."""


def _row_bands(height: int, width: int):
    """Row slices covering an image in bands of about :data:`CHUNK_PIXELS` pixels."""
    rows = max(1, CHUNK_PIXELS // max(1, width))
    for start in range(0, height, rows):
        yield slice(start, min(height, start + rows))


def gray_from_array(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, BGR, BGRA; 8 or 16 bit; float) → 8-bit grayscale (H, W).

    Colour conversion, alpha compositing and the 16-bit stretch run in bands of rows, so the
    extra memory is about one output image, never a float copy of the whole input.
    """
    if image is None or image.size == 0:
        raise ImageError("the image has no pixels")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3:
        channels = array.shape[2]
        if channels not in (3, 4):
            raise ImageError(f"unsupported number of channels: {channels}")
        full_scale = float(np.iinfo(array.dtype).max) if array.dtype.kind in "ui" else 1.0
        gray = np.empty(array.shape[:2], dtype=array.dtype)
        for rows in _row_bands(*array.shape[:2]):
            band = array[rows]
            if channels == 4:
                # Composite transparent pixels onto black, as the shared data was prepared.
                alpha = band[:, :, 3:4].astype(np.float32) / full_scale
                band = (band[:, :, :3].astype(np.float32) * alpha).astype(array.dtype)
            gray[rows] = cv2.cvtColor(np.ascontiguousarray(band), cv2.COLOR_BGR2GRAY)
        array = gray
    if array.ndim != 2:
        raise ImageError(f"unsupported image shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    # 16-bit or float data: stretch its own range to 0..255.
    low, high = _finite_range(array)
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    result = np.empty(array.shape, dtype=np.uint8)
    for rows in _row_bands(*array.shape):
        data = array[rows].astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # ±inf: clipped to 0 or 255
            scaled = (np.nan_to_num(data, nan=low) - low) / (high - low) * 255.0
        result[rows] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return result


def _finite_range(array: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values of a 2-D array, band by band; ImageError if none."""
    low, high = np.inf, -np.inf
    for rows in _row_bands(*array.shape):
        band = array[rows]
        if band.dtype.kind == "f":
            band = band[np.isfinite(band)]
        if band.size:
            low, high = min(low, float(band.min())), max(high, float(band.max()))
    if low > high:
        raise ImageError("the image holds no finite pixel values")
    return low, high


# --- headers: the size an image announces, read before decoding -------------------------


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the PNG IHDR chunk, or None if the header is malformed."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


#: Channels OpenCV decodes per PNG colour type (gray, RGB, palette, gray+alpha, RGBA); a
#: palette may carry transparency, so it counts as four.
PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}


def png_sample_layout(data: bytes) -> tuple[int, int] | None:
    """(channels, bytes per sample) a PNG decodes to, from IHDR; None if malformed."""
    if len(data) < 26 or data[12:16] != b"IHDR":
        return None
    bit_depth, colour_type = data[24], data[25]
    return PNG_CHANNELS.get(colour_type, 4), 2 if bit_depth > 8 else 1


def jpeg_header(data: bytes) -> tuple[tuple[int, int] | None, int | None]:
    """Walk the JPEG segments: ((width, height) from the first SOF, offset of the first SOS).

    Walking (rather than searching) skips thumbnails embedded in EXIF segments.
    """
    size, _, scan = _walk_jpeg(data)
    return size, scan


def jpeg_sample_layout(data: bytes) -> tuple[int, int] | None:
    """(channels, bytes per sample) from the first JPEG frame header (SOF); None if none."""
    return _walk_jpeg(data)[1]


def _walk_jpeg(data: bytes):
    """((width, height), (components, bytes per sample), offset of the first SOS)."""
    size, layout, position = None, None, 2
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
            return size, layout, position
        if marker == 0xD9:
            return size, layout, None
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        is_frame = 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)
        if is_frame and size is None and position + 9 <= len(data):
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            size = (width, height)
            if position + 10 <= len(data):
                precision, components = data[position + 4], data[position + 9]
                layout = (max(1, components), 2 if precision > 8 else 1)
        position += 2 + length
    return size, layout, None


def check_pixel_count(size: tuple[int, int], name: str) -> None:
    """Refuse images whose header announces more than MAX_PIXELS pixels."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{name} is {width:,} × {height:,} pixels ({width * height / 1e6:,.0f} megapixels), "
            f"more than the {MAX_PIXELS / 1e6:.0f} megapixel limit."
        )


def check_decoded_bytes(size: tuple[int, int], layout: tuple[int, int] | None,
                        name: str, frames: int = 1) -> None:
    """Refuse images whose decoded pixels would need more than MAX_DECODED_BYTES.

    ``layout`` is (channels, bytes per sample) as announced by the header (None: assume one
    8-bit channel, the least an image can take).
    """
    width, height = size
    channels, sample_bytes = layout or (1, 1)
    needed = width * height * channels * sample_bytes * max(1, frames)
    if needed > MAX_DECODED_BYTES:
        depth = f"{8 * sample_bytes}-bit, {channels} channel{'s' if channels != 1 else ''}"
        raise ImageError(
            f"{name} would take {needed / 1e6:,.0f} MB once decoded ({width:,} × {height:,} "
            f"pixels, {depth}), more than the {MAX_DECODED_BYTES / 1e6:.0f} MB limit; please "
            "use a smaller or 8-bit grayscale image.")


def check_header(data: bytes, name: str) -> tuple[int, int] | None:
    """Check a PNG/JPEG header against the pixel and decoded-byte limits before decoding;
    return the announced (width, height), or None for other or damaged data."""
    if data.startswith(PNG_SIGNATURE):
        size, layout = png_size(data), png_sample_layout(data)
    elif data.startswith(JPEG_SIGNATURE):
        size, layout, _ = _walk_jpeg(data)
    else:
        return None
    if size is not None:
        check_pixel_count(size, name)
        check_decoded_bytes(size, layout, name)
    return size


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

    A PNG/JPEG header announcing more than :data:`MAX_PIXELS` pixels, or more than
    :data:`MAX_DECODED_BYTES` once decoded, is refused before decoding; anything OpenCV
    cannot decode (or refuses with ``cv2.error``) is unreadable.
    """
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    check_header(data, name)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # e.g. a header OpenCV refuses (over its own pixel limit)
        image = None
    if image is None:
        raise ImageError(f"{name} is not a readable PNG/JPEG image")
    return gray_from_array(image)


def read_bytes(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most ``limit`` of them; ImageError otherwise.

    Devices, FIFOs and folders are refused without reading (``/dev/zero`` never ends, a FIFO
    blocks), and a file larger than ``limit`` is refused after reading ``limit + 1`` bytes.
    """
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise ImageError(f"cannot read {path.name}: {error.strerror or error}") from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise ImageError(f"{path.name} is not a regular file (a folder, device or pipe); "
                             "give an image file")
        chunks, remaining = [], limit + 1
        while remaining > 0:
            chunk = os.read(descriptor, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as error:
        raise ImageError(f"cannot read {path.name}: {error.strerror or error}") from None
    finally:
        os.close(descriptor)
    data = b"".join(chunks)
    if len(data) > limit:
        raise ImageError(f"{path.name} is larger than the {limit / 1e6:.0f} MB limit for an "
                         "image file")
    return data


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


def mask_box(size: int, box: tuple[float, float, float, float] = LUNG_BOX
             ) -> tuple[int, int, int, int]:
    """:data:`LUNG_BOX` in pixels of a (size, size) input: (top, left, bottom, right), rows
    ``top:bottom`` and columns ``left:right``."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    left, top, right, bottom = box
    return (int(round(top * size)), int(round(left * size)), int(round(bottom * size)),
            int(round(right * size)))


def check_mask(mask: str) -> str:
    if mask not in MASK_MODES:
        raise ValueError(f"mask must be one of {', '.join(MASK_MODES)}, got {mask!r}")
    return mask


def apply_mask(square: np.ndarray, mask: str = NO_MASK) -> np.ndarray:
    """A square model input (S, S) or (S, S, C) with ``mask`` applied (a copy; black = 0):
    ``"lungs-out"`` zeroes :func:`mask_box`, ``"lungs-only"`` zeroes everything else,
    ``"none"`` returns the input unchanged."""
    check_mask(mask)
    if mask == NO_MASK:
        return square
    height, width = square.shape[:2]
    if height != width:
        raise ValueError(f"a mask needs a square input, got {height}×{width}")
    top, left, bottom, right = mask_box(height)
    if mask == "lungs-out":
        result = square.copy()
        result[top:bottom, left:right] = 0
        return result
    result = np.zeros_like(square)
    result[top:bottom, left:right] = square[top:bottom, left:right]
    return result


def to_model_square(gray: np.ndarray, size: int, resize_mode: str = "squash",
                    mask: str = NO_MASK) -> np.ndarray:
    """8-bit gray (H, W) → the 8-bit gray (size, size) square the model sees: fitted to the
    square (:func:`fit_square`), then masked (:func:`apply_mask`). What the inference
    engines take (:mod:`xrcompare.inference_engine`): each turns it into its model input."""
    return apply_mask(fit_square(gray, size, resize_mode), mask)


def to_model_input(gray: np.ndarray, size: int, resize_mode: str = "squash",
                   mask: str = NO_MASK) -> np.ndarray:
    """8-bit gray (H, W) → float32 (size, size, 3) RGB in 0..255, before ``preprocess_input``:
    :func:`to_model_square`, its gray value in each of the three channels."""
    return gray_to_rgb(to_model_square(gray, size, resize_mode, mask))


def gray_to_rgb(squares: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Gray squares (..., S, S) → (..., S, S, 3) RGB in 0..255 of ``dtype``, each channel the
    gray value: float32, the input of a backbone's ``preprocess_input``; uint8, an inference
    engine's (which preprocesses in its own graph)."""
    return np.repeat(np.asarray(squares)[..., None], 3, axis=-1).astype(dtype, copy=False)


def load_model_input(path: str | Path, size: int, resize_mode: str = "squash",
                     mask: str = NO_MASK) -> np.ndarray:
    """Read a file and return its model input (see :func:`to_model_input`)."""
    return to_model_input(read_gray(path), size, resize_mode, mask)
