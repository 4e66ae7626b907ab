"""Every dashboard page through Streamlit's AppTest: the shipped runs, one corrupt run, an
empty runs folder, a single run, and images that are not on this machine.

The app starts from streamlit_app.py (router, sidebar run picker); ``switch_page`` then runs
each page with the session state the router left. The sidebar after a page switch, and real
clicks, are covered in a browser by tests/e2e/test_pages_e2e.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from streamlit.testing.v1 import AppTest

from xrcompare.backbones import REGISTRY
from xrcompare.charts import run_labels
from xrcompare.compare import compare_runs, default_pair
from xrcompare.escaping import escape_markdown
from xrcompare.evaluate import binary_operating_point
from xrcompare.paths import RUNS_DIR_VARIABLE
from xrcompare.runs import list_runs

APP = REPO / "streamlit_app.py"
SHIPPED = REPO / "trained"
TIMEOUT_S = 120

#: (page file, words its title starts with) for every page this suite owns.
PAGES = [
    ("app_pages/overview.py", "Overview"),
    ("app_pages/per_class.py", "Per-class scores"),
    ("app_pages/confusion.py", "Confusion matrices"),
    ("app_pages/curves.py", "Training curves"),
    ("app_pages/tradeoffs.py", "Recall trade-offs"),
    ("app_pages/heldout.py", "Held-out Kaggle test"),
    ("app_pages/dataset.py", "Dataset"),
    ("app_pages/compare.py", "Compare two runs"),
    ("app_pages/shortcuts.py", "Shortcut lab"),
    ("app_pages/lesson.py", "Why 98% is a warning sign"),
    ("app_pages/card.py", "Model card"),
]


def shipped_runs():
    runs = list_runs(SHIPPED).runs
    assert runs, f"the shipped runs are expected in {SHIPPED} (at least one)"
    return runs


def start(monkeypatch, runs_dir: Path) -> AppTest:
    monkeypatch.setenv(RUNS_DIR_VARIABLE, str(runs_dir))
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    app.run()
    assert_clean(app)
    return app


def assert_clean(app: AppTest) -> None:
    assert not app.exception, [item.value for item in app.exception]
    assert not app.error, [item.value for item in app.error]


def open_page(app: AppTest, page: str) -> AppTest:
    app.switch_page(page).run()
    assert_clean(app)
    return app


def plotly_charts(app: AppTest) -> list:
    return app.get("plotly_chart")


def copy_run(source: Path, runs_dir: Path) -> Path:
    target = runs_dir / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("head_fold*"))
    return target


def smallest_run() -> Path:
    """A shipped run without cross-validation folds (fewest files to copy)."""
    runs = shipped_runs()
    plain = [run for run in runs if not run.info["split"].get("folds")] or runs
    return plain[0].path


@pytest.fixture(scope="module")
def shipped_app():
    """One app over the shipped runs, shared by the page tests of this module."""
    patch = pytest.MonkeyPatch()
    try:
        app = start(patch, SHIPPED)
        yield app
    finally:
        patch.undo()


# --------------------------------------------------------------------------- shipped runs


@pytest.mark.parametrize(("page", "title"), PAGES, ids=[title for _, title in PAGES])
def test_every_page_renders_the_shipped_runs(shipped_app, page, title):
    app = open_page(shipped_app, page)
    assert app.title[0].value.startswith(title)
    runs = shipped_runs()
    if page == "app_pages/overview.py":
        board = app.dataframe[0].value
        assert len(board) == len(runs)
        assert set(board["run_id"]) == {run.run_id for run in runs}
        assert app.get("download_button")
        assert any("Teaching, not diagnosis" in item.value for item in app.warning)
        by_id = board.set_index("run_id")
        for run in runs:
            if run.is_cnn:
                assert by_id.loc[run.run_id, "base_params"] == \
                    REGISTRY[run.backbone].base_params
            assert by_id.loc[run.run_id, "run_size_bytes"] == run.disk_bytes() > 0
            assert ("control" in by_id.loc[run.run_id, "weights"]) == run.is_control
    elif page == "app_pages/per_class.py":
        assert len(plotly_charts(app)) == 1
        assert len(app.dataframe[0].value) == 3 * len(runs)
    elif page == "app_pages/confusion.py":
        assert len(plotly_charts(app)) == len(runs)
    elif page == "app_pages/curves.py":  # the statistics baseline has no epochs
        assert len(plotly_charts(app)) == sum(run.is_cnn for run in runs)
    elif page == "app_pages/tradeoffs.py":
        assert len(app.dataframe) == 4 and len(plotly_charts(app)) == 4
        calibration = app.dataframe[3].value
        assert set(calibration["run_id"]) == {run.run_id for run in runs}
        assert calibration["ece"].between(0, 1).all()
    elif page == "app_pages/shortcuts.py":
        from xrcompare.shortcuts import main_runs

        mains = main_runs(runs)
        assert len(app.tabs) == len(mains)
        assert any("Maguolo" in item.value for item in app.markdown)
        assert len(plotly_charts(app)) == sum(1 + len(main.heldout_names) for main in mains)
    elif page == "app_pages/lesson.py":
        assert app.subheader[0].value.startswith("1 ·")
        assert app.button(key="lesson_back").disabled
    elif page == "app_pages/card.py":
        assert app.get("download_button")
        assert any("## Intended use" in item.value for item in app.markdown)
    elif page == "app_pages/heldout.py":
        assert "2020 blog, VGG16, as reported" in set(app.dataframe[0].value["run"])
        assert app.get("image"), "no thumbnails of the worst mistakes"
    elif page == "app_pages/dataset.py":
        assert app.get("image"), "no thumbnails per class"
        assert any("Roberts" in item.value for item in app.markdown)
        # the runs' own counts are shown, never a figure typed by hand
        traps = next(item.value for item in app.markdown if "Preprocessing mismatch" in
                     item.value)
        assert "215" not in traps
        for run in runs:
            if "kaggle_test" not in run.metrics["heldout"]:  # a derived class scheme's copy
                continue
            heldout = run.metrics["heldout"]["kaggle_test"]
            row = heldout["confusion_matrix"][heldout["labels"].index("pneumonia")]
            assert f"**{row[heldout['labels'].index('covid')]} of {sum(row)}**" in traps
    elif page == "app_pages/compare.py":
        run_a, run_b = default_pair(runs)
        assert app.selectbox(key="compare_a").value == run_a.run_id
        assert app.selectbox(key="compare_b").value == run_b.run_id
        expected = compare_runs(run_a, run_b, names=run_labels(runs))
        verdicts = [item.value for item in [*app.success, *app.info]]
        assert expected.verdict in verdicts
        agreement = app.dataframe[0].value
        assert agreement.to_numpy().sum() == expected.stats["n"]
        assert agreement.iloc[0, 1] == expected.stats["a_right_b_wrong"]
        assert len(plotly_charts(app)) == 1
        discordant = expected.stats["a_right_b_wrong"] + expected.stats["a_wrong_b_right"]
        assert len(app.get("image")) == min(discordant, 48), "thumbnails of the discordant images"


def test_threshold_slider_changes_the_shown_sensitivity(shipped_app):
    app = open_page(shipped_app, "app_pages/tradeoffs.py")
    before = app.dataframe[1].value.set_index("run")["sensitivity"]
    app.slider(key="tradeoff_threshold").set_value(0.999).run()
    assert_clean(app)
    after = app.dataframe[1].value.set_index("run")["sensitivity"]
    assert (after <= before).all() and (after < before).any()
    # the numbers are the runs' own: recompute each from predictions.csv
    for run in shipped_runs():
        frame = run.split_predictions("test")
        expected = binary_operating_point(frame["label"].to_numpy() == "covid",
                                          frame["prob_covid"].to_numpy(), 0.999)
        assert after[run.title] == pytest.approx(expected["sensitivity"])
    app.slider(key="tradeoff_threshold").set_value(0.5).run()


def test_target_sensitivity_table_answers_in_one_move(shipped_app):
    app = open_page(shipped_app, "app_pages/tradeoffs.py")
    table = app.dataframe[0].value
    assert (table["sensitivity"] >= 0.95).all()
    assert {"threshold", "fp", "specificity"} <= set(table.columns)
    app.slider(key="tradeoff_target").set_value(1.0).run()
    assert_clean(app)
    strict = app.dataframe[0].value.set_index("run")
    assert (strict["sensitivity"] == 1.0).all()
    assert (strict["fp"] >= table.set_index("run")["fp"]).all()
    app.slider(key="tradeoff_target").set_value(0.95).run()


def test_cost_slider_moves_the_cheapest_threshold(shipped_app):
    app = open_page(shipped_app, "app_pages/tradeoffs.py")
    app.slider(key="tradeoff_cost").set_value(1).run()
    cheap = app.dataframe[2].value.set_index("run")
    app.slider(key="tradeoff_cost").set_value(100).run()
    assert_clean(app)
    dear = app.dataframe[2].value.set_index("run")
    # a dearer miss never buys more misses
    assert (dear["fn"] <= cheap["fn"]).all()
    assert np.allclose(dear["cost"], 100 * dear["fn"] + dear["fp"])
    app.slider(key="tradeoff_cost").set_value(10).run()


def test_an_unticked_run_is_hidden_on_every_page(monkeypatch):
    # After its first run, AppTest (Streamlit 1.67) runs only the page file, not the router,
    # so the sidebar exists in the first run only (the browser keeps it: tests/e2e clicks the
    # checkboxes). The tick is therefore set before the first run, through the checkbox's key.
    runs = shipped_runs()
    hidden = runs[0]
    monkeypatch.setenv(RUNS_DIR_VARIABLE, str(SHIPPED))
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    app.session_state[f"run_pick::{hidden.run_id}"] = False
    app.run()
    assert_clean(app)
    boxes = {box.key: box.value for box in app.sidebar.checkbox}
    assert boxes[f"run_pick::{hidden.run_id}"] is False and sum(boxes.values()) == len(runs) - 1
    assert hidden.run_id not in set(app.dataframe[0].value["run_id"])
    open_page(app, "app_pages/confusion.py")
    if len(runs) > 1:
        assert len(plotly_charts(app)) == len(runs) - 1
    else:
        assert any("No run is selected" in item.value for item in app.info)


# --------------------------------------------------------------------------- odd folders


def test_a_corrupt_run_is_named_and_the_rest_still_show(tmp_path, monkeypatch):
    source = smallest_run()
    copy_run(source, tmp_path)
    broken = tmp_path / "broken-run"
    shutil.copytree(source, broken)
    (broken / "metrics.json").write_text("{ this is not json", encoding="utf-8")
    app = start(monkeypatch, tmp_path)
    warnings = [item.value for item in app.sidebar.warning]
    assert any("broken-run" in text and "unreadable JSON" in text for text in warnings), warnings
    assert list(app.dataframe[0].value["run_id"]) == [source.name]
    for page, title in PAGES:
        open_page(app, page)
        assert app.title[0].value.startswith(title)


@pytest.mark.parametrize("kind", ["empty", "missing"])
def test_no_runs_shows_how_to_train_on_every_page(tmp_path, monkeypatch, kind):
    runs_dir = tmp_path if kind == "empty" else tmp_path / "not-there"
    app = start(monkeypatch, runs_dir)
    for page, _ in PAGES:
        open_page(app, page)
        assert app.title[0].value == "No trained runs yet"
        assert "python -m xrcompare train" in app.code[0].value
        assert not plotly_charts(app)


def test_a_single_run_works_on_every_page(tmp_path, monkeypatch):
    source = smallest_run()
    copy_run(source, tmp_path)
    app = start(monkeypatch, tmp_path)
    assert len(app.dataframe[0].value) == 1
    for page, title in PAGES:
        open_page(app, page)
        assert app.title[0].value.startswith(title)
    open_page(app, "app_pages/tradeoffs.py")
    app.slider(key="tradeoff_threshold").set_value(0.9).run()
    assert_clean(app)
    assert len(app.dataframe[1].value) == 1


def test_images_missing_from_this_machine_are_said_not_crashed(tmp_path, monkeypatch):
    run_dir = copy_run(smallest_run(), tmp_path)
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    for record in [info["data"], *info["heldout"]]:
        record["folder"] = record["folder_absolute"] = str(tmp_path / "gone" / record["name"])
    info["data"]["manifest"] = str(tmp_path / "gone" / "manifest.csv")
    (run_dir / "run.json").write_text(json.dumps(info), encoding="utf-8")
    app = start(monkeypatch, tmp_path)
    for page in ("app_pages/heldout.py", "app_pages/dataset.py"):
        open_page(app, page)
        assert any("not on this machine" in item.value for item in app.warning), page
        assert not app.get("image")


# --------------------------------------------------------------------------- hostile run folders


def _edit_json(path: Path, change) -> None:
    payload = json.loads(path.read_text(encoding="utf-8"))
    change(payload)
    path.write_text(json.dumps(payload), encoding="utf-8")


def test_a_run_with_wrong_typed_metrics_is_named_and_every_page_still_works(tmp_path,
                                                                            monkeypatch):
    source = smallest_run()
    copy_run(source, tmp_path)
    for name, change in (("bad-accuracy", lambda m: m["test"].update(accuracy="abc")),
                         ("bad-per-class", lambda m: m["test"].update(per_class=[1, 2])),
                         ("bad-matrix", lambda m: m["test"].update(confusion_matrix="x"))):
        broken = tmp_path / name
        shutil.copytree(source, broken, ignore=shutil.ignore_patterns("head_fold*"))
        _edit_json(broken / "metrics.json", change)
    app = start(monkeypatch, tmp_path)
    warnings = [item.value for item in app.sidebar.warning]
    assert len(warnings) == 3 and all("could not be read" in text for text in warnings)
    assert list(app.dataframe[0].value["run_id"]) == [source.name]
    for page, title in PAGES:
        open_page(app, page)
        assert app.title[0].value.startswith(title)


def test_a_run_cannot_make_the_dataset_page_read_outside_the_data_root(tmp_path, monkeypatch):
    run_dir = copy_run(smallest_run(), tmp_path)
    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    shutil.copy(next((REPO / "samples").glob("*.jpg")), secret)

    def craft(info):
        info["data"]["folder_absolute"] = info["data"]["folder"] = "/"
        info["data"]["manifest"] = "/etc/shadow"
        relative = str(secret.relative_to("/"))
        info["split"]["files"] = {name: [relative] for name in ("train", "val", "test")}
        for entry in info["heldout"]:
            entry["folder_absolute"] = entry["folder"] = str(secret.parent)

    _edit_json(run_dir / "run.json", craft)
    app = start(monkeypatch, tmp_path)
    for page in ("app_pages/dataset.py", "app_pages/heldout.py"):
        open_page(app, page)
        assert not app.get("image"), page  # nothing from outside the data root is shown
        assert any("outside the data root" in item.value for item in app.warning), page
    open_page(app, "app_pages/dataset.py")
    assert not app.dataframe or all("shadow" not in str(frame.value) for frame in app.dataframe)


def test_a_crafted_run_title_is_shown_as_text_not_markdown(tmp_path, monkeypatch):
    run_dir = copy_run(smallest_run(), tmp_path)
    title = "[click me](http://evil.example) **loud** :red[x]"
    _edit_json(run_dir / "run.json", lambda info: info.update(display_name=title))
    app = start(monkeypatch, tmp_path)
    labels = [box.label for box in app.sidebar.checkbox
              if box.key.startswith("run_pick::")]  # not the form's random-init tick
    assert labels == [escape_markdown(title)] and "\u200b//evil" in labels[0]
    for page, _ in PAGES:
        open_page(app, page)
        for kind in ("markdown", "caption", "warning", "info", "success", "subheader"):
            for item in app.get(kind):
                assert "[click me](" not in str(item.value), (page, kind, item.value)


def relabel(source: Path, runs_dir: Path, run_id: str, **changes) -> Path:
    target = runs_dir / run_id
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("head_fold*"))
    info = json.loads((target / "run.json").read_text(encoding="utf-8"))
    info.update(changes)
    (target / "run.json").write_text(json.dumps(info), encoding="utf-8")
    return target


def test_leaky_runs_are_labelled_and_sit_beside_the_blog(tmp_path, monkeypatch):
    """The two shipped VGG16 reproductions of the 2020 blog beside a main run."""
    by_id = {run.run_id: run for run in shipped_runs()}
    relabel(by_id["resnet50-cxr3"].path, tmp_path, "a-main", order=1, display_name="Main",
            protocol={})
    relabel(by_id["vgg16-seed001-blog2020"].path, tmp_path, "b-vgg16-blog2020", order=2,
            display_name="VGG16 blog")
    relabel(by_id["vgg16-seed001-sound"].path, tmp_path, "c-vgg16-sound", order=3,
            display_name="VGG16 sound")
    app = start(monkeypatch, tmp_path)
    board = app.dataframe[0].value.set_index("run_id")
    assert board.loc["b-vgg16-blog2020", "protocol"] == "2020 protocol (leaky)"
    assert board.loc["b-vgg16-blog2020", "run"] == "VGG16 blog [2020 protocol (leaky)]"
    assert list(board["protocol"]) == ["sound", "2020 protocol (leaky)", "sound"]
    assert any("2020 protocol (leaky)" in item.value and "chosen on the test split"
               in item.value for item in app.warning)
    comparison = next(item.value for item in app.dataframe if "why" in item.value.columns)
    assert list(comparison["run"]) == ["2020 blog, VGG16, as reported",
                                       "2020 blog, VGG19, as reported",
                                       "VGG16 blog [2020 protocol (leaky)]", "VGG16 sound"]
    open_page(app, "app_pages/heldout.py")
    summary = list(app.dataframe[0].value["run"])
    assert summary == ["Main", "VGG16 blog [2020 protocol (leaky)]", "VGG16 sound",
                       "2020 blog, VGG16, as reported"]
    beside = next(item.value for item in app.dataframe if "why" in item.value.columns)
    assert list(beside["protocol"]) == ["2020 protocol (leaky)"] * 3 + ["sound"]


# --------------------------------------------------------------------------- compare two runs


def test_compare_page_refuses_different_images_in_one_sentence_then_pairs_on_kaggle(shipped_app):
    app = open_page(shipped_app, "app_pages/compare.py")
    app.selectbox(key="compare_a").set_value("resnet50-cxr3").run()
    app.selectbox(key="compare_b").set_value("resnet50-cxr3-cv5").run()
    assert_clean(app)
    warnings = [item.value for item in app.main.warning]  # the sidebar's form has its own
    assert len(warnings) == 1 and "different test images (256 vs 1280, 256 shared)" in warnings[0]
    assert not plotly_charts(app) and not app.get("image")
    # (outside text is Markdown-escaped: kaggle\_test)
    assert any("can be compared on: held-out kaggle_test" in item.value.replace("\\", "")
               for item in app.caption)
    app.radio(key="compare_scope").set_value("heldout:kaggle_test").run()
    assert_clean(app)
    assert not app.main.warning
    verdict = [item.value for item in [*app.main.success, *app.main.info]]
    assert len(verdict) == 1 and "624 held-out kaggle_test images" in verdict[0]
    assert len(plotly_charts(app)) == 1
    assert app.get("image")
    # the page caps each side at 24 thumbnails and says how many more there are: the padded
    # run differs from the main run on hundreds of Kaggle images
    app.selectbox(key="compare_b").set_value("resnet50-cxr3-padded").run()
    assert_clean(app)
    assert len(app.get("image")) <= 48
    assert any(item.value.startswith("… and ") for item in app.caption)
    app.radio(key="compare_scope").set_value("test").run()


def test_compare_page_without_images_on_this_machine_keeps_the_tables(tmp_path, monkeypatch):
    for name in ("resnet50-cxr3", "resnet50-cxr3-padded"):
        run_dir = copy_run(SHIPPED / name, tmp_path)
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        for record in [info["data"], *info["heldout"]]:
            record["folder"] = record["folder_absolute"] = str(tmp_path / "gone" / record["name"])
        (run_dir / "run.json").write_text(json.dumps(info), encoding="utf-8")
    app = start(monkeypatch, tmp_path)
    open_page(app, "app_pages/compare.py")
    assert any("not on this machine" in item.value for item in app.warning)
    assert not app.get("image")
    assert app.success or app.info
    assert len(app.dataframe) >= 3  # agreement, per class, the discordant images
