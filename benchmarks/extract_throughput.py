"""Feature extraction speed per backbone: the Keras float32 reference, the inference engine
(``xrcompare/inference_engine.py``) and the whole pipeline, measured side by side in one run.

For each backbone (VGG16, ResNet50, Xception by default, each at its own input size):

- **reference**: the Keras base's ``predict_on_batch`` in float32 on in-memory batches of
  the images' 8-bit model squares, preprocessed in NumPy (what every extraction ran before
  the engine);
- **engine**: the engine's bare forward pass on the same batches of squares, which it
  preprocesses in its own graph (``auto``: OpenVINO where installed, see
  ``XRCOMPARE_ENGINE``);
- **pipeline**: ``xrcompare.features.FeatureExtractor`` with that engine, from the image files,
  into an empty temporary cache (nothing is read from a cache): read, hash, decode, resize
  on a worker thread, the engine, cache writes;
- **preparing**: that read, hash, decode and resize alone, on one thread, per image; with
  the engine's rate it bounds the pipeline: when the engine keeps every core
  busy, each image costs ``cores / engine rate`` core-seconds there plus its preparation, so
  the pipeline reaches at most ``1 / (1 + preparation × engine rate / cores)`` of the engine.

With ``--variants`` (default: OpenVINO's other hint, OpenVINO fp32, and Keras itself in mixed
bfloat16), the bare forward of other settings is timed alongside, so the choice of engine and
settings stays checked by measurement.

Each is warmed up; then, ``--repeats`` times, each runs over all the images, the engine
between the reference and the pipeline, in an order that reverses every other repeat. Rates
are medians over the repeats; the ratios are medians of the ratios within each repeat. The
load average is recorded: on a shared machine the ratios are more trustworthy than the
absolute rates.

Run from the repository root (writes ``benchmarks/results/extract_throughput.json``; with
``--readme README.md`` also the table in README's performance section)::

    XRCOMPARE_WEIGHTS_DIR=/folder/with/all/three/weight/files \
        python benchmarks/extract_throughput.py --readme README.md

(``../shared/weights`` holds ResNet50 and VGG16 only: add ``--backbones vgg16 resnet50``.)

Lines ``pipeline_vs_engine: X`` (the smallest pipeline/engine ratio) and, last,
``engine_vs_reference: X`` (the smallest engine/reference ratio over the backbones).
``--table-only`` rewrites README's table from the JSON file without measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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

RESULTS = REPO / "benchmarks" / "results" / "extract_throughput.json"
README_START = "<!-- engine-benchmark:start -->"
README_END = "<!-- engine-benchmark:end -->"


def pick_images(folder: Path, count: int) -> list[Path]:
    """``count`` images spread evenly over the dataset's classes (deterministic)."""
    from xrcompare.data import scan_dataset

    records = scan_dataset(folder).records
    step = max(1, len(records) // count)
    return [record.path for record in records[::step][:count]]


def machine() -> str:
    name = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPU cores, {platform.system()}"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def versions() -> dict:
    import keras

    found = {"keras": keras.__version__, "keras_backend": keras.backend.backend()}
    for module in ("tensorflow", "openvino"):
        if module in sys.modules:
            found[module] = getattr(sys.modules[module], "__version__", "?").split("-")[0]
    return found


def time_forward(engine, batches: list[np.ndarray]) -> float:
    """Seconds for the engine's bare forward over ``batches`` of 8-bit squares, fed as the
    extractor feeds it (one stream of batches: OpenVINO keeps its requests busy across them)."""
    started = time.perf_counter()
    for _ in engine.predict_stream(iter(batches)):
        pass
    return time.perf_counter() - started


def time_pipeline(spec, engine, paths: list[Path], batch_size: int) -> float:
    from xrcompare.features import FeatureExtractor

    with tempfile.TemporaryDirectory(prefix="xrcompare-bench-cache-") as cache:
        extractor = FeatureExtractor(spec, batch_size=batch_size, cache_dir=Path(cache),
                                     base=engine)
        started = time.perf_counter()
        result = extractor.extract(paths)
        seconds = time.perf_counter() - started
    if result.failed or result.cached:
        raise RuntimeError(f"benchmark expects all images computed: {result.failed[:2]}")
    return seconds


def time_prepare(spec, paths: list[Path], batch_size: int) -> float:
    """Seconds one thread spends on the pipeline's own work besides the engine, on its own:
    reading, hashing, decoding and resizing every image in batches (the extractor's
    ``_prepare_batch``; the engine preprocesses)."""
    import hashlib

    from xrcompare.features import FeatureExtractor
    from xrcompare.imaging import read_bytes

    extractor = FeatureExtractor(spec, batch_size=batch_size, base=object())
    started = time.perf_counter()
    jobs = []
    for position, path in enumerate(paths):
        data = read_bytes(path)
        jobs.append((position, data, path.name, hashlib.sha256(data).hexdigest(), 0))
    for start in range(0, len(jobs), batch_size):
        extractor._prepare_batch(jobs[start:start + batch_size])
    return time.perf_counter() - started


def pipeline_bound(engine_rate: float, prepare_seconds_per_image: float, cores: int) -> float:
    """The most a pipeline can reach of the engine's bare rate when the engine keeps every
    core busy and each image also costs ``prepare_seconds_per_image`` of one core: per
    image, ``cores / engine_rate`` core-seconds for the engine plus the preparation, so at
    best ``cores / (cores / engine_rate + prepare)`` images/s."""
    return 1.0 / (1.0 + prepare_seconds_per_image * engine_rate / max(1, cores))


def measure(name: str, args) -> dict:
    from xrcompare.backbones import build_base, get_backbone
    from xrcompare.features import FeatureSpec
    from xrcompare.imaging import read_gray, to_model_square
    from xrcompare.inference_engine import KerasEngine, make_engine, model_inputs, with_engine

    backbone = get_backbone(name)
    size = args.image_size or backbone.default_size
    spec = with_engine(FeatureSpec(backbone.name, size), args.engine)
    reference = KerasEngine(build_base(backbone.name, size, "imagenet"), model_inputs(spec))
    started = time.perf_counter()
    engine = make_engine(spec, base=reference.base)
    ready_seconds = time.perf_counter() - started
    paths = pick_images(args.data, args.images)
    squares = np.stack([to_model_square(read_gray(path), size) for path in paths])
    batches = [squares[i:i + args.batch_size] for i in range(0, len(squares), args.batch_size)]
    variants = {}
    for variant in args.variants:
        if variant == "keras-bf16":  # Keras/TensorFlow itself in mixed bfloat16
            import keras

            keras.config.set_dtype_policy("mixed_bfloat16")
            try:
                variants[variant] = KerasEngine(build_base(backbone.name, size, "imagenet"),
                                                model_inputs(spec))
            finally:
                keras.config.set_dtype_policy("float32")
        elif engine.name == "openvino":
            from xrcompare.inference_engine import OpenVINOEngine

            hint, precision = variant.split("-")
            if (hint, precision) != (engine.hint, engine.precision):
                variants[variant] = OpenVINOEngine(engine.xml, precision, hint=hint,
                                                   gray_affine=engine.gray_affine)
    time_forward(reference, batches[:1])  # warm up every path
    time_forward(engine, batches[:1])
    for other in variants.values():
        time_forward(other, batches[:1])
    time_pipeline(spec, engine, paths[:args.batch_size], args.batch_size)
    def pipeline() -> float:
        return time_pipeline(spec, engine, paths, args.batch_size)

    def forward(model):
        return lambda: time_forward(model, batches)

    seconds: dict[str, list[float]] = {"reference": [], "engine": [], "pipeline": [],
                                       "prepare": [], **{variant: [] for variant in variants}}
    cpu: dict[str, list[float]] = {key: [] for key in seconds}
    steps = [("reference", forward(reference)),
             ("engine", forward(engine)), ("pipeline", pipeline),
             ("prepare", lambda: time_prepare(spec, paths, args.batch_size)),
             *[(variant, forward(model)) for variant, model in variants.items()]]
    for repeat in range(args.repeats):
        # Every bare forward runs all the batches in one go, as extraction does. The engine
        # runs between the reference and the pipeline, and the order reverses every other
        # repeat (A B C, C B A, ...), so each ratio compares passes measured side by side
        # under the same load.
        for key, step in (steps if repeat % 2 == 0 else steps[::-1]):
            before = time.process_time()  # this process's CPU time, all its threads
            seconds[key].append(step())
            cpu[key].append(time.process_time() - before)
    rates = {key: len(paths) / statistics.median(values) for key, values in seconds.items()}
    ratios = {  # medians of the ratios within each repeat
        "engine_vs_reference": statistics.median(
            r / e for r, e in zip(seconds["reference"], seconds["engine"], strict=True)),
        "pipeline_vs_engine": statistics.median(
            e / p for e, p in zip(seconds["engine"], seconds["pipeline"], strict=True))}
    prepare_ms = 1000 * statistics.median(seconds["prepare"]) / len(paths)
    cpu_ms = {key: 1000 * statistics.median(cpu[key]) / len(paths)
              for key in ("engine", "pipeline")}
    cores = os.cpu_count() or 1
    bound = pipeline_bound(rates["engine"], prepare_ms / 1000, cores)
    info = engine.info()
    setting = f"{info.get('hint', '')}-{info['precision']}".strip("-")
    if variants:
        print(f"  {backbone.display_name} engine settings, bare forward: {setting} (used) "
              f"{rates['engine']:.1f} img/s; "
              + "; ".join(f"{variant} {rates[variant]:.1f} img/s" for variant in variants),
              flush=True)
    print(f"{backbone.display_name} {size}px: reference {reference.label} "
          f"{rates['reference']:.1f} img/s | engine {engine.label} {rates['engine']:.1f} img/s "
          f"({ratios['engine_vs_reference']:.2f}x) | pipeline {rates['pipeline']:.1f} "
          f"img/s ({ratios['pipeline_vs_engine']:.2f} of engine; preparing an image costs "
          f"{prepare_ms:.2f} ms of one core, so at most {bound:.2f} on {cores} cores; CPU "
          f"per image: engine {cpu_ms['engine']:.2f} ms, pipeline {cpu_ms['pipeline']:.2f} "
          f"ms) | "
          f"engine ready in "
          f"{ready_seconds:.1f} s ({info.get('converted_model', 'built')})", flush=True)
    return {"image_size": size,
            "reference_images_per_s": round(rates["reference"], 2),
            "engine_images_per_s": round(rates["engine"], 2),
            "pipeline_images_per_s": round(rates["pipeline"], 2),
            "engine_vs_reference": round(ratios["engine_vs_reference"], 3),
            "pipeline_vs_engine": round(ratios["pipeline_vs_engine"], 3),
            "prepare_ms_per_image": round(prepare_ms, 3),
            "pipeline_bound_vs_engine": round(bound, 3), "cores": cores,
            "engine_cpu_ms_per_image": round(cpu_ms["engine"], 3),
            "pipeline_cpu_ms_per_image": round(cpu_ms["pipeline"], 3),
            "engine": info["engine"], "precision": info["precision"],
            "engine_label": engine.label, "reference_label": reference.label,
            "engine_setting": setting,
            "conversion_s": info.get("conversion_s"),
            "converted_model": info.get("converted_model"),
            "other_settings_images_per_s": {variant: round(rates[variant], 2)
                                            for variant in variants}}


VARIANT_NAMES = {"keras-bf16": "Keras mixed bf16", "throughput-fp32": "OpenVINO fp32",
                 "latency-fp32": "OpenVINO fp32, latency hint",
                 "latency-bf16": "OpenVINO bf16, latency hint",
                 "throughput-bf16": "OpenVINO bf16, throughput hint"}


def readme_table(results: dict) -> str:
    """The README block, from a results file's contents (images/s; ratios to the left)."""
    backbones = results["backbones"]
    variants = list(dict.fromkeys(variant for row in backbones.values()
                                  for variant in row.get("other_settings_images_per_s", {})))
    header = ["Backbone", "Input", "Reference: Keras fp32",
              *[f"{VARIANT_NAMES.get(v, v)} (bare)" for v in variants],
              "Engine used", "Engine, bare forward", "× reference",
              "Pipeline, files → features", "of engine", "Preparing, ms/image (1 core)",
              "Most the pipeline can reach", "CPU ms/image: engine", "CPU ms/image: pipeline"]
    rows = ["| " + " | ".join(header) + " |",
            "|" + "|".join(["---", "---:", "---:", *["---:"] * len(variants), "---",
                            "---:", "---:", "---:", "---:", "---:", "---:", "---:",
                            "---:"]) + "|"]
    for name, row in backbones.items():
        others = row.get("other_settings_images_per_s", {})
        cells = [name, f"{row['image_size']} px", f"{row['reference_images_per_s']:.1f}",
                 *[f"{others[v]:.1f}" if v in others else "–" for v in variants],
                 f"{row.get('engine_label', row['engine'])} "
                 f"({row.get('engine_setting', '').split('-')[0] or 'default'})",
                 f"{row['engine_images_per_s']:.1f}",
                 f"**{row['engine_vs_reference']:.2f}**",
                 f"{row['pipeline_images_per_s']:.1f}",
                 f"{row['pipeline_vs_engine']:.2f}",
                 f"{row['prepare_ms_per_image']:.2f}" if "prepare_ms_per_image" in row else "–",
                 f"{row['pipeline_bound_vs_engine']:.2f}"
                 if "pipeline_bound_vs_engine" in row else "–",
                 *[f"{row[key]:.2f}" if key in row else "–"
                   for key in ("engine_cpu_ms_per_image", "pipeline_cpu_ms_per_image")]]
        rows.append("| " + " | ".join(cells) + " |")
    settings = results.get("settings", {})
    note = (f"Images/s. Measured {results['measured']} on {results['machine']} (load average "
            f"{results['load']}); {settings.get('images', '?')} {settings.get('data', '')} "
            f"images, batch {settings.get('batch_size', '?')}, median of "
            f"{settings.get('repeats', '?')} interleaved repeats (ratios: medians of the "
            f"ratios within each repeat); "
            f"**`engine_vs_reference: {results['engine_vs_reference']:.2f}`** (smallest over "
            f"the backbones), `pipeline_vs_engine: {results['pipeline_vs_engine']:.2f}`. "
            "The last column is the most the pipeline could reach of the engine's bare rate "
            "if the engine kept every core busy and each image also took its preparation "
            "time (read, hash, decode, resize; the engine preprocesses) of one core: "
            "1 / (1 + preparation × engine rate / cores). The CPU columns are this "
            "process's CPU time (all threads) per image in the bare forward and in the "
            "pipeline: what the pipeline spends beyond the engine's CPU plus the preparation "
            "is the engine running less efficiently beside the decoding thread, and the "
            "pipeline's other steps (cache writes, filling the result).")
    return "\n".join([README_START,
                      "<!-- written by benchmarks/extract_throughput.py --readme README.md; "
                      "do not edit by hand -->", "", *rows, "", note, README_END])


def write_readme(readme: Path, results: dict) -> None:
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} … {README_END} block")
    before, rest = text.split(README_START, 1)
    after = rest.split(README_END, 1)[1]
    readme.write_text(before + readme_table(results) + after, encoding="utf-8")
    print(f"wrote the table into {readme}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cxr3")
    parser.add_argument("--backbones", nargs="+", default=["vgg16", "resnet50", "xception"])
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size for every backbone (default: each one's own)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engine", default=None,
                        help="auto, openvino or keras (default: $XRCOMPARE_ENGINE, else auto)")
    parser.add_argument("--variants", nargs="*",
                        default=["latency-bf16", "throughput-fp32", "keras-bf16"],
                        help="other settings whose bare forward is timed alongside: OpenVINO "
                             "hint-precision (throughput|latency-bf16|fp32; the one in use is "
                             "skipped) or keras-bf16 (Keras in mixed bfloat16)")
    parser.add_argument("--json", type=Path, default=RESULTS, help="results file to write")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also write the table into this README's benchmark block")
    parser.add_argument("--table-only", action="store_true",
                        help="write the README table from the results file; measure nothing")
    args = parser.parse_args(argv)

    if args.table_only:
        results = json.loads(args.json.read_text(encoding="utf-8"))
        print(readme_table(results))
        if args.readme:
            write_readme(args.readme, results)
        return 0

    from xrcompare.backbones import get_backbone

    names = [get_backbone(name).name for name in args.backbones]
    load_before = load_average()
    print(f"{machine()}; load average {load_before}; {args.images} images from "
          f"{args.data.name}, batch {args.batch_size}, median of {args.repeats}", flush=True)
    from xrcompare.backbones import WeightsUnavailable, weights_status

    missing = [weights_status(name).detail for name in names
               if not weights_status(name).available]
    if missing:
        print(f"error: {missing[0]} (or leave the backbone out with --backbones)",
              file=sys.stderr)
        return 2
    backbones = {}
    for name in names:
        try:
            backbones[get_backbone(name).display_name] = measure(name, args)
        except WeightsUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    load = f"{load_before} at the start, {load_average()} at the end"
    engine_ratio = min(row["engine_vs_reference"] for row in backbones.values())
    pipeline_ratio = min(row["pipeline_vs_engine"] for row in backbones.values())
    results = {"machine": machine(), "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "load": load, "backbones": backbones,
               "engine_vs_reference": round(engine_ratio, 3),
               "pipeline_vs_engine": round(pipeline_ratio, 3),
               "settings": {"images": args.images, "data": args.data.name,
                            "batch_size": args.batch_size, "repeats": args.repeats,
                            "python": platform.python_version(), **versions()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.readme:
        write_readme(args.readme, results)
    print(f"load average {load}")
    print(f"pipeline_vs_engine: {pipeline_ratio:.3f}")
    print(f"engine_vs_reference: {engine_ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
