"""Run folders: validation on load, listing with problems, rebuild guards; on the shipped runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import DATA, REPO

from xrcompare.backbones import WeightsUnavailable
from xrcompare.inference import evaluate_folder
from xrcompare.runs import (
    RunError,
    build_full_model,
    check_runs_dir,
    list_runs,
    load_run,
    rebuild_problem,
)

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


# --------------------------------------------------------------------------- hardening


def _edit(path, change):
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))


def _set(keys: str, value):
    def change(payload):
        *parents, last = keys.split(".")
        for key in parents:
            payload = payload[key]
        payload[last] = value
    return change


@pytest.mark.parametrize(("file", "change", "reason"), [
    ("metrics.json", _set("test.accuracy", "abc"), "metrics.json test.accuracy is not a number"),
    ("metrics.json", _set("test.per_class", [1, 2, 3]), "test.per_class is not an object"),
    ("metrics.json", _set("test.confusion_matrix", "3x3"), "test.confusion_matrix is not a 3 × 3"),
    ("metrics.json", _set("test.confusion_matrix", [[1, 2], [3, 4]]), "is not a 3 × 3"),
    ("metrics.json", _set("heldout.kaggle_test.macro_f1", None), "heldout.kaggle_test.macro_f1"),
    ("metrics.json", _set("test.intervals.accuracy", "wide"), "intervals.accuracy is not a"),
    ("metrics.json", _set("test.labels", ["covid", "covid", "x"]), "test.labels is not a list"),
    ("run.json", _set("image_size", "224"), "run.json image_size is not a whole number"),
    ("run.json", _set("split.files", {"test": "a.jpg"}), "split.files is not lists of file"),
    ("run.json", _set("data.folder_absolute", 7), "data.folder_absolute is not a string"),
    ("run.json", _set("display_name", {"a": 1}), "run.json display_name is not a string"),
])
def test_a_run_with_wrong_types_is_a_named_problem(tmp_path, file, change, reason):
    copy_run("resnet50-cxr3", tmp_path)
    broken = copy_run("resnet50-seed001-blog", tmp_path)
    _edit(broken / file, change)
    listing = list_runs(tmp_path)
    assert [run.run_id for run in listing.runs] == ["resnet50-cxr3"]
    assert listing.problems[0][0] == "resnet50-seed001-blog"
    assert reason in listing.problems[0][1], listing.problems[0][1]


@pytest.mark.parametrize(("shape", "reason"), [
    ([400, 400, 2048], "does not fit a 224 px input"),
    ([200, 200, 2048], "does not fit a 224 px input"),
    ([7, 7, 1024], "has 1024 channels, but ResNet50's base gives 2048"),
    ([7, 7], "three positive whole numbers"),
    ([7, 7, 100000], "more than 4096 channels"),
])
def test_a_wrong_feature_shape_is_refused_before_any_model_is_built(tmp_path, shape, reason):
    for name in ("resnet50-cxr3", "resnet50-seed001-blog"):  # the gap head and the blog head
        folder = copy_run(name, tmp_path)
        _edit(folder / "run.json", _set("feature_shape", shape))
        with pytest.raises(RunError, match=reason):
            load_run(folder)
        shutil.rmtree(folder)


def test_predict_refuses_a_run_with_a_huge_feature_shape_at_once(tmp_path):
    folder = copy_run("resnet50-seed001-blog", tmp_path)
    _edit(folder / "run.json", _set("feature_shape", [400, 400, 2048]))
    sample = sorted((REPO / "samples").glob("*.jpg"))[0]
    result = subprocess.run([sys.executable, "-m", "xrcompare", "predict", str(folder),
                             str(sample)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: resnet50-seed001-blog: run.json feature_shape [400, 400, 2048] does not fit a "
        "224 px input (a frozen base gives 7–7 cells on a side)"]


def test_recorded_paths_never_leave_the_data_root(tmp_path):
    root = DATA.parent  # the data root: ../shared/data
    folder = copy_run("resnet50-seed001-blog", tmp_path)
    _edit(folder / "run.json", _set("data.folder_absolute", "/"))
    _edit(folder / "run.json", _set("data.folder", "/"))
    run = load_run(folder)
    with pytest.raises(RunError, match="outside the data root"):
        run.data_folder(data_root=DATA)
    _edit(folder / "run.json", _set("data.folder_absolute", str(DATA / "seed001_0402")))
    run = load_run(folder)
    assert run.data_folder(data_root=DATA) == DATA / "seed001_0402"
    for escape in ("../../../../etc/passwd", "/etc/passwd", "covid/../../cxr3/covid/x.jpg"):
        assert run.image_path(escape, data_root=DATA) is None, escape
    # a manifest recorded outside the data root is never read; the data's own is used
    _edit(folder / "run.json", _set("data.manifest", "/etc/shadow"))
    assert load_run(folder).manifest_path(data_root=DATA) == DATA / "manifest.csv"
    _edit(folder / "run.json", _set("data.manifest", str(root / "README.md")))
    assert load_run(folder).manifest_path(data_root=DATA) == DATA / "manifest.csv"
    # a held-out folder recorded outside the root is refused the same way
    _edit(folder / "run.json", lambda info: info["heldout"][0].update(
        folder="/", folder_absolute="/"))
    with pytest.raises(RunError, match="outside the data root"):
        load_run(folder).data_folder("kaggle_test", data_root=DATA)


def test_runs_folder_checks(tmp_path):
    assert check_runs_dir(tmp_path / "new" / "runs").is_dir()  # made when missing
    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    with pytest.raises(RunError, match="is a file, not a folder"):
        check_runs_dir(in_the_way)
    with pytest.raises(RunError, match="cannot create the runs folder"):
        check_runs_dir("/proc/xrcompare-runs")
    with pytest.raises(RunError, match=r"MB free; a run needs about"):
        check_runs_dir(tmp_path, needed_bytes=10**18)  # no disk has an exabyte free
    assert not list(tmp_path.glob(".tmp-*"))  # the write probe is gone
