"""Time the Predict & explain page in a real browser, as a user meets it.

Starts a real ``streamlit run streamlit_app.py`` server on loopback (the same harness as the
browser tests, ``tests/e2e/conftest.py``), drives Debian's chromium through Playwright
(``/usr/bin/chromium``; never ``playwright install``) and uses the app's script state
(``data-test-script-state``) as the idle signal. Three figures, each the median of
``--repeats``:

* ``first_page_after_start_s``: a freshly started server (nothing built, nothing cached),
  the Predict & explain page opened by its URL, until the page is drawn with its first
  result: the title, the X-ray and the first run's probabilities (the page then adds the
  other runs one by one, as their models load). Each repeat starts its own server. Printed
  too: the seconds until the page is drawn before any result (``first_page_drawn_s``) and
  until every selected run's probabilities and Grad-CAM of the default sample are drawn and
  the script is idle (``first_page_all_results_s``: every model built, a cost that grows
  with the number of runs selected).
* ``warm_upload_all_runs_s``: on that server (models built), a new X-ray dropped on the
  uploader, until every run's probabilities and Grad-CAM of the upload are drawn. Each
  repeat uploads an image the server has not seen (a sample with one pixel changed), so no
  result comes from a cache.
* ``display_change_s``: the heat-map opacity slider moved one step (keyboard), until the
  overlays are redrawn and the script is idle.

Run from the repository root (``--runs-dir`` defaults to ``trained/``)::

    XRCOMPARE_WEIGHTS_DIR=../shared/weights python benchmarks/predict_page_browser.py

The last three lines are ``first_page_after_start_s: X``, ``warm_upload_all_runs_s: Y`` and
``display_change_s: Z``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("XRCOMPARE_WEIGHTS_DIR", str(REPO.parent / "shared" / "weights"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from e2e.conftest import CHROMIUM, CHROMIUM_ARGS, AppDriver, StreamlitServer  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

from xrcompare.predictor import list_samples  # noqa: E402
from xrcompare.runs import list_runs  # noqa: E402

MAIN = '[data-testid="stMain"]'
#: How long the page must stay finished before a measurement ends (the time reported is
#: when it finished, not the end of this wait).
SETTLE_S = 0.8
POLL_MS = 50


#: True when the script is idle and every run's probabilities (the bar chart, drawn) and
#: Grad-CAM (a map caption and a loaded image per run, after the X-ray) are on the page, none
#: of them stale; optionally also when a caption names ``name`` and the maps' images differ
#: from ``before``. Also true when the script is idle with an error on the page (reported by
#: :func:`check_clean`). Evaluated inside the page (no round trip per poll, so the measuring
#: does not load the CPU it measures).
DONE_JS = """([runs, name, before]) => {
  const app = document.querySelector('[data-testid="stApp"]');
  const state = app && app.getAttribute('data-test-script-state');
  if (!state || ['initial', 'running', 'rerunRequested'].includes(state)) return false;
  if (document.querySelector('[data-testid="stStatusWidgetRunningIcon"], '
      + '[data-testid="stSkeleton"], [data-testid="stAppSkeleton"]')) return false;
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main) return false;
  if (main.querySelector('[data-testid="stException"], [data-testid="stAlertContentError"]'))
    return true;  // finished, with an error the caller reports
  const all = (selector) => [...main.querySelectorAll(selector)]
      .filter((element) => !element.closest('[data-stale="true"]'));
  const captions = all('[data-testid="stCaptionContainer"]').map((c) => c.innerText);
  const images = all('[data-testid="stImage"] img');
  if (captions.filter((text) => text.includes('explains ')).length < runs) return false;
  if (all('[data-testid="stPlotlyChart"] .main-svg').length < 1) return false;
  if (images.length < 1 + runs) return false;
  if (!images.every((image) => image.complete && image.naturalWidth > 0)) return false;
  if (name && !captions.some((text) => text.includes(name))) return false;
  if (before && JSON.stringify(images.slice(1).map((image) => image.src))
      === JSON.stringify(before)) return false;
  return true;
}"""
RUNNING_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const state = app && app.getAttribute('data-test-script-state');
  return state === 'running' || state === 'rerunRequested';
}"""
SOURCES_JS = """() => [...document.querySelectorAll(
    '[data-testid="stMain"] [data-testid="stImage"] img')]
  .filter((element) => !element.closest('[data-stale="true"]')).slice(1).map((i) => i.src)"""
