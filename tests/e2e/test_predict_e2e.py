"""Predict & explain in a real browser: upload a sample X-ray, see every run's probabilities
and a coloured Grad-CAM overlay, every method's choice, a colour bar; move the opacity slider
and see the overlays redrawn (with the browser benchmark's own predicates); a file that is not
an image gets one readable error."""

from __future__ import annotations

import importlib.util
import os
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from xrcompare import neighbours
from xrcompare.explain import METHODS
from xrcompare.predictor import list_samples
from xrcompare.runs import list_runs
from xrcompare.sanity import random_control_of

REPO = Path(__file__).resolve().parents[2]
MAIN = '[data-testid="stMain"]'
#: The first visit builds every run's model and its tf-keras-vis clone (cold): allow for it.
COLD_MS = 300_000


def open_predict_page(app):
    page = app.open("")
    page.locator('[data-testid="stSidebarNav"] a', has_text="Predict & explain").first.click()
    page.locator(f"{MAIN} h1", has_text="Predict & explain").first.wait_for()
    page.get_by_text("A saliency map is a hint, not proof").first.wait_for(timeout=COLD_MS)
    app.wait_idle(timeout_ms=COLD_MS)
    return page


def upload(page, path) -> None:
    page.locator(f'{MAIN} [data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        str(path))
    page.locator(f'{MAIN} [data-testid="stFileChip"]', has_text=path.suffix).first.wait_for()


def wait_until(page, condition, timeout_ms: int = COLD_MS, what: str = "") -> None:
    """Poll ``condition()`` until it holds (the page's elements update while it runs)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        page.wait_for_timeout(200)


def fresh(page, selector: str, **options):
    """Elements of the latest script run (Streamlit marks leftovers of the last run stale)."""
    return page.locator(f'{MAIN} {selector}:not([data-stale="true"] *):not([data-stale="true"])',
                        **options)


@pytest.mark.e2e
def test_uploading_a_sample_xray_shows_probabilities_and_gradcam_overlays(app):
    runs = list_runs(app_runs_dir()).runs
    trained = [run for run in runs if not run.is_control]
    mapped = [run for run in runs if run.is_cnn]  # the statistics baseline gets no map
    # each model shown with its random-init control gets the sanity check's two maps too
    checked = [run for run in runs if random_control_of(run, runs) is not None]
    assert trained
    xray = next(sample for sample in list_samples() if sample.label == "normal")
    page = open_predict_page(app)
    upload(page, xray.path)

    main = page.locator(MAIN)
    headline = re.compile(r"predicts? normal")
    captions = fresh(page, '[data-testid="stCaptionContainer"]', has_text="explains ")
    wait_until(page, lambda: (main.get_by_text(f"your upload {xray.name}").count() == 1
                              and main.get_by_text(headline).count() >= 1
                              and captions.count() == len(mapped)
                              and page.get_by_text("is a hint, not proof").count() == 1),
               what="the upload's predictions and one Grad-CAM per run")
    app.wait_idle(timeout_ms=COLD_MS)
    text = main.inner_text()
    assert (f"All {len(trained)} trained models predict normal" in text
            or "The models disagree" in text)
    assert main.locator('[data-testid="stPlotlyChart"]').count() == 1
    for label in ("covid", "normal", "pneumonia"):  # the bars' legend names every class
        assert main.locator('[data-testid="stPlotlyChart"]').get_by_text(label).count() >= 1
    assert main.get_by_role("heading", name="Grad-CAM").is_visible()
    assert captions.count() == len(mapped)

    # The X-ray, then one overlay per run; the overlays carry colour (a heat map), the X-ray
    # does not.
    # (The nearest training images come last, captioned with their similarity.)
    pictures = main.locator('[data-testid="stImage"]', has_not_text="similarity").locator("img")
    assert pictures.count() == 1 + len(mapped) + 2 * len(checked)
    nearest = main.locator('[data-testid="stImage"]', has_text="similarity")
    assert nearest.count() == neighbours.K
    assert saturation(pictures.nth(0).screenshot()) < 0.02
    coloured = [saturation(pictures.nth(i).screenshot()) for i in range(1, 1 + len(mapped))]
    assert max(coloured) > 0.15, coloured

    # Every saliency method is a visible choice (no scrolling list), and the maps have a
    # colour bar.
    for name in METHODS.values():
        assert main.get_by_role("button", name=name, exact=True).is_visible(), name
    assert main.get_by_text("saliency (jet)").is_visible()

    # The browser benchmark's predicates on this real page: everything is drawn (polled, as
    # the benchmark polls it: on a loaded machine an image may still be loading when the
    # checks above end), and one step of the opacity slider redraws the overlays.
    benchmark = browser_benchmark()
    page.wait_for_function(benchmark.DONE_JS, arg=[len(mapped), xray.name, None],
                           timeout=COLD_MS)
    before = page.evaluate(benchmark.SOURCES_JS)
    assert benchmark.move_opacity(page, len(mapped), COLD_MS / 1000) < COLD_MS / 1000
    assert page.evaluate(benchmark.SOURCES_JS) != before
    assert captions.count() == len(mapped)

    app.screenshot("predict-explain-upload")
    assert app.problems() == []
    assert not [text for text in page.console_errors if "Traceback" in text]


@pytest.mark.e2e
def test_a_file_that_is_not_an_xray_gets_one_readable_error(app, tmp_path):
    page = open_predict_page(app)
    notes = tmp_path / "radiology-notes.txt"
    notes.write_text("Chest X-ray: no acute findings.\n", encoding="utf-8")
    upload(page, notes)
    page.locator('[data-testid="stAlertContentError"]').first.wait_for(timeout=COLD_MS)
    app.wait_idle()
    problems = app.problems()
    assert len(problems) == 1  # the alert's text, after its icon's name
    assert problems[0].endswith("radiology-notes.txt is a text file, not an image we can "
                                "read; please upload a PNG, JPEG or DICOM image.")
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator(f'{MAIN} [data-testid="stImage"]').count() == 0
    app.screenshot("predict-explain-bad-file", full_page=False)


def saturation(png: bytes) -> float:
    """Mean chroma (max − min channel, 0..1) of a screenshot."""
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(np.float32)
    return float(np.mean(image.max(axis=2) - image.min(axis=2)) / 255.0)


def browser_benchmark():
    """benchmarks/predict_page_browser.py as a module (its pieces are tested here)."""
    path = REPO / "benchmarks" / "predict_page_browser.py"
    spec = importlib.util.spec_from_file_location("predict_page_browser", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def app_runs_dir() -> Path:
    """The runs folder the ``app_server`` fixture serves."""
    return Path(os.environ.get("XRCOMPARE_RUNS_DIR") or REPO / "trained")
