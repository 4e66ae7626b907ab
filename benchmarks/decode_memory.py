"""Peak memory of decoding hostile and huge images through the upload path.

Each image is decoded by ``xrcompare.uploads.load_upload`` in a fresh Python process, and
that process's peak resident memory (``ru_maxrss`` from ``wait4``) is reported next to a
baseline process that decodes a small image. The images are made here in a few lines:

- ``bomb``: the probe's memory bomb, an 8,900 × 8,900 16-bit RGBA PNG of 617 kB (under the
  80-megapixel cap, about 634 MB of pixels once decoded);
- ``big-gray``: an 8,000 × 8,000 16-bit grayscale PNG (128 MB decoded, within the limit):
  the largest kind of image that is still decoded, to show what decoding it costs.

Run from the repository root (``--repo`` measures another checkout, e.g. the code before a
change)::

    python benchmarks/decode_memory.py
    python benchmarks/decode_memory.py --repo ../main
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def zeros_zlib(total: int, block: int = 1 << 22) -> bytes:
    """A zlib stream of ``total`` zero bytes, made in a fraction of a second by repeating one
    fully flushed deflate block (its bytes do not depend on what came before)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(total, block)
    tail = compressor.compress(bytes(rest)) + compressor.flush(zlib.Z_FINISH)
    adler = ((total % 65521) << 16) | 1  # Adler-32 of zeros: a = 1, b = length
    return b"\x78\xda" + piece * count + tail + struct.pack(">I", adler)


def black_png(width: int, height: int, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A valid, fully decodable black PNG of any size, a few hundred kB at most."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = 1 + width * channels * bit_depth // 8  # filter byte + samples
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zeros_zlib(height * row)) + png_chunk(b"IEND", b""))


def memory_bomb_png() -> bytes:
    """The probe's bomb: 8,900 × 8,900, 16-bit RGBA (617 kB on disk)."""
    return black_png(8900, 8900, 16, 6)


IMAGES = {
    "baseline": lambda: black_png(512, 512, 8, 0),
    "bomb": memory_bomb_png,
    "big-gray": lambda: black_png(8000, 8000, 16, 0),
}

CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from xrcompare.imaging import ImageError
from xrcompare.uploads import load_upload
data = open(sys.argv[2], "rb").read()
start = time.perf_counter()
try:
    image = load_upload(data, "image.png")
    outcome = f"decoded to {image.gray.shape[1]} x {image.gray.shape[0]}"
except ImageError as error:
    outcome = f"refused: {error}"
print(f"{time.perf_counter() - start:.2f}|{outcome}")
"""


def measure(repo: Path, path: Path) -> tuple[float, float, str]:
    """(peak RSS in MB, seconds, outcome) of decoding ``path`` in a fresh process."""
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(repo), str(path)],
                                 stdout=subprocess.PIPE, stderr=errors, text=True)
        out = child.stdout.read()
        child.stdout.close()
        _, status, usage = os.wait4(child.pid, 0)  # the child's own peak, not the siblings'
        child.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        last_error = (errors.read().strip().splitlines() or ["no output"])[-1]
    if child.returncode:
        return usage.ru_maxrss / 1024, 0.0, f"crashed with {child.returncode}: {last_error}"
    seconds, outcome = out.strip().splitlines()[-1].split("|", 1)
    return usage.ru_maxrss / 1024, float(seconds), outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="the checkout whose xrcompare decodes (default: this one)")
    parser.add_argument("--images", nargs="+", default=list(IMAGES), choices=list(IMAGES))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.images:
            path = Path(folder) / f"{name}.png"
            path.write_bytes(IMAGES[name]())
            started = time.perf_counter()
            peak, seconds, outcome = measure(args.repo.resolve(), path)
            print(f"{name}: {path.stat().st_size / 1e3:.0f} kB file, peak RSS {peak:.0f} MB, "
                  f"decode {seconds:.2f} s, process {time.perf_counter() - started:.1f} s; "
                  f"{outcome[:160]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
