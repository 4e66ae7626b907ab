"""Dataset scanning, patient ids and patient-wise splits, on the real shared data."""

from __future__ import annotations

import shutil

import pytest
from conftest import DATA, FIXTURES

from xrcompare.data import (
    DatasetError,
    kfold_by_patient,
    patient_id_from_filename,
    scan_dataset,
    split_by_patient,
)

TINY = FIXTURES / "tiny_cxr"


def test_kaggle_test_has_two_upper_case_classes_and_manifest_ids():
    dataset = scan_dataset(DATA / "kaggle_test")
    assert dataset.class_folders == {"normal": "NORMAL", "pneumonia": "PNEUMONIA"}
    assert dataset.class_counts() == {"normal": 234, "pneumonia": 390}
    assert dataset.patient_id_sources() == {"manifest": 624}
    assert len(set(dataset.groups)) == 225 + 202


def test_cxr3_counts_match_the_data_readme():
    dataset = scan_dataset(DATA / "cxr3")
    assert dataset.class_counts() == {"covid": 420, "normal": 430, "pneumonia": 430}
    assert len(set(dataset.groups)) == 255 + 418 + 365


@pytest.mark.parametrize("name, expected", [
    ("person1008_virus_1691.jpeg", "person1008"),
    ("kermany_person12_bacteria_3.jpg", "person12"),
    ("IM-0117-0001.jpeg", "IM-0117"),
    ("NORMAL2-IM-0095-0001.jpeg", "NORMAL2-IM-0095"),
    ("cohen_02b76460.jpg", None),
])
def test_patient_id_from_kermany_file_names(name, expected):
    assert patient_id_from_filename(name) == expected


def test_without_manifest_ids_come_from_names_then_one_per_image(tmp_path):
    shutil.copytree(TINY, tmp_path / "data", ignore=shutil.ignore_patterns("manifest.csv"))
    dataset = scan_dataset(tmp_path / "data")
    sources = {r.label: r.patient_id_source for r in dataset.records}
    assert sources == {"covid": "image", "normal": "filename", "pneumonia": "filename"}
    assert dataset.manifest_path is None


def test_layout_errors_are_one_readable_line(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "missing")
    (tmp_path / "cats").mkdir()
    with pytest.raises(DatasetError, match="expected sub-folders named covid, normal, pneumonia"):
        scan_dataset(tmp_path)
    (tmp_path / "Covid").mkdir()
    (tmp_path / "Covid" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="hold no images"):
        scan_dataset(tmp_path)


def test_split_is_patient_wise_stratified_and_seeded():
    dataset = scan_dataset(DATA / "cxr3")
    splits = split_by_patient(dataset, seed=7)
    patients = {name: {dataset.records[i].patient_id for i in idx} for name, idx in splits.items()}
    assert not patients["train"] & patients["test"]
    assert not patients["train"] & patients["val"]
    assert not patients["val"] & patients["test"]
    assert sum(len(v) for v in splits.values()) == len(dataset.records)
    for name, share in (("test", 0.2), ("val", 0.15)):
        for label in ("covid", "normal", "pneumonia"):
            count = sum(dataset.records[i].label == label for i in splits[name])
            assert abs(count / 430 - share) < 0.07, (name, label, count)
    assert split_by_patient(dataset, seed=7) == splits
    assert split_by_patient(dataset, seed=8) != splits


def test_kfold_covers_every_image_once_as_test():
    dataset = scan_dataset(DATA / "seed001_0402")
    folds = kfold_by_patient(dataset, 5, seed=1)
    tests = sorted(i for fold in folds for i in fold["test"])
    assert tests == list(range(len(dataset.records)))
    for fold in folds:
        train = {dataset.records[i].patient_id for i in fold["train"]}
        assert not train & {dataset.records[i].patient_id for i in fold["test"]}


def test_too_few_patients_for_a_split_is_a_clear_error():
    dataset = scan_dataset(TINY)
    with pytest.raises(DatasetError, match="only 5 patient"):
        kfold_by_patient(dataset, 6)
