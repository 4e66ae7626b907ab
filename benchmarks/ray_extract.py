"""Feature extraction on Ray Data against the single process: images/s with 1 and 2 workers.

One backbone (ResNet50 by default, at its own input size) through the inference engine chosen
here (``auto``: OpenVINO where installed), over ``--images`` images of ``--data``, each time
into an empty temporary feature cache (nothing is read from a cache):

- **single process**: ``FeatureExtractor.extract`` in this process, its engine built inside
  the timed call (as a training run does), and again with the engine already built;
- **Ray, N workers**: the same call with ``--extract-on ray``'s runner
  (:class:`xrcompare.ray_extract.RayExtraction`) on a local Ray started here with N CPUs.
  The Ray start is timed apart and is not in images/s; the actors' start and each actor's
  engine build (one per worker) are, as in a run.

The OpenVINO conversion is made once before anything is timed (it is cached on disk and
shared by every path). Run from the repository root::

    python benchmarks/ray_extract.py

The last lines are ``single_process_images_per_s: X``, ``ray_1_worker_images_per_s: Y`` and
``ray_2_workers_images_per_s: Z``; ``benchmarks/results/ray_extract.json`` holds the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if not os.environ.get("XRCOMPARE_WEIGHTS_DIR"):
    os.environ["XRCOMPARE_WEIGHTS_DIR"] = str(REPO.parent / "shared" / "weights")
os.environ.pop("RAY_ADDRESS", None)  # a local Ray, started here, every time

from extract_throughput import load_average, machine, pick_images  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "ray_extract.json"


def timed_extract(spec, paths, batch_size: int, runner=None, base=None) -> tuple[float, int]:
    """(seconds, images computed) of one extraction into an empty temporary cache."""
    from xrcompare.features import FeatureExtractor

    with tempfile.TemporaryDirectory(prefix="xr-bench-cache-") as cache:
        extractor = FeatureExtractor(spec, batch_size=batch_size, cache_dir=Path(cache),
                                     base=base, runner=runner)
        started = time.perf_counter()
        result = extractor.extract(paths)
        seconds = time.perf_counter() - started
    if result.failed or result.cached:
        raise SystemExit(f"unexpected: {len(result.failed)} failed, {result.cached} cached")
    return seconds, result.computed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cxr3")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engine", default=None, help="auto, openvino or keras (default auto)")
    parser.add_argument("--json", type=Path, default=RESULTS, help="results file to write")
    args = parser.parse_args(argv)

    from xrcompare.backbones import get_backbone
    from xrcompare.features import FeatureExtractor, FeatureSpec
    from xrcompare.inference_engine import with_engine
    from xrcompare.ray_extract import RayExtraction

    backbone = get_backbone(args.backbone)
    size = args.image_size or backbone.default_size
    spec = with_engine(FeatureSpec(backbone.name, size), args.engine)
    paths = pick_images(args.data, args.images)
    # converted models live under the cache root: one for this benchmark, converted once
    os.environ["XRCOMPARE_CACHE_DIR"] = tempfile.mkdtemp(prefix="xr-bench-converted-")
    started = time.perf_counter()
    engine = FeatureExtractor(spec).engine
    prepare_s = time.perf_counter() - started
    print(f"{backbone.name} {size}px, {engine.label}, {len(paths)} images of {args.data.name}, "
          f"batch {args.batch_size}; {machine()}; load {load_average()}", flush=True)
    print(f"engine prepared (conversion included) in {prepare_s:.1f} s", flush=True)

    results = {"backbone": backbone.name, "image_size": size, "engine": engine.label,
               "images": len(paths), "data": args.data.name, "batch_size": args.batch_size,
               "machine": machine(), "load_before": load_average()}
    seconds, count = timed_extract(spec, paths, args.batch_size)
    results["single_process"] = {"seconds": round(seconds, 2),
                                 "images_per_s": round(count / seconds, 2)}
    print(f"single process (engine built in the call): {count / seconds:.2f} img/s "
          f"({seconds:.1f} s)", flush=True)
    seconds, count = timed_extract(spec, paths, args.batch_size, base=engine)
    results["single_process_engine_ready"] = {"seconds": round(seconds, 2),
                                              "images_per_s": round(count / seconds, 2)}
    print(f"single process (engine already built): {count / seconds:.2f} img/s "
          f"({seconds:.1f} s)", flush=True)
    for workers in args.workers:
        with RayExtraction(workers=workers) as runner:
            runner.start()
            seconds, count = timed_extract(spec, paths, args.batch_size, runner=runner)
            results[f"ray_{workers}"] = {"workers": workers,
                                         "ray_start_s": round(runner.start_s, 2),
                                         "seconds": round(seconds, 2),
                                         "images_per_s": round(count / seconds, 2)}
        print(f"ray {workers} worker(s): {count / seconds:.2f} img/s ({seconds:.1f} s, actors "
              f"and their engines included); Ray start {runner.start_s:.1f} s apart",
              flush=True)
    results["load_after"] = load_average()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"single_process_images_per_s: {results['single_process']['images_per_s']:.2f}")
    for workers in args.workers:
        name = f"ray_{workers}_worker{'s' if workers != 1 else ''}_images_per_s"
        print(f"{name}: {results[f'ray_{workers}']['images_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
