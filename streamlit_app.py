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
    return st.navigation(sections)


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
