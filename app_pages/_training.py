"""Sidebar training panel: a form that queues a request and a fragment that watches the queue.

Streamlit glue only. The form's widgets come from :class:`xrcompare.config.TrainConfig`'s
declarations (labels, bounds, defaults, offered values); whether settings repeat a run is
:meth:`TrainConfig.repeated_runs`, whether a held-out folder is held out is
:func:`xrcompare.experiment.heldout_overlap`; the queue, its owners and who may cancel what
live in :mod:`xrcompare.jobs`, Ray in :mod:`xrcompare.dispatch` and
:mod:`xrcompare.ray_engine`, the progress summary and time left in :mod:`xrcompare.progress`.
The queue is in files on disk, so it survives reloads, page changes, other tabs and app
restarts.

Each browser session types a name once; its requests carry that name and a hash of the
session's secret token, so a student cancels their own requests and nobody else's. The
teacher (anyone on a loopback server without a key; else whoever typed the teacher key)
cancels any request and reorders the queue. The queue's panel is a polling fragment; the
buttons lie outside it, so they never flicker, and the page reruns when they must change.
"""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

from app_pages import _common as common
from xrcompare import access, jobs, paths
from xrcompare.backbones import RANDOM_WEIGHTS, REGISTRY, weights_status
from xrcompare.charts import training_curves_figure
from xrcompare.classes import default_positive
from xrcompare.config import TrainConfig, check_name, form_param, sidebar_config
from xrcompare.data import DatasetError, list_datasets, scan_dataset
from xrcompare.errors import one_line
from xrcompare.escaping import escape_markdown as md
from xrcompare.glossary import explain
from xrcompare.progress import format_duration
from xrcompare.summary import KAGGLE_HELDOUT

LOG = logging.getLogger("xrcompare.app")
POLL_SECONDS = 1.0
IDLE_POLL_SECONDS = 3.0
SEEN_KEY = "training_seen_queue"
TOKEN_KEY = "training_session_token"
OWNER_KEY = "training_owner"
RUN_NAME_KEY = "training_run_name"
CLEAR_NAME_KEY = "training_clear_run_name"
NONE_LABEL = "(none)"
#: The dataset the form offers first: the 2020 blog's 305 images train in about a minute.
DEFAULT_DATASET = "seed001_0402"
#: Session flag set once this browser session typed the teacher key (never the key itself).
UNLOCKED_KEY = "training_teacher_unlocked"
KEY_FIELD = "training_teacher_key"
KEY_HELP = ("The teacher's key unlocks cancelling anyone's request and reordering the "
            "queue; students queue and cancel their own without it.")


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


@st.cache_data(ttl=10, show_spinner=False)
def _datasets(root: str) -> list[str]:
    return list_datasets(root)


@st.cache_data(ttl=30, show_spinner=False)
def _weights() -> dict[str, tuple[bool, str]]:
    return {name: (status.available, status.detail)
            for name, status in ((name, weights_status(name)) for name in REGISTRY)}


@st.cache_data(ttl=30, show_spinner=False, max_entries=32)
def _folder_facts(data: str, heldout: str | None) -> dict:
    """How many images the training folder holds, and how its patients meet the held-out
    folder's (:func:`xrcompare.experiment.heldout_overlap`); ``problem`` when a folder cannot
    be read."""
    from xrcompare.experiment import heldout_overlap

    try:
        dataset = scan_dataset(data)
        facts = {"images": len(dataset.records), "classes": dataset.classes, "overlap": None,
                 "problem": None}
        if heldout:
            facts["overlap"] = heldout_overlap(dataset, scan_dataset(heldout))
    except (DatasetError, OSError, ValueError) as error:
        return {"images": None, "classes": [], "overlap": None, "problem": one_line(error)}
    return facts


def _token() -> str:
    """This browser session's secret token (its requests carry its hash)."""
    if TOKEN_KEY not in st.session_state:
        st.session_state[TOKEN_KEY] = jobs.new_session_token()
    return st.session_state[TOKEN_KEY]


def _is_teacher(rights: access.TrainingAccess) -> bool:
    return _unlocked(rights)


