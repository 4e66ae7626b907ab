"""Feature extraction throughput: the project's pipeline against the bare forward pass.

The pipeline is ``xrcompare.features.FeatureExtractor`` with an empty temporary cache, so it
reads, hashes, decodes, resizes and preprocesses every image, runs the frozen base and writes
the cache. The reference is the same base's ``predict_on_batch`` on the same images already
preprocessed in memory, with the same batch size. Both are warmed up first; each is timed
``--repeats`` times, alternating, and the best time of each counts.

Run from the repository root::

    XRCOMPARE_WEIGHTS_DIR=../shared/weights python benchmarks/extract_throughput.py

The last line is ``extract_vs_forward: X``: pipeline images/s divided by forward images/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if not os.environ.get("XRCOMPARE_WEIGHTS_DIR"):
    os.environ["XRCOMPARE_WEIGHTS_DIR"] = str(REPO.parent / "shared" / "weights")

from xrcompare.backbones import build_base, get_backbone  # noqa: E402
from xrcompare.data import scan_dataset  # noqa: E402
from xrcompare.features import FeatureExtractor, FeatureSpec  # noqa: E402
from xrcompare.imaging import read_gray, to_model_input  # noqa: E402


def pick_images(folder: Path, count: int) -> list[Path]:
    """``count`` images spread evenly over the dataset's classes (deterministic)."""
    records = scan_dataset(folder).records
    step = max(1, len(records) // count)
    return [record.path for record in records[::step][:count]]


def time_pipeline(spec: FeatureSpec, base, paths: list[Path], batch_size: int) -> float:
    with tempfile.TemporaryDirectory(prefix="xrcompare-bench-cache-") as cache:
        extractor = FeatureExtractor(spec, batch_size=batch_size, cache_dir=Path(cache),
                                     base=base)
        started = time.perf_counter()
        result = extractor.extract(paths)
        seconds = time.perf_counter() - started
    if result.failed or result.cached:
        raise RuntimeError(f"benchmark expects all images computed: {result.failed}")
    return seconds


def time_forward(base, batches: list[np.ndarray]) -> float:
    started = time.perf_counter()
    for batch in batches:
        np.asarray(base.predict_on_batch(batch))
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cxr3")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    backbone = get_backbone(args.backbone)
    size = backbone.default_size
    spec = FeatureSpec(backbone.name, size, "squash", "imagenet")
    base = build_base(backbone.name, size, "imagenet")
    paths = pick_images(args.data, args.images)
    inputs = np.stack([to_model_input(read_gray(path), size) for path in paths])
    batches = [backbone.preprocess(inputs[i:i + args.batch_size])
               for i in range(0, len(inputs), args.batch_size)]

    # Warm up both paths (graph tracing, memory) on one batch.
    time_forward(base, batches[:1])
    time_pipeline(spec, base, paths[:args.batch_size], args.batch_size)

    pipeline_seconds, forward_seconds = [], []
    for _ in range(args.repeats):
        forward_seconds.append(time_forward(base, batches))
        pipeline_seconds.append(time_pipeline(spec, base, paths, args.batch_size))
    pipeline_rate = len(paths) / min(pipeline_seconds)
    forward_rate = len(paths) / min(forward_seconds)
    print(f"backbone {backbone.display_name} {size}px, {len(paths)} images from {args.data.name}, "
          f"batch {args.batch_size}, best of {args.repeats}, {os.cpu_count()} CPU cores")
    print(f"pipeline (read, hash, decode, resize, preprocess, base, cache write): "
          f"{pipeline_rate:.1f} images/s")
    print(f"bare forward pass (predict_on_batch on in-memory arrays): {forward_rate:.1f} images/s")
    print(f"extract_vs_forward: {pipeline_rate / forward_rate:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
