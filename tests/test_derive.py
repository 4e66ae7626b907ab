"""Derived datasets (issue 16 item 2): cxr3 as covid-vs-rest and as four classes, written as
links with the patient ids carried over, scanned and planned for training as any dataset; a
tiny covid-vs-rest run trained end to end on links to the fixture images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import DATA, FIXTURES
from test_training import SIZE, cli

from xrcompare import cli as xrcli
from xrcompare.config import TrainConfig
from xrcompare.data import is_inside, scan_dataset
from xrcompare.derive import derive_dataset, pneumonia_kind
from xrcompare.experiment import preflight
from xrcompare.runs import load_run

CXR3 = DATA / "cxr3"
#: What the shared data's README says cxr3 holds (pneumonia: 270 bacterial, 160 viral).
EXPECTED = {"four-class": {"bacterial": 270, "covid": 420, "normal": 430, "viral": 160},
            "covid-vs-rest": {"covid": 420, "non-covid": 860}}


def manifest_rows(folder: Path) -> list[dict]:
    with (folder / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_pneumonia_kind_reads_notes_then_file_names():
    assert pneumonia_kind("x.jpg", "Kermany chest_xray/train/...; bacterial") == "bacterial"
    assert pneumonia_kind("kermany_person1008_virus_1691.jpg") == "viral"
    assert pneumonia_kind("kermany_person1012_bacteria_2943.jpg") == "bacterial"
    assert pneumonia_kind("cohen_abc.jpg", "finding=Pneumonia") is None


@pytest.mark.parametrize("scheme", ["covid-vs-rest", "four-class"])
def test_cxr3_derives_as_links_with_its_patients(tmp_path, scheme):
    out = tmp_path / scheme
    summary = derive_dataset(CXR3, scheme, out)
    assert summary["classes"] == EXPECTED[scheme]
    assert summary["links"] == 1280 and summary["copies"] == 0 and not summary["left_out"]
    source = scan_dataset(CXR3)
    patients = {record.path.resolve(): record.patient_id for record in source.records}
    rows = manifest_rows(out)
    assert len(rows) == 1280
    for row in rows:
        link = out / row["path"]
        assert is_inside(out / row["path"].split("/")[0], out) and link.is_symlink()
        assert is_inside(link, CXR3)  # every link leads into the source, nowhere else
        assert patients[link.resolve()] == row["patient_id"]
        assert row["source_label"] == ("pneumonia" if row["label"] in ("bacterial", "viral")
                                       else row["label"] if scheme == "four-class"
                                       else row["source_label"])
    derived = scan_dataset(out)
    assert derived.class_counts() == EXPECTED[scheme]
    assert derived.patient_id_sources() == {"manifest": 1280}
    assert len(set(derived.groups)) == len(set(source.groups))
    # train --data OUT: the whole plan (weights, classes, positive, the split) holds.
    plan = preflight(TrainConfig(data=out, backbones=["resnet50"], runs_dir=tmp_path / "runs"))
    assert plan["class_counts"] == EXPECTED[scheme] and plan["positive"] == "covid"


def test_derive_refuses_a_used_folder_and_other_classes_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "something").mkdir(parents=True)
    argv = ["dataset", "derive", str(CXR3), "--scheme", "four-class", str(out)]
    assert xrcli.main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an empty folder" in err[0]
    other = tmp_path / "other"
    derive_dataset(CXR3, "covid-vs-rest", other)
    assert xrcli.main(["dataset", "derive", str(other), "--scheme", "four-class",
                       str(tmp_path / "again")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not non-covid" in err[0] and "covid, normal and pneumonia" in err[0]
    assert not (tmp_path / "again").exists()


def test_train_runs_on_a_derived_folder_of_links(tmp_path, feature_cache):
    """The fixture's 15 X-rays, copied into a data root, derived as covid vs non-covid beside
    them (links only) and trained as a tiny run; the run's images are found through its links,
    and a link leading out of the data root is not."""
    root = tmp_path / "data"
    shutil.copytree(FIXTURES / "tiny_cxr", root / "tiny")
    env = {"XRCOMPARE_DATA_ROOT": str(root)}
    out = root / "tiny_covid_vs_rest"
    printed = cli("dataset", "derive", root / "tiny", "--scheme", "covid-vs-rest", out,
                  env=env).stdout
    assert "covid 5, non-covid 10; 15 links, 0 copies" in printed
    assert all(path.is_symlink() for path in out.rglob("*.jpg"))
    runs = tmp_path / "runs"
    cli("train", "--data", out, "--backbone", "resnet50", "--image-size", SIZE, "--epochs", 2,
        "--batch-size", 4, "--val-fraction", 0.3, "--test-fraction", 0.25, "--engine", "keras",
        "--runs-dir", runs, "--name", "derived", env=env)
    run = load_run(runs / "derived")
    assert run.labels == ["covid", "non-covid"] and run.positive == "covid"
    info = json.loads((run.path / "run.json").read_text())
    assert info["data"]["class_counts"] == {"covid": 5, "non-covid": 10}
    assert info["data"]["patient_id_sources"] == {"manifest": 15}
    first = run.split_files["test"][0]
    found = run.image_path(first, data_root=root)  # a link from the run's folder into the root
    assert found is not None and found.resolve().is_relative_to((root / "tiny").resolve())
    # With a data root that holds only the derived folder, its links lead out: refused.
    assert run.data_folder(data_root=out) == out and run.image_path(first, data_root=out) is None
