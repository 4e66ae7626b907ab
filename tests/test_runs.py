"""Run folders: validation on load, listing with problems, rebuild guards; on the shipped runs."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import DATA, REPO

from xrcompare.backbones import WeightsUnavailable
from xrcompare.inference import evaluate_folder
from xrcompare.runs import build_full_model, list_runs, load_run, rebuild_problem

SHIPPED = REPO / "trained"


def copy_run(name: str, destination):
    target = destination / name
    shutil.copytree(SHIPPED / name, target)
    return target


def test_every_shipped_run_loads_and_is_small():
    listing = list_runs(SHIPPED)
    assert listing.problems == []
    assert [run.run_id for run in listing.runs][0] == "resnet50-cxr3"  # --order 1
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 20 * 1024 * 1024


@pytest.mark.parametrize("damage, reason", [
    (lambda f: (f / "metrics.json").write_text("{not json"), "unreadable JSON"),
    (lambda f: (f / "history.csv").unlink(), "missing history.csv"),
    (lambda f: _drop(f / "run.json", "image_size"), "lack image_size"),
    (lambda f: _drop(f / "metrics.json", "test"), "metrics test.accuracy"),
])
def test_a_damaged_run_is_a_named_problem_and_the_others_still_list(tmp_path, damage, reason):
    copy_run("resnet50-cxr3", tmp_path)
    broken = copy_run("resnet50-seed001-blog", tmp_path)
    damage(broken)
    listing = list_runs(tmp_path)
    assert [run.run_id for run in listing.runs] == ["resnet50-cxr3"]
    assert listing.problems[0][0] == "resnet50-seed001-blog"
    assert reason in listing.problems[0][1]


def _drop(path, key):
    payload = json.loads(path.read_text())
    payload.pop(key)
    path.write_text(json.dumps(payload))


def test_random_control_is_not_rebuilt_under_another_keras(tmp_path):
    folder = copy_run("resnet50-cxr3-random-control", tmp_path)
    assert rebuild_problem(load_run(folder)) is None
    info = json.loads((folder / "run.json").read_text())
    info["keras_backend"] = "jax"
    (folder / "run.json").write_text(json.dumps(info))
    run = load_run(folder)
    assert "cannot be rebuilt identically" in rebuild_problem(run)
    with pytest.raises(WeightsUnavailable, match="random-init control"):
        build_full_model(run)
    with pytest.raises(WeightsUnavailable, match="random-init control"):
        evaluate_folder(run, DATA / "kaggle_test")
    assert rebuild_problem(load_run(SHIPPED / "resnet50-cxr3")) is None  # ImageNet runs
