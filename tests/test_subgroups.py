"""Subgroups: the shipped main run's scores by X-ray view and by source, matched to the real
manifest, with counts, intervals and small groups flagged."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import DATA, REPO

from xrcompare.cli import main
from xrcompare.runs import load_run
from xrcompare.subgroups import SMALL_GROUP, UNLISTED, subgroup_lines, subgroup_table

TRAINED = REPO / "trained"


@pytest.fixture(scope="module")
def run():
    return load_run(TRAINED / "resnet50-cxr3")


@pytest.fixture(scope="module")
def manifest():
    return pd.read_csv(DATA / "manifest.csv")


@pytest.mark.parametrize(("by", "column"), [("view", "view"), ("source", "source_repo")])
def test_groups_match_the_manifest_image_by_image(run, manifest, by, column):
    table = subgroup_table(run, "test", by, repeats=200)
    rows = run.predictions_for("test")
    listed = manifest.set_index("path")
    expected = pd.Series([listed.loc[f"cxr3/{path}", column] for path in rows["path"]])
    assert dict(zip(table["group"], table["images"], strict=True)) == \
        expected.value_counts().to_dict()
    assert table["images"].sum() == len(rows) and UNLISTED not in set(table["group"])
    for entry in table.itertuples():
        members = rows[(expected == entry.group).to_numpy()]
        right = (members["label"] == members["predicted"]).mean()
        assert entry.accuracy == pytest.approx(right)
        assert entry.accuracy_low <= entry.accuracy <= entry.accuracy_high
        assert entry.patients == members["patient_id"].nunique()
        assert entry.small == (entry.images < SMALL_GROUP)
        if "covid" in set(members["label"]):
            covid = members[members["label"] == "covid"]
            assert entry.sensitivity == pytest.approx((covid["predicted"] == "covid").mean())
        else:
            assert entry.sensitivity is None or pd.isna(entry.sensitivity)


def test_held_out_images_are_found_under_their_own_folder(run):
    table = subgroup_table(run, "heldout:kaggle_test", "view", repeats=200)
    assert list(table["group"]) == ["AP"]  # every Kermany image is AP
    assert table["images"].iloc[0] == len(run.predictions_for("kaggle_test"))


def test_small_groups_are_flagged_not_hidden(run):
    table = subgroup_table(run, "test", "view", repeats=200)
    lines = subgroup_lines(table, "view")
    assert len(lines) == len(table) + 1
    for entry, line in zip(table.itertuples(), lines[1:], strict=True):
        assert line.startswith(entry.group)
        assert ("[small: n < 20]" in line) == entry.small


def test_the_subgroups_command(run, capsys):
    assert main(["subgroups", str(run.path), "--by", "source", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["by"] == "source" and sum(group["images"] for group in payload["groups"]) \
        == len(run.predictions_for("test"))
    assert main(["subgroups", str(run.path), "--on", "heldout:kaggle_test"]) == 0
    assert "AP" in capsys.readouterr().out


def test_a_run_whose_manifest_is_not_found_says_so_in_one_line(tmp_path, run, monkeypatch,
                                                               capsys):
    monkeypatch.setenv("XRCOMPARE_DATA_ROOT", str(tmp_path))  # the manifest is outside it now
    with pytest.raises(ValueError, match="no manifest.csv found"):
        subgroup_table(run, "test", "view", repeats=100)
    assert main(["subgroups", str(run.path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "no manifest.csv found" in error
    assert len(error.splitlines()) == 1
