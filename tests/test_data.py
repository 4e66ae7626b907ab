"""Dataset scanning, patient ids and patient-wise splits, on the real shared data."""

from __future__ import annotations

import shutil

import pytest
from conftest import DATA, FIXTURES

from xrcompare.data import (
    DatasetError,
    is_inside,
    kfold_by_patient,
    list_datasets,
    path_inside,
    patient_id_from_filename,
    patient_keys,
    patient_overlap,
    resolve_data_folder,
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
    with pytest.raises(DatasetError, match="no class folders .*expected one sub-folder per class"):
        scan_dataset(tmp_path)
    (tmp_path / "cats").mkdir()  # any name is a class, once it holds images
    with pytest.raises(DatasetError, match="no class folders .*found: cats"):
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


# --------------------------------------------------------------------------- hardening


def test_a_single_class_cannot_be_trained(tmp_path):
    shutil.copytree(TINY / "covid", tmp_path / "one" / "covid")
    dataset = scan_dataset(tmp_path / "one")
    assert dataset.class_counts() == {"covid": 5}
    for split in (lambda: split_by_patient(dataset), lambda: kfold_by_patient(dataset, 2)):
        with pytest.raises(DatasetError, match=r"only one class \(covid \(5 images\)\); "
                                               "training needs at least two classes"):
            split()
    # an empty second class folder does not count as a class
    (tmp_path / "one" / "normal").mkdir()
    with pytest.raises(DatasetError, match="only one class"):
        scan_dataset(tmp_path / "one").check_trainable()


def test_a_manifest_with_a_bad_header_is_reported_not_silently_ignored(tmp_path):
    shutil.copytree(TINY, tmp_path / "data")
    manifest = tmp_path / "data" / "manifest.csv"
    rows = manifest.read_text(encoding="utf-8").splitlines()
    manifest.write_text("\n".join(["file,patient,license", *rows[1:]]) + "\n", encoding="utf-8")
    dataset = scan_dataset(tmp_path / "data")
    assert dataset.manifest_path is None
    assert "manifest" not in dataset.patient_id_sources()
    problem = dataset.manifest_problem
    assert problem.startswith(f"{manifest} was ignored: it lacks the columns path, patient_id "
                              "(found: file, patient, license)")
    assert "may land in different splits" in problem and "\n" not in problem
    assert dataset.summary()["manifest_problem"] == problem
    manifest.write_bytes(b"path,patient_id\n\xff\xfe not utf-8\n")
    assert "cannot be read" in scan_dataset(tmp_path / "data").manifest_problem
    assert scan_dataset(TINY).manifest_problem is None


def test_symlinked_datasets_are_listed_only_when_they_can_be_used(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    shutil.copytree(TINY, outside / "elsewhere")
    shutil.copytree(TINY, root / "inside")
    (root / "escape").symlink_to(outside / "elsewhere", target_is_directory=True)
    (root / "alias").symlink_to(root / "inside", target_is_directory=True)  # stays inside
    assert list_datasets(root) == ["alias", "inside"]
    assert resolve_data_folder("alias", root) == (root / "inside").resolve()
    with pytest.raises(DatasetError, match="outside the data root"):
        resolve_data_folder("escape", root)
    with pytest.raises(DatasetError, match="outside the data root"):
        resolve_data_folder("../outside/elsewhere", root)


def test_class_folders_and_images_linked_outside_the_dataset_are_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    shutil.copytree(TINY, outside / "stolen")
    (root / "linked_class" / "normal").mkdir(parents=True)
    shutil.copy(next((TINY / "normal").glob("*.jpg")), root / "linked_class" / "normal")
    (root / "linked_class" / "covid").symlink_to(outside / "stolen" / "covid",
                                                 target_is_directory=True)
    assert "linked_class" not in list_datasets(root)  # listing and scanning agree
    with pytest.raises(DatasetError, match="class folder covid .* is a link to .*outside the "
                                           "dataset folder"):
        scan_dataset(root / "linked_class")

    shutil.copytree(TINY, root / "linked_image")
    secret = outside / "secret.jpg"
    shutil.copy(next((TINY / "covid").glob("*.jpg")), secret)
    (root / "linked_image" / "covid" / "zz_link.jpg").symlink_to(secret)
    dataset = scan_dataset(root / "linked_image")
    assert all(record.path.name != "zz_link.jpg" for record in dataset.records)
    assert "covid/zz_link.jpg (a link outside the dataset folder)" in dataset.ignored_files
    assert list_datasets(root) == ["linked_image"]


def test_paths_inside_a_folder():
    assert path_inside(TINY, "covid/cohen_00870a9c.jpg") == TINY / "covid/cohen_00870a9c.jpg"
    for escape in ("../tiny_cxr/covid/cohen_00870a9c.jpg", "/etc/passwd", "covid/../../x", "",
                   "a\x00b"):
        if escape.startswith("../tiny_cxr"):
            assert path_inside(TINY, escape) is not None  # leaves and comes back: still inside
        else:
            assert path_inside(TINY, escape) is None, escape
    assert is_inside(TINY / "covid", TINY) and not is_inside(TINY.parent, TINY)


# --------------------------------------------------------------------------- held-out overlap


def test_seed001_shares_12_kermany_patients_13_images_with_kaggle_test():
    """The outside check's finding: the blog's data and the Kaggle test split share patients
    (Kermany person ids of its train and test splits), so kaggle_test is not fully held out
    for a run trained on seed001_0402; cxr3 shares none."""
    seed001, kaggle = scan_dataset(DATA / "seed001_0402"), scan_dataset(DATA / "kaggle_test")
    overlap, shared = patient_overlap(seed001.groups, kaggle.groups)
    assert (overlap["patients"], overlap["images"]) == (12, 13)
    assert len(overlap["ids"]) == 12 and all(i.startswith("kermany-person")
                                             for i in overlap["ids"])
    assert sum(shared) == 13 and len(shared) == 624
    assert patient_overlap(scan_dataset(DATA / "cxr3").groups, kaggle.groups)[0] == {
        "patients": 0, "images": 0, "ids": []}


def test_patient_keys_match_manifest_and_file_name_ids_but_never_per_image_ids():
    assert patient_keys("kermany-person1044") == patient_keys("person1044") == {"person1044"}
    assert patient_keys("kermany-IM-0117") == patient_keys("IM-0117") == {"im-0117"}
    assert patient_keys("kermany-NORMAL2-IM-0814") == {"normal2-im-0814"}
    assert patient_keys("cohen-78+cohen-201") == {"cohen-78", "cohen-201"}
    assert patient_keys("image:covid/a.jpg") == set() and patient_keys("nan") == set()
    overlap, shared = patient_overlap(["kermany-person1044", "image:x.jpg"],
                                      ["person1044", "image:x.jpg", "person9"])
    assert overlap == {"patients": 1, "images": 1, "ids": ["person1044"]}
    assert shared == [True, False, False]
