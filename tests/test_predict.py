"""xrcompare.predictor on the shipped runs in trained/ and the shipped samples: real ResNet50
weights, real images, every saliency method; plus the pure summaries and caches."""

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
from conftest import DATA, REPO

from xrcompare import CLASSES, predictor
from xrcompare.explain import METHODS
from xrcompare.imaging import read_bytes
from xrcompare.runs import list_runs, load_run
from xrcompare.uploads import load_upload

TRAINED = REPO / "trained"
MAIN_RUN = "resnet50-cxr3"
ALLOWED_LICENCES = {"CC BY 4.0", "CC BY 3.0"}


@pytest.fixture(scope="module")
def shipped_runs():
    listing = list_runs(TRAINED)
    assert listing.problems == []
    ids = [run.run_id for run in listing.runs]
    assert MAIN_RUN in ids, f"the main shipped run is missing from {TRAINED}: {ids}"
    return listing.runs


@pytest.fixture(scope="module")
def models(shipped_runs):
    """Every shipped run's full model, bases shared (as the page does)."""
    bases = predictor.BaseCache()
    built = {run.run_id: predictor.load_model(run, bases) for run in shipped_runs}
    built["_bases"] = bases
    return built


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


def test_predictions_match_what_each_run_wrote_when_it_was_evaluated(shipped_runs, models,
                                                                      samples):
    """The rebuilt flat models (shared bases, same preprocessing) reproduce predictions.csv."""
    compared = 0
    for sample in samples:
        gray = gray_of(sample)
        relative = sample.source.split("/", 1)[1]
        results = predictor.predict_runs(shipped_runs, gray, lambda run: models[run.run_id])
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


def test_runs_with_the_same_frozen_base_share_it(shipped_runs, models):
    keys = {predictor.base_key(run) for run in shipped_runs}
    assert len(models["_bases"]) == len(keys)
    by_key: dict[tuple, list] = {}
    for run in shipped_runs:
        by_key.setdefault(predictor.base_key(run), []).append(models[run.run_id])
    # The base's first convolution (any backbone): the same object when the base is shared.
    first_layers = {key: {id(next(layer for layer in model.layers if layer.weights))
                          for model in group}
                    for key, group in by_key.items()}
    assert all(len(ids) == 1 for ids in first_layers.values())  # shared within a key
    assert len(set().union(*first_layers.values())) == len(keys)  # distinct across keys


def copy_run(tmp_path, run_id: str, new_id: str, **changes):
    folder = tmp_path / new_id
    shutil.copytree(TRAINED / run_id, folder)
    info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    info.update(changes)
    (folder / "run.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def test_runs_that_cannot_be_rebuilt_are_listed_with_the_reason(tmp_path, samples,
                                                                  resnet50_only_weights):
    vgg = load_run(copy_run(tmp_path, MAIN_RUN, "vgg16-copy", backbone="vgg16",
                            backbone_display="VGG16", display_name="VGG16 copy"))
    broken_folder = copy_run(tmp_path, MAIN_RUN, "broken-head", display_name="Broken head")
    (broken_folder / "head.weights.h5").write_bytes(b"not an HDF5 file")
    broken = load_run(broken_folder)
    assert "VGG16" in predictor.weights_problem(vgg)
    results = predictor.predict_runs([vgg, broken], gray_of(samples[0]))
    assert [result.ok for result in results] == [False, False]
    assert results[0].problem.startswith("Backbone weights unavailable: no ImageNet weights "
                                         "for VGG16")
    assert results[1].problem.startswith("The model could not be rebuilt")
    table = predictor.probability_table(results)
    assert list(table["predicted"]) == ["–", "–"] and table["note"].str.len().min() > 20
    summary = predictor.agreement(results)
    assert summary.unavailable == ["VGG16 copy", "Broken head"]
    assert summary.headline == "No trained model gave a prediction."


