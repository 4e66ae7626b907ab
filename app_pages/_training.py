"""Sidebar training panel: a form that starts a job and a fragment that watches it.

Streamlit glue only. Jobs, locks, validation and the progress summary live in
:mod:`xrcompare.jobs`; the job's state is in files on disk, so it survives reloads, page
changes, other tabs and app restarts.
"""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

from xrcompare import jobs
from xrcompare.backbones import REGISTRY, weights_status
from xrcompare.charts import training_curves_figure

LOG = logging.getLogger("xrcompare.app")
POLL_SECONDS = 1.0
LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
IMAGE_SIZES = (None, 64, 96, 128, 160, 192, 224, 256, 299, 320, 384, 448, 512)
SEEN_KEY = "training_seen_final_job"
NONE_LABEL = "(none)"


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
    return jobs.list_datasets(root)


@st.cache_data(ttl=30, show_spinner=False)
def _weights() -> dict[str, tuple[bool, str]]:
    return {name: (status.available, status.detail)
            for name, status in ((name, weights_status(name)) for name in REGISTRY)}


def _current():
    try:
        return jobs.current_job()
    except (OSError, ValueError) as error:
        st.warning(f"Cannot read the training jobs folder: {jobs.error_line(error)}")
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


def _show(status) -> None:
    """One job's panel: live while it runs, its outcome afterwards."""
    progress = status.progress
    plan = status.plan
    names = [REGISTRY[name].display_name if name in REGISTRY else name
             for name in plan.get("backbones", [])]
    what = (f"{', '.join(names)} on {plan.get('data_name', '?')} "
            f"({plan.get('images', '?')} images, {plan.get('epochs', '?')} epochs)")
    if status.active:
        st.markdown(f"**Training:** {what}")
        st.progress(min(1.0, max(0.0, progress["fraction"])), text=progress["phase_text"])
        left = progress.get("eta_seconds")
        st.caption(f"{_duration(status.elapsed)} elapsed"
                   + (f" · about {_duration(left)} left (estimate)" if left is not None else ""))
        _curve(status)
        if status.cancel_requested:
            st.caption("Cancelling…")
        elif st.button("Cancel training", key=f"cancel-{status.job_id}",
                       use_container_width=True):
            try:  # returns at once; the polling panel shows the outcome when it is recorded
                jobs.request_cancel(status.job_id)
            except (OSError, ValueError) as error:
                st.error(f"Could not cancel: {jobs.error_line(error)}")
            else:
                st.rerun(scope="app")
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
        st.error(f"Training failed: {status.error}")
    else:
        st.warning(f"Training ended without an outcome: {status.error}")
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
                     f"{jobs.error_line(error)[:200]}); the run pages still work.")

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
    _show(status)


def _form(data_root, datasets: list[str]) -> jobs.TrainRequest | None:
    weights = _weights()
    available = [name for name, (ok, _) in weights.items() if ok]
    unavailable = {name: detail for name, (ok, detail) in weights.items() if not ok}
    defaults = jobs.request_defaults()  # TrainConfig's, so the form and the CLI agree
    with st.form("training-form", border=False):
        default = datasets.index("seed001_0402") if "seed001_0402" in datasets else 0
        dataset = st.selectbox("Dataset", datasets or [NONE_LABEL], index=default,
                               help=f"Folders found under the data root {data_root}")
        typed = st.text_input("…or a folder inside the data root",
                              placeholder="e.g. my_class/cxr_small",
                              help="Used instead of the list when filled in. Relative paths "
                                   "start at the data root; folders outside it are refused.")
        reasons = "\n".join(f"- **{REGISTRY[name].display_name}**: {detail}"
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
        left, right = st.columns(2)
        epochs = left.number_input("Epochs", min_value=1, max_value=500,
                                   value=defaults["epochs"], step=1)
        batch_size = right.number_input("Batch size", min_value=1, max_value=512,
                                        value=defaults["batch_size"], step=1)
        learning_rate = st.select_slider("Learning rate", options=LEARNING_RATES,
                                         value=defaults["learning_rate"],
                                         format_func=lambda v: f"{v:g}")
        image_size = st.selectbox(
            "Input size", IMAGE_SIZES,
            format_func=lambda v: "each backbone's own (224 px; Xception 299)" if v is None
            else f"{v} px")
        left, right = st.columns(2)
        views = left.number_input("Augmented views", min_value=0, max_value=16,
                                  value=defaults["augment_views"], step=1,
                                  help="Extra augmented copies of each training image")
        seed = right.number_input("Seed", min_value=0, max_value=2**31 - 1,
                                  value=defaults["seed"], step=1)
        heldout = st.selectbox("Held-out folder (optional)", [NONE_LABEL, *datasets],
                               help="Never used in training; predicted after it. Do not hold "
                                    "out a folder that shares images or patients with the "
                                    "training data (seed001_0402 images also appear in cxr3).")
        submitted = st.form_submit_button("Start training", type="primary",
                                          use_container_width=True)
    if not submitted:
        return None
    folder = typed.strip() or (dataset if dataset != NONE_LABEL else "")
    return jobs.TrainRequest(
        dataset=folder, backbones=list(chosen), epochs=int(epochs),
        batch_size=int(batch_size), learning_rate=float(learning_rate),
        image_size=image_size, augment_views=int(views), seed=int(seed),
        heldout=None if heldout == NONE_LABEL else heldout)


def render_training_sidebar() -> None:
    """The training panel in the sidebar: current or last job, then the form."""
    with st.sidebar:
        st.subheader("Train a head")
        st.caption("Fits a small classifier head on frozen ImageNet features: seconds to "
                   "minutes. A teaching exercise, never a diagnostic model.")
        panel_box = st.container()
        data_root = jobs.default_data_root()
        datasets = _datasets(str(data_root))
        status = _current()
        with st.expander("New training run", expanded=status is None or not status.active):
            request = _form(data_root, datasets)
            if request is not None:
                try:
                    jobs.start_job(request)
                except jobs.JobRunning as error:
                    st.warning(f"{error}. It is shown above.")
                except (ValueError, OSError) as error:  # JobError, DatasetError, bad params
                    st.error(f"Cannot start: {jobs.error_line(error)}")
                else:
                    st.session_state[SEEN_KEY] = None
                    st.rerun(scope="app")
        with panel_box:
            _panel(POLL_SECONDS if status is not None and status.active else None)
