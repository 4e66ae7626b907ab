"""Nearest training images and the out-of-distribution check (xrcompare/neighbours.py): the
index's arithmetic, its file read as untrusted, and the shipped ResNet50 run's index with the
real base on real X-rays and on made-up images that are not chest X-rays."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest
from conftest import DATA, REPO

from xrcompare import neighbours
from xrcompare.engine import Engine
from xrcompare.inference import load_image_file
from xrcompare.neighbours import neighbours_of
from xrcompare.runs import load_run

MAIN_RUN = REPO / "trained" / "resnet50-cxr3"
SAMPLES = REPO / "samples"


def cloud(rng, count: int, channels: int = 32, centre: float = 0.0) -> np.ndarray:
    return (centre + rng.normal(size=(count, channels))).astype(np.float32)


def test_a_training_vector_is_its_own_nearest_and_far_vectors_are_flagged():
    rng = np.random.default_rng(0)
    train, val = cloud(rng, 200), cloud(rng, 100)
    index = neighbours.fit_index(train, [f"img{i}.png" for i in range(200)],
                                 ["a" if i % 2 else "b" for i in range(200)], val,
                                 components=8, k=3)
    nearest = index.nearest(train[17])
    assert nearest[0]["path"] == "img17.png" and nearest[0]["similarity"] > 0.99
    assert [item["similarity"] for item in nearest] == sorted(
        (item["similarity"] for item in nearest), reverse=True)
    assert len(nearest) == 3 and len(index.nearest(train[0], k=10)) == 10
    # 99% of the validation vectors are within the threshold; a far vector is not.
    assert np.mean(index.distances(val) <= index.threshold) == pytest.approx(0.99, abs=0.011)
    assert index.check(cloud(rng, 1, centre=6.0)[0])["out_of_distribution"] is True
    assert index.check(val[0])["out_of_distribution"] in (False, True)
    with pytest.raises(ValueError, match="32 numbers"):
        index.check(np.zeros(31))
    with pytest.raises(ValueError, match="differ in length"):
        neighbours.fit_index(train, ["x"], ["a"], val)
    with pytest.raises(ValueError, match="validation"):
        neighbours.fit_index(train, ["x"] * 200, ["a"] * 200, val[:0])


@pytest.fixture
def copied_run(tmp_path):
    folder = tmp_path / "runs" / "copy"
    shutil.copytree(MAIN_RUN, folder)
    return folder


def write_index(folder, **arrays):
    with np.load(MAIN_RUN / neighbours.INDEX_FILE, allow_pickle=False) as data:
        found = {name: data[name] for name in data.files}
    found.update(arrays)
    for name in [name for name, value in found.items() if value is None]:
        del found[name]
    with (folder / neighbours.INDEX_FILE).open("wb") as handle:
        np.savez(handle, **found)


def test_the_shipped_index_saves_and_loads_the_same(copied_run):
    shipped = neighbours.load_index(load_run(MAIN_RUN))
    neighbours.save_index(shipped, copied_run)
    again = neighbours.load_index(load_run(copied_run))
    assert again.paths == shipped.paths and again.labels == shipped.labels
    assert np.allclose(again.vectors, shipped.vectors, atol=1e-3)
    assert (again.k, again.threshold) == (shipped.k, shipped.threshold)
    assert set(again.labels) == {"covid", "normal", "pneumonia"}
    assert len(again.paths) == load_run(MAIN_RUN).split_summary["train"]["images"]


@pytest.mark.parametrize(("arrays", "says"), [
    ({"scales": None}, "lacks scales"),
    ({"mean": np.zeros(512, np.float32)}, "512 channels, the run's base gives 2048"),
    ({"settings": np.array([5, np.nan, 0.99])}, "not three numbers"),
    ({"settings": np.array([500, 10.0, 0.99])}, "k 500"),
    ({"labels": np.array(["cat"] * 819)}, "classes cat are not the run's"),
    ({"paths": np.array(["a.png"] * 3)}, "do not match"),
    ({"scales": np.full(64, -1.0, np.float32)}, "not all positive"),
    ({"paths": np.array([{"a": 1}] * 819, dtype=object)}, "cannot be read"),
])
def test_a_bad_index_in_a_copied_run_gets_one_sentence(copied_run, arrays, says):
    write_index(copied_run, **arrays)
    with pytest.raises(neighbours.NeighbourIndexError, match=says) as error:
        neighbours.load_index(load_run(copied_run))
    assert "\n" not in str(error.value)


def test_an_index_that_unpacks_to_gigabytes_is_not_unpacked(copied_run):
    with zipfile.ZipFile(copied_run / neighbours.INDEX_FILE, "w", zipfile.ZIP_DEFLATED) as bomb:
        with bomb.open("vectors.npy", "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(200):
                member.write(chunk)
    assert (copied_run / neighbours.INDEX_FILE).stat().st_size < 2**20
    with pytest.raises(neighbours.NeighbourIndexError, match="unpacks to more than"):
        neighbours.load_index(load_run(copied_run))


def test_a_run_without_an_index_says_how_to_build_one(copied_run):
    (copied_run / neighbours.INDEX_FILE).unlink()
    run = load_run(copied_run)
    assert neighbours.load_index(run) is None
    result = neighbours_of(run, np.zeros((64, 64), np.uint8), engine=None)
    assert result["out_of_distribution"] is None and "--build" in result["neighbours_note"]


def made_up_images() -> dict[str, np.ndarray]:
    """Images that are not chest X-rays, made from a real one and from nothing."""
    xray = load_image_file(SAMPLES / "normal_kermany_IM-0147-0001.jpg").gray
    rng = np.random.default_rng(1)
    texture = cv2.GaussianBlur((rng.random((64, 64)) * 255).astype(np.uint8), (5, 5), 2)
    return {"colour photo": load_image_file(SAMPLES / "photo_coffee-cup_grayscale.jpg").gray,
            "texture": cv2.resize(texture, (512, 512)), "inverted X-ray": 255 - xray,
            "tiny crop": np.ascontiguousarray(xray[200:232, 200:232])}


@pytest.mark.slow
def test_the_shipped_run_flags_what_is_not_a_chest_xray_and_passes_kaggle_xrays():
    run = load_run(MAIN_RUN)
    index = neighbours.load_index(run)
    engine = Engine()
    folder = run.data_folder()
    # A training image finds itself: the upload path (engine) matches the training features.
    first = load_image_file(folder / index.paths[0]).gray
    assert index.nearest(engine.pooled(run, first))[0]["path"] == index.paths[0]
    for name, gray in made_up_images().items():
        assert index.check(engine.pooled(run, gray))["out_of_distribution"], name
    kaggle = sorted((DATA / "kaggle_test").rglob("*.jpg"))[::52]
    assert len(kaggle) >= 12
    passed = [not index.check(engine.pooled(run, load_image_file(path).gray))[
        "out_of_distribution"] for path in kaggle]
    assert np.mean(passed) >= 0.8, f"{sum(passed)} of {len(passed)} Kaggle X-rays passed"


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xrcompare", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_predict_json_and_the_neighbours_command_give_the_check(tmp_path):
    photo = SAMPLES / "photo_coffee-cup_grayscale.jpg"
    result = cli("predict", MAIN_RUN, photo, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout)
    assert record["out_of_distribution"] is True and record["distance"] > record["threshold"]
    assert len(record["nearest"]) == neighbours.K
    result = cli("neighbours", "resnet50-cxr3", SAMPLES / "covid_cohen_3b46de94.jpg", "--k", 3)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "in distribution" in lines[0] and len(lines) == 4
    assert lines[1].startswith(" 1. ")
    result = cli("neighbours", "resnet50-cxr3")
    assert result.returncode != 0 and "give an IMAGE, or --build" in result.stderr
    assert "Traceback" not in result.stderr
