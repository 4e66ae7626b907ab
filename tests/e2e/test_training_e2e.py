"""Train from the sidebar in a real browser: a tiny ResNet50 request is queued, runs on the
app's local Ray, is watched to the end, and its run lands in the leaderboard without a
restart."""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import pytest

from .conftest import AppDriver

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("XRCOMPARE_SHARED", REPO.parent / "shared")).resolve() / "data"
PER_CLASS = 8
JOB_TIMEOUT_MS = 240_000


def make_tiny_dataset(folder: Path, per_class: int = PER_CLASS) -> Path:
    """``per_class`` seed001_0402 images per class, one per patient, with their manifest."""
    with (DATA / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        rows = sorted((row for row in csv.DictReader(handle)
                       if row["split_pool"] == "seed001_0402"), key=lambda r: r["path"])
    chosen, patients = [], set()
    for label in ("covid", "normal", "pneumonia"):
        picked = [row for row in rows if row["label"] == label]
        for row in picked:
            if row["patient_id"] not in patients and \
                    sum(r["label"] == label for r in chosen) < per_class:
                patients.add(row["patient_id"])
                chosen.append(row)
    with_names = [(row, f"{row['label']}/{Path(row['path']).name}") for row in chosen]
    for row, relative in with_names:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / row["path"], folder / relative)
    with (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id"])
        writer.writerows((relative, row["patient_id"]) for row, relative in with_names)
    return folder


def screenshot(page, name: str) -> None:
    folder = REPO / "test-artifacts" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"))


@pytest.mark.e2e
@pytest.mark.slow
def test_sidebar_trains_a_tiny_run_that_appears_in_the_leaderboard(
        tmp_path_factory, feature_cache, start_app_server, browser_page):
    from playwright.sync_api import expect

    root = tmp_path_factory.mktemp("training-e2e")
    make_tiny_dataset(root / "data" / "tiny_cxr_e2e")
    runs_dir = root / "runs"
    url = start_app_server({"XRCOMPARE_DATA_ROOT": str(root / "data"),
                            "XRCOMPARE_RUNS_DIR": str(runs_dir),
                            "XRCOMPARE_JOBS_DIR": str(root / "jobs"),
                            "XRCOMPARE_CACHE_DIR": str(feature_cache)})
    page = browser_page
    app = AppDriver(page, url)
    page.goto(url, wait_until="domcontentloaded")
    sidebar = page.locator('[data-testid="stSidebar"]')
    main = page.locator('[data-testid="stMain"]')
    # the first script run after a server start can take long on a loaded 2-core machine
    expect(sidebar.get_by_text("No training job yet.")).to_be_visible(timeout=60_000)
    app.wait_idle()

    form = sidebar.locator('[data-testid="stExpander"]', has_text="New training run")
    # the only dataset under the data root is offered
    expect(form.get_by_role("combobox", name="Dataset")).to_have_value("tiny_cxr_e2e")
    expect(form).to_contain_text("ResNet50")
    form.get_by_label("Epochs", exact=True).fill("2")
    form.get_by_label("Batch size", exact=True).fill("4")
    size = form.get_by_role("combobox", name="Input size")
    option = page.get_by_role("option", name="64 px", exact=True)
    for _ in range(5):  # the first click may only move focus away from a number input
        size.click()
        page.wait_for_timeout(300)
        if option.count():
            break
    option.click()
    expect(size).to_have_value("64 px")
    form.get_by_role("button", name="Start training").click()

    # the first request starts the local Ray (5-10 s quiet, longer beside the other tests)
    expect(sidebar.get_by_text("Training:")).to_be_visible(timeout=120_000)
    expect(sidebar.get_by_role("button", name="Cancel training")).to_be_visible()
    expect(sidebar.locator('[data-testid="stProgress"]')).to_be_visible()
    screenshot(page, "training-running")

    expect(sidebar.get_by_text("Finished in")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(sidebar).to_contain_text("1 new run in the leaderboard")
    runs = [path.name for path in runs_dir.iterdir()]
    assert len(runs) == 1 and runs[0].endswith("resnet50-tiny_cxr_e2e"), runs
    # the app reran itself: the run is in the run picker and the leaderboard, no reload
    expect(main.get_by_text("Leaderboard")).to_be_visible(timeout=30_000)
    expect(main).to_contain_text("tiny_cxr_e2e")
    screenshot(page, "training-finished")
    errors = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.all_inner_texts()

    # the outcome is on disk, not in the browser session: a fresh load still shows it
    page.reload(wait_until="domcontentloaded")
    expect(sidebar.get_by_text("Finished in")).to_be_visible()

    # a long job is cancelled from the sidebar: the click returns at once, the panel shows
    # the outcome once Ray has stopped it, and no run is added
    app.wait_idle()
    form.get_by_label("Epochs", exact=True).fill("500")
    form.get_by_role("button", name="Start training").click()
    cancel = sidebar.get_by_role("button", name="Cancel training")
    expect(cancel).to_be_visible(timeout=30_000)
    # A click that lands while a rerun replaces the sidebar (the job's start reruns the
    # page; slow on a loaded machine) is lost: clicked again until the cancel is taken
    # ("Cancelling …" or the outcome).
    taken = sidebar.get_by_text(re.compile(r"^Cancelling |Cancelled after"))
    app.click_until(cancel, taken.first.is_visible, "the cancel taken")
    expect(sidebar.get_by_text("Cancelled after")).to_be_visible(timeout=30_000)
    expect(sidebar).to_contain_text("No run was kept.")
    assert [path.name for path in runs_dir.iterdir()] == runs
    assert errors.count() == 0, errors.all_inner_texts()
