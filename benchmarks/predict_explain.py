"""Time the Predict & explain page's model work on the shipped runs, as the page does it.

    python benchmarks/predict_explain.py [--runs-dir trained] [--image FILE] [--repeats 5]

The page keeps one :class:`xrcompare.engine.Engine`: each run's classifier split at its last
conv layer into a trunk shared by runs with the same frozen base and a per-run tail; one
trunk pass per distinct (trunk, model input) and image; Grad-CAM from the tail's gradient on
the kept feature map; the maps drawn over the image at display size; results cached, so a
display change only redraws. This script times exactly those steps (the page's rendering in
the browser is ``benchmarks/predict_page_browser.py``'s), warm, each the median of
``--repeats`` images the engine has not seen (the image shifted sideways by a few pixels per
repeat), and, for comparison, the way the page worked before (the flat full model for the
prediction and tf-keras-vis Grad-CAM on it, per run). The last lines are::

    warm_up_all_runs_s: W              (cold: build and trace every trunk and tail)
    redraw_all_runs_s: R               (a display change: overlays from cached maps)
    predict_gradcam_one_run_s: X       (the first run: prediction + Grad-CAM)
    predict_gradcam_all_runs_s: Y      (every run: predictions + Grad-CAMs + overlays)
    neighbours_ood_extra_s: N          (every run with a neighbour index: the image's nearest
                                        training images and out-of-distribution check)

Weights come from the app's folders (``.weights/`` and ``../shared/weights`` by default, or
``XRCOMPARE_WEIGHTS_DIR``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from xrcompare import neighbours, predictor  # noqa: E402
from xrcompare.engine import Engine, base_key  # noqa: E402
from xrcompare.inference import load_image_file  # noqa: E402
from xrcompare.runs import list_runs  # noqa: E402


def unseen(gray: np.ndarray, count: int, start: int = 1) -> list[np.ndarray]:
    """``count`` variants of ``gray`` no cache has seen: shifted sideways by 5 px each."""
    return [np.ascontiguousarray(np.roll(gray, 5 * (start + number), axis=1))
            for number in range(count)]


def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def page_work(engine: Engine, runs, gray, picture, phases: dict, indexes: dict | None = None
              ) -> None:
    """What the page does for a new image: every prediction, every Grad-CAM of the
    predicted class, every overlay at display size (the phases' seconds are appended), and
    the neighbours and out-of-distribution check of the runs in ``indexes`` (the page keeps
    the indexes read; timed apart, ``neighbours``)."""
    start = time.perf_counter()
    predictions = [predictor.predict_run(engine, run, gray) for run in runs]
    middle = time.perf_counter()
    for run in runs:
        if run.run_id in (indexes or {}):
            pooled = engine.pooled(run, gray)
            indexes[run.run_id].check(pooled)
            indexes[run.run_id].nearest(pooled)
    extra = time.perf_counter() - middle
    middle = time.perf_counter()
    maps = [predictor.explain_run(engine, run, gray, "gradcam", prediction.predicted)
            for run, prediction in zip(runs, predictions, strict=True)]
    late = time.perf_counter()
    for run, explanation in zip(runs, maps, strict=True):
        predictor.overlay_for_run(run, picture, explanation.saliency)
    end = time.perf_counter()
    for name, seconds in (("predict", middle - start), ("gradcam", late - middle),
                          ("overlays", end - late), ("total", end - start - extra),
                          ("neighbours", extra)):
        phases.setdefault(name, []).append(seconds)


def flat_way(run, model, gray) -> None:
    """The page before the engine: the flat model's prediction, then tf-keras-vis Grad-CAM
    on the same flat model (its own forward pass through the base)."""
    from xrcompare.explain import compute_saliency
    from xrcompare.runs import model_input_for_run, predict_gray

    probabilities = predict_gray(run, model, gray)
    index = run.labels.index(max(probabilities, key=probabilities.get))
    compute_saliency(model, model_input_for_run(run, gray), "gradcam", index,
                     run.last_conv_layer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default=str(REPO / "trained"))
    parser.add_argument("--image", default=None, help="an X-ray (default: the first sample)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smooth-samples", type=int, default=20)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import keras

    listing = list_runs(args.runs_dir)
    runs = [run for run in listing.runs if predictor.weights_problem(run) is None]
    if not runs:
        print(f"no usable runs in {args.runs_dir}", file=sys.stderr)
        return 1
    image = Path(args.image) if args.image else predictor.list_samples()[0].path
    gray = load_image_file(image).gray
    picture = predictor.display_image(gray)
    print(f"keras {keras.__version__} on {keras.backend.backend()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; image {image.name} "
          f"{gray.shape[1]}x{gray.shape[0]}; {len(runs)} runs: "
          + ", ".join(run.run_id for run in runs))

    engine = Engine()
    warm_up = timed(engine.warm_up, runs)
    inputs = {(base_key(run), run.resize_mode, run.preprocess) for run in runs}
    print(f"trunks: {engine.trunks_built} for {len(runs)} runs; trunk passes per image: "
          f"{len(inputs)}")

    indexes = {run.run_id: index for run in runs
               if run.is_cnn and (index := neighbours.load_index(run)) is not None}
    print(f"neighbour indexes: {len(indexes)} of {len(runs)} runs")
    # One untimed new image, so that every code path has run once.
    page_work(engine, runs, unseen(gray, 1, start=0)[0], picture, {}, indexes)
    phases: dict[str, list[float]] = {}
    for variant in unseen(gray, args.repeats):
        page_work(engine, runs, variant, picture, phases, indexes)
    for name in ("predict", "gradcam", "overlays"):
        print(f"{name}_all_runs_s: {statistics.median(phases[name]):.3f}")

    # A display change: the maps are cached, only the overlays are drawn again.
    cache, known = predictor.SaliencyCache(), predictor.ResultCache()
    for run in runs:
        prediction = predictor.predict_run(engine, run, gray, cache=known)
        predictor.explain_cached(cache, engine, run, gray, "gradcam", prediction.predicted)

    def redraw() -> None:
        for run in runs:
            prediction = predictor.predict_run(engine, run, gray, cache=known)
            explanation = predictor.explain_cached(cache, engine, run, gray, "gradcam",
                                                   prediction.predicted)
            predictor.overlay_for_run(run, picture, explanation.saliency, alpha=0.6)

    redraw_s = statistics.median(timed(redraw) for _ in range(args.repeats))

    # One run: the page's way against the flat model and tf-keras-vis (the page before).
    first = runs[0]
    one = statistics.median(timed(page_work, engine, [first], variant, picture, {})
                            for variant in unseen(gray, args.repeats, start=50))
    flat = engine.flat_model(first)
    flat_way(first, flat, gray)  # warm: its clone and traced functions
    flat_one = statistics.median(timed(flat_way, first, flat, variant)
                                 for variant in unseen(gray, args.repeats, start=100))
    print(f"predict_gradcam_one_run_flat_model_s: {flat_one:.3f} (the page before)")

    target = predictor.predict_run(engine, first, gray).predicted
    for method in ("saliency", "gradcam++", "scorecam"):
        predictor.explain_run(engine, first, gray, method, target)  # warm this method
        seconds = statistics.median(
            timed(predictor.explain_run, engine, first, variant, method, target)
            for variant in unseen(gray, args.repeats, start=150))
        print(f"{method}_one_run_s: {seconds:.3f}")
    predictor.explain_run(engine, first, gray, "smoothgrad", target, smooth_samples=5)
    seconds = statistics.median(
        timed(predictor.explain_run, engine, first, variant, "smoothgrad", target,
              smooth_samples=args.smooth_samples)
        for variant in unseen(gray, max(1, args.repeats // 2), start=200))
    print(f"smoothgrad_{args.smooth_samples}_samples_one_run_s: {seconds:.3f}")

    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"warm_up_all_runs_s: {warm_up:.2f}")
    print(f"redraw_all_runs_s: {redraw_s:.3f}")
    print(f"predict_gradcam_one_run_s: {one:.3f}")
    print(f"predict_gradcam_all_runs_s: {statistics.median(phases['total']):.3f}")
    print(f"neighbours_ood_extra_s: {statistics.median(phases['neighbours']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