def _view():
    try:
        return jobs.queue_view()
    except (OSError, ValueError) as error:
        st.warning(f"Cannot read the training queue: {md(one_line(error))}")
        return None


def _dispatcher():
    """This app's dispatcher (started once; it starts Ray with the first request)."""
    from xrcompare import dispatch

    try:
        return dispatch.ensure_dispatcher()
    except (OSError, ValueError) as error:
        LOG.warning("dispatcher: %s", error)
        return None


# --------------------------------------------------------------------------- the queue's panel


def _curve(status) -> None:
    """The loss/accuracy curve so far, for the backbone (and fold) being trained."""
    curve = pd.DataFrame(status.progress.get("curve") or [])
    if curve.empty:
        return
    last = curve[(curve["backbone"] == curve["backbone"].iloc[-1])
                 & (curve["fold"] == curve["fold"].iloc[-1])]
    figure = training_curves_figure(last)
    figure.update_layout(height=230, margin={"l": 4, "r": 4, "t": 28, "b": 4},
                         font={"size": 10}, legend={"orientation": "h", "y": -0.3,
                                                    "yref": "paper"})
    figure.update_annotations(font={"size": 11})
    figure.update_xaxes(title_text=None)
    st.plotly_chart(figure, width="stretch", config={"displayModeBar": False},
                    key=f"training-curve-{status.job_id}")


def _what(status) -> str:
    plan = status.plan
    names = [REGISTRY[name].display_name if name in REGISTRY else name
             for name in plan.get("backbones", [])] or ["image statistics"]
    return md(f"{', '.join(names)} on {plan.get('data_name', '?')} "
              f"({plan.get('images', '?')} images, {plan.get('epochs', '?')} epochs)")


def _who(status, token: str) -> str:
    mine = " (you)" if status.owned_by(token) else ""
    return f"{md(status.owner)}{mine}"


def _show_active(status, token: str, with_curve: bool) -> None:
    progress = status.progress
    st.markdown(f"**Training:** {_what(status)} — {_who(status, token)}")
    st.progress(min(1.0, max(0.0, progress.get("fraction", 0.0))),
                text=md(progress.get("phase_text", "")))
    left = progress.get("eta_text")
    waited = f" · waited {format_duration(status.waited)}" if status.waited else ""
    cancelling = " · cancelling…" if status.cancel_requested else ""
    st.caption(f"{format_duration(status.elapsed)} elapsed" + (f" · {md(left)}" if left else "")
               + waited + cancelling)
    if with_curve:
        _curve(status)


def _show_queued(queued: list, token: str) -> None:
    rows = [f"{status.position}. {_who(status, token)} — {_what(status)}, waiting "
            f"{format_duration(status.waited)}" for status in queued]
    st.markdown("**Waiting:**\n" + "\n".join(f"- {row}" for row in rows[:30])
                + (f"\n- … and {len(rows) - 30} more" if len(rows) > 30 else ""))
    notes = [status for status in queued if status.note and status.owned_by(token)]
    for status in notes:
        st.caption(md(status.note))


def _show_final(status, token: str) -> None:
    """A request's outcome."""
    what = f"{_what(status)} — {_who(status, token)}"
    if status.state == "done":
        count = len(status.runs)
        st.success(f"Finished in {format_duration(status.elapsed)}: {what}. "
                   f"{count} new run{'s' if count != 1 else ''} in the leaderboard.")
    elif status.state == "cancelled":
        kept = (f" {len(status.runs)} run(s) finished before the cancel and were kept."
                if status.runs else " No run was kept.")
        after = (f"after {format_duration(status.elapsed)}" if status.elapsed
                 else "while waiting in the queue")
        st.info(f"Cancelled {after}: {what}.{kept}")
    elif status.state == "failed":
        st.error(f"Training failed: {md(status.error)} ({what})")
    else:
        st.warning(f"Training ended without an outcome: {md(status.error)} ({what})")
    if status.state in ("failed", "stale") and status.log_tail:
        with st.expander("Last log lines"):
            st.code("\n".join(status.log_tail[-15:]), language=None, wrap_lines=True)