# --------------------------------------------------------------------------- saliency


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_on_the_main_shipped_run(shipped_runs, models, samples, method):
    run = next(run for run in shipped_runs if run.run_id == MAIN_RUN)
    model = models[MAIN_RUN]
    sample = next(sample for sample in samples if sample.label == "pneumonia")
    gray = gray_of(sample)
    before = predictor.predict_one(run, model, gray).probabilities
    reports = []
    result = predictor.explain_run(run, model, gray, method, "pneumonia",
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
    # Explaining never changes the model (it works on a linear clone).
    assert predictor.predict_one(run, model, gray).probabilities == pytest.approx(before)


def test_gradcam_for_every_shipped_run_lines_up_with_the_image(shipped_runs, models, samples):
    """Padded runs' maps are cropped back to the image; all overlays have the image's size."""
    sample = next(sample for sample in samples if sample.label == "normal")
    gray = gray_of(sample)
    assert gray.shape[0] != gray.shape[1]  # a non-square image tests the pad geometry
    predictions = predictor.predict_runs(shipped_runs, gray, lambda run: models[run.run_id])
    for run, prediction in zip(shipped_runs, predictions, strict=True):
        result = predictor.explain_run(run, models[run.run_id], gray, "gradcam",
                                       prediction.predicted)
        assert np.all(np.isfinite(result.saliency))
        picture = predictor.overlay_for_run(run, gray, result.saliency)
        assert picture.shape == (*gray.shape, 3)


def test_saliency_cache_reuses_maps_and_ignores_unrelated_options(shipped_runs, models,
                                                                  samples):
    run = next(run for run in shipped_runs if run.run_id == MAIN_RUN)
    gray = gray_of(samples[0])
    cache = predictor.SaliencyCache(max_entries=2)
    first = predictor.explain_cached(cache, run, models[MAIN_RUN], gray, "gradcam", "covid",
                                     smooth_samples=5)
    again = predictor.explain_cached(cache, run, models[MAIN_RUN], gray, "gradcam", "covid",
                                     smooth_samples=40, score_max_n=3)  # not Grad-CAM's
    assert again is first and len(cache) == 1
    other = predictor.explain_cached(cache, run, models[MAIN_RUN], gray, "gradcam", "normal")
    assert other is not first and len(cache) == 2
    predictor.explain_cached(cache, run, models[MAIN_RUN], gray, "gradcam++", "covid")
    assert len(cache) == 2  # the least recently used map went
    key = cache.key(predictor.image_digest(gray), run, "gradcam", "covid", {})
    assert key not in cache


def test_saliency_cache_rejects_a_useless_size():
    with pytest.raises(ValueError, match="max_entries"):
        predictor.SaliencyCache(max_entries=0)


def test_explain_run_refuses_an_unknown_class(shipped_runs, models, samples):
    run = next(run for run in shipped_runs if run.run_id == MAIN_RUN)
    with pytest.raises(ValueError, match="unknown class 'cat'"):
        predictor.explain_run(run, models[MAIN_RUN], gray_of(samples[0]), "gradcam", "cat")


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
    assert list(table["kind"]) == ["ImageNet", "random-init control"]
    assert table.loc[0, "confidence"] == pytest.approx(0.9)
    figure = predictor.probability_figure(results, titles={"a": "Run A"})
    assert [trace.name for trace in figure.data] == ["covid", "normal", "pneumonia"]
    assert list(figure.data[0].y) == ["Run A", "C"]
    assert list(figure.data[0].marker.pattern.shape) == ["", "/"]  # the control is hatched


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


def test_predict_and_explain_file_give_what_the_page_gives(shipped_runs, models, samples,
                                                          tmp_path):
    from xrcompare.inference import explain_file, predict_file

    run = next(run for run in shipped_runs if run.run_id == MAIN_RUN)
    sample = next(sample for sample in samples if sample.label == "pneumonia")
    gray = gray_of(sample)
    page = predictor.predict_one(run, models[MAIN_RUN], gray)
    result = predict_file(run, sample.path, model=models[MAIN_RUN])
    assert result["probabilities"] == pytest.approx(page.probabilities)
    assert result["predicted"] == page.predicted and isinstance(result["warnings"], list)
    out = tmp_path / "map.png"
    answer = explain_file(run, sample.path, method="gradcam", target=None, out=out, alpha=0.5)
    assert answer == {"method": "gradcam", "target": page.predicted,
                      "predicted": page.predicted}
    expected = predictor.overlay_for_run(
        run, gray, predictor.explain_run(run, models[MAIN_RUN], gray, "gradcam",
                                         page.predicted).saliency, alpha=0.5)
    written = cv2.cvtColor(cv2.imread(str(out), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 2


def test_explain_file_checks_out_before_building_a_model(tmp_path, samples,
                                                        resnet50_only_weights):
    from xrcompare.backbones import WeightsUnavailable
    from xrcompare.inference import explain_file

    # A run whose backbone has no weights here: reaching the model would raise
    # WeightsUnavailable, so a ValueError about --out proves --out was checked first.
    vgg = load_run(copy_run(tmp_path, MAIN_RUN, "vgg16-copy", backbone="vgg16",
                            backbone_display="VGG16"))
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
