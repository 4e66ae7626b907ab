"""A sidebar training run, before and after the inference engine: the command the sidebar
starts (``python -m xrcompare train``, ResNet50 on seed001_0402, default settings) timed with
the Keras fp32 reference and with the engine, each from an empty feature cache, alternating.

The engine's converted model is made once beforehand (as on any machine after its first run;
the conversion time is printed apart). Run from the repository root::

    XRCOMPARE_WEIGHTS_DIR=../shared/weights python benchmarks/train_engines.py

Prints one line per run (wall time from process start to the run folder, and the phases
``run.json`` recorded), then ``seconds_<engine>: X`` medians and, last,
``train_keras_vs_engine: X`` (Keras wall time / engine wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if not os.environ.get("XRCOMPARE_WEIGHTS_DIR"):
    os.environ["XRCOMPARE_WEIGHTS_DIR"] = str(REPO.parent / "shared" / "weights")


def train_once(engine: str, args, converted: Path, folder: Path) -> dict:
    cache = folder / f"cache-{engine}"
    cache.mkdir()
    (cache / "converted").symlink_to(converted, target_is_directory=True)
    runs = folder / f"runs-{engine}"
    command = [sys.executable, "-m", "xrcompare", "train", "--data", str(args.data),
               "--backbone", args.backbone, "--runs-dir", str(runs), "--name", "timed"]
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "XRCOMPARE_ENGINE": engine,
                                 "XRCOMPARE_CACHE_DIR": str(cache)})
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{engine} run failed: {result.stderr.strip().splitlines()[-1:]}")
    info = json.loads((runs / "timed" / "run.json").read_text())
    (cache / "converted").unlink()
    return {"engine": info["features"].get("label", engine), "seconds": seconds, "load": load,
            "timings": info["timings_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path,
                        default=REPO.parent / "shared" / "data" / "seed001_0402")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    from xrcompare.backbones import get_backbone
    from xrcompare.features import FeatureSpec
    from xrcompare.inference_engine import converted_model, converted_root, with_engine

    backbone = get_backbone(args.backbone)
    spec = with_engine(FeatureSpec(backbone.name, backbone.default_size), "openvino")
    _, conversion, now = converted_model(spec)
    print(f"converted model of {backbone.display_name}: "
          f"{'converted now' if now else 'from the cache'}, conversion took {conversion} s")
    seconds: dict[str, list[float]] = {"keras": [], "openvino": []}
    with tempfile.TemporaryDirectory(prefix="xrcompare-train-engines-") as temporary:
        for repeat in range(args.repeats):
            for engine in seconds:
                folder = Path(temporary) / f"{engine}-{repeat}"
                folder.mkdir()
                row = train_once(engine, args, converted_root(), folder)
                seconds[engine].append(row["seconds"])
                print(f"{row['engine']}: {row['seconds']:.1f} s wall (load {row['load']}); "
                      f"run.json phases {row['timings']}", flush=True)
    medians = {engine: statistics.median(values) for engine, values in seconds.items()}
    for engine, value in medians.items():
        print(f"seconds_{engine}: {value:.1f}")
    print(f"train_keras_vs_engine: {medians['keras'] / medians['openvino']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
