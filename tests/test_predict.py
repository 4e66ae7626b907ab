"""xrcompare.predictor and its engine on the shipped runs in trained/ and the shipped samples:
real ResNet50 weights, real images, every saliency method; plus the pure summaries, caches,
formatting and where a sample sat in each run's data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import DATA, REPO, WEIGHTS

from xrcompare import CLASSES, predictor
from xrcompare.engine import Engine, base_key
from xrcompare.explain import METHODS
from xrcompare.imaging import read_bytes
from xrcompare.runs import RunError, build_full_model, list_runs, load_run, predict_gray
from xrcompare.uploads import load_upload

TRAINED = REPO / "trained"
MAIN_RUN = "resnet50-cxr3"
ALLOWED_LICENCES = {"CC BY 4.0", "CC BY 3.0"}


@pytest.fixture(scope="module")
def shipped_runs():
    """The shipped CNN runs (the image-statistics baseline has no trunk, tail or map; its
    predictions are tested in test_imagestats.py and on the Predict page)."""
    listing = list_runs(TRAINED)
    assert listing.problems == []
    ids = [run.run_id for run in listing.runs]
    assert MAIN_RUN in ids, f"the main shipped run is missing from {TRAINED}: {ids}"
    return [run for run in listing.runs if run.is_cnn]


@pytest.fixture(scope="module")
def engine(shipped_runs):
    """One engine for every shipped run (as the page has one per server)."""
    return Engine()


@pytest.fixture(scope="module")
def samples():
    """The shipped X-ray samples (the non-X-ray photo has its own test)."""
    return [sample for sample in predictor.list_samples() if sample.label in CLASSES]


def gray_of(sample):
    return load_upload(read_bytes(sample.path), sample.name).gray


# --------------------------------------------------------------------------- samples


def test_the_samples_are_small_licensed_and_documented(samples):
    assert len(samples) >= 4
    readme = (predictor.SAMPLES_DIR / "README.md").read_text(encoding="utf-8")
    manifest = pd.read_csv(DATA / "manifest.csv").set_index("path")
    assert {sample.label for sample in samples} == {"covid", "normal", "pneumonia"}
    assert any(sample.source.startswith("kaggle_test/") for sample in samples)
    for sample in samples:
        assert sample.licence in ALLOWED_LICENCES
        assert sample.name in readme and sample.attribution
        image = load_upload(read_bytes(sample.path), sample.name)
        assert image.warnings == ()
        assert max(image.gray.shape) <= 512
        row = manifest.loc[sample.source]  # the shared copy it was taken from
        assert row["label"] == sample.label
        assert (row["width"], row["height"]) == image.info["original_size"]
        if sample.source.startswith("cxr3/covid/"):
            assert row["license"] == sample.licence  # Cohen images: only CC BY ones


def test_the_photo_sample_is_listed_licensed_and_not_an_xray():
    photos = [sample for sample in predictor.list_samples() if sample.label not in CLASSES]
    assert [sample.label for sample in photos] == ["photo"]
    readme = (predictor.SAMPLES_DIR / "README.md").read_text(encoding="utf-8")
    photo = photos[0]
    assert photo.licence == "CC0" and photo.name in readme and "not an x-ray" in photo.title.lower()
    image = load_upload(read_bytes(photo.path), photo.name)
    assert max(image.gray.shape) <= 512


# --------------------------------------------------------------------------- predictions


def test_predictions_match_what_each_run_wrote_when_it_was_evaluated(shipped_runs, engine,
                                                                      samples):
    """Shared trunks and per-run tails (same preprocessing) reproduce predictions.csv."""
    compared = 0
    for sample in samples:
        gray = gray_of(sample)
        relative = sample.source.split("/", 1)[1]
        results = predictor.predict_runs(shipped_runs, gray, engine)
        for run, result in zip(shipped_runs, results, strict=True):
            assert result.ok, result.problem
            assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
            written = run.predictions.set_index("path")
            if relative not in written.index:
                continue
            row = written.loc[relative]
            # A cross-validation run's test rows come from five heads; its file keeps one.
            if "fold" in run.info.get("split", {}).get("method", "") \
                    and not str(row["split"]).startswith("heldout"):
                continue
            expected = [row[f"prob_{label}"] for label in run.labels]
            np.testing.assert_allclose(list(result.probabilities.values()), expected,
                                       atol=2e-3, err_msg=f"{run.run_id} on {sample.name}")
            compared += 1
    assert compared >= 8


def test_a_training_image_gets_what_predictions_csv_says(shipped_runs, engine):
    run = next(run for run in shipped_runs if run.run_id == MAIN_RUN)
    row = run.split_predictions("train").iloc[0]
    gray = load_upload(read_bytes(DATA / run.data_name / row["path"]), "train.jpg").gray
    probabilities = engine.probabilities(run, gray)
    np.testing.assert_allclose([probabilities[label] for label in run.labels],
                               [row[f"prob_{label}"] for label in run.labels], atol=2e-3)


def test_the_split_model_gives_the_flat_models_probabilities(shipped_runs, engine, samples):
    gray = gray_of(samples[1])
    for run in (run for run in shipped_runs if run.is_cnn):  # not the statistics baseline
        flat = build_full_model(run, base=engine.base(run))
        expected = predict_gray(run, flat, gray)
        assert engine.probabilities(run, gray) == pytest.approx(expected, abs=1e-5), run.run_id


def test_runs_with_the_same_frozen_base_share_one_trunk_and_one_pass(shipped_runs, engine,
                                                                    samples):
    keys = {base_key(run) for run in shipped_runs}
    by_key: dict[tuple, list] = {}
    for run in shipped_runs:
        by_key.setdefault(base_key(run), []).append(engine.trunk(run))
    assert engine.trunks_built == len(keys) < len(shipped_runs)
    assert all(len({id(trunk) for trunk in group}) == 1 for group in by_key.values())
    assert len({id(group[0]) for group in by_key.values()}) == len(keys)
    # One image: one forward pass per distinct (trunk, model input), not one per run.
    gray = np.ascontiguousarray(gray_of(samples[2])[:, ::-1])  # an image no test used yet
    before = engine.forward_passes
    predictor.predict_runs(shipped_runs, gray, engine)
    inputs = {(base_key(run), run.resize_mode, run.preprocess, run.mask)
              for run in shipped_runs if run.is_cnn}  # the statistics baseline has no base
    assert engine.forward_passes - before == len(inputs) < len(shipped_runs)
    predictor.predict_runs(shipped_runs, gray, engine)  # the feature maps are kept
    assert engine.forward_passes - before == len(inputs)


def test_the_warm_up_builds_and_traces_every_run(tmp_path):
    folder = copy_run(tmp_path, MAIN_RUN, "main-copy")
    run = load_run(folder)
    engine = Engine()
    reports = []
    assert not engine.is_warm(run)
    engine.warm_up([run], progress=lambda run, problem: reports.append((run.run_id, problem)))
    assert engine.is_warm(run) and reports == [("main-copy", None)]
    before = engine.forward_passes
    engine.probabilities(run, np.full((300, 260), 90, np.uint8))
    assert engine.forward_passes == before + 1


def test_prediction_cache_answers_without_a_model(shipped_runs, engine, samples):
    run = next(run for run in shipped_runs if run.run_id == MAIN_RUN)
    cache = predictor.ResultCache(max_entries=4)
    gray = gray_of(samples[0])
    first = predictor.predict_run(engine, run, gray, cache=cache)
    assert predictor.predict_run(None, run, gray, cache=cache) is first  # no engine needed
    assert len(cache) == 1


def copy_run(tmp_path, run_id: str, new_id: str, **changes):
    folder = tmp_path / new_id
    shutil.copytree(TRAINED / run_id, folder)
    info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    info.update(changes)
    (folder / "run.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def only_resnet50_weights(tmp_path, monkeypatch) -> None:
    """Point XRCOMPARE_WEIGHTS_DIR at a folder holding the ResNet50 file only, so that any
    other backbone is unavailable whatever ../shared/weights holds."""
    folder = tmp_path / "weights"
    folder.mkdir()
    name = "resnet50_imagenet_notop.weights.h5"
    (folder / name).symlink_to(WEIGHTS / name)
    monkeypatch.setenv("XRCOMPARE_WEIGHTS_DIR", str(folder))


def test_runs_that_cannot_be_rebuilt_are_listed_with_the_reason(tmp_path, samples,
                                                                monkeypatch):
    only_resnet50_weights(tmp_path, monkeypatch)
    vgg = load_run(copy_run(tmp_path, "vgg16-cxr3", "vgg16-copy", display_name="VGG16 copy"))
    broken_folder = copy_run(tmp_path, MAIN_RUN, "broken-head", display_name="Broken head")
    (broken_folder / "head.weights.h5").write_bytes(b"not an HDF5 file")
    with pytest.raises(RunError, match="head.weights.h5 cannot be read"):
        load_run(broken_folder)  # refused when read, before any model could be built
    main = load_run(copy_run(tmp_path, MAIN_RUN, "main-copy", display_name="Main copy"))
    assert "VGG16" in predictor.weights_problem(vgg)
    results = predictor.predict_runs([vgg, main], gray_of(samples[0]))
    assert [result.ok for result in results] == [False, True]
    assert results[0].problem.startswith("Backbone weights unavailable: no ImageNet weights "
                                         "for VGG16")
    table = predictor.probability_table(results)
    assert list(table["predicted"])[0] == "–" and len(table["note"].iloc[0]) > 20
    summary = predictor.agreement(results)
    assert summary.unavailable == ["VGG16 copy"]
    assert summary.headline.startswith("The only trained model predicts")


# --------------------------------------------------------------------------- saliency


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_on_the_main_shipped_run(shipped_runs, engine, samples, method):
    run = next(run for run in shipped_runs if run.run_id == MAIN_RUN)
    sample = next(sample for sample in samples if sample.label == "pneumonia")
    gray = gray_of(sample)
    before = engine.probabilities(run, gray)
    reports = []
    result = predictor.explain_run(engine, run, gray, method, "pneumonia",
                                   smooth_samples=5, score_max_n=8, progress=reports.append)
    size = run.info["image_size"]
    assert result.saliency.shape == (size, size) and result.saliency.dtype == np.float32
    assert np.all(np.isfinite(result.saliency))
    assert result.saliency.min() >= 0 and result.saliency.max() <= 1
    assert result.saliency.std() > 0.02 and not result.is_blank
    assert reports and reports[-1] == 1.0
    picture = predictor.overlay_for_run(run, gray, result.saliency, alpha=0.5)
    assert picture.shape == (*gray.shape, 3) and picture.dtype == np.uint8
    raw = predictor.raw_map_for_run(run, gray, result.saliency, colormap="inferno")
    assert raw.shape == (*gray.shape, 3)
    # Explaining never changes the model (tf-keras-vis works on a linear clone).
    flat = build_full_model(run, base=engine.base(run))
    assert predict_gray(run, flat, gray) == pytest.approx(before, abs=1e-5)
    assert engine.probabilities(run, gray) == pytest.approx(before)


def test_fast_gradcam_is_tf_keras_vis_gradcam_on_the_flat_model(shipped_runs, engine,
                                                                samples):
    """Every shipped run (ImageNet and random-init ResNet50, 224 and 288 px, squashed and
    padded): the tail's gradient on the shared feature map gives tf-keras-vis's map."""
    from xrcompare.explain import compute_saliency
    from xrcompare.runs import model_input_for_run

    gray = gray_of(next(sample for sample in samples if sample.label == "normal"))
    for run in shipped_runs:
        probabilities = engine.probabilities(run, gray)
        index = run.labels.index(max(probabilities, key=probabilities.get))
        ours = engine.gradcam(run, gray, index)
        flat = build_full_model(run, base=engine.base(run))
        theirs = compute_saliency(flat, model_input_for_run(run, gray), "gradcam", index,
                                  run.last_conv_layer)
        assert theirs.std() > 0.02, run.run_id
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.999, run.run_id
        np.testing.assert_allclose(ours, theirs, atol=1e-4, err_msg=run.run_id)


def test_gradcam_for_every_shipped_run_lines_up_with_the_image(shipped_runs, engine, samples):
    """Padded runs' maps are cropped back to the image; all overlays have the image's size."""
    sample = next(sample for sample in samples if sample.label == "normal")
    gray = gray_of(sample)
    assert gray.shape[0] != gray.shape[1]  # a non-square image tests the pad geometry
    predictions = predictor.predict_runs(shipped_runs, gray, engine)
    for run, prediction in zip(shipped_runs, predictions, strict=True):
        result = predictor.explain_run(engine, run, gray, "gradcam", prediction.predicted)
        assert np.all(np.isfinite(result.saliency))
        picture = predictor.overlay_for_run(run, gray, result.saliency)
        assert picture.shape == (*gray.shape, 3)


def test_saliency_cache_reuses_maps_and_ignores_unrelated_options(shipped_runs, engine,
                                                                  samples):
    run = next(run for run in shipped_runs if run.run_id == MAIN_RUN)
    gray = gray_of(samples[0])
    cache = predictor.SaliencyCache(max_entries=2)
    first = predictor.explain_cached(cache, engine, run, gray, "gradcam", "covid",
                                     smooth_samples=5)
    again = predictor.explain_cached(cache, engine, run, gray, "gradcam", "covid",
                                     smooth_samples=40, score_max_n=3)  # not Grad-CAM's
    assert again is first and len(cache) == 1
    other = predictor.explain_cached(cache, engine, run, gray, "gradcam", "normal")
    assert other is not first and len(cache) == 2
    predictor.explain_cached(cache, engine, run, gray, "gradcam++", "covid")
    assert len(cache) == 2  # the least recently used map went
    key = cache.key(predictor.image_digest(gray), run, "gradcam", "covid", {})
    assert key not in cache


def test_saliency_cache_rejects_a_useless_size():
    with pytest.raises(ValueError, match="max_entries"):
        predictor.SaliencyCache(max_entries=0)


def test_explain_run_refuses_an_unknown_class_or_method(shipped_runs, engine, samples):
    run = next(run for run in shipped_runs if run.run_id == MAIN_RUN)
    with pytest.raises(ValueError, match="unknown class 'cat'"):
        predictor.explain_run(engine, run, gray_of(samples[0]), "gradcam", "cat")
    with pytest.raises(ValueError, match="unknown saliency method"):
        predictor.explain_run(engine, run, gray_of(samples[0]), "lime", "covid")


# --------------------------------------------------------------------------- samples in runs


def test_where_each_run_met_each_sample(shipped_runs, samples):
    by_id = {run.run_id: run for run in shipped_runs}
    covid = next(sample for sample in samples if sample.source.startswith("cxr3/covid/"))
    kaggle = next(sample for sample in samples if sample.source.startswith("kaggle_test/"))
    splits = predictor.sample_splits(covid, shipped_runs)
    # The cxr3 samples sit in the test split of the main run (samples/README.md says so)
    # and in no split of the blog-data run, which never saw cxr3.
    assert splits[MAIN_RUN] == "test"
    assert "resnet50-seed001-blog" in by_id and "resnet50-seed001-blog" not in splits
    assert set(predictor.sample_splits(kaggle, shipped_runs).values()) == {"heldout"}
    titles = {run.run_id: run.title for run in shipped_runs}
    sentence = predictor.splits_sentence(splits, titles, "cxr3", ["Other run"])
    assert f"In the **test split** of {titles[MAIN_RUN]}" in sentence
    assert sentence.endswith("Not in the data of Other run.")
    assert "fitted on it" in predictor.splits_sentence({"a": "train"}, {}, "cxr3")


def test_split_of_answers_for_the_shipped_head_of_a_cross_validation_run(shipped_runs):
    run = next(run for run in shipped_runs if run.info["split"].get("folds"))
    frame = run.predictions
    train = frame[frame["split"] == "train"].iloc[0]
    assert run.split_of(run.data_name, train["path"]) == "train"  # also a test row of fold k
    assert (frame["path"] == train["path"]).sum() == 2
    assert run.split_of("kaggle_test", "NORMAL/nothing.jpg") is None
    assert run.split_of("elsewhere", train["path"]) is None


def test_an_uploaded_sample_is_recognised_by_its_bytes(samples):
    data = samples[0].path.read_bytes()
    assert predictor.find_sample(data) == samples[0]
    assert predictor.find_sample(data + b"\0") is None


# --------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(("value", "text"), [
    (1.0, ">99.9%"), (0.99995, ">99.9%"), (0.9956, "99.6%"), (0.9994, "99.9%"), (0.5, "50.0%"),
    (0.0004, "<0.1%"), (0.0, "<0.1%"), (None, "–"), (float("nan"), "–"),
])
def test_probabilities_have_one_precision_and_are_never_rounded_to_certainty(value, text):
    assert predictor.format_probability(value) == text


def test_colour_bar_and_display_image():
    jet = predictor.colormap_colors("jet", 5)
    assert len(jet) == 5 and all(len(colour) == 7 and colour[0] == "#" for colour in jet)
    assert jet[0] != jet[-1] and int(jet[0][5:], 16) > int(jet[0][1:3], 16)  # blue → red
    gray = np.zeros((1500, 900), np.uint8)
    assert predictor.display_image(gray).shape == (512, 307)
    small = np.zeros((300, 200), np.uint8)
    assert predictor.display_image(small) is small


# --------------------------------------------------------------------------- summaries


def prediction(run_id, covid, normal, pneumonia, control=False):
    return predictor.RunPrediction(run_id, run_id.upper(), control,
                                   ("covid", "normal", "pneumonia"),
                                   {"covid": covid, "normal": normal, "pneumonia": pneumonia})


def test_agreement_when_all_trained_models_agree():
    results = [prediction("a", 0.9, 0.05, 0.05), prediction("b", 0.6, 0.3, 0.1),
               prediction("c", 0.3, 0.4, 0.3, control=True)]
    summary = predictor.agreement(results)
    assert summary.unanimous and summary.majority == "covid"
    assert summary.headline == "All 2 trained models predict **covid**."
    assert summary.controls == ["C → normal"]  # the control does not vote


def test_agreement_when_models_disagree_names_who_said_what():
    results = [prediction("a", 0.9, 0.05, 0.05), prediction("b", 0.1, 0.1, 0.8),
               prediction("c", 0.7, 0.2, 0.1),
               predictor.RunPrediction("d", "D", False, ("covid", "normal", "pneumonia"),
                                       problem="Backbone weights unavailable: none.")]
    summary = predictor.agreement(results, titles={"a": "First"})
    assert not summary.unanimous and summary.majority == "covid"
    assert summary.votes == {"covid": ["First", "C"], "pneumonia": ["B"]}
    assert summary.headline == ("The models disagree: 2 predict **covid**, "
                                "1 predicts **pneumonia**.")
    assert summary.unavailable == ["D"]


def test_agreement_tie_has_no_majority():
    summary = predictor.agreement([prediction("a", 0.9, 0.05, 0.05),
                                   prediction("b", 0.1, 0.8, 0.1)])
    assert summary.majority is None and not summary.unanimous


def test_probability_table_and_figure():
    results = [prediction("a", 0.9, 0.05, 0.05), prediction("c", 0.3, 0.4, 0.3, control=True)]
    table = predictor.probability_table(results)
    assert list(table.columns) == ["run", "run_id", "kind", "predicted", "confidence", "covid",
                                   "normal", "pneumonia", "note"]
    assert list(table["kind"]) == ["model", "control"]
    assert table.loc[0, "confidence"] == pytest.approx(0.9)
    figure = predictor.probability_figure(results, titles={"a": "Run A"})
    assert [trace.name for trace in figure.data] == ["covid", "normal", "pneumonia"]
    assert list(figure.data[0].y) == ["Run A", "C"]
    assert list(figure.data[0].marker.pattern.shape) == ["", "/"]  # the control is hatched
    assert list(figure.data[0].text) == ["90.0%", "30.0%"]
    assert list(figure.data[1].customdata) == ["5.0%", "40.0%"]


def test_method_options_and_colormaps():
    options = {"smooth_samples": 10, "smooth_noise": 0.1, "score_max_n": 4}
    assert predictor.method_options("gradcam", options) == {}
    assert predictor.method_options("smoothgrad", options) == {"smooth_samples": 10,
                                                               "smooth_noise": 0.1}
    assert predictor.method_options("scorecam", options) == {"score_max_n": 4}
    assert predictor.colormap_code("jet") == 2  # cv2.COLORMAP_JET
    with pytest.raises(ValueError, match="colour map"):
        predictor.colormap_code("rainbow")


def test_image_digest_depends_on_pixels_and_shape():
    image = np.zeros((4, 6), np.uint8)
    assert predictor.image_digest(image) == predictor.image_digest(image.copy())
    assert predictor.image_digest(image) != predictor.image_digest(image.reshape(6, 4))
    changed = image.copy()
    changed[0, 0] = 1
    assert predictor.image_digest(image) != predictor.image_digest(changed)


# --------------------------------------------------------------------------- the CLI


def run_cli(*arguments: str):
    return subprocess.run([sys.executable, "-m", "xrcompare", "explain", *arguments],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_cli_explain_writes_an_overlay_at_the_images_size(tmp_path, samples):
    sample = next(sample for sample in samples if sample.label == "normal")
    out = tmp_path / "maps" / "gradcam.png"
    result = run_cli(str(TRAINED / MAIN_RUN), str(sample.path), "--method", "gradcam++",
                     "--target", "pneumonia", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gradcam++ for class pneumonia" in result.stdout
    picture = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert picture.shape == (*gray_of(sample).shape, 3)
    chroma = picture.max(axis=2).astype(int) - picture.min(axis=2).astype(int)
    assert chroma.mean() > 30  # a heat map over the gray X-ray


def test_cli_explain_refuses_bad_input_in_one_line(tmp_path, samples):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image", encoding="utf-8")
    result = run_cli(str(TRAINED / MAIN_RUN), str(notes), "--out", str(tmp_path / "x.png"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: notes.txt is a text file, not an image we can read; please upload a PNG, "
        "JPEG or DICOM image.")
    result = run_cli(str(TRAINED / MAIN_RUN), str(samples[0].path), "--method", "lime",
                     "--out", str(tmp_path / "x.png"))
    assert result.returncode != 0 and "unknown method 'lime'" in result.stderr
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- inference (CLI)


def test_predict_and_explain_file_give_what_the_page_gives(shipped_runs, engine, samples,
                                                          tmp_path):
    from xrcompare.inference import explain_file, predict_file

    run = next(run for run in shipped_runs if run.run_id == MAIN_RUN)
    sample = next(sample for sample in samples if sample.label == "pneumonia")
    gray = gray_of(sample)
    page = predictor.predict_run(engine, run, gray)
    result = predict_file(run, sample.path, engine=engine)
    assert result["probabilities"] == pytest.approx(page.probabilities)
    assert result["predicted"] == page.predicted and isinstance(result["warnings"], list)
    out = tmp_path / "map.png"
    answer = explain_file(run, sample.path, method="gradcam", target=None, out=out, alpha=0.5,
                          engine=engine)
    assert answer == {"method": "gradcam", "target": page.predicted,
                      "predicted": page.predicted}
    expected = predictor.overlay_for_run(
        run, gray, predictor.explain_run(engine, run, gray, "gradcam",
                                         page.predicted).saliency, alpha=0.5)
    written = cv2.cvtColor(cv2.imread(str(out), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 2


def test_explain_file_checks_out_before_building_a_model(tmp_path, samples, monkeypatch):
    from xrcompare.backbones import WeightsUnavailable
    from xrcompare.inference import explain_file

    only_resnet50_weights(tmp_path, monkeypatch)
    # A run whose backbone has no weights here: reaching the model would raise
    # WeightsUnavailable, so a ValueError about --out proves --out was checked first.
    vgg = load_run(copy_run(tmp_path, "vgg16-cxr3", "vgg16-copy"))
    image = samples[0].path
    with pytest.raises(ValueError, match=r"\.png"):
        explain_file(vgg, image, method="gradcam", target=None, out=tmp_path / "map.jpg")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot create the folder"):
        explain_file(vgg, image, method="gradcam", target=None, out=blocker / "sub" / "m.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        explain_file(vgg, image, method="gradcam", target=None, out=tmp_path / "folder.png")
    with pytest.raises(WeightsUnavailable, match="VGG16"):
        explain_file(vgg, image, method="gradcam", target=None, out=tmp_path / "maps" / "m.png")
    assert not (tmp_path / "maps" / "m.png").exists()
