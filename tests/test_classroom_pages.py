"""The classroom features through Streamlit's AppTest: the leaderboard's key columns and its
"more columns", presenter mode, a CSV under every table, the Evaluate-on-a-folder page on a
real run and real images, the glossary, the banner of a running job, and the per-class
table of a held-out folder (no recall for a class without images).

The browser view (what fits at 1280 px, a real upload, clicks) is in
tests/e2e/test_classroom_e2e.py."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from conftest import FIXTURES, REPO
from streamlit.testing.v1 import AppTest

from xrcompare import jobs
from xrcompare.glossary import TERMS
from xrcompare.inference import evaluate_folder
from xrcompare.report import evaluation_lines
from xrcompare.runs import list_runs
from xrcompare.summary import LEADERBOARD_HEADERS, LEADERBOARD_KEY_COLUMNS, leaderboard_columns

APP = REPO / "streamlit_app.py"
SHIPPED = REPO / "trained"
TINY = FIXTURES / "tiny_cxr"
TIMEOUT_S = 180


@pytest.fixture
def app(tmp_path, monkeypatch):
    """The dashboard on the shipped runs, a data root holding tiny_cxr, an empty jobs
    folder."""
    shutil.copytree(TINY, tmp_path / "data" / "tiny_cxr")
    monkeypatch.setenv("XRCOMPARE_RUNS_DIR", str(SHIPPED))
    monkeypatch.setenv("XRCOMPARE_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("XRCOMPARE_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("XRCOMPARE_DISPATCHER", "off")  # no Ray here: the queue's files only
    test = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    test.run()
    assert_clean(test)
    return test


def assert_clean(app: AppTest) -> None:
    assert not app.exception, [item.value for item in app.exception]
    assert not app.error, [item.value for item in app.error]


def open_page(app: AppTest, page: str) -> AppTest:
    app.switch_page(page).run()
    assert_clean(app)
    return app


def chart_spec(app: AppTest, index: int = 0) -> dict:
    return json.loads(app.get("plotly_chart")[index].proto.spec)


def test_the_leaderboard_shows_its_key_columns_and_more_on_demand(app):
    board = app.dataframe[0]
    assert list(board.proto.column_order) == list(LEADERBOARD_KEY_COLUMNS)
    config = json.loads(board.proto.columns)
    for key in LEADERBOARD_KEY_COLUMNS:  # short header, full text on hover, a set width
        label, width = LEADERBOARD_HEADERS[key]
        assert config[key]["label"] == label and config[key]["width"] == width
        assert len(config[key]["help"]) > len(label)
    more = app.pills(key="leaderboard_more")
    more.set_value(["Size and speed", "Macro-F1"]).run()
    assert list(app.dataframe[0].proto.column_order) == leaderboard_columns(
        ["Macro-F1", "Size and speed"])
    assert "base_params" in app.dataframe[0].proto.column_order
    labels = [button.proto.label for button in app.get("download_button")]
    assert "CSV" in labels and "Download every column as CSV" in labels
    # the cross-validation spread has readable headers, not snake_case
    if any(run.folds for run in list_runs(SHIPPED).runs):
        spread = next(frame for frame in app.dataframe if "folds" in frame.value.columns)
        config = json.loads(spread.proto.columns)
        headers = [config[column]["label"] for column in spread.value.columns]
        # the run's positive class (covid unless it chose another): said in the help
        assert "Sensitivity" in headers and not any("_" in h for h in headers)


def test_every_table_has_a_csv_button_and_every_chart_keeps_its_png_button(app):
    for page in ("app_pages/overview.py", "app_pages/per_class.py", "app_pages/tradeoffs.py",
                 "app_pages/heldout.py"):
        open_page(app, page)
        frames = len(app.dataframe)
        buttons = [button for button in app.get("download_button")
                   if button.proto.label == "CSV"]
        assert frames and len(buttons) >= frames, page
        for chart in app.get("plotly_chart"):
            config = json.loads(chart.proto.config)
            assert config.get("displayModeBar") is not False
            assert config["toImageButtonOptions"]["format"] == "png"


def test_presenter_mode_enlarges_type_and_charts_on_every_page(app):
    open_page(app, "app_pages/per_class.py")
    normal = chart_spec(app)["layout"]
    toggle = app.toggle(key="presenter_mode")
    assert toggle.value is False
    toggle.set_value(True).run()
    assert_clean(app)
    large = chart_spec(app)["layout"]
    assert large["font"]["size"] > normal["font"]["size"]
    assert large["height"] > normal["height"]
    # the style that enlarges the type is on the page, and stays on after a page switch
    styles = [item for item in app.get("html") if "font-size: 125%" in str(item.proto)]
    assert styles
    open_page(app, "app_pages/confusion.py")
    assert app.toggle(key="presenter_mode").value is True
    assert chart_spec(app)["layout"]["font"]["size"] == large["font"]["size"]


def test_the_per_class_table_of_a_held_out_folder_says_no_images(app):
    open_page(app, "app_pages/per_class.py")
    app.selectbox(key="per_class_scope").set_value("kaggle_test").run()
    table = app.dataframe[0].value
    covid = table[table["class"] == "covid"]
    assert len(covid) and covid["recall"].isna().all() and covid["f1"].isna().all()
    assert (covid["recall 95% CI"] == "no images").all()
    assert not (covid["recall 95% CI"] == "0.00–0.00").any()
    normal = table[table["class"] == "normal"]
    assert normal["recall"].notna().all()


def test_the_glossary_explains_every_term_and_the_overview_links_it(app):
    links = [str(item.proto) for item in app.get("page_link")]
    assert any("glossary" in link for link in links)
    open_page(app, "app_pages/glossary.py")
    text = " ".join(item.value for item in app.markdown)
    for term in TERMS:
        assert term.term in text and term.text in text
    for words in ("Frozen base", "GAP head", "PPV", "NPV", "patient bootstrap", "McNemar",
                  "Random-init control", "2020 protocol (leaky)", "Held-out folder"):
        assert words in text


def wait_for_results(app: AppTest, timeout: float = TIMEOUT_S) -> AppTest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = app.session_state["evaluate_task"]["task"]
        if task.done:
            app.run()
            return app
        time.sleep(0.5)
    raise AssertionError("the evaluation did not finish")


def test_evaluate_a_shipped_run_on_a_folder_as_the_command_line_does(app):
    open_page(app, "app_pages/evaluate_folder.py")
    run = list_runs(SHIPPED).runs[0]
    assert app.selectbox(key="evaluate_run").value == run.run_id
    assert app.selectbox(key="evaluate_folder").value == "tiny_cxr"
    app.button(key="evaluate_start").click().run()
    wait_for_results(app)
    assert_clean(app)
    metrics, skipped = evaluate_folder(run, TINY)  # the CLI's path, from the feature cache
    shown = {item.label: item.value for item in app.metric}
    assert shown["Accuracy"] == f"{metrics['accuracy']:.3f}"
    assert shown["Macro-F1"] == f"{metrics['macro_f1']:.3f}"
    assert shown["Images"] == "15"
    per_class = next(frame for frame in app.dataframe if "recall_95ci" in frame.value.columns)
    rows = per_class.value.set_index("class")
    for label in run.labels:
        assert rows.loc[label, "precision"] == pytest.approx(
            metrics["per_class"][label]["precision"])
    # the command line's text, word for word
    lines = "\n".join(evaluation_lines(run.title, "tiny_cxr", metrics, skipped, run.data_name))
    assert lines in [item.value for item in app.code]
    assert len(app.get("plotly_chart")) == 1  # the confusion matrix


def test_the_banner_and_the_sidebar_show_a_running_job(app, tmp_path):
    """A request Ray runs, as its files say: every page says so at the top, the sidebar
    shows it above the run picker, with one Cancel button (loopback: this user is the
    teacher), and the waiting request's place."""
    folder = tmp_path / "jobs" / "20000101-000000-abcdef"
    plan = {"backbones": ["resnet50"], "data_name": "tiny_cxr", "images": 15, "epochs": 2,
            "runs_dir": str(tmp_path / "runs")}
    for name, owner, state in ((folder.name, "Ann", {"state": "running", "dispatched": 1,
                                                      "submitted": time.time() - 12}),
                               ("20000101-000001-abcdef", "Bob", {"state": "queued"})):
        (folder.parent / name).mkdir(parents=True)
        (folder.parent / name / "job.json").write_text(json.dumps({
            "job_id": name, "created": time.time() - 12, "owner": owner, "plan": plan}))
        (folder.parent / name / "state.json").write_text(json.dumps(state))
    time.sleep(jobs.VIEW_MAX_AGE_S)  # every page of the app shares one snapshot this long
    for page in ("app_pages/overview.py", "app_pages/glossary.py"):
        open_page(app, page)
        banners = [item.value for item in app.info if "Training in progress" in item.value]
        assert len(banners) == 1 and "ResNet50 on tiny_cxr" in banners[0], page
        assert "for Ann" in banners[0] and "1 request waiting" in banners[0]
        assert "#training-now" in banners[0]
        assert [item.value for item in app.sidebar.subheader][0] == "Training now"
        cancel = [button for button in app.sidebar.button if button.label == "Cancel training"]
        assert len(cancel) == 1
        assert "1. Bob" in " ".join(item.value for item in app.sidebar.markdown)
    for name in (folder.name, "20000101-000001-abcdef"):
        (folder.parent / name / "state.json").write_text(json.dumps({
            "state": "cancelled", "finished": time.time()}))
    time.sleep(jobs.VIEW_MAX_AGE_S)
    open_page(app, "app_pages/overview.py")
    assert not [item for item in app.info if "Training in progress" in item.value]