def _panel(run_every: float | None, rights: access.TrainingAccess):
    @st.fragment(run_every=run_every)
    def panel() -> None:
        # A fragment reruns on its own, outside the router's safety net: keep its own.
        try:
            _panel_body(run_every, rights)
        except Exception as error:
            LOG.exception("training panel failed")
            st.error(f"The training panel hit a problem ({type(error).__name__}: "
                     f"{md(one_line(error))}); the run pages still work.")

    panel()


def _page_signature(view, token: str, teacher: bool) -> tuple:
    """What, when it changes, needs the whole page again: a request that ended (a new
    run), this session's own requests and their places (its Cancel buttons name them), and
    for the teacher any change of the queue."""
    ended = tuple(status.job_id for status in view.finished)
    own = tuple((status.job_id, status.state, status.position) for status in view.open
                if status.owned_by(token))
    everyone = view.signature if teacher else ()
    return ended, own, everyone, bool(view.open)


def _panel_body(run_every: float | None, rights: access.TrainingAccess) -> None:
    view = _view()
    if view is None:
        return
    token = _token()
    signature = _page_signature(view, token, _is_teacher(rights))
    if SEEN_KEY not in st.session_state:
        st.session_state[SEEN_KEY] = signature  # what this session found on arrival
    elif st.session_state[SEEN_KEY] != signature:
        st.session_state[SEEN_KEY] = signature
        st.rerun(scope="app")  # new runs on every page, new buttons, polling pace
    if view.open:
        dispatcher = _dispatcher()
        if dispatcher is not None:
            st.caption(md(dispatcher.status_text[:1].upper() + dispatcher.status_text[1:]))
        for number, status in enumerate(view.active):
            _show_active(status, token, with_curve=number == 0 or status.owned_by(token))
        if view.queued:
            _show_queued(view.queued, token)
        return
    if not view.finished:
        st.caption("No training job yet.")
        return
    _show_final(view.finished[0], token)
    _curve(view.finished[0])


def _cancel(status, rights: access.TrainingAccess) -> None:
    """Cancel a request (returns at once; the panel shows the outcome when Ray stopped it)."""
    try:
        jobs.request_cancel(status.job_id, owner_token=_token(),
                            teacher=_is_teacher(rights))
    except (OSError, ValueError) as error:  # NotAllowed, a request that ended meanwhile
        st.error(f"Could not cancel: {md(one_line(error))}")
        return
    dispatcher = _dispatcher()
    if dispatcher is not None:
        dispatcher.wake()
    st.rerun(scope="app")


def _teacher_key_form(rights: access.TrainingAccess, where: str) -> None:
    with st.form(f"teacher-key-{where}", border=False):
        typed = st.text_input("Teacher key", type="password", key=f"{KEY_FIELD}-{where}",
                              help=KEY_HELP)
        if st.form_submit_button("Unlock teacher controls", width="stretch"):
            if _unlock(typed):
                st.rerun(scope="app")
            st.error("Wrong teacher key.")


def _own_controls(view, rights: access.TrainingAccess) -> None:
    """A Cancel button per request of this session (or every running one for the
    teacher). Drawn once per page run, outside the polling panel."""
    token, teacher = _token(), _is_teacher(rights)
    for status in view.active:
        if not (teacher or status.owned_by(token)):
            continue
        if status.cancel_requested:
            st.caption(f"Cancelling {md(status.owner)}'s training…")
        elif st.button("Cancel training" if len(view.active) == 1
                       else f"Cancel {status.owner}'s training", key=f"cancel-{status.job_id}",
                       width="stretch", icon=":material/stop_circle:"):
            _cancel(status, rights)
    for status in view.queued:
        if status.owned_by(token) and not teacher:
            if st.button(f"Cancel my request (place {status.position})",
                         key=f"cancel-{status.job_id}", width="stretch",
                         icon=":material/close:"):
                _cancel(status, rights)


