"""``--fine-tune last-block`` end to end on real images with the real VGG16 weights: the
registry's cuts, the two-stage run, its float16 block file (checked on load), the rebuilt
model, Grad-CAM, the Predict engine's own trunk, and one-line refusals."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA, FIXTURES, REPO

from xrcompare.backbones import REGISTRY, get_backbone
from xrcompare.config import TrainConfig
from xrcompare.imaging import read_gray
from xrcompare.runs import (
    BLOCK_FILE,
    RunError,
    build_feature_model_for_run,
    build_full_model,
    build_head_for_run,
    load_run,
    model_input_for_run,
    predict_gray,
    write_block_weights,
)

TINY = FIXTURES / "tiny_cxr"
SIZE = 64
#: Rebuilt (float32 activations, float16 block) against recorded (float16-cached activations,
#: the same block): the largest class-probability difference allowed.
REBUILD_TOLERANCE = 1e-2


def cli(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "xrcompare", *map(str, args)],
                            capture_output=True, text=True, cwd=REPO, env=dict(os.environ),
                            timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-2000:])
    return result


TINY_VGG16 = ["train", "--data", TINY, "--backbone", "vgg16", "--image-size", SIZE,
              "--epochs", 3, "--batch-size", 4, "--val-fraction", 0.3,
              "--test-fraction", 0.25, "--engine", "keras"]  # the reference: exact rebuild


@pytest.fixture(scope="module")
def runs(tmp_path_factory, feature_cache):
    """A tiny frozen VGG16 run and the same recipe fine-tuned, on the same split."""
    folder = tmp_path_factory.mktemp("runs")
    cli(*TINY_VGG16, "--runs-dir", folder, "--name", "frozen")
    cli(*TINY_VGG16, "--runs-dir", folder, "--name", "tuned", "--heldout",
        DATA / "seed001_0402", "--fine-tune", "last-block", "--fine-tune-epochs", 3,
        "--fine-tune-learning-rate", 1e-4)
    return load_run(folder / "frozen"), load_run(folder / "tuned")


def test_the_registry_cuts_are_the_real_bases_last_blocks():
    import keras

    for name in ("vgg16", "resnet50", "xception"):
        backbone = get_backbone(name)
        size = max(backbone.min_size, 71)
        base = backbone.builder_function()(include_top=False, weights=None,
                                           input_shape=(size, size, 3))
        shapes = {layer: tuple(tuple(w.shape) for w in base.get_layer(layer).weights)
                  for layer in backbone.fine_tune_names}
        assert shapes == backbone.fine_tune_shapes, name
        from xrcompare.backbones import build_block

        block = build_block(base, name)
        trained = {layer.name for layer in block.layers if layer.trainable and layer.weights}
        assert trained == set(backbone.fine_tune_names)
        assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                       for layer in block.layers)
        assert sum(int(np.prod(w.shape)) for w in block.trainable_weights) == \
            backbone.fine_tune_params
    assert round(get_backbone("vgg16").fine_tune_params / 1e6, 1) == 2.4
    assert round(get_backbone("resnet50").fine_tune_params / 1e6, 1) == 4.5
    assert not REGISTRY["vgg19"].fine_tune_layers


def test_a_fine_tuned_run_records_both_stages_and_a_float16_block(runs):
    frozen, tuned = runs
    assert not frozen.is_fine_tuned and tuned.is_fine_tuned
    assert tuned.fine_tuned_layers == ("block5_conv3",)
    record = tuned.fine_tune_record
    assert record["cut_layer"] == "block5_conv2" and record["cut_shape"] == [4, 4, 512]
    assert record["storage"] == "float16" and record["params"] == 2_359_808
    size = tuned.block_weights.stat().st_size
    assert 4_700_000 < size < 4_800_000  # 2.4 M parameters × 2 bytes, not 9.4 MB
    assert len(record["history"]["loss"]) == record["epochs_run"] == 3
    # the frozen stage is the frozen run: same split, same seed, same head
    assert record["before"]["test_accuracy"] == frozen.test_metrics["accuracy"]
    assert frozen.split_files == tuned.split_files
    # every recorded image went through both the float16 and the float32 block
    check = record["float16_check"]
    assert check["images"] == len(tuned.predictions)
    assert 0 <= check["max_abs_difference"] < REBUILD_TOLERANCE
    assert {"extract_cut", "fine_tune"} <= set(tuned.timings)
    assert tuned.feature_spec().key().endswith("-cut-before-block5_conv3")
    assert tuned.recipe["fine_tune"] == "last-block" and frozen.recipe["fine_tune"] == "none"
    assert frozen.recipe != tuned.recipe  # not a repeat of the frozen run
    assert "fine-tuned last block" in tuned.title


def test_the_rebuilt_full_model_gives_the_recorded_predictions(runs):
    _, tuned = runs
    model = build_full_model(tuned)
    assert not any(hasattr(layer, "layers") for layer in model.layers)  # one flat graph
    conv = np.asarray(model.get_layer("block5_conv3").get_weights()[0])
    stored = load_block_kernel(tuned)
    assert np.array_equal(conv, stored)  # the stored block, not ImageNet's
    test = tuned.split_predictions("test")
    assert len(test) >= 3
    for _, row in test.iterrows():
        probabilities = predict_gray(tuned, model, read_gray(TINY / row["path"]))
        saved = np.array([row[f"prob_{label}"] for label in tuned.labels])
        rebuilt = np.array(list(probabilities.values()))
        assert np.abs(rebuilt - saved).max() < REBUILD_TOLERANCE
        assert rebuilt.argmax() == saved.argmax()


def load_block_kernel(run) -> np.ndarray:
    from xrcompare.runs import read_block_weights

    return read_block_weights(run.block_weights, run.backbone)["block5_conv3"][0]


def test_evaluation_runs_the_block_on_cached_cut_activations(runs):
    from xrcompare.inference import evaluate_folder

    _, tuned = runs
    metrics, failed = evaluate_folder(tuned, DATA / "seed001_0402", repeats=10, engine="keras")
    assert not failed and metrics["n"] == 305
    recorded = tuned.metrics_for("heldout:seed001_0402")
    assert metrics["accuracy"] == recorded["accuracy"]
    assert metrics["confusion_matrix"] == recorded["confusion_matrix"]
    # the head alone on the cut activations would not even fit
    assert build_feature_model_for_run(tuned).input_shape[1:] == (4, 4, 512)


def test_grad_cam_runs_on_a_fine_tuned_run(runs):
    from xrcompare.engine import Engine
    from xrcompare.explain import compute_saliency

    _, tuned = runs
    gray = read_gray(TINY / tuned.split_predictions("test").iloc[0]["path"])
    model = build_full_model(tuned)
    flat = compute_saliency(model, model_input_for_run(tuned, gray), "gradcam", 0,
                            penultimate_layer=tuned.last_conv_layer)
    assert flat.shape == (SIZE, SIZE) and np.isfinite(flat).all()
    assert 0 <= flat.min() and flat.max() <= 1 and flat.max() > 0
    engine = Engine()
    on_features = engine.gradcam(tuned, gray, 0)
    assert on_features.shape == (SIZE, SIZE) and np.isfinite(on_features).all()


def test_the_predict_engine_gives_a_fine_tuned_run_its_own_trunk(runs):
    from xrcompare.backbones import build_base
    from xrcompare.engine import Engine, trunk_key
    from xrcompare.train import attach_head

    frozen, tuned = runs
    assert trunk_key(frozen) != trunk_key(tuned)
    engine = Engine()
    gray = read_gray(TINY / tuned.split_predictions("test").iloc[0]["path"])
    frozen_features = engine.features(frozen, gray)
    tuned_features = engine.features(tuned, gray)
    assert engine.trunks_built == 2
    assert not np.allclose(frozen_features, tuned_features)  # block5_conv3 was trained
    from_engine = np.array(list(engine.probabilities(tuned, gray).values()))
    own = np.array(list(predict_gray(tuned, build_full_model(tuned), gray).values()))
    assert np.allclose(from_engine, own, atol=1e-5)
    # the fine-tuned head on the plain ImageNet base gives other probabilities
    plain = attach_head(build_base("vgg16", SIZE), build_head_for_run(tuned))
    shared = np.array(list(predict_gray(tuned, plain, gray).values()))
    assert np.abs(shared - own).max() > 1e-4
    # and the frozen run still gets the plain base
    frozen_own = np.array(list(predict_gray(frozen, build_full_model(frozen), gray).values()))
    assert np.allclose(np.array(list(engine.probabilities(frozen, gray).values())), frozen_own,
                       atol=1e-5)


def test_a_bad_block_file_is_refused_in_one_sentence(runs, tmp_path):
    _, tuned = runs

    def copy(name: str):
        folder = tmp_path / name
        shutil.copytree(tuned.path, folder)
        return folder

    garbage = copy("garbage")
    (garbage / BLOCK_FILE).write_bytes(os.urandom(4096))
    with pytest.raises(RunError) as error:
        load_run(garbage)
    assert f"{BLOCK_FILE} cannot be read" in str(error.value)
    assert "\n" not in str(error.value)

    wrong = copy("wrong-shape")
    write_block_weights(wrong / BLOCK_FILE, {"block5_conv3": [np.zeros((3, 3, 512, 256)),
                                                               np.zeros(256)]})
    with pytest.raises(RunError, match=r"block5_conv3 has weight shapes .* takes "):
        load_run(wrong)

    other = copy("other-layers")
    write_block_weights(other / BLOCK_FILE, {"block5_conv2": [np.zeros((3, 3, 512, 512)),
                                                               np.zeros(512)]})
    with pytest.raises(RunError, match="holds layers"):
        load_run(other)

    missing = copy("missing")
    (missing / BLOCK_FILE).unlink()
    with pytest.raises(RunError, match=f"{BLOCK_FILE} is missing"):
        load_run(missing)

    # right shapes, not numbers: loads (shapes only), refused when the model is built
    broken = copy("not-finite")
    kernel = np.full((3, 3, 512, 512), np.nan)
    write_block_weights(broken / BLOCK_FILE, {"block5_conv3": [kernel, np.zeros(512)]})
    run = load_run(broken)
    with pytest.raises(RunError, match="not finite numbers") as error:
        build_full_model(run)
    assert "\n" not in str(error.value)


def test_the_converted_model_of_a_cut_base_has_its_own_key():
    from xrcompare.features import FeatureSpec
    from xrcompare.inference_engine import model_key, openvino_problem

    if openvino_problem() is not None:
        pytest.skip(openvino_problem())
    plain = FeatureSpec("vgg16", 224, engine="openvino", precision="bf16")
    cut = FeatureSpec("vgg16", 224, engine="openvino", precision="bf16", cut="block5_conv3")
    assert model_key(cut)[0] == model_key(plain)[0] + "-cut-before-block5_conv3"
    assert cut.key() != plain.key()


def test_neighbours_are_refused_for_a_fine_tuned_run(runs):
    from xrcompare.neighbours import build_index

    _, tuned = runs
    with pytest.raises(ValueError, match="fine-tuned its last block"):
        build_index(tuned, data_root=FIXTURES)


@pytest.mark.parametrize("args, message", [
    (["--backbone", "vgg19"], "VGG19 has no fine-tune cut registered"),
    (["--model", "image-statistics"], "--fine-tune does not apply to --model image-statistics"),
    (["--backbone", "vgg16", "--weights", "random"], "random-init control"),
    (["--backbone", "vgg16", "--folds", "3"], "leave out --folds"),
])
def test_fine_tune_on_an_unsupported_setting_is_one_line_and_non_zero(args, message, tmp_path):
    result = cli("train", "--data", TINY, "--runs-dir", tmp_path, "--fine-tune", "last-block",
                 *args, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # refused before any work


def test_the_config_offers_fine_tuning_on_the_command_line_and_the_form():
    from xrcompare.config import FORM_FIELDS, form_param

    assert "fine_tune" in FORM_FIELDS
    param = form_param("fine_tune")
    assert param["default"] == "none" and param["options"] == ("none", "last-block")
    config = TrainConfig(data=TINY, backbones=["resnet50"], fine_tune="last-block")
    config.validate()
    assert config.recipe("resnet50")["fine_tune"] == "last-block"
    assert TrainConfig(data=TINY, backbones=["resnet50"]).recipe("resnet50")["fine_tune"] \
        == "none"
