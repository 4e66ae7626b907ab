"""The lesson and the Shortcut lab pages on the shipped runs, through Streamlit's AppTest: the
teacher steps through the lesson (guess, reveal, next, back) and every revealed figure is the
runs' own; the lab shows each control's verdict."""

from __future__ import annotations

import pytest
from conftest import REPO
from streamlit.testing.v1 import AppTest

from xrcompare import predictor
from xrcompare.lesson import lesson_main, lesson_steps, photo_prediction, photo_sample
from xrcompare.paths import RUNS_DIR_VARIABLE
from xrcompare.runs import list_runs
from xrcompare.shortcuts import shortcut_lab

APP = REPO / "streamlit_app.py"
TRAINED = REPO / "trained"


@pytest.fixture(scope="module")
def app():
    patch = pytest.MonkeyPatch()
    patch.setenv(RUNS_DIR_VARIABLE, str(TRAINED))
    try:
        app = AppTest.from_file(str(APP), default_timeout=300)
        app.run()
        yield app
    finally:
        patch.undo()


def clean(app: AppTest) -> AppTest:
    assert not app.exception, [item.value for item in app.exception]
    assert not app.error, [item.value for item in app.error]
    return app


def test_the_teacher_steps_through_the_lesson_and_every_figure_is_the_runs_own(app):
    runs = list_runs(TRAINED).runs
    main = lesson_main(runs)
    probabilities = photo_prediction(main, photo_sample(predictor.list_samples()))
    steps = lesson_steps(runs, probabilities)
    clean(app.switch_page("app_pages/lesson.py").run())
    for number, step in enumerate(steps):
        assert app.subheader[0].value == step.title
        if step.missing:
            assert any(step.missing in item.value for item in app.info)
        else:
            assert not app.success  # nothing is revealed before the guess
            if step.guess == "percent":
                app.slider(key=f"guess_{step.key}").set_value(50).run()
            app.button(key=f"reveal_{step.key}").click().run()
            clean(app)
            shown = app.success[0].value
            assert step.reveal in shown
            assert app.get("plotly_chart")
        if number < len(steps) - 1:
            app.button(key="lesson_next").click().run()
    assert app.button(key="lesson_next").disabled
    assert f"{max(probabilities.values()):.1%}" in app.success[0].value  # the photo, live
    app.button(key="lesson_back").click().run()
    assert clean(app).subheader[0].value == steps[-2].title
    # a step revealed once stays revealed when the teacher comes back to it
    assert steps[-2].missing or app.success


def test_the_lab_page_shows_each_trained_controls_verdict(app):
    runs = list_runs(TRAINED).runs
    labs = shortcut_lab(runs)
    clean(app.switch_page("app_pages/shortcuts.py").run())
    shown = " ".join(item.value for item in app.markdown)
    for lab in labs:
        for row in lab.rows[1:]:
            if row.run is not None:
                assert row.verdict.split(":")[0][:40] in shown.replace("\\", "")
    table = app.dataframe[0].value
    assert list(table["row"])[0] == "main run"
    assert table["test accuracy"].iloc[0] == pytest.approx(labs[0].main.test_metrics["accuracy"])
    subgroups = next(frame.value for frame in app.dataframe if "group" in frame.value.columns)
    assert subgroups["images"].sum() == len(runs[0].predictions_for("test"))
