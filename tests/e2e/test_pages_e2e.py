"""Every dashboard page in a real browser: no exception or error box, key content drawn,
screenshots saved to test-artifacts/screenshots/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
SIDEBAR = '[data-testid="stSidebar"]'

#: (url path, title of the menu entry, a text the page must show, screenshot name)
PAGES = [
    ("", "Overview", "Leaderboard", "01-overview"),
    ("per_class", "Per-class scores", "Per-class scores", "02-per-class"),
    ("confusion", "Confusion matrices", "COVID missed", "03-confusion"),
    ("curves", "Training curves", "Training curves", "04-training-curves"),
    ("tradeoffs", "Recall trade-offs", "Which threshold reaches a target sensitivity",
     "05-recall-tradeoffs"),
    ("heldout", "Held-out Kaggle test", "Worst mistakes", "06-heldout-kaggle"),
    ("compare", "Compare two runs", "The images that decide it", "06b-compare-two-runs"),
    ("dataset", "Dataset", "The traps of this data", "07-dataset"),
    ("predict", "Predict & explain", "Predict & explain", "08-predict-explain"),
    ("evaluate_folder", "Evaluate on a folder", "A .zip of class folders",
     "09-evaluate-on-a-folder"),
    ("glossary", "Glossary", "Patient-wise split", "10-glossary"),
    ("card", "Model card", "Intended use", "11-model-card"),
    ("lesson", "Why 98% is a warning sign", "Reveal", "12-lesson"),
    ("shortcuts", "Shortcut lab", "The lesson", "13-shortcut-lab"),
]
#: Pages that always draw at least one chart (the Predict page waits for an image).
CHARTED = {"per_class", "confusion", "curves", "tradeoffs", "heldout", "dataset", "compare",
           "shortcuts"}


@pytest.mark.e2e
@pytest.mark.parametrize(("url_path", "title", "expected", "shot"), PAGES,
                         ids=[page[3] for page in PAGES])
def test_page_renders_without_errors(app, url_path, title, expected, shot):
    page = app.open(url_path)
    app.screenshot(shot)
    assert app.problems() == []
    assert page.get_by_text(expected).first.is_visible()
    if url_path in CHARTED:
        assert page.locator('[data-testid="stPlotlyChart"]').count() >= 1, f"{title}: no chart"


@pytest.mark.e2e
def test_switching_pages_through_the_menu_keeps_the_sidebar(app):
    # Timed too (the seconds go to test-artifacts/page-switch-seconds.json), but not bounded
    # here: the speed target is benchmarks/page_switch_browser.py.
    app.open("")
    timings = {}
    for _, title, _, _ in PAGES[1:] + PAGES[:1]:
        seconds = app.click_nav(title)
        assert app.problems() == [], f"{title}: {app.problems()}"
        sidebar = app.page.locator('[data-testid="stSidebar"]')
        assert sidebar.get_by_text("Runs to compare").is_visible(), title
        timings[title] = round(seconds, 3)
    (ARTIFACTS / "page-switch-seconds.json").write_text(json.dumps(timings, indent=2))
    assert set(timings) == {title for _, title, _, _ in PAGES}


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


@pytest.mark.e2e
def test_unticking_a_run_in_the_sidebar_hides_it_on_other_pages(app):
    page = app.open("")
    sidebar = page.locator(SIDEBAR)
    boxes = sidebar.locator('[class*="st-key-run_pick"] [data-testid="stCheckbox"]')
    total = boxes.count()
    assert total >= 1
    boxes.first.click()
    app.wait_idle()
    assert sidebar.get_by_text(f"{total - 1} of {total} runs shown").is_visible()
    app.click_nav("Confusion matrices")
    if total > 1:
        assert page.locator('[data-testid="stPlotlyChart"]').count() == total - 1
    else:
        assert page.get_by_text("No run is selected").is_visible()
    assert app.problems() == []


def _shipped_run() -> Path:
    runs = sorted(path for path in (REPO / "trained").iterdir()  # a CNN run: it has a history
                  if (path / "history.csv").is_file() and not list(path.glob("head_fold*")))
    assert runs, "the shipped runs are expected in trained/"
    return runs[0]


@pytest.mark.e2e
def test_a_corrupt_run_is_named_on_every_page(tmp_path, start_app_server, app_at):
    source = _shipped_run()
    shutil.copytree(source, tmp_path / source.name)
    shutil.copytree(source, tmp_path / "broken-run")
    (tmp_path / "broken-run" / "history.csv").unlink()
    app = app_at(start_app_server({"XRCOMPARE_RUNS_DIR": str(tmp_path)}))
    for url_path, title, _, _ in PAGES:
        page = app.open(url_path)
        warning = page.locator(SIDEBAR).locator('[data-testid="stAlertContentWarning"]')
        assert "broken-run" in warning.first.inner_text(), title
        assert "missing history.csv" in warning.first.inner_text()
        assert app.problems() == [], title
        if url_path == "":
            app.screenshot("09-corrupt-run-warning")


@pytest.mark.e2e
def test_an_empty_runs_folder_explains_how_to_train(tmp_path, start_app_server, app_at):
    app = app_at(start_app_server({"XRCOMPARE_RUNS_DIR": str(tmp_path)}))
    for url_path, title, expected, _ in PAGES:
        page = app.open(url_path)
        if url_path == "glossary":  # needs no run
            assert page.get_by_text(expected).first.is_visible()
        else:
            assert page.get_by_text("No trained runs yet").first.is_visible(), title
            assert page.get_by_text("python -m xrcompare train").first.is_visible()
        assert app.problems() == [], title
    app.open("")
    app.screenshot("10-no-runs")


def horizontal_overflow(page) -> int:
    """Pixels the main area is wider than its view (0: nothing to scroll sideways)."""
    return page.evaluate("""() => {
        const main = document.querySelector('[data-testid="stMain"]');
        const widths = [document.documentElement, main].map(e => e.scrollWidth - e.clientWidth);
        return Math.max(...widths);
    }""")


@pytest.mark.e2e
def test_the_lesson_steps_through_on_a_projector_without_sideways_scrolling(app):
    """At 1280 px wide, a teacher reveals each step and moves on; nothing overflows."""
    app.page.set_viewport_size({"width": 1280, "height": 800})
    page = app.open("lesson")
    for number in range(6):
        reveal = page.get_by_role("button", name="Reveal")
        if reveal.count():
            reveal.first.click()
            app.wait_idle()
        assert app.problems() == [], number
        assert horizontal_overflow(page) <= 1, f"step {number + 1} scrolls sideways"
        if number == 5:
            app.screenshot("10b-lesson-last-step")
            break
        page.get_by_role("button", name="Next").click()
        app.wait_idle()
    assert page.get_by_text("What to take away").first.is_visible()
