"""Batch prediction (xrcompare.batch): folders, several files and a .zip through shipped runs,
one table per batch, a bad file reported in its row; the CLI's ``predict PATH... --csv``.
Real runs, real Kaggle and cxr3 images from ../shared/data."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, REPO

from xrcompare import batch
from xrcompare.archives import ArchiveError
from xrcompare.engine import Engine
from xrcompare.imaging import read_bytes
from xrcompare.runs import heldout_scope, load_run
from xrcompare.uploads import load_upload

TRAINED = REPO / "trained"
MAIN_RUN = "resnet50-cxr3"
PADDED_RUN = "resnet50-cxr3-padded"
KAGGLE = DATA / "kaggle_test"


@pytest.fixture(scope="module")
def runs():
    return [load_run(TRAINED / MAIN_RUN), load_run(TRAINED / PADDED_RUN)]


@pytest.fixture(scope="module")
def engine():
    return Engine()


def kaggle_images(count: int = 3) -> list:
    """The first ``count`` NORMAL and PNEUMONIA images of kaggle_test (real held-out X-rays)."""
    found = []
    for folder in ("NORMAL", "PNEUMONIA"):
        found += sorted((KAGGLE / folder).iterdir())[:count]
    return found


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "xrcompare", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)


# --------------------------------------------------------------------------- collecting


def test_a_folder_gives_its_images_recursively_named_under_it(tmp_path):
    folder = tmp_path / "batch"
    for number, image in enumerate(kaggle_images(2)):
        target = folder / ("a" if number % 2 else "b") / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden").mkdir()
    shutil.copy(kaggle_images(1)[0], folder / ".hidden" / "x.jpg")
    items = batch.collect([folder])
    assert len(items) == 4
    assert all(item.name.startswith(str(folder) + "/") for item in items)
    assert all(item.path.is_file() and ".hidden" not in item.name for item in items)


def test_count_and_size_limits_and_empty_folders_refuse_in_one_sentence(tmp_path):
    images = kaggle_images(3)
    with pytest.raises(batch.BatchError, match="more than 4 images given; at most 4"):
        batch.collect(images + images[:1], max_images=4)
    size = sum(path.stat().st_size for path in images)
    with pytest.raises(batch.BatchError, match="MB are predicted at once"):
        batch.collect(images, max_bytes=size - 1)
    assert len(batch.collect(images, max_bytes=size)) == len(images)
    (tmp_path / "empty").mkdir()
    with pytest.raises(batch.BatchError, match="holds no images"):
        batch.collect([tmp_path / "empty"])


# --------------------------------------------------------------------------- predicting


def test_a_batch_gives_each_runs_recorded_probabilities_and_a_bad_file_its_row(tmp_path, runs,
                                                                              engine):
    images = kaggle_images(3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    items = [batch.BatchItem(path.name, path) for path in images[:2]]
    items += [batch.BatchItem("broken.png", broken), batch.BatchItem("notes.jpg", text)]
    items += [batch.BatchItem(path.name, path) for path in images[2:]]
    result = batch.predict_batch(runs, items, engine, chunk=4)
    table = result.table
    assert result.images == 8 and result.unreadable == 2
    assert len(table) == 6 * len(runs) + 2
    bad = table[table["run"] == ""]
    assert list(bad["image"]) == ["broken.png", "notes.jpg"]
    assert bad["predicted"].isna().all() and bad["note"].str.len().gt(10).all()
    good = table[table["run"] != ""]
    assert (good["note"] == "").all()
    probabilities = good[["covid", "normal", "pneumonia"]].to_numpy(float)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    # what each run recorded for these held-out images when it was evaluated
    scope = heldout_scope("kaggle_test")
    for run in runs:
        recorded = run.predictions_for(scope).set_index("path")
        for path in images:
            row = good[(good["run"] == run.run_id) & (good["image"] == path.name)].iloc[0]
            expected = recorded.loc[f"{path.parent.name}/{path.name}"]
            np.testing.assert_allclose([row[label] for label in run.labels],
                                       [expected[f"prob_{label}"] for label in run.labels],
                                       atol=2e-3, err_msg=f"{run.run_id} {path.name}")
            assert row["predicted"] == run.labels[int(np.argmax(
                [expected[f"prob_{label}"] for label in run.labels]))]


def test_batching_changes_nothing_against_one_image_at_a_time(runs):
    # Both on the Keras reference: a fresh engine's single-image path starts on the
    # converted trunk when one is on disk (bf16 here), which is not what is compared.
    images = kaggle_images(2)
    fresh = Engine(engine="keras")
    result = batch.predict_batch(runs[:1], [batch.BatchItem(p.name, p) for p in images], fresh)
    assert fresh.forward_passes == len(images)  # each image through the trunk once
    single = Engine(engine="keras")
    for path in images:
        gray = load_upload(read_bytes(path), path.name).gray
        expected = single.probabilities(runs[0], gray)
        row = result.table[result.table["image"] == path.name].iloc[0]
        np.testing.assert_allclose([row[label] for label in runs[0].labels],
                                   list(expected.values()), atol=1e-4)


def test_a_zip_with_a_corrupt_member_predicts_the_rest(runs, engine, monkeypatch):
    images = kaggle_images(2)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in images:
            archive.write(path, f"upload/{path.parent.name}/{path.name}")
        archive.writestr("upload/garbage.png", b"\x89PNG\r\n\x1a\nnot really a png")
        archive.writestr("upload/damaged.jpg", images[0].read_bytes())
        archive.writestr("upload/readme.txt", "ignored")
    data = bytearray(buffer.getvalue())
    # corrupt damaged.jpg's compressed bytes (its local header, then a few bytes in)
    local = data.find(b"upload/damaged.jpg")
    data[local + 200:local + 260] = bytes(60)
    result = batch.predict_archive(runs[:1], bytes(data), "upload.zip", engine)
    table = result.table
    assert result.images == 6 and result.unreadable == 2
    bad = table[table["run"] == ""].set_index("image")
    assert set(bad.index) == {"upload/garbage.png", "upload/damaged.jpg"}
    assert "damaged" in bad.loc["upload/damaged.jpg", "note"]
    good = table[table["run"] == MAIN_RUN]
    assert len(good) == 4 and good["predicted"].notna().all()
    monkeypatch.setattr(batch, "MAX_IMAGES", 3)
    with pytest.raises(ArchiveError, match="holds 6 images; at most 3 are accepted"):
        batch.predict_archive(runs[:1], bytes(data), "upload.zip", engine)
    with pytest.raises(ArchiveError, match="not a readable .zip"):
        batch.predict_archive(runs[:1], b"PK\x03\x04 no", "upload.zip", engine)


def test_uploaded_files_keep_their_names_and_their_limits(runs, engine, monkeypatch):
    images = kaggle_images(1)
    files = [(path.name, path.read_bytes()) for path in images]
    files.append(("../../etc/passwd.png", b"nope"))
    result = batch.uploads_batch(runs[:1], files, engine)
    table = result.table
    assert list(table["image"]) == [images[0].name, images[1].name, "passwd.png"]
    assert table["predicted"].iloc[:2].notna().all() and table["run"].iloc[2] == ""
    monkeypatch.setattr(batch, "MAX_IMAGES", 2)
    with pytest.raises(batch.BatchError, match="3 files uploaded; at most 2"):
        batch.uploads_batch(runs[:1], files, engine)


# --------------------------------------------------------------------------- CLI


def test_cli_predicts_a_folder_and_files_to_csv_with_bad_files_in_their_rows(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in kaggle_images(2):
        shutil.copy(path, folder / path.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    out = tmp_path / "out" / "table.csv"
    extra = sorted((DATA / "cxr3" / "covid").iterdir())[0]
    result = cli("predict", TRAINED / MAIN_RUN, folder, extra, "--csv", out)
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["image", "run", "predicted", "confidence", "covid",
                                   "normal", "pneumonia", "note"]
    assert len(table) == 6
    assert table.loc[table["image"] == str(extra), "run"].item() == MAIN_RUN
    broken = table[table["image"] == str(folder / "broken.jpg")].iloc[0]
    assert broken["run"] == "" and broken["note"]
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("6 images, 1 could not be read;")
    assert lines[-1].endswith(f"table written to {out}")
    as_json = cli("predict", TRAINED / MAIN_RUN, folder, "--json")
    payload = json.loads(as_json.stdout)
    assert payload["images"] == 5 and payload["unreadable"] == 1 and len(payload["rows"]) == 5


def test_cli_predict_refuses_an_empty_folder_and_a_bad_csv_name_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("predict", TRAINED / MAIN_RUN, tmp_path / "empty", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("holds no images (.png, .jpg, .jpeg, .dcm, .dicom)")
    image = kaggle_images(1)[0]
    result = cli("predict", TRAINED / MAIN_RUN, image, "--csv", tmp_path / "table.txt")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("--csv must name a .csv file, got "
                                          f"'{tmp_path / 'table.txt'}'")


# --------------------------------------------------------------------------- the page


def open_batch_page(monkeypatch, selected: list[str]):
    import time

    from streamlit.testing.v1 import AppTest

    from xrcompare.paths import RUNS_DIR_VARIABLE
    from xrcompare.runs import list_runs

    monkeypatch.setenv(RUNS_DIR_VARIABLE, str(TRAINED))
    app = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=300)
    app.run()
    for run in list_runs(TRAINED).runs:
        app.session_state[f"run_pick::{run.run_id}"] = run.run_id in selected
    app.session_state["selected_run_ids"] = selected
    app.switch_page("app_pages/batch.py").run()
    assert not app.exception and not app.error

    def finish(app):
        """Rerun until the background batch is done (the page polls it)."""
        deadline = time.monotonic() + 300
        while app.session_state["batch_task"]["task"].state == "running":
            assert time.monotonic() < deadline, "the batch did not finish"
            time.sleep(0.5)
        return app.run()

    return app, finish


def test_the_batch_page_predicts_uploads_into_one_table_with_a_csv(monkeypatch):
    app, finish = open_batch_page(monkeypatch, [MAIN_RUN, PADDED_RUN])
    assert app.title[0].value.startswith("Predict a batch")
    uploader = app.file_uploader(key="batch_files")
    for path in kaggle_images(2):
        uploader.upload(path.name, path.read_bytes())
    uploader.upload("not-an-xray.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    app.run()
    app.button(key="batch_start").click().run()
    app = finish(app)
    assert not app.exception and not app.error
    table = app.dataframe[0].value
    assert len(table) == 4 * 2 + 1
    assert set(table["run"]) == {MAIN_RUN, PADDED_RUN, ""}
    bad = table[table["image"] == "not-an-xray.png"].iloc[0]
    assert bad["note"] and bad["model"] == "–"
    assert any("1 of 5 files could not be read" in item.value for item in app.warning)
    metrics = {item.label: item.value for item in app.metric}
    assert metrics["Images"] == "5" and metrics["Could not be read"] == "1"


def test_the_batch_page_refuses_a_zip_mixed_with_images_in_one_sentence(monkeypatch):
    app, finish = open_batch_page(monkeypatch, [MAIN_RUN])
    uploader = app.file_uploader(key="batch_files")
    image = kaggle_images(1)[0]
    uploader.upload(image.name, image.read_bytes())
    uploader.upload("more.zip", b"PK\x05\x06" + bytes(18))
    app.run()
    app.button(key="batch_start").click().run()
    app = finish(app)
    assert not app.exception
    assert [item.value for item in app.error] == [
        "Could not predict this batch: upload either one .zip or image files, not both "
        "(found 1 .zip among 2 files)"]


def test_the_readme_limits_table_has_the_batch_limits_of_the_code():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- serving-limits:start -->")[1].split("<!-- serving-limits:end -->")[0]
    assert (f"| a batch (*Predict a batch*, `predict PATH...`) | {batch.MAX_IMAGES} images, "
            f"{batch.MAX_TOTAL_BYTES / 1024 / 1024:.0f} MB;") in table
