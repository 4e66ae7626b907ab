"""The controls end to end on real images and the real ResNet50: a main run, its lungs-out,
lungs-only and random-init controls and the image-statistics baseline, trained small
(64 px, tiny_cxr) into a throwaway runs folder; then the lab, the model card, the lesson, the
saliency check and the CLI on them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, FIXTURES

from xrcompare import predictor
from xrcompare.backbones import get_backbone
from xrcompare.card import model_card
from xrcompare.cli import main
from xrcompare.config import TrainConfig
from xrcompare.experiment import train_runs
from xrcompare.imaging import mask_box, read_gray, to_model_input
from xrcompare.lesson import lesson_steps, photo_prediction, photo_sample
from xrcompare.runs import (
    RunError,
    build_full_model,
    list_runs,
    model_input_for_run,
    predict_gray,
)
from xrcompare.sanity import saliency_sanity
from xrcompare.shortcuts import CONTROL_KINDS, lab_json, lab_lines, shortcut_lab

TINY = FIXTURES / "tiny_cxr"
SIZE = 64
SPLIT = {"val_fraction": 0.3, "test_fraction": 0.25, "seed": 42}


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory, feature_cache):
    """Five runs of one recipe, and a small held-out folder named like the Kaggle one."""
    root = tmp_path_factory.mktemp("shortcut-lab")
    held = root / "data" / "kaggle_test"
    for folder in ("NORMAL", "PNEUMONIA"):
        (held / folder).mkdir(parents=True)
        for path in sorted((DATA / "kaggle_test" / folder).glob("*.jpg"))[:4]:
            shutil.copy(path, held / folder / path.name)
    runs = root / "runs"
    cnn = {"backbones": ["resnet50"], "image_size": SIZE, "epochs": 3, "batch_size": 4}
    for order, (name, extra) in enumerate([
            ("main", {}), ("lungs-out", {"mask": "lungs-out"}),
            ("lungs-only", {"mask": "lungs-only"}), ("random", {"weights": "random"})],
            start=1):
        train_runs(TrainConfig(data=TINY, heldout=[held], runs_dir=runs, name=name,
                               order=order, **cnn, **extra, **SPLIT))
    train_runs(TrainConfig(data=TINY, heldout=[held], runs_dir=runs, name="statistics",
                           order=5, model="image-statistics", **SPLIT))
    return runs


@pytest.fixture(scope="module")
def runs(lab_dir):
    listing = list_runs(lab_dir)
    assert listing.problems == []
    return {run.run_id: run for run in listing.runs}


def test_masked_runs_record_their_mask_and_are_labelled_controls(runs, feature_cache):
    main_run = runs["main"]
    assert main_run.mask == "none" and not main_run.is_control and main_run.mask_box is None
    for name, words in (("lungs-out", "lungs blacked out"), ("lungs-only", "lungs only")):
        run = runs[name]
        assert run.info["mask"] == run.mask == name and run.info["control"] is True
        assert run.control_kind == name and run.is_control
        assert words in run.title and "control" in run.title
        assert run.mask_box == {**run.info["mask_box"]}
        assert f"-mask-{name}" in run.features_record["spec"]
        assert (feature_cache / run.features_record["spec"]).is_dir()
        # the same images and split as the main run: the lab pairs them
        assert run.split_files == main_run.split_files
    assert runs["random"].control_kind == "random-init"


def test_prediction_goes_through_the_runs_mask(runs):
    run = runs["lungs-out"]
    row = run.split_predictions("test").iloc[0]
    gray = read_gray(TINY / row["path"])
    batch = model_input_for_run(run, gray)
    expected = get_backbone("resnet50").preprocess(
        to_model_input(gray, SIZE, "squash", "lungs-out")[None], "backbone")
    assert np.allclose(batch, expected)
    top, left, bottom, right = mask_box(SIZE)
    plain = model_input_for_run(runs["main"], gray)
    assert not np.allclose(plain[0, top:bottom, left:right], batch[0, top:bottom, left:right])
    assert np.allclose(plain[0, :top], batch[0, :top])  # outside the box: untouched
    # the rebuilt model on the masked input reproduces what evaluation wrote
    probabilities = predict_gray(run, build_full_model(run), gray)
    written = [row[run.prediction_column(label)] for label in run.labels]
    assert np.allclose(list(probabilities.values()), written, atol=2e-3)


def test_the_statistics_baseline_is_a_run_of_its_own_kind(runs, lab_dir):
    run, main_run = runs["statistics"], runs["main"]
    files = sorted(path.name for path in run.path.iterdir())
    assert files == ["metrics.json", "model.json", "predictions.csv", "run.json"]  # no pickle
    assert run.kind == "image-statistics" and not run.is_cnn and run.is_control
    assert run.control_kind == "image-statistics" and "image statistics" in run.title.lower()
    assert run.image_size is None and run.history.empty and run.kept_epoch_text == "no epochs"
    assert list(run.predictions.columns) == list(main_run.predictions.columns)
    assert run.split_files == main_run.split_files  # the same split code, the same split
    assert set(run.scopes) == set(main_run.scopes)
    with pytest.raises(RunError, match="not a CNN run"):
        run.feature_spec()
    # one upload through the baseline: what evaluation wrote for that image
    row = run.split_predictions("test").iloc[0]
    probabilities = predict_gray(run, None, read_gray(TINY / row["path"]))
    assert np.allclose(list(probabilities.values()),
                       [row[run.prediction_column(label)] for label in run.labels], atol=1e-5)
    # a damaged model.json makes the run unreadable, with the reason
    broken = lab_dir.parent / "broken"
    shutil.copytree(run.path, broken / "statistics")
    (broken / "statistics" / "model.json").write_text('{"kind": "pickle"}', encoding="utf-8")
    listing = list_runs(broken)
    assert not listing.runs and "model.json kind" in listing.problems[0][1]


def test_the_baseline_refuses_cnn_settings_in_one_line():
    config = TrainConfig(data=TINY, model="image-statistics")
    config.validate()  # no backbone needed
    for change, flag in (({"backbones": ["resnet50"]}, "--backbone"),
                         ({"mask": "lungs-out"}, "--mask"), ({"folds": 3}, "--folds"),
                         ({"select_on": "test"}, "--select-on")):
        bad = TrainConfig(data=TINY, model="image-statistics", **change)
        with pytest.raises(ValueError, match=flag) as error:
            bad.validate()
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="give at least one backbone"):
        TrainConfig(data=TINY).validate()


def test_the_lab_sets_every_control_against_the_main_run(runs):
    labs = shortcut_lab(list(runs.values()), repeats=200)
    assert len(labs) == 1
    lab = labs[0]
    assert lab.main.run_id == "main" and lab.scopes == ["test", "heldout:kaggle_test"]
    assert [row.kind for row in lab.rows] == ["main", *CONTROL_KINDS]
    for row in lab.rows[1:]:
        assert row.run is not None and row.verdict
        for scope in lab.scopes:
            result = row.results[scope]
            metrics = row.run.metrics_for(scope)
            assert result.accuracy == metrics["accuracy"] and result.n == metrics["n"]
            assert result.refused is None and result.comparison is not None
            assert result.comparison["n"] == metrics["n"]
            assert f"{result.accuracy:.3f}" in row.verdict or scope != "test"
    text = "\n".join(lab_lines(labs))
    assert "Maguolo" in text and "x 0.12–0.88, y 0.10–0.90" in text
    payload = lab_json(labs)
    json.dumps(payload, allow_nan=False)
    assert [row["kind"] for row in payload["backbones"][0]["rows"]] == ["main", *CONTROL_KINDS]


def test_a_missing_control_says_how_to_train_it(runs):
    without = [run for name, run in runs.items() if name != "lungs-only"]
    row = shortcut_lab(without, repeats=200)[0].row("lungs-only")
    assert row.run is None and "--mask lungs-only" in row.verdict


def test_the_shortcuts_command_prints_the_lab(lab_dir, capsys):
    assert main(["shortcuts", "--runs-dir", str(lab_dir), "--repeats", "200", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["backbones"][0]["main"] == "main"
    assert main(["shortcuts", "--runs-dir", str(lab_dir), "--repeats", "200"]) == 0
    assert "lungs blacked out" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["main", "lungs-out", "lungs-only", "random", "statistics"])
def test_card_works_for_every_kind_of_run(runs, lab_dir, name, capsys):
    run = runs[name]
    card = model_card(run, list(runs.values()))
    for section in ("## Intended use", "## Data and sources", "## Split and protocol",
                    "## Metrics", "## Calibration", "## Controls", "## Known shortcuts",
                    "## References"):
        assert section in card, (name, section)
    assert "Teaching" in card and f"{run.test_metrics['accuracy']:.3f}" in card
    if run.is_control:
        assert "(this run)" in card and "A control, not a model" in card
    assert main(["card", str(run.path)]) == 0
    assert capsys.readouterr().out == model_card(run, list_runs(lab_dir).runs)


def test_evaluate_json_includes_the_ece(runs, capsys):
    run = runs["main"]
    assert main(["evaluate", str(run.path), str(TINY), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert 0 <= payload["ece"] <= 1 and payload["ece_bins"] == 15
    assert main(["evaluate", str(run.path), str(TINY)]) == 0
    assert f"ECE {payload['ece']:.3f}" in capsys.readouterr().out


def test_the_lesson_reads_its_figures_from_the_runs(runs):
    listed = list(runs.values())
    photo = photo_sample(predictor.list_samples())
    assert photo is not None and photo.name.startswith("photo_")
    probabilities = photo_prediction(runs["main"], photo)
    assert sum(probabilities.values()) == pytest.approx(1, abs=1e-4)
    steps = lesson_steps(listed, probabilities)
    assert [step.key for step in steps] == ["test", "heldout", "random-init", "lungs-out",
                                            "image-statistics", "photo"]
    main_run = runs["main"]
    assert steps[0].truth == main_run.test_metrics["accuracy"]
    assert f"{main_run.test_metrics['accuracy']:.1%}" in steps[0].reveal
    for step, name in zip(steps[2:5], ("random", "lungs-out", "statistics"), strict=True):
        assert step.missing is None and step.truth == runs[name].test_metrics["accuracy"]
        assert f"{runs[name].test_metrics['accuracy']:.1%}" in step.reveal
    assert steps[5].truth == max(probabilities, key=probabilities.get)
    # without a control, its step says so instead of inventing a figure
    missing = lesson_steps([run for name, run in runs.items() if name != "lungs-out"])
    assert missing[3].missing and not missing[3].bars and missing[5].missing


def test_saliency_sanity_of_the_main_run_against_its_random_control(runs):
    gray = read_gray(sorted((TINY / "covid").glob("*.jpg"))[0])
    check = saliency_sanity(runs["main"], runs["random"], gray, "gradcam")
    assert check.map_model.shape == check.map_control.shape == (SIZE, SIZE)
    assert check.rho is None or -1 <= check.rho <= 1
    assert "Grad-CAM" in check.sentence and check.target in runs["main"].labels


def test_the_leaderboard_and_the_listing_label_the_controls(runs):
    from xrcompare.summary import leaderboard

    table = leaderboard(list(runs.values()), {"backbones": {}}).set_index("run_id")
    assert table.loc["main", "weights"] == "ImageNet"
    assert table.loc["lungs-out", "weights"] == "ImageNet, control: lungs blacked out"
    assert table.loc["statistics", "weights"] == "control: image statistics, no CNN"
    assert pd.isna(table.loc["statistics", "image_size"])
