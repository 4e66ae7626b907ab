"""End to end on real images with the real ResNet50 weights: cache, head, run folder, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA, FIXTURES, REPO

from xrcompare.features import FeatureExtractor, FeatureSpec
from xrcompare.imaging import read_gray
from xrcompare.runs import build_full_model, list_runs, load_run, predict_gray

TINY = FIXTURES / "tiny_cxr"
SIZE = 64


def cli(*args, env=None, check=True):
    result = subprocess.run([sys.executable, "-m", "xrcompare", *map(str, args)],
                            capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, **(env or {})}, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-2000:])
    return result


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, feature_cache):
    runs = tmp_path_factory.mktemp("runs")
    result = cli("train", "--data", TINY, "--backbone", "resnet50", "--image-size", SIZE,
                 "--epochs", 3, "--batch-size", 4, "--heldout", DATA / "seed001_0402",
                 "--runs-dir", runs, "--name", "tiny", "--val-fraction", 0.3,
                 "--test-fraction", 0.25, "--engine", "keras")  # the reference: exact rebuild
    folder = runs / "tiny"
    assert result.stdout.strip().endswith(str(folder))
    return folder


def test_cache_is_keyed_by_content_and_reused(tmp_path):
    spec = FeatureSpec("resnet50", SIZE)
    paths = sorted((TINY / "normal").glob("*.jpg"))[:3]
    first = FeatureExtractor(spec, cache_dir=tmp_path).extract(paths)
    assert (first.cached, first.computed) == (0, 3)
    # The same bytes under another name hit the cache.
    copy = tmp_path / "renamed.jpg"
    shutil.copy(paths[0], copy)
    again = FeatureExtractor(spec, cache_dir=tmp_path).extract([copy, *paths])
    assert (again.cached, again.computed) == (4, 0)
    assert np.allclose(again.features[0], first.features[0], atol=1e-2)
    # Another resize mode is another cache entry.
    padded = FeatureExtractor(FeatureSpec("resnet50", SIZE, "pad"), cache_dir=tmp_path)
    assert padded.extract(paths[:1]).computed == 1


def test_unreadable_files_are_skipped_and_listed(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    good = sorted((TINY / "covid").glob("*.jpg"))[0]
    result = FeatureExtractor(FeatureSpec("resnet50", SIZE), cache_dir=tmp_path).extract(
        [good, bad])
    assert result.ok == [0]
    assert result.failed[0][0] == str(bad) and "not a readable" in result.failed[0][1]


def test_augmented_views_differ_from_the_original_and_are_deterministic(tmp_path):
    path = sorted((TINY / "pneumonia").glob("*.jpg"))[:1]
    extractor = FeatureExtractor(FeatureSpec("resnet50", SIZE), cache_dir=tmp_path)
    views = extractor.extract(path, views=[0, 1, 2]).features
    assert not np.allclose(views[0], views[1]) and not np.allclose(views[1], views[2])
    again = FeatureExtractor(FeatureSpec("resnet50", SIZE), cache_dir=tmp_path / "other")
    assert np.allclose(again.extract(path, views=[1]).features[0], views[1], atol=1e-2)


def test_training_writes_a_complete_run(tiny_run):
    run = load_run(tiny_run)
    assert {p.name for p in tiny_run.iterdir()} >= {
        "run.json", "history.csv", "metrics.json", "predictions.csv", "head.weights.h5"}
    info = run.info
    assert info["backbone"] == "resnet50" and info["weights"] == "imagenet"
    assert info["data"]["patient_id_sources"] == {"manifest": 15}
    assert set(info["split"]["files"]) == {"train", "val", "test"}
    assert info["split"]["summary"]["test"]["images"] >= 3
    assert 1 <= info["best_epoch"] <= 3 and "validation" in info["selection"]
    assert info["versions"]["keras_backend"] == "tensorflow"
    assert run.feature_engine == ("keras", "fp32") and info["features"]["label"] == "Keras fp32"
    assert info["features"]["extracted_on"] == "this process"  # --extract-on auto, no cluster
    assert len(run.history) == 3 and {"loss", "val_loss", "accuracy"} <= set(run.history)
    assert set(run.predictions["split"]) == {"train", "val", "test", "heldout:seed001_0402"}
    probabilities = run.predictions[run.probability_columns()].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert run.metrics["heldout"]["seed001_0402"]["n"] == 305
    assert (tiny_run / "head.weights.h5").stat().st_size < 1_000_000
    assert not list(tiny_run.parent.glob(".tmp-*"))


def test_a_held_out_folder_sharing_patients_is_recorded_and_scored_without_them(tiny_run):
    """tiny_cxr holds three Kermany patients that seed001_0402 holds too: the run says so and
    scores the held-out folder again without their images."""
    run = load_run(tiny_run)
    overlap = run.metrics["heldout"]["seed001_0402"]["patient_overlap"]
    assert overlap == {"patients": 3, "images": 3,
                       "ids": ["kermany-IM-0131", "kermany-IM-0145", "kermany-person1012"]}
    assert run.patient_overlap("seed001_0402") == overlap
    without = run.metrics_without_overlap("seed001_0402")
    rows = run.predictions_for("seed001_0402")
    kept = rows[~rows["patient_id"].isin(overlap["ids"])]
    assert without["n"] == len(kept) == 302
    right = (kept[run.probability_columns()].to_numpy().argmax(axis=1)
             == [run.labels.index(label) for label in kept["label"]])
    assert without["accuracy"] == pytest.approx(right.mean())


def test_cross_validation_records_every_fold_kept_epoch_and_files(tmp_path, feature_cache):
    from xrcompare.summary import leaderboard

    cli("train", "--data", TINY, "--backbone", "resnet50", "--image-size", SIZE, "--epochs", 3,
        "--batch-size", 4, "--folds", 3, "--val-fraction", 0.45, "--runs-dir", tmp_path,
        "--name", "cv")
    run = load_run(tmp_path / "cv")
    folds = run.fold_records
    assert [entry["fold"] for entry in folds] == [1, 2, 3]
    assert all(1 <= entry["best_epoch"] <= entry["epochs_run"] <= 3 for entry in folds)
    assert folds[0]["files"] == run.split_files  # fold 1's lists are also "files"
    tested = sorted(path for entry in folds for path in entry["files"]["test"])
    assert tested == sorted(run.predictions_for("test")["path"])  # each image tested once
    for entry in folds:
        assert not set(entry["files"]["test"]) & set(entry["files"]["train"])
    per_fold = [entry["best_epoch"] for entry in run.folds_summary["per_fold"]]
    assert run.kept_epochs == [entry["best_epoch"] for entry in folds] == per_fold
    text = f"{', '.join(map(str, per_fold))}/{run.epochs_run}"
    assert run.kept_epoch_text == text
    assert leaderboard([run], {"backbones": {}}).loc[0, "epochs"] == text


def test_rebuilt_flat_model_reproduces_the_saved_test_predictions(tiny_run):
    run = load_run(tiny_run)
    model = build_full_model(run)
    assert not any(hasattr(layer, "layers") for layer in model.layers)  # one flat graph
    row = run.split_predictions("test").iloc[0]
    probabilities = predict_gray(run, model, read_gray(TINY / row["path"]))
    saved = [row[f"prob_{label}"] for label in run.labels]
    assert np.allclose(list(probabilities.values()), saved, atol=2e-3)


def test_cli_evaluate_json_on_another_folder(tiny_run):
    result = cli("evaluate", tiny_run, DATA / "kaggle_test", "--json")
    payload = json.loads(result.stdout)
    assert payload["labels"] == ["covid", "normal", "pneumonia"]
    assert payload["n"] == 624
    matrix = np.array(payload["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix[0].sum() == 0 and matrix.sum() == 624
    # checked against the run's own patients: tiny_cxr shares none with kaggle_test
    assert payload["patient_overlap"] == {"patients": 0, "images": 0, "ids": []}
    assert "without_overlap" not in payload
    assert payload["per_class"]["normal"]["support"] == 234
    assert set(payload["per_class"]["pneumonia"]) >= {"precision", "recall", "f1", "support"}
    engine = payload["feature_engine"]  # trained with the reference, evaluated with the engine
    assert engine["trained_with"] == "Keras fp32"
    assert (engine["note"] is None) == (engine["evaluated_with"] == "Keras fp32")


def test_cli_predict_and_runs(tiny_run):
    image = next((DATA / "kaggle_test" / "PNEUMONIA").glob("*.jpg"))
    payload = json.loads(cli("predict", tiny_run, image, "--json").stdout)
    assert set(payload["probabilities"]) == {"covid", "normal", "pneumonia"}
    assert payload["predicted"] == max(payload["probabilities"], key=payload["probabilities"].get)
    assert payload["feature_engine"]["note"] is None  # trained and predicted with Keras fp32
    listing = json.loads(cli("runs", "--runs-dir", tiny_run.parent, "--json").stdout)
    assert [row["run_id"] for row in listing["runs"]] == ["tiny"]


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "/nonexistent", "--backbone", "resnet50"], "does not exist"),
    (["train", "--data", str(TINY), "--backbone", "alexnet"], "unknown backbone"),
    (["train", "--data", str(TINY), "--backbone", "resnet50", "--image-size", "8"],
     "between 32 and 1024"),
    (["train", "--data", str(TINY), "--backbone", "resnet50", "--epochs", "0"], "≥ 1"),
    (["predict", "/nonexistent-run", str(TINY)], "not a run folder"),
])
def test_cli_bad_input_is_one_line_and_non_zero(args, message):
    result = cli(*args, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_backbone_without_weights_is_a_clear_error(tmp_path):
    result = cli("train", "--data", TINY, "--backbone", "vgg16", "--image-size", SIZE,
                 "--runs-dir", tmp_path, check=False,
                 env={"XRCOMPARE_WEIGHTS_DIR": str(tmp_path),
                      "KERAS_HOME": str(tmp_path / "keras")})
    assert result.returncode == 3
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no ImageNet weights for VGG16")
    assert "XRCOMPARE_WEIGHTS_DIR" in last and "vgg16_imagenet_notop.weights.h5" in last
    assert list_runs(tmp_path).runs == []


def test_training_runs_under_the_jax_backend(tmp_path, feature_cache):
    """The GPU machine has JAX but no TensorFlow: training must be plain Keras 3."""
    script = (
        "import sys, keras\n"
        "sys.modules['tensorflow'] = None  # prove no TensorFlow is needed\n"
        "from xrcompare.cli import main\n"
        "assert keras.backend.backend() == 'jax'\n"
        "sys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run(
        [sys.executable, "-c", script, "train", "--data", str(TINY), "--backbone", "resnet50",
         "--image-size", "32", "--epochs", "2", "--runs-dir", str(tmp_path), "--name", "jax",
         "--test-fraction", "0.25", "--val-fraction", "0.3"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "KERAS_BACKEND": "jax", "XRCOMPARE_CACHE_DIR": str(tmp_path / "c")})
    assert result.returncode == 0, result.stderr[-2000:]
    run = load_run(tmp_path / "jax")
    assert run.info["keras_backend"] == "jax"
    assert run.info["machine"]["accelerator"].startswith("cpu")
    assert "tensorflow" not in run.info["versions"]
    assert run.feature_engine == ("keras", "fp32")  # auto falls back: no TensorFlow to convert


def test_an_existing_run_name_is_refused_before_any_work(tiny_run):
    result = cli("train", "--data", TINY, "--backbone", "resnet50", "--image-size", SIZE,
                 "--runs-dir", tiny_run.parent, "--name", "tiny", check=False)
    assert result.returncode == 2
    assert "already exists" in result.stderr and "features" not in result.stderr


def test_neighbours_build_an_index_from_the_runs_training_split(tiny_run):
    """The CLI builds the tiny run's neighbour index from its own training data (inside the
    data root); a training image's nearest training image is itself."""
    from xrcompare import neighbours

    inside = {"XRCOMPARE_DATA_ROOT": str(FIXTURES)}
    cli("neighbours", tiny_run, "--build", env=inside)
    run = load_run(tiny_run)
    index = neighbours.load_index(run)
    assert index.paths == run.split_files["train"] and index.threshold > 0
    found = cli("neighbours", tiny_run, TINY / index.paths[0], "--json", env=inside)
    assert json.loads(found.stdout)["nearest"][0]["path"] == index.paths[0]