def _teacher_controls(view, rights: access.TrainingAccess) -> None:
    """The teacher's queue: pick a waiting request, run it next, move it, or cancel it."""
    if not view.queued:
        return
    # keyed: the label's count changes whenever anyone files or cancels, and an unkeyed
    # expander with a new label is a new one, drawn closed under the teacher's hand
    with st.expander(f"Manage the queue ({len(view.queued)} waiting)",
                     key="training_manage_queue"):
        by_id = {status.job_id: status for status in view.queued}
        chosen = st.selectbox("Request", list(by_id), key="training_manage_request",
                              format_func=lambda job_id: f"{by_id[job_id].position}. "
                              f"{by_id[job_id].owner}: {by_id[job_id].plan.get('data_name', '?')}")
        status = by_id.get(chosen)
        if status is None:
            return
        first, up, down, cancel = st.columns(4)
        moves = {"Run next": 1, "Up": max(1, status.position - 1), "Down": status.position + 1}
        for column, label in ((first, "Run next"), (up, "Up"), (down, "Down")):
            if column.button(label, key=f"move-{label}-{chosen}", width="stretch"):
                try:
                    jobs.move(chosen, moves[label], teacher=_is_teacher(rights))
                except (OSError, ValueError) as error:
                    st.error(f"Could not move it: {md(one_line(error))}")
                else:
                    st.rerun(scope="app")
        if cancel.button("Cancel", key=f"cancel-queued-{chosen}", width="stretch"):
            _cancel(status, rights)


def _controls(view, rights: access.TrainingAccess) -> None:
    if not rights.allowed:
        if view.open:
            st.caption("Only the teacher can cancel training on this server.")
        return
    _own_controls(view, rights)
    if _is_teacher(rights):
        _teacher_controls(view, rights)
    elif view.open and rights.needs_key:
        with st.expander("Teacher controls"):
            _teacher_key_form(rights, "cancel")


# --------------------------------------------------------------------------- the form


def _size_text(value) -> str:
    return "each backbone's own (224 px; Xception 299)" if value is None else f"{value} px"


def _widget(name: str, container=st):
    """The form's widget for a TrainConfig setting, built from its declaration: a number box
    with its range and default, a select of the values it offers, a tick box for the
    random-init control, a text field for the run name."""
    param = form_param(name)
    if name == "weights":
        ticked = container.checkbox(param["label"], value=param["default"] == RANDOM_WEIGHTS,
                                    key="training_random_init", help=explain("random_init"))
        return RANDOM_WEIGHTS if ticked else param["default"]
    if name == "name":
        if st.session_state.pop(CLEAR_NAME_KEY, False):
            st.session_state[RUN_NAME_KEY] = ""
        typed = container.text_input(param["label"], key=RUN_NAME_KEY,
                                     placeholder="automatic: date-backbone-data",
                                     help=f"Optional: the {param['help']}. It becomes the "
                                          "run's folder and shows in its name.")
        return typed.strip() or None
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
    if param["kind"] == "str":  # a choice of words (--fine-tune)
        return container.selectbox(param["label"], options, index=default, help=param["help"])
    return container.select_slider(param["label"], options=options, value=options[default],
                                   format_func=lambda v: f"{v:g}", help=param["help"])


#: The form's settings (every one of :data:`xrcompare.config.FORM_FIELDS`), laid out two to
#: a row where they are small number boxes; ``weights`` and ``name`` have their own places.
FORM_ROWS = (("epochs", "batch_size"), ("learning_rate",), ("image_size",),
             ("augment_views", "seed"), ("fine_tune",))


def _positive_choice(folder: str, classes: list[str]) -> str | None:
    """The positive-class select: the training folder's classes, covid (else the first in
    sorted order) by default, as ``--positive`` does; None while the folder has no classes."""
    if not classes:
        return None
    param = form_param("positive")
    return st.selectbox(param["label"], classes, index=classes.index(default_positive(classes)),
                        key=f"training_positive::{folder}",
                        help=param["help"][0].upper() + param["help"][1:] + ".")


def _heldout_choice(dataset: str, datasets: list[str]) -> str:
    """The held-out select: every other dataset; the Kaggle test split first when it is
    there, so a student's run has the Kaggle columns."""
    options = [NONE_LABEL, *[name for name in datasets if name != dataset]]
    default = options.index(KAGGLE_HELDOUT) if KAGGLE_HELDOUT in options else 0
    return st.selectbox("Held-out folder", options, index=default,
                        key=f"training_heldout::{dataset}",
                        help=explain("heldout") + " A folder that shares most of its "
                             "patients with the training data is refused (seed001_0402 "
                             "images are also in cxr3); a few shared patients are measured "
                             "and the folder is scored with and without them.")