#: True when the probabilities' bar chart is drawn (after the first run's result).
FIRST_RESULT_JS = """() => [...document.querySelectorAll(
    '[data-testid="stMain"] [data-testid="stPlotlyChart"] .main-svg')]
  .some((element) => !element.closest('[data-stale="true"]'))"""
PAGE_DRAWN_JS = """() => {
  const main = document.querySelector('[data-testid="stMain"]');
  return !!main && !!main.querySelector('h1') && main.innerText.includes('Predict & explain')
      && [...main.querySelectorAll('[data-testid="stImage"] img')]
          .some((image) => image.complete && image.naturalWidth > 0);
}"""


def wait_done(page, runs: int, timeout_s: float, started: float, name: str | None = None,
              before: list[str] | None = None) -> float:
    """Seconds from ``started`` until :data:`DONE_JS` holds, confirmed ``SETTLE_S`` later
    (a rerun in between restarts the wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the page did not finish within {timeout_s:.0f} s")
        page.wait_for_function(DONE_JS, arg=[runs, name, before], polling=POLL_MS,
                               timeout=remaining * 1000)
        done_at = time.perf_counter()
        check_clean(AppDriver(page, ""))
        page.wait_for_timeout(SETTLE_S * 1000)
        if page.evaluate(DONE_JS, [runs, name, before]):
            return done_at - started


def wait_running(page, timeout_s: float = 3.0) -> None:
    """Wait until a rerun has started (after an interaction), or ``timeout_s``."""
    try:
        page.wait_for_function(RUNNING_JS, polling=10, timeout=timeout_s * 1000)
    except PlaywrightTimeout:
        pass


def unseen_images(count: int, folder: Path) -> list[Path]:
    """``count`` JPEG X-rays the server has not seen: the samples, each with one pixel
    changed per repeat (a new content hash, the same picture)."""
    samples = list_samples()
    paths = []
    for number in range(count):
        sample = samples[number % len(samples)]
        gray = cv2.imread(str(sample.path), cv2.IMREAD_GRAYSCALE)
        gray[0, number % gray.shape[1]] ^= 0x10
        path = folder / f"upload-{number}-{sample.path.stem}.png"
        cv2.imwrite(str(path), gray)
        paths.append(path)
    return paths


def measure_first_page(browser, env: dict, runs: int, timeout_s: float
                       ) -> tuple[float, float, float]:
    """(seconds until the page is drawn, until its first result is drawn, until every
    result is drawn) on a fresh server, the Predict & explain page opened by its URL."""
    server = StreamlitServer(env)
    try:
        server.wait_ready()
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        try:
            page = context.new_page()
            page.set_default_timeout(int(timeout_s * 1000))
            started = time.perf_counter()
            page.goto(f"{server.url}/predict", wait_until="domcontentloaded")
            page.wait_for_function(PAGE_DRAWN_JS, polling=POLL_MS, timeout=timeout_s * 1000)
            drawn = time.perf_counter() - started
            page.wait_for_function(FIRST_RESULT_JS, polling=POLL_MS, timeout=timeout_s * 1000)
            first_result = time.perf_counter() - started
            total = wait_done(page, runs, timeout_s, started)
            check_clean(AppDriver(page, server.url))
            return drawn, max(drawn, first_result), total
        finally:
            context.close()
    finally:
        server.stop()


def check_clean(driver: AppDriver) -> None:
    problems = driver.problems()
    if problems:
        raise RuntimeError("the page shows an error: " + " | ".join(problems))


def measure_warm(browser, env: dict, runs: int, repeats: int, timeout_s: float
                 ) -> tuple[list[float], list[float]]:
    """Upload and display-change timings on one server, after a first visit and one
    untimed upload (which builds whatever the sample did not need)."""
    server = StreamlitServer(env)
    try:
        server.wait_ready()
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        try:
            page = context.new_page()
            page.set_default_timeout(int(timeout_s * 1000))
            page.goto(f"{server.url}/predict", wait_until="domcontentloaded")
            wait_done(page, runs, timeout_s, time.perf_counter())
            uploads, changes = [], []
            with tempfile.TemporaryDirectory(prefix="xrcompare-bench-") as folder:
                for number, image in enumerate(unseen_images(repeats + 1, Path(folder))):
                    upload_s = upload(page, image, runs, timeout_s)
                    change_s = move_opacity(page, runs, timeout_s)
                    check_clean(AppDriver(page, server.url))
                    if number:  # the first round only warms up
                        uploads.append(upload_s)
                        changes.append(change_s)
            return uploads, changes
        finally:
            context.close()
    finally:
        server.stop()


def upload(page, image: Path, runs: int, timeout_s: float) -> float:
    chooser = page.locator(f'{MAIN} [data-testid="stFileUploaderDropzoneInput"]')
    started = time.perf_counter()
    chooser.set_input_files(str(image))
    wait_running(page)
    return wait_done(page, runs, timeout_s, started, name=image.name)


def move_opacity(page, runs: int, timeout_s: float) -> float:
    """One keyboard step of the heat-map opacity slider (down from the middle and above,
    else up), until the overlays are redrawn."""
    thumb = page.locator(f'{MAIN} [data-testid="stSlider"]', has_text="Heat-map opacity") \
        .get_by_role("slider").first
    value = float(thumb.get_attribute("aria-valuenow") or 0.45)
    before = page.evaluate(SOURCES_JS)
    thumb.focus()
    started = time.perf_counter()
    page.keyboard.press("ArrowLeft" if value >= 0.5 else "ArrowRight")
    wait_running(page)
    return wait_done(page, runs, timeout_s, started, before=before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default=os.environ.get("XRCOMPARE_RUNS_DIR")
                        or str(REPO / "trained"))
    parser.add_argument("--repeats", type=int, default=5,
                        help="warm uploads and display changes to time (median)")
    parser.add_argument("--first-repeats", type=int, default=3,
                        help="fresh servers to time the first page on (median)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds allowed for one measurement")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.first_repeats < 1:
        parser.error("--repeats and --first-repeats must be at least 1")

    listing = list_runs(args.runs_dir)
    runs = sum(1 for run in listing.runs if run.is_cnn)  # runs that get a Grad-CAM map
    if not runs:
        print(f"no runs in {args.runs_dir}", file=sys.stderr)
        return 1
    from xrcompare.predictor import weights_problem

    problems = [f"{run.run_id}: {weights_problem(run)}" for run in listing.runs
                if run.is_cnn and weights_problem(run)]
    if problems:
        print("these runs cannot be built here (set XRCOMPARE_WEIGHTS_DIR): "
              + "; ".join(problems), file=sys.stderr)
        return 1
    env = {"XRCOMPARE_RUNS_DIR": str(Path(args.runs_dir).resolve()),
           "XRCOMPARE_WEIGHTS_DIR": os.environ["XRCOMPARE_WEIGHTS_DIR"]}
    print(f"{runs} runs in {args.runs_dir}: " + ", ".join(run.run_id for run in listing.runs))
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start")

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            drawn, first, every = [], [], []
            for _ in range(args.first_repeats):
                seconds_drawn, seconds_first, seconds = measure_first_page(
                    browser, env, runs, args.timeout)
                drawn.append(seconds_drawn)
                first.append(seconds_first)
                every.append(seconds)
                print(f"first page: drawn {seconds_drawn:.2f} s, first result "
                      f"{seconds_first:.2f} s, every result ({runs} runs) {seconds:.2f} s",
                      flush=True)
            uploads, changes = measure_warm(browser, env, runs, args.repeats, args.timeout)
            for upload_s, change_s in zip(uploads, changes, strict=True):
                print(f"warm upload {upload_s:.2f} s, display change {change_s:.2f} s",
                      flush=True)
        finally:
            browser.close()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"first_page_drawn_s: {statistics.median(drawn):.2f}")
    print(f"first_page_all_results_s: {statistics.median(every):.2f} ({runs} runs)")
    print(f"first_page_after_start_s: {statistics.median(first):.2f}")
    print(f"warm_upload_all_runs_s: {statistics.median(uploads):.2f}")
    print(f"display_change_s: {statistics.median(changes):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
