"""Time the Predict & explain page's work on the shipped runs, warm (models cached).

    python benchmarks/predict_explain.py [--runs-dir trained] [--image FILE] [--repeats 5]

Prints, per phase, the median of ``--repeats`` timings, and as its last two lines:

    predict_gradcam_one_run_s: X    (first run: prediction + Grad-CAM for its predicted class)
    predict_gradcam_all_runs_s: Y   (every run: prediction + Grad-CAM)

It also measures what the two caches buy: cold model building with and without a shared
base, and a warm Grad-CAM with a fresh tf-keras-vis clone (``reuse=False``) against the kept
one. Weights come from the app's folders (``.weights/`` and ``../shared/weights`` by default,
or ``XRCOMPARE_WEIGHTS_DIR``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from xrcompare import predictor  # noqa: E402
from xrcompare.inference import load_image_file  # noqa: E402
from xrcompare.runs import list_runs  # noqa: E402


def median_time(function, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def predict_and_gradcam(runs, models, gray) -> None:
    predictions = predictor.predict_runs(runs, gray, lambda run: models[run.run_id])
    for run, prediction in zip(runs, predictions, strict=True):
        predictor.explain_run(run, models[run.run_id], gray, "gradcam", prediction.predicted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default=str(REPO / "trained"))
    parser.add_argument("--image", default=None, help="an X-ray (default: the first sample)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smooth-samples", type=int, default=20)
    args = parser.parse_args(argv)

    import keras

    listing = list_runs(args.runs_dir)
    runs = [run for run in listing.runs if predictor.weights_problem(run) is None]
    if not runs:
        print(f"no usable runs in {args.runs_dir}", file=sys.stderr)
        return 1
    image = Path(args.image) if args.image else predictor.list_samples()[0].path
    gray = load_image_file(image).gray
    print(f"keras {keras.__version__} on {keras.backend.backend()}, {os.cpu_count()} CPUs; "
          f"image {image.name} {gray.shape[1]}x{gray.shape[0]}; {len(runs)} runs: "
          + ", ".join(run.run_id for run in runs))

    # Cold: build every model, separate bases, then with one shared base per base key
    # (after one throwaway build, so that neither pays TensorFlow's start-up).
    predictor.load_model(runs[0])
    start = time.perf_counter()
    separate = {run.run_id: predictor.load_model(run) for run in runs}
    cold_separate = time.perf_counter() - start
    del separate
    bases = predictor.BaseCache()
    start = time.perf_counter()
    models = {run.run_id: predictor.load_model(run, bases) for run in runs}
    cold_shared = time.perf_counter() - start
    print(f"build_models_separate_bases_s: {cold_separate:.2f}")
    print(f"build_models_shared_bases_s: {cold_shared:.2f} ({len(bases)} bases for "
          f"{len(runs)} runs)")

    # Warm-up: the first call of each model traces functions and creates the kept clone.
    start = time.perf_counter()
    predict_and_gradcam(runs, models, gray)
    print(f"first_predict_gradcam_all_runs_s: {time.perf_counter() - start:.2f}")

    first = runs[0]
    model = models[first.run_id]
    prediction = predictor.predict_runs([first], gray, lambda run: model)[0]
    target = prediction.predicted
    print(f"predict_one_run_s: "
          f"{median_time(lambda: predictor.predict_one(first, model, gray), args.repeats):.3f}")
    for method in ("saliency", "gradcam", "gradcam++", "scorecam"):
        predictor.explain_run(first, model, gray, method, target)  # warm this method
        seconds = median_time(lambda method=method: predictor.explain_run(
            first, model, gray, method, target), args.repeats)
        print(f"{method}_one_run_s: {seconds:.3f}")
    predictor.explain_run(first, model, gray, "smoothgrad", target, smooth_samples=5)
    seconds = median_time(lambda: predictor.explain_run(
        first, model, gray, "smoothgrad", target, smooth_samples=args.smooth_samples),
        max(1, args.repeats // 2))
    print(f"smoothgrad_{args.smooth_samples}_samples_one_run_s: {seconds:.3f}")

    from xrcompare.explain import compute_saliency
    from xrcompare.runs import model_input_for_run

    inputs = model_input_for_run(first, gray)
    layer = first.info["last_conv_layer"]
    index = first.labels.index(target)
    fresh = median_time(lambda: compute_saliency(model, inputs, "gradcam", index, layer,
                                                 reuse=False), args.repeats)
    kept = median_time(lambda: compute_saliency(model, inputs, "gradcam", index, layer),
                       args.repeats)
    print(f"gradcam_fresh_clone_s: {fresh:.3f}")
    print(f"gradcam_kept_clone_s: {kept:.3f}")

    one = median_time(lambda: predict_and_gradcam([first], models, gray), args.repeats)
    every = median_time(lambda: predict_and_gradcam(runs, models, gray), args.repeats)
    print(f"predict_gradcam_one_run_s: {one:.3f}")
    print(f"predict_gradcam_all_runs_s: {every:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