def _repeat_warning(config: TrainConfig, data_images: int | None) -> None:
    """Say which existing runs these settings would repeat, with a way to look at them."""
    repeats = config.repeated_runs(common.all_runs(), data_images)
    if not repeats:
        return
    labels, _ = common.labels_and_colors()
    for _, run in repeats:
        name = labels.get(run.run_id, run.title)
        st.warning(f"These settings repeat the run **{md(name)}** (folder "
                   f"{md(run.run_id)}): training again gives the same head. Change a setting "
                   "(seed, epochs, input size, random-init…) to learn something new.",
                   icon=":material/content_copy:")
        if st.button(f"Show only {md(name)}",
                     key=f"training_show_repeat::{run.run_id}", type="tertiary",
                     icon=":material/visibility:", on_click=common.show_only_run,
                     args=(run.run_id,)):
            st.rerun(scope="app")


def _name_problem(name: str | None, backbones: list[str], runs_dir) -> str | None:
    if not name:
        return None
    try:
        check_name(name)
    except ValueError as error:
        return str(error)
    if len(backbones) == 1 and (runs_dir / name).exists():
        return f"a run named {name} already exists: choose another name"
    return None


def _form(data_root, datasets: list[str], rights: access.TrainingAccess
          ) -> TrainConfig | None:
    """The settings, their live checks and the Start button; the configuration to start when
    Start was pressed and everything checks out, else None."""
    weights = _weights()
    chosen_values = {}
    default = datasets.index(DEFAULT_DATASET) if DEFAULT_DATASET in datasets else 0
    dataset = st.selectbox("Dataset", datasets or [NONE_LABEL], index=default,
                           key="training_dataset",
                           help=f"Folders found under the data root {md(data_root)}")
    typed = st.text_input("…or a folder inside the data root", key="training_typed_folder",
                          placeholder="e.g. my_class/cxr_small",
                          help="Used instead of the list when filled in. Relative paths "
                               "start at the data root; folders outside it are refused.")
    chosen_values["weights"] = _widget("weights")
    random_init = chosen_values["weights"] == RANDOM_WEIGHTS
    # A random-init control needs no ImageNet file: every backbone can be one.
    available = [name for name, (ok, _) in weights.items() if ok or random_init]
    unavailable = {name: detail for name, (ok, detail) in weights.items()
                   if name not in available}
    reasons = "\n".join(f"- **{REGISTRY[name].display_name}**: {md(detail)}"
                        for name, detail in unavailable.items())
    chosen = st.multiselect("Backbones", available,
                            default=["resnet50"] if "resnet50" in available else [],
                            format_func=lambda name: REGISTRY[name].display_name,
                            key=f"training_backbones::{random_init}",
                            help=(explain("frozen_base") + "\n\nOnly backbones whose ImageNet "
                                  "weights are here.\n\n" + reasons) if unavailable
                            else explain("frozen_base"))
    if unavailable:
        st.caption("Not available, no ImageNet weights here (the ? of Backbones says "
                   "where they would go): "
                   + ", ".join(REGISTRY[name].display_name for name in unavailable))
    for row in FORM_ROWS:
        cells = st.columns(len(row)) if len(row) > 1 else [st]
        for name, cell in zip(row, cells, strict=True):
            chosen_values[name] = _widget(name, cell)
    folder = typed.strip() or (dataset if dataset != NONE_LABEL else "")
    heldout = _heldout_choice(folder, datasets)
    chosen_values["name"] = _widget("name")
    config, problem, refused = None, None, False
    try:
        config = sidebar_config(folder, list(chosen), None if heldout == NONE_LABEL else heldout,
                                data_root=data_root, **chosen_values)
    except (ValueError, OSError) as error:  # a folder outside the data root, a bad setting
        problem = one_line(error)
    if config is not None:
        facts = _folder_facts(str(config.data), str(config.heldout[0]) if config.heldout
                              else None)
        overlap = facts["overlap"]
        if facts["problem"]:
            problem = facts["problem"]
        elif overlap and overlap["refused"]:
            refused = True
            st.error(f"{md(overlap['sentence'])}.", icon=":material/group:")
        elif overlap and overlap["shared_images"]:
            st.caption(f":material/group: {md(overlap['sentence'])}")
        config.positive = _positive_choice(str(config.data), facts["classes"])
        name_problem = _name_problem(config.name, config.backbones, config.runs_folder)
        if name_problem:
            st.error(f"{md(name_problem)}.")
            refused = True
        _repeat_warning(config, facts["images"])
    submitted = st.button("Start training", type="primary", width="stretch",
                          key="training_start", disabled=refused,
                          help="Refused settings are named above." if refused else None)
    if not submitted:
        return None
    if problem:
        st.error(f"Cannot start: {md(problem)}")
        return None
    return config


