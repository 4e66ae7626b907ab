"""The inference engine for the frozen base (xrcompare/inference_engine.py), on real images and real
ImageNet weights: its features agree with the Keras float32 reference, the shipped runs keep
their predictions through it, converted models are cached once, and Keras is the fallback."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import DATA, FIXTURES, REPO

from xrcompare import inference_engine as engines
from xrcompare.backbones import weights_status
from xrcompare.data import scan_dataset
from xrcompare.features import FeatureExtractor, FeatureSpec
from xrcompare.imaging import read_gray, to_model_square
from xrcompare.inference import engine_spec
from xrcompare.runs import build_head_for_run, list_runs, load_run
from xrcompare.summary import leaderboard
from xrcompare.train import predict

TRAINED = REPO / "trained"
AGREEMENT_IMAGES = 64


def spread_images(folder, count):
    """``count`` images spread evenly over a dataset's classes (deterministic)."""
    records = scan_dataset(folder).records
    step = max(1, len(records) // count)
    return [record.path for record in records[::step][:count]]


def pooled_cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per image: cosine similarity of the spatially averaged feature maps."""
    a = first.reshape(len(first), -1, first.shape[-1]).mean(axis=1)
    b = second.reshape(len(second), -1, second.shape[-1]).mean(axis=1)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def require_weights(backbone: str) -> None:
    status = weights_status(backbone)
    if not status.available:
        pytest.fail(f"the engine agreement test needs real {backbone} ImageNet weights: "
                    f"{status.detail}")


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50", "xception"])
def test_engine_features_agree_with_the_keras_reference_on_real_images(backbone):
    require_weights(backbone)
    paths = spread_images(DATA / "cxr3", AGREEMENT_IMAGES)
    reference = FeatureSpec(backbone, 224)
    spec = engines.with_engine(reference, "openvino")
    assert spec.engine == "openvino" and spec.key() != reference.key()
    expected = FeatureExtractor(reference).extract(paths)
    extractor = FeatureExtractor(spec)
    got = extractor.extract(paths)
    assert extractor.engine.label.startswith("OpenVINO")
    assert got.ok == expected.ok == list(range(AGREEMENT_IMAGES))
    assert got.features.shape == expected.features.shape
    cosines = pooled_cosines(got.features, expected.features)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.999, (f"{backbone}: cosine {cosines[worst]:.5f} on "
                                    f"{paths[worst].name}")
    assert not np.array_equal(got.features, expected.features)  # really another engine


@pytest.mark.parametrize(("backbone", "size", "preprocess"),
                         [("vgg16", 64, "backbone"), ("resnet50", 64, "scale01"),
                          ("xception", 96, "backbone")])
def test_the_engine_preprocesses_gray_squares_as_the_registry_does(backbone, size, preprocess,
                                                                   tmp_path, monkeypatch):
    """OpenVINO computes the backbone's preprocessing (caffe, tf, the blog's x / 255) in its
    own graph from 8-bit squares: in float32 it gives what Keras gives on the registry's
    NumPy preprocessing of the same squares, and it gives float16, as the cache stores."""
    monkeypatch.setenv("XRCOMPARE_CACHE_DIR", str(tmp_path))
    require_weights(backbone)
    squares = np.stack([to_model_square(read_gray(path), size)
                        for path in spread_images(DATA / "cxr3", 6)])
    spec = FeatureSpec(backbone, size, preprocess=preprocess)
    expected = engines.make_engine(spec).predict(squares)
    engine = engines.make_engine(dataclasses.replace(spec, engine="openvino", precision="fp32"))
    got = engine.predict(squares)
    assert got.dtype == np.float16 and expected.dtype == np.float32
    assert got.shape == expected.shape
    assert np.abs(got.astype(np.float32) - expected).max() <= 2e-3 * np.abs(expected).max()
    with pytest.raises(ValueError, match="8-bit gray squares"):
        engine.predict(squares.astype(np.float32))  # a preprocessed batch is refused


@pytest.mark.parametrize("backbone", ["resnet50", "xception"])
def test_the_engines_input_step_changes_no_bit_of_the_features(backbone, tmp_path,
                                                                monkeypatch):
    """The in-graph preprocessing and float16 output give exactly what the same converted
    model gives on NumPy-preprocessed float32 batches, rounded to float16 after (the
    extraction before the input step): caffe (ResNet50) and tf (Xception) styles."""
    import openvino as ov

    from xrcompare.backbones import get_backbone

    monkeypatch.setenv("XRCOMPARE_CACHE_DIR", str(tmp_path))
    require_weights(backbone)
    size = 96
    squares = np.stack([to_model_square(read_gray(path), size)
                        for path in spread_images(DATA / "cxr3", 6)])
    engine = engines.make_engine(engines.with_engine(FeatureSpec(backbone, size), "openvino"))
    core = ov.Core()
    plain = core.compile_model(core.read_model(engine.xml), "CPU", {
        "PERFORMANCE_HINT": "THROUGHPUT", "ENABLE_CPU_PINNING": False,
        "INFERENCE_PRECISION_HINT": "bf16" if engine.precision == "bf16" else "f32"})
    request = plain.create_infer_request()
    request.infer({0: get_backbone(backbone).model_inputs(squares)})
    before = np.array(request.get_output_tensor(0).data, dtype=np.float32)
    np.testing.assert_array_equal(engine.predict(squares), before.astype(np.float16))


def _other_engine(run) -> str:
    """The engine a shipped run was NOT trained with (the reference for engine-made runs)."""
    return "keras" if run.feature_engine[0] == "openvino" else "openvino"


@pytest.mark.parametrize("run_id", ["resnet50-cxr3", "resnet50-seed001-blog"])
def test_shipped_runs_keep_their_test_predictions_through_the_other_engine(run_id):
    run = load_run(TRAINED / run_id)
    spec = engine_spec(run, _other_engine(run))
    assert (spec.engine, spec.precision) != run.feature_engine
    folder = run.data_folder()
    assert folder is not None, f"{run_id}: its data folder is not on this machine"
    test = run.split_predictions("test")
    result = FeatureExtractor(spec).extract([folder / path for path in test["path"]])
    assert result.ok == list(range(len(test)))
    probabilities = predict(build_head_for_run(run), result.features)
    saved = test[run.probability_columns()].to_numpy()
    kept = float(np.mean(probabilities.argmax(axis=1) == saved.argmax(axis=1)))
    assert kept >= 0.99, f"{run_id}: argmax kept on {kept:.1%} of {len(test)} test images"
    assert np.abs(probabilities - saved).max() < 0.2


def test_evaluating_with_another_engine_says_so():
    run = load_run(TRAINED / "resnet50-seed001-blog")
    other = _other_engine(run)
    result = subprocess.run(
        [sys.executable, "-m", "xrcompare", "evaluate", str(run.path),
         str(FIXTURES / "tiny_cxr")], capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, engines.ENGINE_VARIABLE: other})
    assert result.returncode == 0, result.stderr[-2000:]
    here = engines.engine_label(*engines.choose(other))
    assert (f"features: trained with {run.feature_engine_label}, evaluated with {here}"
            in result.stdout), result.stdout


def test_reference_key_is_unchanged_and_other_engines_get_their_own():
    assert FeatureSpec("resnet50", 224).key() == "resnet50-imagenet-224px-squash"
    spec = FeatureSpec("resnet50", 224, engine="openvino", precision="bf16")
    assert spec.key() == "resnet50-imagenet-224px-squash-openvino-bf16"
    assert FeatureSpec("resnet50", 224, engine="openvino", precision="fp32").key() != spec.key()


def test_converted_models_are_made_once_even_by_two_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setenv("XRCOMPARE_CACHE_DIR", str(tmp_path))
    spec = engines.with_engine(FeatureSpec("resnet50", 32), "openvino")
    results, errors = [], []

    def convert():
        try:
            results.append(engines.converted_model(spec))
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=convert) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(now for _, _, now in results) == [False, True]  # one converted, one waited
    assert results[0][0] == results[1][0] and results[0][0].is_file()
    folders = [p for p in (tmp_path / engines.CONVERTED_FOLDER).iterdir() if p.is_dir()]
    assert folders == [results[0][0].parent]  # no temporary folder left behind
    engine = engines.make_engine(spec)
    info = engine.info()
    assert info["converted_model"] == "from the cache" and info["conversion_s"] > 0
    squares = np.zeros((3, 32, 32), dtype=np.uint8)
    assert engine.predict(squares).shape == (3, 1, 1, 2048)
    # Another resize mode or precision reuses the same converted model.
    pad = engines.make_engine(FeatureSpec("resnet50", 32, "pad", engine="openvino",
                                          precision="fp32"))
    assert pad.xml == engine.xml and pad.info()["converted_model"] == "from the cache"


def test_a_stream_of_batches_gives_what_each_batch_gives_alone(tmp_path, monkeypatch):
    """The requests stay busy across batches (no wait for a whole batch), yet every batch's
    output is the one it gets alone, in order; a stream stopped early or fed a bad batch
    leaves the engine usable."""
    monkeypatch.setenv("XRCOMPARE_CACHE_DIR", str(tmp_path))
    engine = engines.make_engine(engines.with_engine(FeatureSpec("resnet50", 64), "openvino"),
                                 hint="throughput")
    rng = np.random.default_rng(7)
    batches = [rng.integers(0, 256, (size, 64, 64), dtype=np.uint8)
               for size in (3, 8, 13, 1, 8)]
    alone = [engine.predict(batch) for batch in batches]
    streamed = list(engine.predict_stream(iter(batches)))
    assert [len(output) for output in streamed] == [3, 8, 13, 1, 8]
    for got, expected in zip(streamed, alone, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert engine.stream_batch == (engines.OPENVINO_CHUNK if engine.streams > 1 else None)
    stopped = engine.predict_stream(iter(batches))
    np.testing.assert_array_equal(next(stopped), alone[0])
    stopped.close()  # the consumer gave up: the lock is released, nothing runs on
    with pytest.raises(ValueError, match="non-empty"):
        list(engine.predict_stream(iter([batches[0], np.zeros((0, 64, 64), np.uint8)])))
    np.testing.assert_array_equal(engine.predict(batches[2]), alone[2])


def test_extraction_streams_past_batches_of_unreadable_files(tmp_path, monkeypatch):
    """A whole engine batch of unreadable files between readable ones, and one at the end:
    every readable image keeps its row and its features, progress reaches the total."""
    monkeypatch.setenv("XRCOMPARE_CACHE_DIR", str(tmp_path / "cache"))
    good = spread_images(DATA / "cxr3", 12)
    garbage = []
    for number in range(engines.OPENVINO_CHUNK + 1):
        path = tmp_path / f"garbage-{number}.jpg"
        path.write_bytes(b"not an image " + bytes([number]))
        garbage.append(path)
    paths = good[:8] + garbage[:-1] + good[8:] + garbage[-1:]
    spec = engines.with_engine(FeatureSpec("resnet50", 64), "openvino")
    reports = []
    result = FeatureExtractor(spec, cache_dir=tmp_path / "mixed").extract(
        paths, progress=reports.append)
    readable = [index for index, path in enumerate(paths) if path in good]
    assert result.ok == readable
    assert sorted(path for path, _ in result.failed) == sorted(str(p) for p in garbage)
    assert [report["done"] for report in reports] == sorted(r["done"] for r in reports)
    assert reports[-1]["done"] == reports[-1]["total"] == len(paths)
    alone = FeatureExtractor(spec, cache_dir=tmp_path / "alone").extract(good)
    np.testing.assert_allclose(result.features, alone.features, rtol=2e-3, atol=2e-2)


def test_an_extraction_stopped_midway_leaves_its_engine_usable(tmp_path, monkeypatch):
    """A progress callback that raises ends the extraction; the shared engine's stream is
    closed at once, so the next call on it does not wait, even while the error (and so the
    extraction's frame) is still held."""
    monkeypatch.setenv("XRCOMPARE_CACHE_DIR", str(tmp_path / "cache"))
    spec = engines.with_engine(FeatureSpec("resnet50", 64), "openvino")
    engine = engines.make_engine(spec)
    paths = spread_images(DATA / "cxr3", 3 * engines.OPENVINO_CHUNK)

    def stop(report):
        if report["done"] > 0:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped") as stopped:
        FeatureExtractor(spec, cache_dir=tmp_path / "a", base=engine).extract(paths,
                                                                             progress=stop)
    finished = threading.Event()
    thread = threading.Thread(target=lambda: (engine.predict(np.zeros((2, 64, 64),
                                                                      np.uint8)),
                                              finished.set()), daemon=True)
    thread.start()
    assert finished.wait(60), "the engine stayed locked after the stopped extraction"
    assert stopped.traceback  # held until here


def test_converted_model_key_follows_weights_and_versions():
    imagenet, _ = engines.model_key(FeatureSpec("resnet50", 224))
    assert imagenet.startswith("resnet50-224px-w") and "openvino" in imagenet
    assert engines.model_key(FeatureSpec("resnet50", 288))[0] != imagenet
    seeds = {engines.model_key(FeatureSpec("resnet50", 224, weights="random", seed=s))[0]
             for s in (1, 2)}
    assert len(seeds) == 2 and all("random-seed" in key for key in seeds)


def test_keras_is_the_fallback_when_openvino_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    monkeypatch.delenv(engines.ENGINE_VARIABLE, raising=False)
    assert engines.choose() == engines.REFERENCE
    with pytest.raises(engines.EngineUnavailable, match="not installed"):
        engines.choose("openvino")
    monkeypatch.setenv(engines.ENGINE_VARIABLE, "keras")
    assert engines.choose() == ("keras", "fp32")
    monkeypatch.setenv(engines.ENGINE_VARIABLE, "tensorrt")
    with pytest.raises(engines.EngineUnavailable, match="XRCOMPARE_ENGINE must be one of"):
        engines.choose()


def test_training_uses_the_engine_and_records_it(tmp_path):
    """The CLI (and so the sidebar, which runs it) trains on engine features by default."""
    env = {key: value for key, value in os.environ.items() if key != engines.ENGINE_VARIABLE}
    result = subprocess.run(
        [sys.executable, "-m", "xrcompare", "train", "--data", str(FIXTURES / "tiny_cxr"),
         "--backbone", "resnet50", "--image-size", "32", "--epochs", "1", "--runs-dir",
         str(tmp_path), "--name", "auto", "--test-fraction", "0.25", "--val-fraction", "0.3"],
        capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    run = load_run(tmp_path / "auto")
    engine, precision = engines.choose("auto")
    assert engine == "openvino", "OpenVINO is in requirements.txt: auto should pick it"
    assert run.feature_engine == (engine, precision)
    features = run.info["features"]
    assert features["spec"] == f"resnet50-imagenet-32px-squash-openvino-{precision}"
    assert features["engine_version"].startswith("openvino ")
    assert features["converted_model"] in ("converted now", "from the cache")
    assert features["conversion_s"] > 0
    assert f"({run.feature_engine_label})" in result.stderr
    assert run.info["versions"]["openvino"]


def test_leaderboard_names_the_feature_engine():
    table = leaderboard(list_runs(TRAINED).runs)
    assert set(table["feature_engine"]) <= {"Keras fp32", "OpenVINO bf16", "OpenVINO fp32"}
    for run in list_runs(TRAINED).runs:
        assert table.loc[table["run_id"] == run.run_id, "feature_engine"].item() == \
            run.feature_engine_label


@pytest.mark.parametrize("run_id", ["vgg16-cxr3", "resnet50-cxr3"])
def test_predict_page_trunks_move_to_the_engine_and_agree_with_keras(run_id):
    """The Predict page's engine (xrcompare.engine) runs each trunk on the inference engine
    once accelerated: VGG16's trunk is cut before its last pool (a converted model of its
    own), ResNet50's is the whole base. Probabilities, their argmax and Grad-CAM agree with
    the Keras trunk on the four sample X-rays."""
    from xrcompare.engine import Engine
    from xrcompare.predictor import list_samples

    run = load_run(TRAINED / run_id)
    require_weights(run.backbone)
    reference, fast = Engine(engine="keras"), Engine(engine="openvino")
    assert reference.accelerate(run) is False
    assert reference.engine_label(run) is None  # nothing built yet
    reference.trunk(run)
    assert reference.engine_label(run) == "Keras fp32"
    assert fast.accelerate(run) is True
    assert fast.engine_label(run).startswith("OpenVINO")
    for sample in list_samples():
        gray = read_gray(sample.path)
        expected, got = reference.features(run, gray), fast.features(run, gray)
        assert got.shape == expected.shape == (1, *reference.trunk(run).output.shape[1:])
        assert pooled_cosines(expected, got).min() >= 0.999
        keras_scores = reference.probabilities(run, gray)
        fast_scores = fast.probabilities(run, gray)
        assert max(keras_scores, key=keras_scores.get) == max(fast_scores, key=fast_scores.get)
        assert max(abs(keras_scores[label] - fast_scores[label]) for label in run.labels) < 0.02
        index = run.labels.index(max(keras_scores, key=keras_scores.get))
        maps = reference.gradcam(run, gray, index), fast.gradcam(run, gray, index)
        assert np.corrcoef(maps[0].ravel(), maps[1].ravel())[0, 1] > 0.98


def test_a_fine_tuned_runs_trunk_stays_on_keras():
    """Converted models are keyed by the registry's weights: a fine-tuned run's base (with its
    own last block) must never be served from one."""
    from xrcompare.engine import Engine

    run = load_run(TRAINED / "vgg16-cxr3-finetune")
    assert run.is_fine_tuned
    assert Engine(engine="openvino").accelerate(run) is False
