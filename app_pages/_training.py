"""Sidebar training panel: a form that starts a job and a fragment that watches it.

Streamlit glue only. The form's widgets come from :class:`xrcompare.config.TrainConfig`'s
declarations (labels, bounds, defaults, offered values); jobs and locks live in
:mod:`xrcompare.jobs`, the progress summary in :mod:`xrcompare.progress`; the job's state is
in files on disk, so it survives reloads, page changes, other tabs and app restarts.
"""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

from xrcompare import access, jobs, paths
from xrcompare.backbones import REGISTRY, weights_status
from xrcompare.charts import training_curves_figure
from xrcompare.config import TrainConfig, form_param, sidebar_config
from xrcompare.data import list_datasets
from xrcompare.errors import one_line
from xrcompare.escaping import escape_markdown as md

LOG = logging.getLogger("xrcompare.app")
POLL_SECONDS = 1.0
SEEN_KEY = "training_seen_final_job"
NONE_LABEL = "(none)"
#: Session flag set once this browser session typed the teacher key (never the key itself).
UNLOCKED_KEY = "training_teacher_unlocked"
KEY_FIELD = "training_teacher_key"
KEY_HELP = ("Starting and cancelling training need the teacher's key on this server; "
            "everything else is open to everyone.")


# --------------------------------------------------------------------------- access


def _server_address() -> str | None:
    """The address this server listens on (server.address; None or "" is every
    interface)."""
    return st.get_option("server.address")


def _teacher_key() -> str | None:
    """$XRCOMPARE_TEACHER_KEY, else ``teacher_key`` in .streamlit/secrets.toml. Only ever
    compared, never shown."""
    secrets = st.secrets if st.secrets.load_if_toml_exists() else None
    return access.teacher_key_from(secrets=secrets)


def _access() -> access.TrainingAccess:
    return access.training_access(_server_address(), _teacher_key())


def _unlocked(rights: access.TrainingAccess) -> bool:
    return rights.allowed and (not rights.needs_key or bool(st.session_state.get(UNLOCKED_KEY)))


def _unlock(typed: str | None) -> bool:
    """Check a typed key in constant time; remember success for this browser session."""
    if access.key_matches(typed, _teacher_key()):
        st.session_state[UNLOCKED_KEY] = True
        return True
    return False


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@st.cache_data(ttl=10, show_spinner=False)
def _datasets(root: str) -> list[str]:
    return list_datasets(root)


@st.cache_data(ttl=30, show_spinner=False)
def _weights() -> dict[str, tuple[bool, str]]:
    return {name: (status.available, status.detail)
            for name, status in ((name, weights_status(name)) for name in REGISTRY)}


def _current():
    try:
        return jobs.current_job()
    except (OSError, ValueError) as error:
        st.warning(f"Cannot read the training jobs folder: {md(one_line(error))}")
        return None


def _curve(status) -> None:
    """The loss/accuracy curve so far, for the backbone (and fold) being trained."""
    curve = pd.DataFrame(status.progress.get("curve") or [])
    if curve.empty:
        return
    last = curve[(curve["backbone"] == curve["backbone"].iloc[-1])
                 & (curve["fold"] == curve["fold"].iloc[-1])]
    figure = training_curves_figure(last)
    figure.update_layout(height=230, margin={"l": 4, "r": 4, "t": 28, "b": 4},
                         font={"size": 10}, legend={"orientation": "h", "y": -0.3})
    figure.update_annotations(font={"size": 11})
    figure.update_xaxes(title_text=None)
    st.plotly_chart(figure, width="stretch", config={"displayModeBar": False},
                    key=f"training-curve-{status.job_id}")


def _cancel(status) -> None:
    """Cancel the job (returns at once; the polling panel shows the outcome when it is
    recorded)."""
    try:
        jobs.request_cancel(status.job_id)
    except (OSError, ValueError) as error:
        st.error(f"Could not cancel: {md(one_line(error))}")
    else:
        st.rerun(scope="app")


