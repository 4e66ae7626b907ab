"""The classroom features in a real browser on a real server: the leaderboard's key columns
in view at 1280 px, presenter mode, evaluating a run on an uploaded .zip, and the training
form's defaults (Kaggle test held out, a warning when the settings repeat a run).

Screenshots (test-artifacts/screenshots/): leaderboard-1280, leaderboard-1440,
presenter-mode, evaluate-zip, training-defaults.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from xrcompare.runs import list_runs
from xrcompare.summary import LEADERBOARD_HEADERS, LEADERBOARD_KEY_COLUMNS

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "tiny_cxr"
SIDEBAR = '[data-testid="stSidebar"]'
MAIN = '[data-testid="stMain"]'
#: Glide data grid draws its header row this tall, with this padding each side of a label.
HEADER_HEIGHT = 35
CELL_PADDING = 8


def grid_geometry(page) -> dict:
    """The first dataframe's box, its visible width and the width of all its columns, its
    header labels (the grid draws on a canvas; its accessible table lists the headers) and
    the header font."""
    return page.evaluate("""() => {
      const frame = document.querySelector('[data-testid="stDataFrame"]');
      const grid = frame.querySelector('[data-testid="stDataFrameResizable"]');
      const box = grid.getBoundingClientRect();
      const scroller = frame.querySelector('.dvn-scroller');
      const inner = frame.querySelector('.dvn-stack > div');
      const style = getComputedStyle(frame.querySelector('.stDataFrameGlideDataEditor'));
      return {x: box.x, y: box.y, width: box.width, visible: scroller.clientWidth,
              columns: parseFloat(inner.style.width),
              headers: [...frame.querySelectorAll('th')].map(e => e.textContent),
              font: style.getPropertyValue('--gdg-header-font-style').trim() + ' '
                    + style.getPropertyValue('--gdg-font-family').trim()};
    }""")


def text_width(page, text: str, font: str) -> float:
    return page.evaluate("([text, font]) => { const c = document.createElement('canvas')"
                         ".getContext('2d'); c.font = font; return c.measureText(text).width; }",
                         [text, font])


@pytest.mark.e2e
def test_the_leaderboard_key_columns_are_in_view_at_1280_px(app):
    """Every key column's header box lies inside a 1280×800 viewport beside the open
    sidebar, with its whole label: no horizontal scrolling, no cut header."""
    page = app.page
    for width, height in ((1440, 1000), (1280, 800)):
        page.set_viewport_size({"width": width, "height": height})
        app.open("")
        app.screenshot(f"leaderboard-{width}", full_page=False)
    assert page.locator(SIDEBAR).bounding_box()["width"] > 200  # the sidebar is open
    geometry = grid_geometry(page)
    labels = [LEADERBOARD_HEADERS[key][0] for key in LEADERBOARD_KEY_COLUMNS]
    widths = [LEADERBOARD_HEADERS[key][1] for key in LEADERBOARD_KEY_COLUMNS]
    assert geometry["headers"] == labels  # the key columns, in order, and only they
    # the grid gave each column its declared width, and all of them fit without scrolling
    assert geometry["columns"] == sum(widths)
    assert geometry["columns"] <= geometry["visible"]
    left = geometry["x"] + 1  # the grid's border
    for label, column_width in zip(labels, widths, strict=True):
        box = {"x": left, "y": geometry["y"] + 1, "width": column_width,
               "height": HEADER_HEIGHT}
        assert box["x"] >= 0 and box["x"] + box["width"] <= 1280, (label, box)
        assert box["y"] >= 0 and box["y"] + box["height"] <= 800, (label, box)
        needed = text_width(page, label, geometry["font"]) + 2 * CELL_PADDING
        assert needed <= column_width, f"header {label!r} needs {needed:.0f} px"
        left += column_width
    # the rest is one click away
    page.locator(MAIN).get_by_role("button", name="Size and speed").click()
    app.wait_idle()
    assert "Base params" in grid_geometry(page)["headers"]
    assert app.problems() == []


@pytest.mark.e2e
def test_presenter_mode_enlarges_type_and_charts_and_keeps_the_downloads(app):
    page = app.open("per_class")
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    before = chart.bounding_box()["height"]
    root = "() => getComputedStyle(document.documentElement).fontSize"
    assert page.evaluate(root) == "16px"
    title = ".gtitle"
    title_size = float(chart.locator(title).first.evaluate("e => parseFloat(e.style.fontSize)"))
    page.locator(SIDEBAR).get_by_text("Presenter mode").click()
    app.wait_idle()
    assert page.evaluate(root) == "20px"
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    assert chart.bounding_box()["height"] > before * 1.2
    assert float(chart.locator(title).first.evaluate(
        "e => parseFloat(e.style.fontSize)")) > title_size * 1.2
    # plotly's own toolbar saves the chart as a PNG; the table has its CSV button
    chart.hover()
    titles = chart.locator(".modebar-btn").evaluate_all(
        "buttons => buttons.map(b => b.getAttribute('data-title'))")
    assert any("png" in (title or "").lower() for title in titles), titles
    assert page.locator(MAIN).get_by_role("button", name="CSV").count() >= 1
    app.screenshot("presenter-mode", full_page=False)
    # it stays on for this browser session, page after page
    app.click_nav("Overview", heading="Overview")
    assert page.evaluate(root) == "20px"
    assert app.problems() == []


def zip_folder(folder: Path, target: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, "my_xrays/" + path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return target


@pytest.mark.e2e
def test_evaluate_a_run_on_an_uploaded_zip(app, tmp_path):
    from xrcompare.inference import evaluate_folder

    page = app.open("evaluate_folder")
    main = page.locator(MAIN)
    main.get_by_text("A .zip of class folders", exact=True).first.click()
    app.wait_idle()
    uploader = main.locator('[data-testid="stFileUploaderDropzoneInput"]')
    # a crafted archive first: one sentence, nothing evaluated
    bad = zip_folder(TINY, tmp_path / "crafted.zip", {"../outside/covid/x.jpg": b"x"})
    uploader.set_input_files(str(bad))
    page.get_by_text("crafted.zip").first.wait_for()
    app.wait_idle()
    main.get_by_role("button", name="Evaluate").click()
    error = main.locator('[data-testid="stAlertContentError"]')
    error.first.wait_for(timeout=60_000)
    assert "leading out of its folder" in error.first.inner_text()
    # the real folder, zipped
    good = zip_folder(TINY, tmp_path / "tiny_cxr.zip")
    uploader.set_input_files(str(good))
    page.get_by_text("tiny_cxr.zip").first.wait_for()
    app.wait_idle()
    main.get_by_role("button", name="Evaluate").click()
    main.get_by_text("Patients shared with the run's data").wait_for(timeout=90_000)
    app.wait_idle()
    run = list_runs(REPO / "trained").runs[0]
    metrics, _ = evaluate_folder(run, TINY)  # the CLI's figures, from the feature cache
    accuracy = main.locator('[data-testid="stMetric"]', has_text="Accuracy")
    assert f"{metrics['accuracy']:.3f}" in accuracy.inner_text()
    assert main.locator('[data-testid="stPlotlyChart"]').count() == 1
    app.screenshot("evaluate-zip")
    assert app.problems() == []


@pytest.mark.e2e
def test_the_training_form_holds_out_kaggle_and_warns_about_a_repeat(app):
    page = app.open("")
    sidebar = page.locator(SIDEBAR)
    expander = sidebar.locator('[data-testid="stExpander"]', has_text="New training run")
    assert sidebar.get_by_role("combobox", name="Dataset").input_value() == "seed001_0402"
    assert sidebar.get_by_role("combobox", name="Held-out folder").input_value() == \
        "kaggle_test"
    warning = expander.get_by_text("These settings repeat the run")
    warning.wait_for()
    assert "resnet50-seed001-blog" in expander.locator(
        '[data-testid="stAlertContentWarning"]').first.inner_text()
    app.screenshot("training-defaults")
    total = len(list_runs(REPO / "trained").runs)
    shown = sidebar.get_by_text(f"1 of {total} runs shown")
    for _ in range(3):  # a click that lands while a rerun replaces the sidebar is lost
        expander.get_by_role("button", name="Show only").click()
        app.wait_idle()
        if shown.count():
            break
    shown.wait_for()
    epochs = expander.get_by_label("Epochs", exact=True)
    epochs.fill("24")
    epochs.press("Enter")
    app.wait_idle()
    assert expander.get_by_text("These settings repeat the run").count() == 0
    assert app.problems() == []
