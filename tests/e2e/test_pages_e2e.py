"""Every dashboard page in a real browser: no exception or error box, key content drawn,
screenshots saved to test-artifacts/screenshots/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

#: (url path, title of the menu entry, a text the page must show, screenshot name)
PAGES = [
    ("", "Overview", "Leaderboard", "01-overview"),
    ("per_class", "Per-class scores", "Per-class scores", "02-per-class"),
    ("confusion", "Confusion matrices", "COVID missed", "03-confusion"),
    ("curves", "Training curves", "Training curves", "04-training-curves"),
    ("tradeoffs", "Recall trade-offs", "Which threshold reaches a target sensitivity",
     "05-recall-tradeoffs"),
    ("heldout", "Held-out Kaggle test", "Worst mistakes", "06-heldout-kaggle"),
    ("dataset", "Dataset", "The traps of this data", "07-dataset"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("url_path", "title", "expected", "shot"), PAGES,
                         ids=[page[3] for page in PAGES])
def test_page_renders_without_errors(app, url_path, title, expected, shot):
    page = app.open(url_path)
    app.screenshot(shot)
    assert app.problems() == []
    assert page.get_by_text(expected).first.is_visible()
    charts = page.locator('[data-testid="stPlotlyChart"]').count()
    if url_path not in ("",):
        assert charts >= 1, f"{title}: no chart drawn"


@pytest.mark.e2e
def test_switching_pages_through_the_menu_is_fast(app):
    app.open("")
    timings = {}
    for rounds in range(2):  # the first round warms the caches
        for _, title, _, _ in PAGES[1:] + PAGES[:1]:
            seconds = app.click_nav(title)
            assert app.problems() == [], f"{title}: {app.problems()}"
            if rounds == 1:
                timings[title] = round(seconds, 3)
    (ARTIFACTS / "page-switch-seconds.json").write_text(json.dumps(timings, indent=2))
    slowest = max(timings.values())
    assert slowest < 5, f"switching pages took up to {slowest:.1f} s: {timings}"


@pytest.mark.e2e
def test_threshold_slider_moves_the_operating_point(app):
    page = app.open("tradeoffs")
    assert page.get_by_text("At threshold 0.50").first.is_visible()
    slider = (page.locator('[data-testid="stSlider"]', has_text="Threshold on p(covid)")
              .get_by_role("slider"))
    slider.focus()
    slider.press("End")
    app.wait_idle()
    assert page.get_by_text("At threshold 1.00").first.is_visible()
    assert app.problems() == []
