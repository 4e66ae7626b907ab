"""The sidebar's training panel when served to a class: students queue under a name, a
teacher key guards cancelling others' requests (and reordering), training is off on an open
server without a key, and the key never reaches the page.
The panel runs alone through AppTest (the router's sidebar is drawn in its first run only)."""

from __future__ import annotations

import shutil

import pytest
from conftest import DATA, FIXTURES, REPO
from streamlit.testing.v1 import AppTest

from xrcompare.backbones import REGISTRY
from xrcompare.runs import list_runs

KEY = "correct horse battery staple"


def sidebar_script(repo: str) -> None:
    import sys

    sys.path.insert(0, repo)
    from app_pages._training import render_training_sidebar

    render_training_sidebar()


@pytest.fixture
def panel(tmp_path, monkeypatch):
    """A factory: the training panel on a data root whose only dataset is too small to split
    (so an accepted Start stops at validation, before any process starts)."""
    import app_pages._training as training

    shutil.copytree(FIXTURES / "tiny_cxr", tmp_path / "data" / "small")
    monkeypatch.setenv("XRCOMPARE_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("XRCOMPARE_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("XRCOMPARE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("XRCOMPARE_TEACHER_KEY", raising=False)
    monkeypatch.setenv("XRCOMPARE_DISPATCHER", "off")  # no Ray here: files only

    def start(address: str = "127.0.0.1", key: str | None = None) -> AppTest:
        monkeypatch.setattr(training, "_server_address", lambda: address)
        if key:
            monkeypatch.setenv("XRCOMPARE_TEACHER_KEY", key)
        app = AppTest.from_function(sidebar_script, args=(str(REPO),), default_timeout=120)
        app.run()
        assert not app.exception, [item.value for item in app.exception]
        return app

    return start


def everything_shown(app: AppTest) -> str:
    """The page as the browser gets it: every element's protobuf, as text."""
    texts = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            texts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(app._tree)
    return "\n".join(texts)


def start_button(app: AppTest):
    return next(button for button in app.sidebar.button if button.label == "Start training")


def test_on_loopback_without_a_key_training_works_as_before(panel):
    app = panel()
    assert "Start training" in [button.label for button in app.sidebar.button]
    assert not [field for field in app.sidebar.text_input if field.label == "Teacher key"]
    start_button(app).click().run()
    errors = [item.value for item in app.sidebar.error]
    assert len(errors) == 1 and errors[0].startswith("Cannot start:")  # validation, not a key


def test_served_to_the_network_without_a_key_training_is_off(panel):
    app = panel(address="0.0.0.0")
    assert "Start training" not in [button.label for button in app.sidebar.button]
    notes = [item.value for item in app.sidebar.info]
    assert any("Training from the browser is off" in note and "TEACHER" in note
               for note in notes), notes


@pytest.mark.parametrize("address", ["0.0.0.0", "127.0.0.1"])
def test_with_a_teacher_key_students_queue_without_it_and_it_is_never_shown(panel, tmp_path,
                                                                            address):
    app = panel(address=address, key=KEY)
    # a student starts without the key: the settings are checked, not the key
    next(field for field in app.sidebar.text_input if field.label == "Your name").input("Ann")
    start_button(app).click().run()
    errors = [item.value for item in app.sidebar.error]
    assert len(errors) == 1 and errors[0].startswith("Cannot start:"), errors  # validation
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())
    # the teacher's controls need the key, typed once per session
    field = next(field for field in app.sidebar.text_input if field.label == "Teacher key")
    assert field.proto.type == field.proto.PASSWORD
    assert KEY not in everything_shown(app)
    field.input("wrong key")
    unlock = next(b for b in app.sidebar.button if b.label == "Unlock teacher controls")
    unlock.click().run()
    assert "Wrong teacher key." in [item.value for item in app.sidebar.error]
    assert "training_teacher_unlocked" not in app.session_state
    field = next(field for field in app.sidebar.text_input if field.label == "Teacher key")
    field.input(KEY)
    next(b for b in app.sidebar.button if b.label == "Unlock teacher controls").click().run()
    assert app.session_state["training_teacher_unlocked"] is True
    app.run()  # once unlocked, this session is not asked again and the key is not kept
    assert not [field for field in app.sidebar.text_input if field.label == "Teacher key"]
    assert KEY not in everything_shown(app)


@pytest.fixture
def running_job(tmp_path):
    """A request Ray runs for another session (Bob's), as its files say."""
    import json
    import time

    from xrcompare import jobs

    folder = tmp_path / "jobs" / "20000101-000000-abcdef"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({
        "job_id": folder.name, "created": time.time() - 5, "owner": "Bob",
        "owner_key": jobs.owner_key("bob's token"),
        "plan": {"backbones": ["resnet50"], "data_name": "small", "images": 15, "epochs": 2,
                 "runs_dir": str(tmp_path / "runs")}}))
    (folder / "state.json").write_text(json.dumps({
        "state": "running", "submission": "xrcompare-x-1", "submitted": time.time() - 3,
        "started": time.time() - 2, "dispatched": 1, "attempts": 1}))
    return folder


