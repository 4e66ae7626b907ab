"""The Predict & explain page through Streamlit's AppTest, started from the router
(streamlit_app.py) on the shipped runs: the sample picker, uploads (JPEG, DICOM, bad files),
every saliency method, display changes that never touch a model, where a sample sat in each
run's data, runs that cannot be rebuilt, the background warm-up. Real models, real images;
the browser upload is covered by tests/e2e/test_predict_e2e.py."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import REPO, WEIGHTS
from streamlit.testing.v1 import AppTest
from test_uploads import make_dicom

from app_pages import _engine
from xrcompare import neighbours, predictor
from xrcompare.paths import RUNS_DIR_VARIABLE
from xrcompare.runs import list_runs, load_run
from xrcompare.sanity import saliency_sanity
from xrcompare.uploads import load_upload

APP = REPO / "streamlit_app.py"
PAGE = "app_pages/predict.py"
TRAINED = REPO / "trained"
MAIN_RUN = "resnet50-cxr3"
TIMEOUT_S = 300


def sample(label: str, pool: str = "cxr3") -> predictor.Sample:
    return next(item for item in predictor.list_samples()
                if item.label == label and item.source.startswith(pool))


def open_page(monkeypatch, runs_dir=TRAINED, selected: list[str] | None = None) -> AppTest:
    """The app on ``runs_dir`` with ``selected`` runs picked (all when None), on this page."""
    monkeypatch.setenv(RUNS_DIR_VARIABLE, str(runs_dir))
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    app.run()
    if selected is not None:  # tick exactly these in the sidebar's run picker
        for run in list_runs(runs_dir).runs:
            app.session_state[f"run_pick::{run.run_id}"] = run.run_id in selected
        app.session_state["selected_run_ids"] = selected
    app.switch_page(PAGE).run()
    assert_clean(app)
    return app


def assert_clean(app: AppTest) -> None:
    assert not app.exception, [item.value for item in app.exception]
    assert not app.error, [item.value for item in app.error]


def images(app: AppTest) -> list:
    """The page's pictures but the nearest-training-image thumbnails (counted apart)."""
    return [item for item in app.get("image") if "similarity" not in str(item.proto)]


def neighbour_thumbnails(app: AppTest) -> list:
    return [item for item in app.get("image") if "similarity" in str(item.proto)]


def map_captions(app: AppTest) -> list[str]:
    return [item.value for item in app.caption if "explains" in item.value]


def mapped_and_checked(runs) -> tuple[list, list]:
    """The runs that get a saliency map (CNN runs: not the statistics baseline) and the
    models whose random-init control is among ``runs`` (the sanity check adds two maps)."""
    from xrcompare.sanity import random_control_of

    return ([run for run in runs if run.is_cnn],
            [run for run in runs if random_control_of(run, runs) is not None])


def upload(app: AppTest, name: str, data: bytes) -> AppTest:
    app.file_uploader(key="predict_upload").upload(name, data).run()
    return app


def test_a_sample_gets_every_shipped_runs_prediction_and_gradcam(monkeypatch):
    runs = list_runs(TRAINED).runs
    app = open_page(monkeypatch)
    assert app.title[0].value.startswith("Predict & explain")
    controls = [run for run in runs if run.is_control]
    trained = len(runs) - len(controls)
    if app.success:  # the covid sample: normally every trained run agrees
        assert app.success[0].value == f"All {trained} trained models predict **covid**."
    else:  # a retrained run may differ; the summary must then say who said what
        assert any(item.value.startswith("The models disagree: ") for item in app.warning)
    if controls:
        assert any("Controls (not counted)" in item.value for item in app.caption)
    table = app.dataframe[0].value
    assert len(table) == len(runs)
    assert set(table["kind"]) <= {"model", "control"}
    assert len(app.get("plotly_chart")) == 1
    # The X-ray, then one Grad-CAM per CNN run (the default method), each for its own class,
    # then the sanity check's two maps per model shown with its random-init control.
    mapped, checked = mapped_and_checked(runs)
    assert len(images(app)) == 1 + len(mapped) + 2 * len(checked)
    assert len(neighbour_thumbnails(app)) == neighbours.K  # the first run with an index
    assert len(map_captions(app)) == len(mapped)
    headings = [item.value for item in app.markdown if item.value.startswith("####")]
    assert headings == ["#### Grad-CAM"] + (
        ["#### Saliency sanity check: trained model vs untrained base"] if checked else [])
    note = " ".join(item.value for item in app.info)
    assert "hint, not proof" in note and "Saporta" in note
    captions = " ".join(item.value for item in app.caption)
    assert "CC BY 3.0" in captions
    # Where each run met the sample: the main run kept it for its test split.
    assert "This sample is `cxr3/covid/cohen_3b46de94.jpg` in the shared data" in captions
    assert "In the **test split** of" in captions
    assert set(table["image in"]) <= {"test split", "–"} and "test split" in set(table["image in"])
    # One precision everywhere, never "100%" (even a float32 softmax that rounds to 1).
    assert all("(p = " in text and "100%" not in text for text in map_captions(app))
    bars = [item for item in app.get("html") if "linear-gradient" in item.proto.body]
    assert len(bars) == 1  # the colour bar