def _cancel_control(status, rights: access.TrainingAccess) -> None:
    """The Cancel button, behind the teacher key when the server needs one."""
    if not rights.allowed:
        st.caption("Only the teacher can cancel training on this server.")
    elif _unlocked(rights):
        if st.button("Cancel training", key=f"cancel-{status.job_id}",
                     use_container_width=True):
            _cancel(status)
    else:
        with st.form(f"cancel-form-{status.job_id}", border=False):
            typed = st.text_input("Teacher key", type="password", key=f"{KEY_FIELD}-cancel",
                                  help=KEY_HELP)
            if st.form_submit_button("Cancel training", use_container_width=True):
                if _unlock(typed):
                    _cancel(status)
                else:
                    st.error("Wrong teacher key: the training goes on.")


def _show(status, rights: access.TrainingAccess) -> None:
    """One job's panel: live while it runs, its outcome afterwards."""
    progress = status.progress
    plan = status.plan
    names = [REGISTRY[name].display_name if name in REGISTRY else name
             for name in plan.get("backbones", [])]
    what = md(f"{', '.join(names)} on {plan.get('data_name', '?')} "
              f"({plan.get('images', '?')} images, {plan.get('epochs', '?')} epochs)")
    if status.active:
        st.markdown(f"**Training:** {what}")
        st.progress(min(1.0, max(0.0, progress["fraction"])), text=md(progress["phase_text"]))
        left = progress.get("eta_seconds")
        st.caption(f"{_duration(status.elapsed)} elapsed"
                   + (f" · about {_duration(left)} left (estimate)" if left is not None else ""))
        _curve(status)
        if status.cancel_requested:
            st.caption("Cancelling…")
        else:
            _cancel_control(status, rights)
        return
    if status.state == "done":
        count = len(status.runs)
        st.success(f"Finished in {_duration(status.elapsed)}: {what}. "
                   f"{count} new run{'s' if count != 1 else ''} in the leaderboard.")
    elif status.state == "cancelled":
        kept = (f" {len(status.runs)} run(s) finished before the cancel and were kept."
                if status.runs else " No run was kept.")
        st.info(f"Cancelled after {_duration(status.elapsed)}: {what}.{kept}")
    elif status.state == "failed":
        st.error(f"Training failed: {md(status.error)}")
    else:
        st.warning(f"Training ended without an outcome: {md(status.error)}")
    if status.state in ("failed", "stale") and status.log_tail:
        with st.expander("Last log lines"):
            st.code("\n".join(status.log_tail[-15:]), language=None, wrap_lines=True)
    _curve(status)


def _panel(run_every: float | None):
    @st.fragment(run_every=run_every)
    def panel() -> None:
        # A fragment reruns on its own, outside the router's safety net: keep its own.
        try:
            _panel_body(run_every)
        except Exception as error:
            LOG.exception("training panel failed")
            st.error(f"The training panel hit a problem ({type(error).__name__}: "
                     f"{md(one_line(error))}); the run pages still work.")

    panel()


def _panel_body(run_every: float | None) -> None:
    status = _current()
    if status is None:
        st.session_state.setdefault(SEEN_KEY, None)
        st.caption("No training job yet.")
        return
    final_id = None if status.active else status.job_id
    if SEEN_KEY not in st.session_state:
        st.session_state[SEEN_KEY] = final_id  # what this session found on arrival
    elif final_id and st.session_state[SEEN_KEY] != final_id:
        st.session_state[SEEN_KEY] = final_id
        st.rerun(scope="app")  # the new run appears on every page, polling stops
    elif status.active and run_every is None:
        st.rerun(scope="app")  # started from another tab: start polling here too
    _show(status, _access())


def _size_text(value) -> str:
    return "each backbone's own (224 px; Xception 299)" if value is None else f"{value} px"


def _widget(name: str, container=st):
    """The form's widget for a TrainConfig setting, built from its declaration: a number box
    with its range and default, or a select of the values it offers."""
    param = form_param(name)
    if param["options"] is None:
        step = 1 if param["kind"] == "int" else None
        return container.number_input(param["label"], min_value=param["low"],
                                      max_value=param["high"], value=param["default"],
                                      step=step, help=param["help"])
    options = list(param["options"])
    default = options.index(param["default"]) if param["default"] in options else 0
    if name == "image_size":
        return container.selectbox(param["label"], options, index=default,
                                   format_func=_size_text, help=param["help"])
    return container.select_slider(param["label"], options=options, value=options[default],
                                   format_func=lambda v: f"{v:g}", help=param["help"])