def test_with_a_teacher_key_cancelling_anothers_request_needs_it(panel, running_job):
    app = panel(address="0.0.0.0", key=KEY)
    assert "Bob" in " ".join(item.value for item in app.sidebar.markdown)
    # a student sees Bob's request but has no button to cancel it
    assert "Cancel training" not in [button.label for button in app.sidebar.button]
    field = next(field for field in app.sidebar.text_input if field.key.endswith("-cancel"))
    field.input("nope")
    next(b for b in app.sidebar.button if b.label == "Unlock teacher controls").click().run()
    assert "Wrong teacher key." in [e.value for e in app.sidebar.error]
    assert "Cancel training" not in [button.label for button in app.sidebar.button]
    field = next(field for field in app.sidebar.text_input if field.key.endswith("-cancel"))
    field.input(KEY)
    next(b for b in app.sidebar.button if b.label == "Unlock teacher controls").click().run()
    next(b for b in app.sidebar.button if b.label == "Cancel training").click().run()
    assert (running_job / "cancel").exists()
    assert KEY not in everything_shown(app)


def test_served_without_a_key_nobody_can_cancel(panel, running_job):
    app = panel(address="0.0.0.0")
    assert "Cancel training" not in [button.label for button in app.sidebar.button]
    assert any("Only the teacher can cancel" in item.value for item in app.sidebar.caption)


def test_the_form_widgets_are_built_from_the_training_config(panel):
    """Labels, bounds, defaults and offered values come from TrainConfig's declarations."""
    from xrcompare.config import FORM_FIELDS, form_param

    app = panel()
    boxes = {box.label: box for box in app.sidebar.number_input}
    sliders = {slider.label: slider for slider in app.sidebar.select_slider}
    selects = {select.label: select for select in app.sidebar.selectbox}
    for name in FORM_FIELDS:
        param = form_param(name)
        if name == "weights":  # the random-init control: a tick box, off by default
            box = next(box for box in app.sidebar.checkbox if box.label == param["label"])
            assert box.value is False and param["default"] == "imagenet"
        elif name == "positive":  # the training folder's classes, covid by default
            select = selects[param["label"]]
            assert select.value == "covid" and param["default"] is None
            assert list(select.options) == ["covid", "normal", "pneumonia"]
        elif name == "name":  # the run name: a text field, empty (automatic) by default
            field = next(field for field in app.sidebar.text_input
                         if field.label == param["label"])
            assert field.value == "" and param["default"] is None
        elif param["options"] is None:
            box = boxes[param["label"]]
            assert (box.min, box.max, box.value) == (param["low"], param["high"],
                                                     param["default"])
        elif name == "image_size":
            assert selects[param["label"]].value is param["default"] is None
            assert len(selects[param["label"]].options) == len(param["options"])
        elif name == "fine_tune":  # a select of words: the frozen base by default
            select = selects[param["label"]]
            assert select.value == param["default"] == "none"
            assert list(select.options) == list(param["options"]) == ["none", "last-block"]
        else:
            slider = sliders[param["label"]]
            assert slider.value == param["default"]
            assert len(slider.options) == len(param["options"])


