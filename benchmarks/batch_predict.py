"""Batch prediction's throughput: a batch of real X-rays through every shipped run, as
``python -m xrcompare predict RUN FOLDER`` and the *Predict a batch* page do it.

    python benchmarks/batch_predict.py [--runs-dir trained] [--data ../shared/data/kaggle_test]
                                       [--images 100] [--chunk 16] [--single 0]

The images are the first ``--images`` files of the folder's class folders (half from each,
sorted by name: held-out Kaggle X-rays by default); they go through
:func:`xrcompare.batch.predict_batch` (decode, each image once through each distinct trunk,
every run's tail per chunk) on an engine whose trunks and tails are already built (the app warms
them at start; the warm-up is timed apart). ``--single K`` also times K other images one at
a time through the Predict page's path (:func:`xrcompare.predictor.predict_runs`), for
comparison. The last line is::

    batch_images_per_s: X      (images per second, every run on every image, warm)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from xrcompare import batch, predictor  # noqa: E402
from xrcompare.engine import Engine, trunk_key, weights_problem  # noqa: E402
from xrcompare.inference import load_image_file  # noqa: E402
from xrcompare.runs import list_runs  # noqa: E402


def pick_images(folder: Path, count: int, skip: int = 0) -> list[Path]:
    """``count`` images of ``folder``'s class folders, as evenly from each as possible, after
    skipping the first ``skip`` of each."""
    classes = sorted(path for path in folder.iterdir() if path.is_dir())
    pools = [sorted(path for path in cls.iterdir() if path.suffix.lower() in batch.SUFFIXES)
             [skip:] for cls in classes]
    chosen: list[Path] = []
    while len(chosen) < count and any(pools):
        for pool in pools:
            if pool and len(chosen) < count:
                chosen.append(pool.pop(0))
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs-dir", type=Path, default=REPO / "trained")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data"
                        / "kaggle_test")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=batch.CHUNK)
    parser.add_argument("--single", type=int, default=0,
                        help="also time this many other images one at a time")
    args = parser.parse_args(argv)

    import keras

    runs = [run for run in list_runs(args.runs_dir).runs
            if not run.is_cnn or weights_problem(run) is None]
    if not runs:
        print(f"no usable runs in {args.runs_dir}", file=sys.stderr)
        return 1
    images = pick_images(args.data, args.images)
    if not images:
        print(f"no images in {args.data}", file=sys.stderr)
        return 1
    load_start = os.getloadavg()
    print(f"keras {keras.__version__} on {keras.backend.backend()}, {os.cpu_count()} CPUs "
          f"({platform.machine()}), load average {load_start[0]:.1f} at the start")
    engine = Engine()
    start = time.perf_counter()
    engine.warm_up(runs)
    warm_up = time.perf_counter() - start
    trunks = len({trunk_key(run) for run in runs if run.is_cnn})
    print(f"runs: {len(runs)} ({trunks} trunks), warm-up {warm_up:.1f} s")
    items = [batch.BatchItem(path.name, path) for path in images]
    result = batch.predict_batch(runs, items, engine, chunk=args.chunk)
    problems = result.table["note"].astype(bool).sum()
    print(f"batch: {result.images} images from {args.data.name} ({result.unreadable} "
          f"unreadable, {problems} rows with a problem), chunk {args.chunk}: "
          f"{result.seconds:.1f} s for {len(result.table)} rows")
    if args.single:
        others = pick_images(args.data, args.single, skip=len(images))
        start = time.perf_counter()
        for path in others:
            predictor.predict_runs(runs, load_image_file(path).gray, engine)
        seconds = time.perf_counter() - start
        print(f"one at a time (the Predict page's path): {len(others)} images in "
              f"{seconds:.1f} s, {len(others) / seconds:.2f} images/s")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"batch_images_per_s: {result.images_per_s:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