#: The form's settings (every one of :data:`xrcompare.config.FORM_FIELDS`), laid out two to
#: a row where they are small number boxes.
FORM_ROWS = (("epochs", "batch_size"), ("learning_rate",), ("image_size",),
             ("augment_views", "seed"))


def _form(data_root, datasets: list[str], rights: access.TrainingAccess
          ) -> TrainConfig | None:
    weights = _weights()
    available = [name for name, (ok, _) in weights.items() if ok]
    unavailable = {name: detail for name, (ok, detail) in weights.items() if not ok}
    chosen_values = {}
    with st.form("training-form", border=False):
        default = datasets.index("seed001_0402") if "seed001_0402" in datasets else 0
        dataset = st.selectbox("Dataset", datasets or [NONE_LABEL], index=default,
                               help=f"Folders found under the data root {md(data_root)}")
        typed = st.text_input("…or a folder inside the data root",
                              placeholder="e.g. my_class/cxr_small",
                              help="Used instead of the list when filled in. Relative paths "
                                   "start at the data root; folders outside it are refused.")
        reasons = "\n".join(f"- **{REGISTRY[name].display_name}**: {md(detail)}"
                             for name, detail in unavailable.items())
        chosen = st.multiselect("Backbones", available,
                                default=["resnet50"] if "resnet50" in available else [],
                                format_func=lambda name: REGISTRY[name].display_name,
                                help=("Only backbones whose ImageNet weights are here.\n\n"
                                      + reasons) if unavailable else None)
        if unavailable:
            st.caption("Not available, no ImageNet weights here (the ? of Backbones says "
                       "where they would go): "
                       + ", ".join(REGISTRY[name].display_name for name in unavailable))
        for row in FORM_ROWS:
            cells = st.columns(len(row)) if len(row) > 1 else [st]
            for name, cell in zip(row, cells, strict=True):
                chosen_values[name] = _widget(name, cell)
        heldout = st.selectbox("Held-out folder (optional)", [NONE_LABEL, *datasets],
                               help="Never used in training; predicted after it. Do not hold "
                                    "out a folder that shares images or patients with the "
                                    "training data (seed001_0402 images also appear in cxr3).")
        typed_key = None
        if not _unlocked(rights):
            typed_key = st.text_input("Teacher key", type="password", key=f"{KEY_FIELD}-start",
                                      help=KEY_HELP)
        submitted = st.form_submit_button("Start training", type="primary",
                                          use_container_width=True)
    if not submitted:
        return None
    if not _unlocked(rights) and not _unlock(typed_key):
        st.error("Wrong teacher key: training was not started.")
        return None
    folder = typed.strip() or (dataset if dataset != NONE_LABEL else "")
    return sidebar_config(folder, list(chosen), None if heldout == NONE_LABEL else heldout,
                          data_root=data_root, **chosen_values)


def render_training_sidebar() -> None:
    """The training panel in the sidebar: current or last job, then the form."""
    with st.sidebar:
        st.subheader("Train a head")
        st.caption("Fits a small classifier head on frozen ImageNet features: seconds to "
                   "minutes. A teaching exercise, never a diagnostic model.")
        panel_box = st.container()
        rights = _access()
        status = _current()
        if not rights.allowed:
            st.info(md(rights.reason), icon=":material/lock:")
        else:
            data_root = paths.data_root()
            datasets = _datasets(str(data_root))
            with st.expander("New training run",
                             expanded=status is None or not status.active):
                try:
                    config = _form(data_root, datasets, rights)
                except (ValueError, OSError) as error:  # a folder outside the data root
                    config = None
                    st.error(f"Cannot start: {md(one_line(error))}")
                if config is not None:
                    try:
                        jobs.start_job(config)
                    except jobs.JobRunning as error:
                        st.warning(f"{md(error)}. It is shown above.")
                    except (ValueError, OSError) as error:  # JobError, DatasetError, params
                        st.error(f"Cannot start: {md(one_line(error))}")
                    else:
                        st.session_state[SEEN_KEY] = None
                        st.rerun(scope="app")
        with panel_box:
            _panel(POLL_SECONDS if status is not None and status.active else None)
