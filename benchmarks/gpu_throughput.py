"""Feature-extraction throughput per backbone: the project's pipeline (read, decode, resize,
preprocess on CPU worker threads, base on the accelerator, cache writes) against the base's
bare forward pass on in-memory arrays, same batch size. Runs on any Keras backend and device;
made for a GPU machine (``KERAS_BACKEND=jax``), also runs, slowly, on a CPU.

    KERAS_BACKEND=jax python benchmarks/gpu_throughput.py --data ../shared/data/cxr3 \
        --batch-size 256 --workers 12 --precision mixed_bfloat16

Prints one line per backbone, ``name: pipeline X img/s, bare Y img/s (Z of bare)``.
Random-init bases by default: speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from xrcompare.backbones import build_base, get_backbone  # noqa: E402
from xrcompare.data import scan_dataset  # noqa: E402
from xrcompare.features import FeatureExtractor, FeatureSpec  # noqa: E402
from xrcompare.imaging import load_model_input  # noqa: E402


def image_files(data: Path | None, count: int, folder: Path) -> list[Path]:
    """``count`` distinct image files (distinct bytes, so the cache never hits): real ones
    from ``data`` first, then noisy copies of them (or synthetic X-ray-sized JPEGs)."""
    real = [record.path for record in scan_dataset(data).records] if data else []
    files = real[:count]
    rng = np.random.default_rng(0)
    while len(files) < count:
        index = len(files)
        if real:
            image = cv2.imread(str(real[index % len(real)]), cv2.IMREAD_GRAYSCALE)
        else:
            image = np.full((512, 480), 90, dtype=np.uint8)
        noisy = np.clip(image.astype(np.int16) + rng.integers(-3, 4, image.shape), 0, 255)
        path = folder / f"copy{index}.jpg"
        cv2.imwrite(str(path), noisy.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
        files.append(path)
    return files


def bare_rate(base, batch: np.ndarray, repeats: int) -> float:
    np.asarray(base.predict_on_batch(batch))  # compile / warm up
    started = time.perf_counter()
    for _ in range(repeats):
        np.asarray(base.predict_on_batch(batch))  # to host, as the pipeline does
    return repeats * len(batch) / (time.perf_counter() - started)


def pipeline_rate(spec: FeatureSpec, base, files: list[Path], batch_size: int,
                  workers: int) -> float:
    with tempfile.TemporaryDirectory() as cache:
        extractor = FeatureExtractor(spec, batch_size=batch_size, cache_dir=Path(cache),
                                     base=base, workers=workers)
        extractor.extract(files[:batch_size])  # warm up (same shapes as the timed run)
        started = time.perf_counter()
        result = extractor.extract(files[batch_size:])
        seconds = time.perf_counter() - started
    if result.failed:
        raise RuntimeError(f"{len(result.failed)} images failed: {result.failed[:2]}")
    return len(result.ok) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+",
                        default=["vgg16", "vgg19", "resnet50", "xception"])
    parser.add_argument("--data", type=Path, default=None, help="dataset folder to read")
    parser.add_argument("--images", type=int, default=4096, help="images per timed pipeline run")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--image-size", type=int, default=None, help="default: backbone's own")
    parser.add_argument("--weights", choices=("random", "imagenet"), default="random")
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "mixed_float16", "mixed_bfloat16"))
    parser.add_argument("--bare-repeats", type=int, default=20)
    args = parser.parse_args()

    keras.config.set_dtype_policy(args.precision)
    device = "cpu"
    if keras.backend.backend() == "jax":
        import jax

        device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
    print(f"keras {keras.__version__} ({keras.backend.backend()}), device {device}, "
          f"{os.cpu_count()} cores, {platform.python_version()}, precision {args.precision}, "
          f"batch {args.batch_size}, {args.workers} decode workers, "
          f"{args.images} images from {args.data or 'synthetic JPEGs'}")
    with tempfile.TemporaryDirectory() as folder:
        files = image_files(args.data, args.images + args.batch_size, Path(folder))
        for name in args.backbones:
            backbone = get_backbone(name)
            size = args.image_size or backbone.default_size
            base = build_base(backbone.name, size, args.weights)
            batch = backbone.preprocess(np.stack([load_model_input(p, size)
                                                  for p in files[:args.batch_size]]))
            bare = bare_rate(base, batch, args.bare_repeats)
            spec = FeatureSpec(backbone.name, size, "squash", args.weights)
            pipeline = pipeline_rate(spec, base, files, args.batch_size, args.workers)
            print(f"{backbone.name}: pipeline {pipeline:.0f} img/s, bare {bare:.0f} img/s "
                  f"({pipeline / bare:.2f} of bare, {size}px)", flush=True)


if __name__ == "__main__":
    main()
