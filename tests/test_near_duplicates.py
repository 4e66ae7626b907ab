"""Near-duplicate guard: the same radiograph under two patient ids is grouped as one patient.

Real images throughout: the tiny fixture, and cxr3's COVID folder, where the shared data holds
three such pairs (one of them found by an outside check of the shipped runs)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
from conftest import DATA, FIXTURES

from xrcompare import near_duplicates
from xrcompare.data import group_near_duplicates, merge_groups, scan_dataset, split_by_patient
from xrcompare.imaging import read_gray

TINY = FIXTURES / "tiny_cxr"


def recropped(gray: np.ndarray, margin: float = 0.03, contrast: float = 1.15,
              brightness: float = 12.0) -> np.ndarray:
    """The same radiograph as a second publication might show it: a few percent cropped off
    each side, contrast and brightness changed."""
    height, width = gray.shape
    top, left = int(height * margin), int(width * margin)
    crop = gray[top:height - top, left:width - left].astype(np.float32)
    return np.clip(crop * contrast + brightness, 0, 255).astype(np.uint8)


def test_a_recropped_recontrasted_copy_scores_above_the_threshold_and_strangers_below():
    original = read_gray(TINY / "normal" / "kermany_IM-0117-0001.jpg")
    copy = recropped(original)
    first, second = near_duplicates.fingerprint(original), near_duplicates.fingerprint(copy)
    assert near_duplicates.similarity(first, second) >= near_duplicates.THRESHOLD
    # children's chest X-rays look alike, yet two different children stay apart
    others = [read_gray(path) for path in sorted((TINY / "normal").glob("*.jpg"))[1:]]
    for other in others:
        score = near_duplicates.similarity(first, near_duplicates.fingerprint(other))
        assert score < near_duplicates.THRESHOLD


def test_merge_groups_joins_chains_into_one_readable_group():
    groups = ["a", "b", "c", "d", "b"]
    merged = merge_groups(groups, [(0, 1, 0.97), (1, 2, 0.95)])
    assert merged == ["a+b+c", "a+b+c", "a+b+c", "d", "a+b+c"]


def test_the_copy_lands_in_the_same_split_as_its_original(tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(TINY, folder)
    (folder / "manifest.csv").unlink()  # patient ids from file names / one per image
    source = folder / "pneumonia" / "kermany_person1008_virus_1691.jpg"
    copy_path = folder / "pneumonia" / "republished_figure_2.png"  # no patient id in its name
    cv2.imwrite(str(copy_path), recropped(read_gray(source)))
    dataset = scan_dataset(folder)
    ids = {record.path.name: record.patient_id for record in dataset.records}
    assert ids["republished_figure_2.png"] != ids[source.name]

    found = group_near_duplicates(dataset)
    assert len(found) == 1
    assert sorted(found[0]["paths"]) == ["pneumonia/kermany_person1008_virus_1691.jpg",
                                         "pneumonia/republished_figure_2.png"]
    ids = {record.path.name: record.patient_id for record in dataset.records}
    assert ids["republished_figure_2.png"] == ids[source.name] == found[0]["group"]
    assert dataset.summary()["near_duplicates"] == found
    for seed in range(5):
        splits = split_by_patient(dataset, val_fraction=0.2, test_fraction=0.2, seed=seed)
        where = {dataset.records[i].path.name: name for name, rows in splits.items()
                 for i in rows}
        assert where["republished_figure_2.png"] == where[source.name]


def test_cxr3_covid_holds_exactly_the_three_known_republished_radiographs():
    dataset = scan_dataset(DATA / "cxr3")
    covid = [record for record in dataset.records if record.label == "covid"]
    pairs = near_duplicates.find_near_duplicates([read_gray(r.path) for r in covid])
    named = {frozenset((covid[i].path.name, covid[j].path.name)) for i, j, _ in pairs
             if covid[i].patient_id != covid[j].patient_id}
    assert named == {
        frozenset(("cohen_A7E260CE-8A00-4C5F-A7F5-27336527A981.jpg", "cohen_case_76_1-3.jpg")),
        frozenset(("cohen_2-chest-filmc.jpg", "cohen_7-fatal-covid19.jpg")),
        frozenset(("cohen_AR-1.jpg", "cohen_extubation-1.jpg")),
    }


def test_a_training_run_records_the_merged_pair_and_keeps_it_on_one_side(tmp_path, feature_cache):
    from xrcompare.experiment import TrainConfig, train_runs
    from xrcompare.runs import load_run

    folder = tmp_path / "data"
    shutil.copytree(TINY, folder)
    source = folder / "covid" / "cohen_02b76460.jpg"
    cv2.imwrite(str(folder / "covid" / "figure_from_another_paper.jpg"),
                recropped(read_gray(source), margin=0.02, contrast=0.9, brightness=-10))
    config = TrainConfig(data=folder, backbones=["resnet50"], image_size=64, epochs=1,
                         batch_size=4, head="gap", val_fraction=0.25, test_fraction=0.25,
                         runs_dir=tmp_path / "runs", name="neardup")
    run = load_run(train_runs(config)[0])
    merged = run.info["split"]["near_duplicates"]
    assert [sorted(item["paths"]) for item in merged] == [
        ["covid/cohen_02b76460.jpg", "covid/figure_from_another_paper.jpg"]]
    where = dict(zip(run.predictions["path"], run.predictions["split"], strict=True))
    assert where["covid/cohen_02b76460.jpg"] == where["covid/figure_from_another_paper.jpg"]