def test_an_uploaded_jpeg_replaces_the_sample(monkeypatch):
    app = open_page(monkeypatch, selected=[MAIN_RUN])
    upload(app, "my x-ray.jpg", sample("normal").path.read_bytes())
    assert_clean(app)
    assert app.success[0].value == "The only trained model predicts **normal**."
    assert any("your upload **my x-ray.jpg**" in item.value for item in app.caption)
    assert app.selectbox(key="predict_sample").disabled  # the upload wins


def test_an_uploaded_dicom_is_windowed_and_predicted(monkeypatch):
    gray = cv2.imread(str(sample("pneumonia").path), cv2.IMREAD_GRAYSCALE)
    pixels = (gray.astype(np.uint16) * 16)  # 12-bit values, as a detector would store them
    data = make_dicom(pixels, window=(2040.0, 4080.0))
    app = open_page(monkeypatch, selected=[MAIN_RUN])
    upload(app, "IM0001", data)  # no extension: found by the DICOM magic
    assert_clean(app)
    assert app.success[0].value == "The only trained model predicts **pneumonia**."
    assert any("DICOM" in item.value and "window: file" in item.value for item in app.caption)


BAD_FILES = [
    ("empty.png", b"", "is empty"),
    ("report.pdf", b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n", "is a PDF document"),
    ("notes.txt", b"chest x-ray, left lower lobe", "is a text file"),
    ("cut.png", None, "appears to be truncated"),
    ("tiny.png", cv2.imencode(".png", np.full((8, 8), 90, np.uint8))[1].tobytes(),
     "only 8 × 8 pixels"),
    ("fake.dcm", b"DICOM? no." * 20, "could not be read as a DICOM file"),
]


@pytest.mark.parametrize(("name", "data", "message"), BAD_FILES,
                         ids=[item[0] for item in BAD_FILES])
def test_a_bad_upload_gets_one_readable_error_and_no_prediction(monkeypatch, name, data,
                                                                 message):
    if data is None:  # the first half of a real PNG
        real = cv2.imencode(".png", cv2.imread(str(sample("normal").path)))[1].tobytes()
        data = real[:len(real) // 2]
    app = open_page(monkeypatch, selected=[MAIN_RUN])
    upload(app, name, data)
    assert not app.exception
    assert len(app.error) == 1 and message in app.error[0].value
    assert "Traceback" not in app.error[0].value
    assert not app.dataframe and not images(app)  # nothing is predicted


def test_a_colour_photo_warns_but_is_still_predicted(monkeypatch):
    photo = np.zeros((200, 300, 3), np.uint8)
    photo[:, :100] = (0, 0, 255)
    photo[:, 100:200] = (0, 255, 0)
    photo[:, 200:] = (255, 0, 0)
    app = open_page(monkeypatch, selected=[MAIN_RUN])
    upload(app, "holiday.png", cv2.imencode(".png", photo)[1].tobytes())
    assert_clean(app)
    assert any("colour image" in item.value for item in app.warning)
    assert len(app.dataframe[0].value) == 1


def test_every_method_with_raw_maps_and_a_chosen_class(monkeypatch):
    app = open_page(monkeypatch, selected=[MAIN_RUN])
    app.pills(key="predict_methods").set_value(
        ["saliency", "smoothgrad", "gradcam", "gradcam++", "scorecam"])
    app.selectbox(key="predict_target").set_value("pneumonia")
    app.slider(key="predict_smooth_samples").set_value(5)
    app.slider(key="predict_score_max_n").set_value(4)
    app.toggle(key="predict_raw").set_value(True)
    app.run()
    assert_clean(app)
    headers = [item.value for item in app.markdown if item.value.startswith("####")]
    # the main run's random-init control is shipped but not selected: the sanity check's
    # heading comes with a line saying which run to add
    assert headers == ["#### Vanilla Saliency", "#### SmoothGrad", "#### Grad-CAM",
                       "#### Grad-CAM++", "#### Faster-ScoreCAM",
                       "#### Saliency sanity check: trained model vs untrained base"]
    captions = map_captions(app)
    assert len(captions) == 5 and all("explains *pneumonia*" in text for text in captions)
    assert len(images(app)) == 1 + 2 * 5  # the X-ray, then overlay and raw map per method


def test_runs_that_cannot_be_rebuilt_are_listed_with_their_reason(monkeypatch, tmp_path):
    weights = tmp_path / "weights"  # ResNet50's file only: VGG16 is unavailable here
    weights.mkdir()
    name = "resnet50_imagenet_notop.weights.h5"
    (weights / name).symlink_to(WEIGHTS / name)
    monkeypatch.setenv("XRCOMPARE_WEIGHTS_DIR", str(weights))
    runs = tmp_path / "runs"
    shutil.copytree(TRAINED / MAIN_RUN, runs / MAIN_RUN,
                    ignore=shutil.ignore_patterns("head_fold*"))
    shutil.copytree(TRAINED / "vgg16-cxr3", runs / "vgg16-cxr3")
    monkeypatch.setenv(RUNS_DIR_VARIABLE, str(runs))
    # A fresh server process: earlier tests' engine built VGG16 with the shared weights.
    for cached in (_engine.engine, _engine.prediction_cache, _engine.saliency_cache):
        cached.clear()
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    app.run()
    app.switch_page(PAGE).run()
    assert not app.exception
    errors = [item.value for item in app.error]
    assert len(errors) == 1
    assert errors[0].startswith("**VGG16 · cxr3** gave no prediction. Backbone weights "
                                "unavailable: no ImageNet weights for VGG16")
    assert app.success[0].value == "The only trained model predicts **covid**."
    table = app.dataframe[0].value
    assert list(table["predicted"]) == ["covid", "–"]  # listed, not dropped
    assert len(map_captions(app)) == 1  # only the usable run is explained


def test_display_changes_redraw_from_cached_maps_without_touching_a_model(monkeypatch):
    app = open_page(monkeypatch)
    engine, maps = _engine.engine(), _engine.saliency_cache()
    passes, computed = engine.forward_passes, len(maps)
    app.slider(key="predict_alpha").set_value(0.8).run()
    app.toggle(key="predict_raw").set_value(True).run()
    app.selectbox(key="predict_colormap").set_value("viridis").run()
    assert_clean(app)
    assert engine.forward_passes == passes and len(maps) == computed
    mapped, checked = mapped_and_checked(list_runs(TRAINED).runs)
    # overlays, then a row of raw maps; the sanity check's pairs have no raw maps
    assert len(images(app)) == 1 + 2 * len(mapped) + 2 * len(checked)
    assert any("viridis" in item.proto.body for item in app.get("html"))
    # Another class for every map: new maps, still no new forward pass (the feature maps
    # are kept; Grad-CAM only differentiates the tails).
    app.selectbox(key="predict_target").set_value("normal").run()
    assert_clean(app)
    having = [run for run in mapped if "normal" in run.labels]  # not covid vs non-covid
    assert engine.forward_passes == passes and len(maps) == computed + len(having)
    assert len(map_captions(app)) == len(having)
    assert all("explains *normal*" in text for text in map_captions(app))
    without = [item.value for item in app.caption if "does not predict normal" in item.value]
    assert len(without) == len(mapped) - len(having)


def test_a_sample_in_a_runs_training_split_gets_a_warning(monkeypatch, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(TRAINED / MAIN_RUN, runs / MAIN_RUN)
    copy = runs / "trained-on-it"
    shutil.copytree(TRAINED / MAIN_RUN, copy)
    covid = sample("covid")
    relative = covid.source.split("/", 1)[1]
    frame = load_run(copy).predictions
    frame.loc[frame["path"] == relative, "split"] = "train"
    frame.to_csv(copy / "predictions.csv", index=False)
    info = json.loads((copy / "run.json").read_text(encoding="utf-8"))
    info.update(display_name="Trained on the sample")
    (copy / "run.json").write_text(json.dumps(info), encoding="utf-8")
    app = open_page(monkeypatch, runs_dir=runs)
    warning = next(item.value for item in app.warning if "This sample is" in item.value)
    assert "In the **training split** of Trained on the sample: those models were fitted on " \
           "it" in warning
    assert "In the **test split** of ResNet50 · cxr3 (main)" in warning
    # The same file uploaded is recognised as the sample by its bytes.
    upload(app, "my-upload.jpg", covid.path.read_bytes())
    assert_clean(app)
    assert any("This sample is" in item.value for item in app.warning)


def test_the_router_warms_every_runs_model_up_in_the_background(monkeypatch, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(TRAINED / MAIN_RUN, runs / "warm-me")
    monkeypatch.setenv(RUNS_DIR_VARIABLE, str(runs))
    monkeypatch.setenv(_engine.WARM_UP_VARIABLE, "1")
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    app.run()  # the Overview page: nothing waits for the warm-up
    assert_clean(app)
    from xrcompare.runs import runs_fingerprint

    thread = _engine._warm_up_thread(runs_fingerprint(runs))
    thread.join(timeout=TIMEOUT_S)
    assert not thread.is_alive()
    assert _engine.engine().is_warm(load_run(runs / "warm-me"))
    app.run()  # a rerun starts no second thread for the same runs
    assert _engine._warm_up_thread(runs_fingerprint(runs)) is thread


def test_gradcam_of_a_model_is_checked_against_its_random_init_control(monkeypatch):
    control = "resnet50-cxr3-random-control"
    app = open_page(monkeypatch, selected=[MAIN_RUN, control])
    metric = next(item for item in app.metric if item.label == "Spearman ρ of the two maps")
    rho = float(metric.value)
    assert -1.0 <= rho <= 1.0
    sentence = next(item.value for item in app.markdown if "Adebayo et al. 2018" in item.value)
    assert f"ρ = {rho:.2f}" in sentence
    assert any("Grad-CAM of" in item.value for item in app.caption)
    # the same image and class through xrcompare directly: the page shows that figure
    runs = {run.run_id: run for run in list_runs(TRAINED).runs}
    shown = predictor.list_samples()[0]  # the page's default sample
    gray = load_upload(shown.path.read_bytes(), shown.name).gray
    check = saliency_sanity(runs[MAIN_RUN], runs[control], gray, "gradcam")
    assert f"{check.rho:.2f}" == metric.value


def test_without_its_control_selected_the_page_says_which_run_to_add(monkeypatch):
    app = open_page(monkeypatch, selected=[MAIN_RUN])
    assert not [item for item in app.metric if item.label == "Spearman ρ of the two maps"]
    assert any("resnet50-cxr3-random-control" in item.value or "random-init control" in
               item.value for item in app.caption if "Select" in item.value)


def test_a_photo_is_flagged_unlike_the_training_images_with_its_nearest_images(monkeypatch):
    indexed = [run.run_id for run in list_runs(TRAINED).runs
               if (run.path / neighbours.INDEX_FILE).is_file()]
    assert MAIN_RUN in indexed and len(indexed) >= 3
    app = open_page(monkeypatch, selected=[MAIN_RUN, "resnet50-cxr3-padded"])
    app.selectbox(key="predict_sample").select(
        next(item for item in predictor.list_samples() if item.label == "photo")).run()
    assert_clean(app)
    flagged = [item.value for item in app.warning if "Unlike the training images" in item.value]
    assert flagged and "of 1 of the 1 runs that can tell" in flagged[0]
    captions = " ".join(item.value for item in app.caption)
    assert "resnet50-cxr3-padded has no neighbour index" in captions  # none shipped
    table = next(frame.value for frame in app.dataframe
                 if "unlike the training images" in frame.value.columns)
    assert list(table["unlike the training images"]) == ["yes"]
    assert table["distance"][0] > table["threshold"][0]
    assert app.selectbox(key="predict_neighbours_run").value == MAIN_RUN
    assert len(neighbour_thumbnails(app)) == neighbours.K
