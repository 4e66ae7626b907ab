"""How honest the sidebar's "time left" is: real training jobs started as the sidebar starts
them, their estimate read every half second and set against the time they really took.

    python benchmarks/progress_estimate.py --data ../shared/data/seed001_0402 \
        --heldout ../shared/data/kaggle_test --backbone resnet50 --jobs 2

The jobs run one after another in one fresh jobs folder, so the first starts from the
default rates (a machine that never trained) and each later one from the rates the earlier
ones measured (``jobs/rates.json``). ``--fresh-cache`` gives the first job an empty feature
cache (every image through the base, as on a new machine); the later jobs then find the
features cached, as a class's second run does. Runs go to a temporary folder.

Prints, per job, its wall time and the estimate's error (estimate − true time left) at
10 s, and at 25%, 50% and 75% of the job; then, as its last lines,
``job<N>_error_at_10s: X`` and ``job<N>_max_abs_error_after_25pct_s: X``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xrcompare import dispatch, jobs  # noqa: E402
from xrcompare.config import TrainConfig  # noqa: E402


def watch(config: TrainConfig, jobs_dir: Path) -> tuple[float, list[tuple[float, float | None,
                                                                            str]]]:
    """Start one job and read its estimate until it ends: (wall seconds, samples of
    (seconds since start, estimate, text))."""
    status = jobs.start_job(config, jobs_dir=jobs_dir)
    dispatch.ensure_dispatcher(jobs_dir)  # runs it on a local Ray (stopped in main)
    while status.queued:  # the first job waits for the local Ray to start: not timed
        time.sleep(0.2)
        status = jobs.job_status(status.job_id, jobs_dir)
    started = time.time()
    samples = []
    while status.open:
        time.sleep(0.5)
        status = jobs.job_status(status.job_id, jobs_dir)
        if status.open:
            samples.append((time.time() - started, status.progress.get("eta_seconds"),
                            status.progress.get("eta_text", "")))
    if status.state != "done":
        raise SystemExit(f"job {status.job_id} ended {status.state}: {status.error}")
    return time.time() - started, samples


def errors(total: float, samples) -> dict[str, float | None]:
    """Estimate − true time left at 10 s and at 25/50/75% of the job."""
    out = {}
    for name, at in (("10s", 10.0), ("25pct", 0.25 * total), ("50pct", 0.5 * total),
                     ("75pct", 0.75 * total)):
        near = [(abs(t - at), t, eta) for t, eta, _ in samples if eta is not None]
        if not near:
            out[name] = None
            continue
        _, t, eta = min(near)
        out[name] = round(eta - (total - t), 1)
    late = [abs(eta - (total - t)) for t, eta, _ in samples
            if eta is not None and t >= 0.25 * total]
    out["max_abs_after_25pct"] = round(max(late), 1) if late else None
    out["zero_left_shown"] = any(re.search(r"(?<!\d)0 s left", text) for _, _, text in samples)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--heldout", type=Path, action="append", default=[])
    parser.add_argument("--backbone", action="append", default=None)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--fresh-cache", action="store_true",
                        help="an empty feature cache for the first job")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xrcompare-progress-") as folder:
        folder = Path(folder)
        if args.fresh_cache:
            os.environ["XRCOMPARE_CACHE_DIR"] = str(folder / "cache")
        results = []
        for number in range(1, args.jobs + 1):
            config = TrainConfig(data=args.data.resolve(),
                                 backbones=args.backbone or ["resnet50"],
                                 heldout=[path.resolve() for path in args.heldout],
                                 epochs=args.epochs, image_size=args.image_size,
                                 val_fraction=args.val_fraction,
                                 test_fraction=args.test_fraction, runs_dir=folder / "runs",
                                 name=f"progress-benchmark-{number}")
            try:
                total, samples = watch(config, folder / "jobs")
            finally:
                dispatch.stop_dispatchers()  # and its local Ray, before its folder goes
            found = errors(total, samples)
            results.append({"job": number, "seconds": round(total, 1), **found})
            print(json.dumps(results[-1]))
    for entry in results:
        print(f"job{entry['job']}_seconds: {entry['seconds']}")
        print(f"job{entry['job']}_error_at_10s: {entry['10s']}")
        print(f"job{entry['job']}_max_abs_error_after_25pct_s: {entry['max_abs_after_25pct']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