def _form_fragment(data_root, datasets: list[str], rights: access.TrainingAccess) -> None:
    @st.fragment
    def form() -> None:
        try:
            config = _form(data_root, datasets, rights)
        except Exception as error:  # a fragment reruns outside the router's safety net
            LOG.exception("training form failed")
            st.error(f"The training form hit a problem ({type(error).__name__}: "
                     f"{md(one_line(error))}); the run pages still work.")
            return
        if config is None:
            return
        owner = st.session_state.get(OWNER_KEY) or ("teacher" if _is_teacher(rights) else "")
        try:
            status = jobs.submit_request(config, owner, _token())
        except (ValueError, OSError) as error:  # JobError, DatasetError, params
            st.error(f"Cannot start: {md(one_line(error))}")
        else:
            dispatcher = _dispatcher()
            if dispatcher is not None:
                dispatcher.wake()
            LOG.info("queued %s for %s at place %s", status.job_id, owner, status.position)
            st.session_state.pop(SEEN_KEY, None)
            # a run name is one run's: kept, it turns into "a run named … already exists"
            # under the student's hand the moment their run lands (emptied in the next run,
            # before the field is drawn: the browser sends a widget's value back otherwise)
            st.session_state[CLEAR_NAME_KEY] = True
            st.rerun(scope="app")

    form()


def _owner_field(rights: access.TrainingAccess) -> None:
    """The name this session's requests show, typed once per session."""
    default = "teacher" if _is_teacher(rights) else ""
    st.session_state.setdefault(OWNER_KEY, default)
    st.text_input("Your name", key=OWNER_KEY, max_chars=jobs.OWNER_MAX_LENGTH,
                  placeholder="shown beside your requests in the queue",
                  help="Typed once per browser session; your requests carry it, and only "
                       "this session (or the teacher) can cancel them.")


def render_training_sidebar(top=None) -> None:
    """The training panel in the sidebar: the queue at the top (``top``, a sidebar container
    above the run picker) while requests wait or run, then the form and the last outcome."""
    rights = _access()
    view = _view()
    busy = view is not None and bool(view.open)
    if busy:
        _dispatcher()  # queued or running requests found on disk: follow them (app restart)
        with top if top is not None else st.sidebar:
            st.subheader("Training now", anchor=common.TRAINING_ANCHOR)
            _panel(POLL_SECONDS, rights)
            _controls(view, rights)
            st.divider()
    with st.sidebar:
        st.subheader("Train a head")
        st.caption("Fits a small classifier head on frozen ImageNet features: seconds to "
                   "minutes. A teaching exercise, never a diagnostic model.")
        if not busy:
            _panel(IDLE_POLL_SECONDS, rights)
        if not rights.allowed:
            st.info(md(rights.reason), icon=":material/lock:")
            return
        data_root = paths.data_root()
        datasets = _datasets(str(data_root))
        with st.expander("New training run", expanded=not busy):
            if busy:
                st.caption("Requests wait in the queue and run in turn; yours shows its "
                           "place, then its progress.")
            _owner_field(rights)
            _form_fragment(data_root, datasets, rights)
        if rights.needs_key and not _is_teacher(rights) and not busy:
            with st.expander("Teacher controls"):
                _teacher_key_form(rights, "start")