@pytest.fixture
def shipped_form(tmp_path, monkeypatch):
    """The training panel on the real data root and the shipped runs (read only)."""
    monkeypatch.setenv("XRCOMPARE_DATA_ROOT", str(DATA))
    monkeypatch.setenv("XRCOMPARE_RUNS_DIR", str(REPO / "trained"))
    monkeypatch.setenv("XRCOMPARE_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.delenv("XRCOMPARE_TEACHER_KEY", raising=False)
    app = AppTest.from_function(sidebar_script, args=(str(REPO),), default_timeout=120)
    app.run()
    assert not app.exception, [item.value for item in app.exception]
    return app


def selectbox(app: AppTest, label: str):
    return next(box for box in app.sidebar.selectbox if box.label == label)


def warnings(app: AppTest) -> list[str]:
    return [item.value for item in app.sidebar.warning]


def test_the_form_holds_out_kaggle_test_and_warns_when_settings_repeat_a_run(shipped_form):
    """The defaults: the 2020 blog's images, held out against the Kaggle test split; left as
    they are, they repeat the shipped ResNet50 blog-data run, and the form says so."""
    app = shipped_form
    assert selectbox(app, "Dataset").value == "seed001_0402"
    assert selectbox(app, "Held-out folder").value == "kaggle_test"
    captions = " ".join(item.value for item in app.sidebar.caption)
    assert "12 patients (13 images) of kaggle_test also appear in seed001_0402" in captions
    repeats = [text for text in warnings(app) if "These settings repeat the run" in text]
    assert len(repeats) == 1 and "resnet50-seed001-blog" in repeats[0]
    show = next(button for button in app.sidebar.button if button.label.startswith("Show only"))
    show.click().run()
    picks = {run.run_id: app.session_state[f"run_pick::{run.run_id}"]
             for run in list_runs(REPO / "trained").runs}
    assert picks["resnet50-seed001-blog"] is True
    assert sum(picks.values()) == 1 and len(picks) > 1
    # another number of epochs is another experiment: no warning
    next(box for box in app.sidebar.number_input if box.label == "Epochs").set_value(24).run()
    assert not [text for text in warnings(app) if "repeat" in text]
    assert not start_button(app).disabled


def test_the_form_refuses_a_held_out_folder_of_the_training_patients(shipped_form):
    app = shipped_form
    selectbox(app, "Dataset").set_value("cxr3").run()
    assert selectbox(app, "Held-out folder").value == "kaggle_test"
    selectbox(app, "Held-out folder").set_value("seed001_0402").run()
    errors = [item.value for item in app.sidebar.error]
    assert any("256 of the 305 images of seed001_0402 belong to patients of cxr3" in text
               and "not held out" in text for text in errors), errors
    assert start_button(app).disabled
    selectbox(app, "Held-out folder").set_value("kaggle_test").run()
    assert not app.sidebar.error and not start_button(app).disabled


def test_the_run_name_is_checked_as_typed(shipped_form):
    app = shipped_form
    field = next(field for field in app.sidebar.text_input if field.label == "Run name")
    field.input("my run").run()
    assert any("a run name uses letters, digits" in item.value for item in app.sidebar.error)
    assert start_button(app).disabled
    field = next(field for field in app.sidebar.text_input if field.label == "Run name")
    field.input("resnet50-seed001-blog").run()
    assert any("already exists" in item.value for item in app.sidebar.error)
    field = next(field for field in app.sidebar.text_input if field.label == "Run name")
    field.input("my-first-run").run()
    assert not app.sidebar.error and not start_button(app).disabled


def test_the_random_init_tick_offers_every_backbone(resnet50_only_weights, shipped_form):
    import app_pages._training as training

    training._weights.clear()  # what the weights folders hold is cached for 30 s
    app = shipped_form
    app.run()
    backbones = next(box for box in app.sidebar.multiselect if box.label == "Backbones")
    assert backbones.options == ["ResNet50"]
    next(box for box in app.sidebar.checkbox if box.label == "Random-init control").check().run()
    backbones = next(box for box in app.sidebar.multiselect if box.label == "Backbones")
    assert len(backbones.options) == len(REGISTRY) and backbones.value == ["resnet50"]
    training._weights.clear()  # later tests see the real weights folders again


def test_the_positive_class_offers_the_folders_classes(panel, tmp_path):
    """A two-class folder: its two classes, the first in sorted order by default (no covid),
    as ``--positive`` does; another folder keeps its own choice."""
    root = tmp_path / "data"
    for source, target in (("normal", "healthy"), ("pneumonia", "tb")):
        shutil.copytree(root / "small" / source, root / "two" / target)
    app = panel()
    next(select for select in app.sidebar.selectbox if select.label == "Dataset") \
        .select("two").run()
    positive = next(select for select in app.sidebar.selectbox
                    if select.label == "Positive class")
    assert list(positive.options) == ["healthy", "tb"] and positive.value == "healthy"
    positive.select("tb").run()
    positive = next(select for select in app.sidebar.selectbox
                    if select.label == "Positive class")
    assert positive.value == "tb"
    assert not app.exception


def test_a_students_page_reruns_when_the_teacher_moves_their_request(tmp_path):
    """The student's Cancel buttons name their places and are drawn outside the polling
    panel: a move by the teacher must rerun the student's page, or "Cancel my request
    (place 2)" cancels the request that was second before the move."""
    from app_pages._training import _page_signature
    from xrcompare import jobs

    def view(order: list[str]) -> jobs.QueueView:
        owners = {"a1": "ann", "a2": "ann", "t1": "teacher"}
        return jobs.QueueView(active=[], finished=[], queued=[
            jobs.JobStatus(job_id=job_id, folder=tmp_path / job_id, state="queued",
                           owner_key=jobs.owner_key(owners[job_id]), position=place)
            for place, job_id in enumerate(order, start=1)])

    before, moved = view(["a1", "a2", "t1"]), view(["t1", "a1", "a2"])  # "Run next"
    assert _page_signature(before, "ann", False) != _page_signature(moved, "ann", False)
    # a session with no request in the queue is left alone
    assert _page_signature(before, "bob", False) == _page_signature(moved, "bob", False)


def test_a_filed_request_clears_the_run_name(shipped_form, monkeypatch):
    """A run name names one run: left in the field, it became "a run named … already
    exists" in the sidebar the moment that run landed."""
    monkeypatch.setenv("XRCOMPARE_DISPATCHER", "off")  # files only, no Ray
    app = shipped_form
    field = next(field for field in app.sidebar.text_input if field.label == "Run name")
    field.input("my-first-run").run()
    start_button(app).click().run()
    assert not app.exception and not app.sidebar.error, [e.value for e in app.sidebar.error]
    from xrcompare import jobs

    view = jobs.queue_view(max_age=0)
    assert [status.config.get("name") for status in view.queued] == ["my-first-run"]
    field = next(field for field in app.sidebar.text_input if field.label == "Run name")
    assert field.value == ""
