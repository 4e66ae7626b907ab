"""Time switching pages through the sidebar menu in a real browser, as a user meets it.

Starts a real ``streamlit run streamlit_app.py`` server on loopback (the browser tests'
harness, ``tests/e2e/conftest.py``), drives Debian's chromium through Playwright
(``/usr/bin/chromium``; never ``playwright install``) and clicks each page's menu entry in
turn, ``--rounds`` times after one warm-up round. A switch is timed from the click until the
new page's heading and every chart are drawn and the app's script state is idle
(:meth:`AppDriver.click_nav`). The Predict & explain page runs every selected model on its
sample when it opens, so it is printed but not counted in the two figures.

Run from the repository root (``--runs-dir`` defaults to ``trained/``)::

    python benchmarks/page_switch_browser.py

The last two lines are ``page_switch_median_s: X`` (over every switch but Predict's) and
``page_switch_slowest_s: Y`` (the slowest page's median).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

# The Predict page benchmark's harness: the repository and tests/ on the path, the weights
# folders and TensorFlow's log level set, the browser tests' server and driver.
from predict_page_browser import CHROMIUM, CHROMIUM_ARGS, REPO, AppDriver, StreamlitServer

PREDICT = "Predict & explain"


def main(argv: list[str] | None = None) -> int:
    from e2e.test_pages_e2e import PAGES  # tests/ is on the path once the harness is in
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default=str(REPO / "trained"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    titles = [title for _, title, _, _ in PAGES[1:] + PAGES[:1]]
    seconds: dict[str, list[float]] = {title: [] for title in titles}
    env = {"XRCOMPARE_RUNS_DIR": str(Path(args.runs_dir).resolve()), "XRCOMPARE_WARM_UP": "0"}
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start")
    server = StreamlitServer(env)
    try:
        server.wait_ready()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
            driver = AppDriver(page, server.url)
            driver.open("")
            for round_number in range(args.rounds + 1):  # round 0 warms the caches
                for title in titles:
                    took = driver.click_nav(title)
                    if driver.problems():
                        print(f"{title}: {driver.problems()}", file=sys.stderr)
                        return 1
                    if round_number:
                        seconds[title].append(took)
            browser.close()
    finally:
        server.stop()
    medians = {title: statistics.median(values) for title, values in seconds.items()}
    for title, value in sorted(medians.items(), key=lambda item: -item[1]):
        print(f"  {title}: median {value:.2f} s over {len(seconds[title])}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    ours = [value for title, values in seconds.items() if title != PREDICT for value in values]
    print(f"page_switch_median_s: {statistics.median(ours):.2f}")
    print(f"page_switch_slowest_s: "
          f"{max(value for title, value in medians.items() if title != PREDICT):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
