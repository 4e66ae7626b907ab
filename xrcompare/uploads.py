"""Turn any file a user drops on the upload page into an 8-bit grayscale image.

:func:`load_upload` accepts PNG, JPEG and DICOM bytes. It refuses unusable input with an
:class:`~xrcompare.imaging.ImageError` whose message is one readable sentence, and
collects softer problems (small, huge, colourful, odd DICOM settings) as warnings.
Decoding to gray goes through :func:`xrcompare.imaging.gray_from_array`, as training does.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import PurePath

import cv2
import numpy as np

from xrcompare.imaging import (  # the header readers live with the decoder
    JPEG_SIGNATURE,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    PNG_SIGNATURE,
    ImageError,
    check_decoded_bytes,
    check_pixel_count,
    gray_from_array,
    jpeg_header,
    jpeg_sample_layout,
    png_sample_layout,
    png_size,
)

#: Uploads larger than this are refused before any parsing.
MAX_UPLOAD_BYTES = MAX_FILE_BYTES
#: Decoded images are downscaled so that their longest side is at most this.
MAX_SIDE = 2048
#: Images with a side shorter than this are refused.
MIN_SIDE = 32
#: Images with a side shorter than this get a warning.
SMALL_SIDE = 128
#: Mean colourfulness (pixel chroma, 0..1) above which a colour image gets a warning.
COLOUR_WARNING_LEVEL = 0.10

PNG_END_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"

# Formats we recognise only to name them in the refusal message.
OTHER_SIGNATURES = (
    (b"%PDF", "a PDF document"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
)
ACCEPTED = "please upload a PNG, JPEG or DICOM image"


@dataclass(frozen=True)
class UploadedImage:
    """An upload decoded to 8-bit grayscale, with warnings and facts worth showing."""

    gray: np.ndarray
    warnings: tuple[str, ...] = ()
    info: dict = field(default_factory=dict)


def load_upload(data: bytes, filename: str) -> UploadedImage:
    """Decode uploaded bytes (PNG, JPEG or DICOM) to an :class:`UploadedImage`.

    Raises :class:`~xrcompare.imaging.ImageError` with a one-sentence message for input
    that cannot be used.
    """
    name = PurePath(filename or "upload").name or "upload"
    data = bytes(data or b"")
    if not data:
        raise ImageError(f"{name} is empty (0 bytes); {ACCEPTED}.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(
            f"{name} is {len(data) / 1e6:.0f} MB, larger than the "
            f"{MAX_UPLOAD_BYTES / 1e6:.0f} MB upload limit."
        )

    if data[128:132] == b"DICM":
        color, info, warnings = decode_dicom(data, name)
    elif data.startswith(PNG_SIGNATURE):
        color, info, warnings = decode_png(data, name)
    elif data.startswith(JPEG_SIGNATURE):
        color, info, warnings = decode_jpeg(data, name)
    elif name.lower().endswith((".dcm", ".dicom")):
        # DICOM without the 128-byte preamble and magic: try it, but trust it less.
        color, info, warnings = decode_dicom(data, name, forced=True)
    else:
        raise ImageError(f"{name} is {describe_unknown(data)}, not an image we can read; "
                         f"{ACCEPTED}.")

    info = {"filename": name, "bytes": len(data), **info}
    warnings = list(warnings)
    height, width = color.shape[:2]
    width, height = info.pop("decoded_from", (width, height))  # DICOM reduced while decoding
    info["original_size"] = (width, height)
    check_size(width, height, name, warnings)

    saturation = mean_saturation(color)
    info["mean_saturation"] = round(saturation, 4)
    if saturation > COLOUR_WARNING_LEVEL:
        warnings.append(
            "This is a colour image (mean saturation "
            f"{saturation:.0%}), so it is probably not an X-ray; the models only saw "
            "grayscale chest X-rays and their output on it means nothing."
        )

    gray = gray_from_array(color)
    del color  # the decoded original can be large: free it before resizing
    gray, downscaled = limit_side(gray, MAX_SIDE)
    downscaled = downscaled or (width, height) != (gray.shape[1], gray.shape[0])
    info["downscaled"] = downscaled
    info["size"] = (gray.shape[1], gray.shape[0])
    if downscaled:
        warnings.append(
            f"The image is {width} × {height} pixels; it was reduced to "
            f"{gray.shape[1]} × {gray.shape[0]} (longest side {MAX_SIDE}) before analysis."
        )
    if int(gray.max()) == int(gray.min()):
        warnings.append("The image is a single flat shade with no detail to analyse.")
    return UploadedImage(gray=gray, warnings=tuple(warnings), info=info)


# --- sniffing ---------------------------------------------------------------------------


def describe_unknown(data: bytes) -> str:
    """A few words naming what an unsupported file seems to be."""
    for signature, description in OTHER_SIGNATURES:
        if data.startswith(signature):
            return description
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WebP image"
    if data[4:8] == b"ftyp":
        return "a HEIC/MP4-type file (e.g. an iPhone photo)"
    head = data[:4096]
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return "a text file"
    return "an unrecognised file type"


# --- PNG and JPEG -----------------------------------------------------------------------


def decode_png(data: bytes, name: str) -> tuple[np.ndarray, dict, list[str]]:
    """Check the PNG header and end chunk, then decode with OpenCV."""
    size = png_size(data)
    if size is None or 0 in size:
        raise ImageError(f"{name} has a damaged PNG header and cannot be read.")
    check_pixel_count(size, name)
    check_decoded_bytes(size, png_sample_layout(data), name)
    if PNG_END_CHUNK not in data:
        raise ImageError(f"{name} appears to be truncated (the PNG data stops before its end "
                         "marker); please upload the complete file.")
    image = imdecode(data, name, "PNG")
    info = {"format": "PNG", "bit_depth": int(data[24]), "channels": channel_count(image)}
    return image, info, []


def decode_jpeg(data: bytes, name: str) -> tuple[np.ndarray, dict, list[str]]:
    """Check the JPEG frame header and end marker, then decode with OpenCV.

    A JPEG without its end marker is refused: decoders fill the missing part with gray,
    which would silently change what the model sees.
    """
    size, scan_start = jpeg_header(data)
    if size is None or 0 in size:
        raise ImageError(f"{name} has a damaged JPEG header and cannot be read.")
    check_pixel_count(size, name)
    check_decoded_bytes(size, jpeg_sample_layout(data), name)
    # Entropy-coded data cannot contain FFD9, so the first one after the scan ends the image.
    if scan_start is None or data.find(b"\xff\xd9", scan_start) == -1:
        raise ImageError(f"{name} appears to be truncated (the JPEG data stops before its end "
                         "marker); please upload the complete file.")
    image = imdecode(data, name, "JPEG")
    info = {"format": "JPEG", "bit_depth": 8, "channels": channel_count(image)}
    return image, info, []


def imdecode(data: bytes, name: str, kind: str) -> np.ndarray:
    """OpenCV decode, unchanged depth and channels; ImageError when it fails."""
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise ImageError(f"{name} is a damaged {kind} file that cannot be decoded.")
    return image


def channel_count(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else int(image.shape[2])


# --- DICOM ------------------------------------------------------------------------------


def decode_dicom(data: bytes, name: str, forced: bool = False
                 ) -> tuple[np.ndarray, dict, list[str]]:
    """Read a DICOM file: modality rescale, VOI window (or min–max), MONOCHROME1 inverted.

    ``forced`` reads a file without the DICOM magic (trusted only if it has pixel data).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=forced)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError,
            struct.error, OSError, NotImplementedError):
        raise ImageError(f"{name} could not be read as a DICOM file.") from None

    has_pixels = any(tag in dataset
                     for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if forced and not has_pixels:
        raise ImageError(f"{name} could not be read as a DICOM file.")
    if not has_pixels:
        raise ImageError(f"{name} is a DICOM file without an image (no pixel data), "
                         "for example a report or a structured document.")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows == 0 or columns == 0:
        raise ImageError(f"{name} is a DICOM file whose image size is missing.")
    frames = max(1, int(dataset.get("NumberOfFrames", 1) or 1))
    if rows * columns * frames > MAX_PIXELS:
        raise ImageError(f"{name} holds {frames} × {columns:,} × {rows:,} pixels, more than "
                         f"the {MAX_PIXELS / 1e6:.0f} megapixel limit.")
    samples_per_pixel = max(1, int(dataset.get("SamplesPerPixel", 1) or 1))
    sample_bytes = max(1, -(-int(dataset.get("BitsAllocated", 8) or 8) // 8))
    check_decoded_bytes((columns, rows), (samples_per_pixel, sample_bytes), name, frames)

    transfer_syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    syntax_name = transfer_syntax.name if transfer_syntax is not None else "an unknown encoding"
    if not dicom_decoder_available(transfer_syntax):
        raise ImageError(f"{name} is compressed with {syntax_name}, which this app cannot "
                         "decode; please export it uncompressed or as PNG.")
    try:
        pixels = dataset.pixel_array
    except Exception:  # pydicom raises many exception types for bad pixel data
        raise ImageError(f"{name} has damaged DICOM pixel data ({syntax_name}) that cannot "
                         "be decoded.") from None

    warnings: list[str] = []
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
        warnings.append(f"The DICOM file holds {frames} frames; only the first is shown.")
    decoded_from = (pixels.shape[1], pixels.shape[0])
    # Reduce a large image before the float steps (rescale, window), so that no float copy
    # of the full-size image is made; the upload is reduced to MAX_SIDE anyway.
    pixels = reduce_side(pixels, MAX_SIDE)
    info = {
        "format": "DICOM",
        "bit_depth": int(dataset.get("BitsStored", dataset.get("BitsAllocated", 8)) or 8),
        "channels": samples,
        "photometric": photometric,
        "transfer_syntax": syntax_name,
        "modality": str(dataset.get("Modality", "")),
        "dicom_window": None,
    }
    if decoded_from != (pixels.shape[1], pixels.shape[0]):
        info["decoded_from"] = decoded_from
    if samples == 3:
        # pydicom returns colour DICOM as RGB; the rest of the pipeline expects BGR.
        color = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2BGR)
        return color, info, warnings
    if pixels.ndim != 2:
        raise ImageError(f"{name} has a DICOM image of unsupported shape {pixels.shape}.")

    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    window = dicom_window(dataset)
    if window is not None and window[1] < 1:
        warnings.append(f"The DICOM window width ({window[1]:g}) is invalid; the full range "
                        "of values is shown instead.")
        window = None
    if window is not None:
        center, width = window
        function = str(dataset.get("VOILUTFunction", "LINEAR")).upper()
        gray = apply_window(values, center, width, function)
        info["dicom_window"] = {"center": center, "width": width, "function": function,
                                "source": "file"}
    elif "VOILUTSequence" in dataset:
        from pydicom.pixels import apply_voi

        gray = gray_from_array(np.asarray(apply_voi(values, dataset), dtype=np.float64))
        info["dicom_window"] = {"source": "VOI LUT sequence"}
    else:
        gray = gray_from_array(values)
        info["dicom_window"] = {"source": "min-max",
                                "center": float((values.max() + values.min()) / 2),
                                "width": float(values.max() - values.min())}
    if photometric == "MONOCHROME1":
        gray = 255 - gray
        info["inverted"] = True
    return gray, info, warnings


def dicom_decoder_available(transfer_syntax) -> bool:
    """Whether pydicom has a working decoder for this transfer syntax (None: assume so)."""
    if transfer_syntax is None or not transfer_syntax.is_compressed:
        return True
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except NotImplementedError:
        return False


def dicom_window(dataset) -> tuple[float, float] | None:
    """The first (WindowCenter, WindowWidth) pair of a DICOM dataset, or None."""
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        center, width = float(first_value(center)), float(first_value(width))
    except (TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(center) and np.isfinite(width)):
        return None
    return center, width


def first_value(value):
    """The first item of a DICOM multi-value element, or the value itself."""
    from pydicom.multival import MultiValue

    return value[0] if isinstance(value, (MultiValue, list, tuple)) else value


def apply_window(values: np.ndarray, center: float, width: float,
                 function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2) of float values to uint8 0..255."""
    if function == "SIGMOID":
        scaled = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        scaled = (values - center) / width + 0.5
    else:
        scaled = (values - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


# --- checks on the decoded image ---------------------------------------------------------


def check_size(width: int, height: int, name: str, warnings: list[str]) -> None:
    """Refuse tiny images and warn about small ones."""
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{name} is only {width} × {height} pixels; at least {MIN_SIDE} "
                         "pixels on each side are needed.")
    if min(width, height) < SMALL_SIDE:
        warnings.append(f"The image is small ({width} × {height} pixels); the models work on "
                        "224 pixel inputs, so results on it are unreliable.")


def mean_saturation(image: np.ndarray) -> float:
    """Mean chroma (max − min channel, 0..1) of the colour channels; 0 for grayscale.

    Chroma rather than HSV saturation, so that noise in dark pixels does not count as colour.
    """
    if image.ndim == 2 or image.shape[2] < 3:
        return 0.0
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / 1_000_000)))
    channels = image[::step, ::step, :3].astype(np.float32)
    full_scale = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else 1.0
    chroma = (channels.max(axis=2) - channels.min(axis=2)) / full_scale
    return float(np.mean(chroma))


def reduce_side(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Area-downscale a decoded (H, W) or (H, W, C) array so its longest side is at most
    ``max_side``, keeping its dtype where OpenCV can (other integer types go via float32)."""
    height, width = pixels.shape[:2]
    if max(height, width) <= max_side:
        return pixels
    scale = max_side / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    source = np.ascontiguousarray(pixels)
    if source.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        source = source.astype(np.float32)
    return cv2.resize(source, new_size, interpolation=cv2.INTER_AREA)


def limit_side(gray: np.ndarray, max_side: int) -> tuple[np.ndarray, bool]:
    """Downscale (area interpolation) so the longest side is at most max_side."""
    height, width = gray.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return gray, False
    scale = max_side / longest
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(gray, new_size, interpolation=cv2.INTER_AREA), True
