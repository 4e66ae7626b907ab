"""xrcompare dashboard: the router. Run with ``streamlit run streamlit_app.py``.

It sets the page up, builds the navigation over ``app_pages/``, draws the sidebar shared by every
page (run picker, then the training form) and runs the chosen page. Pages only lay out;
the logic lives in ``xrcompare``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the package beside this router
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import streamlit as st  # noqa: E402

from app_pages import _common as common  # noqa: E402
from xrcompare.errors import one_line  # noqa: E402
from xrcompare.paths import REPO_ROOT  # noqa: E402

LOG = logging.getLogger("xrcompare.app")

def keep_keras_state_between_runs() -> None:
    """Streamlit clears Keras's global session after every script run (for scripts that
    build a model in each run). This app builds its models once and keeps them, and builds
    them in background threads too (Evaluate on a folder): a ``clear_session`` from any
    session's rerun, every half second while a page polls, would pull the state from under a
    model being built and stall it. So the session is kept; matplotlib figures are still
    closed as Streamlit does."""
    try:
        from streamlit.runtime.scriptrunner import script_runner
    except ImportError:
        return

    def clean() -> None:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            try:
                pyplot.close("all")
            except Exception:  # as Streamlit: never fail a run for this
                LOG.debug("matplotlib close failed", exc_info=True)

    if getattr(script_runner, "_clean_problem_modules", None) is not None:
        script_runner._clean_problem_modules = clean


keep_keras_state_between_runs()
st.set_page_config(page_title="xrcompare · CNNs on chest X-rays (teaching)",
                   page_icon=":material/radiology:", layout="wide")


def build_navigation():
    sections: dict[str, list] = {}
    for number, spec in enumerate(common.PAGES):
        if not (REPO_ROOT / spec.path).is_file():
            LOG.warning("page %s is missing and left out of the menu", spec.path)
            continue
        sections.setdefault(spec.section, []).append(
            st.Page(REPO_ROOT / spec.path, title=spec.title, icon=spec.icon,
                    default=number == 0))
    # Every page listed: a class told "open the Shortcut lab" must not hunt behind "View more".
    return st.navigation(sections, expanded=True)


def render_training_form(top) -> None:
    """The training form of ``app_pages/_training.py`` (its own engineer), if it loads; a
    running job's panel goes into ``top`` (above the run picker)."""
    try:
        from app_pages._training import render_training_sidebar
    except Exception as error:  # a missing or broken module must not take the dashboard down
        LOG.warning("training form unavailable: %s", error)
        st.sidebar.caption("Training from the browser is not available in this copy.")
        return
    try:
        render_training_sidebar(top)
    except Exception:
        LOG.exception("training form failed")
        st.sidebar.error("The training form hit a problem; the run pages still work.")


def start_model_warm_up() -> None:
    """Build the Predict page's models in a background thread, once per process (and again
    for new runs), so that the first upload finds them ready."""
    try:
        from app_pages._engine import start_warm_up

        start_warm_up()
    except Exception:  # the Predict page builds on demand anyway
        LOG.exception("model warm-up could not start")


page = build_navigation()
common.page_style()
common.presenter_toggle()
training_top = st.sidebar.container()  # a running job shows here, above the run picker
common.render_run_picker()
render_training_form(training_top)
common.sidebar_footer()
common.job_banner()
try:
    page.run()
except Exception as error:  # the safety net: a readable sentence, the traceback in the log
    LOG.exception("page %s failed", page.title)
    reason = common.md(one_line(error))
    st.error(f"This page could not be drawn ({type(error).__name__}: {reason}). "
             "The other pages still work.")
finally:  # after the page, so that the first page is drawn before anything heavy starts
    start_model_warm_up()
