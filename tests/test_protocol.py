"""The 2020 blog's protocol as explicit options (--split images, --preprocess scale01,
--select-on test, --augment blog): what each really does, that such runs are labelled
"2020 protocol (leaky)" everywhere, and that a predict on them repeats their preprocessing.

Tiny real runs: tests/fixtures/tiny_cxr at 64 px, a few epochs, the real ResNet50 weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import FIXTURES, REPO

from xrcompare.data import DatasetError, scan_dataset, split_by_image, split_by_patient
from xrcompare.experiment import TrainConfig, train_runs
from xrcompare.features import (
    AUGMENTATIONS,
    FeatureExtractor,
    FeatureSpec,
    augment_blog,
    augment_debias,
)
from xrcompare.imaging import read_gray, to_model_input
from xrcompare.inference import evaluate_folder
from xrcompare.protocol import LEAKY_LABEL, protocol_label
from xrcompare.runs import (
    RunError,
    build_full_model,
    load_run,
    model_input_for_run,
    predict_gray,
)
from xrcompare.summary import blog_comparison, leaderboard

TINY = FIXTURES / "tiny_cxr"
SIZE = 64


@pytest.fixture(scope="module")
def one_patient_per_class(tmp_path_factory):
    """tiny_cxr's 15 images with a manifest that gives each class ONE patient: no patient-wise
    split is possible, and any image split puts a patient on both sides."""
    root = tmp_path_factory.mktemp("grouped") / "grouped"
    rows = ["path,label,patient_id"]
    for image in sorted(TINY.glob("*/*.jpg")):
        label = image.parent.name
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / label / image.name)
        rows.append(f"{label}/{image.name},{label},patient-{label}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("protocol-runs")


@pytest.fixture(scope="module")
def blog2020_run(runs_dir, one_patient_per_class, feature_cache):
    """The 2020 protocol through the CLI: image split, x/255, epoch on test, blog rotation."""
    result = subprocess.run(
        [sys.executable, "-m", "xrcompare", "train", "--data", str(one_patient_per_class),
         "--backbone", "resnet50", "--image-size", str(SIZE), "--epochs", "4",
         "--batch-size", "4", "--runs-dir", str(runs_dir), "--name", "blog2020",
         "--split", "images", "--preprocess", "scale01", "--select-on", "test",
         "--augment", "blog", "--augment-views", "1",
         # the Keras reference, so predicting it again through Keras gives its recorded
         # probabilities (an engine in bf16 moves them in the third decimal)
         "--engine", "keras"],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test_acc" in result.stderr  # the progress line says which split picks the epoch
    return load_run(runs_dir / "blog2020")


def tiny_config(runs_dir, name, **changes) -> TrainConfig:
    values = dict(data=TINY, backbones=["resnet50"], image_size=SIZE, epochs=2, batch_size=4,
                  runs_dir=runs_dir, name=name, val_fraction=0.25, test_fraction=0.25)
    return TrainConfig(**{**values, **changes})


# --------------------------------------------------------------------------- splits


def test_image_split_ignores_patients(one_patient_per_class):
    grouped = scan_dataset(one_patient_per_class)
    plain = scan_dataset(TINY)
    with pytest.raises(DatasetError, match="only 1 patient"):
        split_by_patient(grouped, seed=7)
    by_image = split_by_image(grouped, test_fraction=0.2, val_fraction=None, seed=7)
    # The patient ids play no part: the same images land in each split either way.
    assert by_image == split_by_image(plain, test_fraction=0.2, val_fraction=None, seed=7)
    assert by_image["val"] == [] and len(by_image["test"]) == 3
    assert sorted(by_image["train"] + by_image["test"]) == list(range(15))
    test_labels = [grouped.records[i].label for i in by_image["test"]]
    assert sorted(test_labels) == ["covid", "normal", "pneumonia"]  # stratified
    patients = {name: {grouped.records[i].patient_id for i in indices}
                for name, indices in by_image.items()}
    assert patients["train"] & patients["test"]  # one patient on both sides
    with_val = split_by_image(grouped, test_fraction=0.2, val_fraction=0.25, seed=7)
    assert with_val["test"] == by_image["test"] and len(with_val["val"]) == 4  # 0.25 × 15


def test_patient_split_without_validation_keeps_the_same_test_split():
    dataset = scan_dataset(TINY)
    with_val = split_by_patient(dataset, val_fraction=0.25, test_fraction=0.25, seed=3)
    without = split_by_patient(dataset, val_fraction=None, test_fraction=0.25, seed=3)
    assert without["test"] == with_val["test"] and without["val"] == []
    assert sorted(without["train"]) == sorted(with_val["train"] + with_val["val"])


# --------------------------------------------------------------------------- features


def test_scale01_is_in_the_cache_key_only_when_chosen():
    assert FeatureSpec("resnet50", SIZE).key() == "resnet50-imagenet-64px-squash"
    assert FeatureSpec("resnet50", SIZE, augment="blog").key() == "resnet50-imagenet-64px-squash"
    assert FeatureSpec("resnet50", SIZE, preprocess="scale01").key() \
        == "resnet50-imagenet-64px-squash-scale01"
    assert FeatureSpec("resnet50", SIZE).view_folder(2) == "aug1-view2"  # unchanged name
    assert FeatureSpec("resnet50", SIZE, augment="blog").view_folder(2) == "augblog2-view2"


def test_blog_rotation_keeps_the_picture_and_replicates_its_border():
    flat = np.full((64, 64), 200, dtype=np.uint8)
    rotated = augment_blog(flat, np.random.default_rng(0))
    assert rotated.shape == flat.shape and np.all(rotated == 200)  # no black corners
    gradient = np.tile(np.arange(64, dtype=np.float32) * 4, (64, 1))
    angles = []
    for seed in range(40):
        out = augment_blog(gradient, np.random.default_rng(seed))
        assert out.shape == gradient.shape and out.min() >= 0 and out.max() <= 252 + 1e-3
        angles.append(float(np.abs(out - gradient).mean()))
    assert max(angles) > 1 and len(set(np.round(angles, 3))) > 30  # random angles, not one


def test_blog_views_are_cached_apart_from_mild_views(tmp_path):
    path = sorted((TINY / "normal").glob("*.jpg"))[:1]
    mild = FeatureExtractor(FeatureSpec("resnet50", SIZE), cache_dir=tmp_path)
    blog = FeatureExtractor(FeatureSpec("resnet50", SIZE, augment="blog"), cache_dir=tmp_path)
    mild_views = mild.extract(path, views=[0, 1]).features
    blog_result = blog.extract(path, views=[0, 1])
    assert (blog_result.cached, blog_result.computed) == (1, 1)  # the original is shared
    assert not np.allclose(mild_views[1], blog_result.features[1])
    folders = {p.name for p in (tmp_path / "resnet50-imagenet-64px-squash").iterdir()}
    assert folders == {"original", "aug1-view1", "augblog2-view1"}
    assert set(AUGMENTATIONS) == {"mild", "blog", "debias"}


def test_debias_view_changes_compression_and_exposure_not_anatomy():
    path = sorted((TINY / "covid").glob("*"))[0]
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    views = [augment_debias(gray, np.random.default_rng(seed)) for seed in range(12)]
    assert all(view.shape == gray.shape and view.dtype == np.uint8 for view in views)
    # the same picture: no geometry changes, so every view correlates with the original
    for view in views:
        assert np.corrcoef(view.ravel().astype(float), gray.ravel().astype(float))[0, 1] > 0.9
    # exposure differs from view to view (brightness and contrast drawn per view)
    means = [float(view.mean()) for view in views]
    spreads = [float(view.std()) for view in views]
    assert max(means) - min(means) > 10 and max(spreads) / min(spreads) > 1.1
    # a flat image keeps no pattern but gets JPEG's blocks on an edge
    edge = np.full((64, 64), 80, dtype=np.uint8)
    edge[:, 29:] = 170  # mid-grey both sides: no clipping hides the ringing
    blocky = augment_debias(edge, np.random.default_rng(3))
    assert np.abs(blocky[:, :24].astype(int) - blocky[0, 0]).max() <= 3
    assert len(np.unique(blocky[:, 24:36])) > 4  # ringing around the edge, as JPEG does
    # one seed, one view (cached views are reproducible)
    again = augment_debias(gray, np.random.default_rng(5))
    assert np.array_equal(again, views[5])


def test_debias_views_are_cached_apart_and_recorded(tmp_path):
    path = sorted((TINY / "normal").glob("*.jpg"))[:1]
    spec = FeatureSpec("resnet50", SIZE, augment="debias")
    assert spec.view_folder(1) == "augdebias1-view1"
    assert spec.key() == "resnet50-imagenet-64px-squash"  # originals shared with every recipe
    result = FeatureExtractor(spec, cache_dir=tmp_path).extract(path, views=[0, 1, 2])
    assert result.computed == 3 and not np.allclose(result.features[1], result.features[2])
    config = TrainConfig(data=TINY, backbones=["resnet50"], augment="debias", augment_views=2)
    assert config.protocol["augment"] == "debias"
    assert protocol_label(config.protocol) == "sound"


# --------------------------------------------------------------------------- the leaky run


def test_blog2020_run_records_its_protocol_and_why_it_is_leaky(blog2020_run):
    run, info = blog2020_run, blog2020_run.info
    assert info["protocol"] == {"split": "images", "preprocess": "scale01",
                                "select_on": "test", "augment": "blog"}
    assert info["leaky_reasons"] == run.leaky_reasons and len(run.leaky_reasons) == 3
    assert "images of one patient can sit in train and test" in run.leaky_reasons
    assert "the epoch was chosen on the test split" in run.leaky_reasons
    assert any("0..1" in reason for reason in run.leaky_reasons)
    assert run.is_leaky and run.protocol_label == LEAKY_LABEL
    assert run.title.endswith(f"[{LEAKY_LABEL}]")
    assert info["split"]["method"].startswith("stratified random train/test by image")
    assert info["split"]["summary"]["val"]["images"] == 0
    # the spec carries the engine when it is not the Keras reference (…-scale01-openvino-fp32)
    assert "-squash-scale01" in info["features"]["spec"]
    assert info["hyperparameters"]["augment"] == "blog"


def test_blog2020_run_mixes_patients_and_has_no_validation_split(blog2020_run):
    predictions = blog2020_run.predictions
    assert "val" not in set(predictions["split"])
    train = set(blog2020_run.split_predictions("train")["patient_id"])
    test = set(blog2020_run.split_predictions("test")["patient_id"])
    assert train & test


def test_blog2020_run_keeps_the_epoch_with_the_best_test_accuracy(blog2020_run):
    history = blog2020_run.history
    assert {"test_accuracy", "test_loss"} <= set(history) and "val_accuracy" not in history
    best = int(np.argmax(history["test_accuracy"].to_numpy())) + 1
    assert blog2020_run.info["best_epoch"] == best
    assert "TEST split" in blog2020_run.info["selection"]
    # The kept head is that epoch's: its test accuracy is the history's at the kept epoch.
    assert blog2020_run.metrics["test"]["accuracy"] == pytest.approx(
        history["test_accuracy"].iloc[best - 1], abs=1e-6)


def test_blog_views_of_the_run_are_in_their_own_cache_folder(blog2020_run, feature_cache):
    folder = feature_cache / blog2020_run.features_record["spec"]
    assert folder.name.startswith("resnet50-imagenet-64px-squash-scale01")
    assert (folder / "augblog2-view1").is_dir() and (folder / "original").is_dir()


def test_predict_on_the_leaky_run_uses_its_training_preprocessing(blog2020_run,
                                                                   one_patient_per_class):
    run = blog2020_run
    row = run.split_predictions("train").iloc[0]
    gray = read_gray(one_patient_per_class / row["path"])
    batch = model_input_for_run(run, gray)
    assert np.allclose(batch[0], to_model_input(gray, SIZE) / 255.0) and batch.max() <= 1.0
    model = build_full_model(run)
    probabilities = predict_gray(run, model, gray)
    saved = [row[f"prob_{label}"] for label in run.labels]
    assert np.allclose(list(probabilities.values()), saved, atol=2e-3)
    # The CLI's evaluate goes through the same scale01 features.
    assert run.feature_spec().preprocess == "scale01"
    metrics, skipped = evaluate_folder(run, one_patient_per_class, repeats=10)
    frame = run.predictions
    assert skipped == [] and metrics["n"] == len(frame) == 15
    assert metrics["accuracy"] == pytest.approx((frame["label"] == frame["predicted"]).mean())


def test_leaky_label_in_the_leaderboard_and_beside_the_blog(blog2020_run, runs_dir):
    sound = load_run(REPO / "trained" / "resnet50-cxr3")
    assert not sound.is_leaky and sound.protocol == {
        "split": "patients", "preprocess": "backbone", "select_on": "val", "augment": "mild"}
    table = leaderboard([sound, blog2020_run]).set_index("run_id")
    assert table.loc["resnet50-cxr3", "protocol"] == "sound"
    assert table.loc["blog2020", "protocol"] == LEAKY_LABEL
    assert table.loc["blog2020", "split"] == "train/test by image (random)"
    assert LEAKY_LABEL in table.loc["blog2020", "run"]
    # blog_comparison lists runs on the blog's data only (this one is on tiny data).
    assert blog_comparison([sound, blog2020_run]).empty


def test_a_bad_protocol_in_run_json_is_a_named_problem(blog2020_run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(blog2020_run.path, folder)
    info = json.loads((folder / "run.json").read_text())
    info["protocol"]["preprocess"] = "caffe"
    (folder / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunError, match="protocol preprocess must be one of backbone, scale01"):
        load_run(folder)


# --------------------------------------------------------------------------- one option at a time


def test_image_split_with_validation(runs_dir, one_patient_per_class):
    folder = train_runs(tiny_config(runs_dir, "images-val", data=one_patient_per_class,
                                    split="images"))[0]
    run = load_run(folder)
    assert run.protocol["split"] == "images" and run.leaky_reasons == [
        "images of one patient can sit in train and test"]
    summary = run.info["split"]["summary"]
    assert [summary[name]["images"] for name in ("train", "val", "test")] == [7, 4, 4]
    assert {"val_loss", "val_accuracy"} <= set(run.history)
    assert "validation split" in run.info["selection"]


def test_patient_split_with_the_epoch_chosen_on_test(runs_dir):
    run = load_run(train_runs(tiny_config(runs_dir, "patients-test", select_on="test",
                                          epochs=3))[0])
    assert run.leaky_reasons == ["the epoch was chosen on the test split"]
    assert run.info["split"]["method"] == "grouped stratified train/test by patient"
    assert run.info["split"]["val_fraction"] is None
    assert "val" not in set(run.predictions["split"])
    train = set(run.split_predictions("train")["patient_id"])
    assert not train & set(run.split_predictions("test")["patient_id"])
    history = run.history
    assert run.info["best_epoch"] == int(np.argmax(history["test_accuracy"].to_numpy())) + 1


def test_scale01_alone_changes_the_model_input(runs_dir):
    run = load_run(train_runs(tiny_config(runs_dir, "scale01", preprocess="scale01"))[0])
    sound = load_run(REPO / "trained" / "resnet50-cxr3")
    gray = read_gray(sorted((TINY / "covid").glob("*.jpg"))[0])
    assert run.preprocess == "scale01" and sound.preprocess == "backbone"
    assert model_input_for_run(run, gray).max() <= 1.0
    assert model_input_for_run(sound, gray).min() < 0  # ResNet50's caffe-mode preprocessing
    assert run.leaky_reasons and "0..1" in run.leaky_reasons[0]
    engine = "-".join(run.feature_engine)  # named in the spec unless it is the reference
    assert run.info["features"]["spec"] == ("resnet50-imagenet-64px-squash-scale01" + (
        "" if engine == "keras-fp32" else f"-{engine}"))


@pytest.mark.parametrize("changes, message", [
    ({"split": "random"}, "split must be one of patients, images"),
    ({"preprocess": "caffe"}, "preprocess must be one of backbone, scale01"),
    ({"select_on": "train"}, "select-on must be one of val, test"),
    ({"augment": "heavy"}, "augment must be one of mild, blog"),
    ({"augment": "blog"}, "needs augmented views"),
    ({"folds": 3, "split": "images"}, "keeps the sound protocol"),
    ({"folds": 3, "select_on": "test"}, "keeps the sound protocol"),
])
def test_protocol_fields_are_validated_in_one_line(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message) as error:
        tiny_config(tmp_path, "x", **changes).validate()
    assert "\n" not in str(error.value)


def test_defaults_stay_sound():
    config = TrainConfig(data=TINY, backbones=["resnet50"])
    assert config.protocol == {"split": "patients", "preprocess": "backbone",
                               "select_on": "val", "augment": "mild"}
