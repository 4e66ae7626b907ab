"""Streamlit glue shared by the pages: the page list, cached run loading, the sidebar run
picker, the empty state, banners and thumbnails. The logic itself lives in ``xrcompare``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from xrcompare import paths
from xrcompare.charts import for_projector, run_colors, run_labels, thumbnail
from xrcompare.escaping import escape_markdown as md  # noqa: F401 - pages use common.md
from xrcompare.imaging import ImageError, read_gray
from xrcompare.runs import Run, RunListing, list_runs, runs_fingerprint, slug

LOG = logging.getLogger("xrcompare.app")

#: Session-state key of the run picker: the selected run ids, shared by every page.
SELECTED_RUNS_KEY = "selected_run_ids"
_PICK_PREFIX = "run_pick::"
_BACKBONE_FILTER_KEY = "run_filter_backbone"
_DATA_FILTER_KEY = "run_filter_data"

TRAIN_COMMAND = ("python -m xrcompare train --data ../shared/data/seed001_0402 "
                 "--backbone resnet50 --heldout ../shared/data/kaggle_test")


@dataclass(frozen=True)
class PageSpec:
    path: str
    title: str
    icon: str
    section: str


#: Every page of the dashboard, in menu order (paths relative to the repository root).
PAGES = (
    PageSpec("app_pages/overview.py", "Overview", ":material/leaderboard:", "Compare runs"),
    PageSpec("app_pages/per_class.py", "Per-class scores", ":material/bar_chart:", "Compare runs"),
    PageSpec("app_pages/confusion.py", "Confusion matrices", ":material/grid_on:", "Compare runs"),
    PageSpec("app_pages/curves.py", "Training curves", ":material/show_chart:", "Compare runs"),
    PageSpec("app_pages/tradeoffs.py", "Recall trade-offs", ":material/tune:", "Compare runs"),
    PageSpec("app_pages/heldout.py", "Held-out Kaggle test", ":material/science:", "Compare runs"),
    PageSpec("app_pages/compare.py", "Compare two runs", ":material/compare_arrows:",
             "Compare runs"),
    PageSpec("app_pages/dataset.py", "Dataset", ":material/photo_library:", "Data and models"),
    PageSpec("app_pages/predict.py", "Predict & explain", ":material/image_search:",
             "Data and models"),
    PageSpec("app_pages/batch.py", "Predict a batch", ":material/table_view:",
             "Data and models"),
    PageSpec("app_pages/evaluate_folder.py", "Evaluate on a folder", ":material/fact_check:",
             "Data and models"),
    PageSpec("app_pages/glossary.py", "Glossary", ":material/menu_book:", "Data and models"),
    PageSpec("app_pages/card.py", "Model card", ":material/description:", "Data and models"),
    PageSpec("app_pages/lesson.py", "Why 98% is a warning sign", ":material/school:",
             "Shortcuts"),
    PageSpec("app_pages/shortcuts.py", "Shortcut lab", ":material/science:", "Shortcuts"),
)


def page_spec(title: str) -> PageSpec:
    return next(spec for spec in PAGES if spec.title == title)


# --------------------------------------------------------------------------- loading runs


@st.cache_data(show_spinner="Loading runs…", max_entries=8)
def _cached_listing(runs_dir: str, fingerprint: tuple) -> RunListing:
    """Every run folder, read once per change of the folder (``fingerprint`` is the key)."""
    return list_runs(runs_dir)


def runs_dir() -> Path:
    return paths.runs_dir()


def load_listing() -> RunListing:
    """The runs and the broken folders of the runs folder (cached on its fingerprint)."""
    folder = runs_dir()
    return _cached_listing(str(folder), runs_fingerprint(folder))


def all_runs() -> list[Run]:
    return load_listing().runs


def labels_and_colors(runs: list[Run] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Run id → shown name, and shown name → colour, stable over every run in the folder."""
    everything = all_runs()
    labels = run_labels(everything)
    colors = run_colors([labels[run.run_id] for run in everything])
    if runs is not None:
        labels = {**labels, **{run.run_id: labels.get(run.run_id, run.title) for run in runs}}
    return labels, colors


def selected_runs() -> list[Run]:
    """The runs picked in the sidebar (all runs when the picker has not been shown)."""
    runs = all_runs()
    chosen = st.session_state.get(SELECTED_RUNS_KEY)
    if chosen is None:
        return runs
    chosen = set(chosen)
    return [run for run in runs if run.run_id in chosen]


# --------------------------------------------------------------------------- sidebar


def _backbone_name(run: Run) -> str:
    return run.backbone_display


def _data_name(run: Run) -> str:
    return run.data_name or "?"


def _matching(runs: list[Run]) -> list[Run]:
    backbones = st.session_state.get(_BACKBONE_FILTER_KEY)
    datas = st.session_state.get(_DATA_FILTER_KEY)
    return [run for run in runs
            if (not backbones or _backbone_name(run) in backbones)
            and (not datas or _data_name(run) in datas)]


def _pick_key(run_id: str) -> str:
    return f"{_PICK_PREFIX}{run_id}"


def _set_all(run_ids: list[str], value: bool) -> None:
    for run_id in run_ids:
        st.session_state[_pick_key(run_id)] = value


def _describe(run: Run) -> str:
    if run.is_cnn:
        parts = [f"folder {run.run_id}", f"{run.image_size} px, {run.resize_mode}",
                 f"epoch {run.kept_epoch_text}"]
    else:
        parts = [f"folder {run.run_id}", "no CNN: logistic regression on image statistics"]
    if run.control_label:
        parts.append(run.control_label)
    if run.folds:
        parts.append(f"{run.folds}-fold cross-validation")
    if run.is_leaky:
        parts.append(f"{run.protocol_label}: {'; '.join(run.leaky_reasons)}")
    if run.description:
        parts.append(run.description)
    return " · ".join(parts)


def render_run_picker() -> list[Run]:
    """The sidebar's run picker: filters by backbone and data, then one checkbox per run.

    The picked run ids are kept in ``st.session_state[SELECTED_RUNS_KEY]`` for every page;
    a run that appears later (a new training run) starts picked.
    """
    listing = load_listing()
    runs = listing.runs
    state = st.session_state
    with st.sidebar:
        st.header("Runs to compare")
        for name, reason in listing.problems:
            st.warning(f"Run folder **{md(name)}** could not be read and is hidden: "
                       f"{md(reason)}", icon=":material/warning:")
        if not runs:
            state[SELECTED_RUNS_KEY] = []
            st.caption(f"No runs in {md(runs_dir())} yet.")
            return []
        backbones = sorted({_backbone_name(run) for run in runs})
        datas = sorted({_data_name(run) for run in runs})
        if len(backbones) > 1 or len(datas) > 1:
            left, right = st.columns(2)
            with left:
                st.multiselect("Backbone", backbones, key=_BACKBONE_FILTER_KEY,
                               placeholder="all", persist_state="session",
                               help="Show only runs of these frozen CNNs (empty: all).")
            with right:
                st.multiselect("Data", datas, key=_DATA_FILTER_KEY, placeholder="all",
                               persist_state="session",
                               help="Show only runs trained on these folders (empty: all).")
        candidates = _matching(runs)
        labels = run_labels(runs)
        for run in candidates:
            state.setdefault(_pick_key(run.run_id), True)
        if len(candidates) > 3:
            left, right = st.columns(2)
            ids = [run.run_id for run in candidates]
            left.button("All", key="run_pick_all", type="tertiary", on_click=_set_all,
                        args=(ids, True), icon=":material/select_all:")
            right.button("None", key="run_pick_none", type="tertiary", on_click=_set_all,
                         args=(ids, False), icon=":material/deselect:")
        for run in candidates:
            st.checkbox(md(labels[run.run_id]), key=_pick_key(run.run_id),
                        help=md(_describe(run)), persist_state="session")
        chosen = [run.run_id for run in candidates if state.get(_pick_key(run.run_id))]
        state[SELECTED_RUNS_KEY] = chosen
        hidden = len(runs) - len(candidates)
        st.caption(f"{len(chosen)} of {len(runs)} runs shown"
                   + (f" ({hidden} filtered out)" if hidden else "")
                   + f" · folder {md(runs_dir().name)}/")
    chosen_set = set(chosen)
    return [run for run in runs if run.run_id in chosen_set]


def sidebar_footer() -> None:
    with st.sidebar:
        st.divider()
        st.caption(":material/school: A teaching tool. **Not for diagnosis**: these models "
                   "learned from a small, biased set of images.")


# --------------------------------------------------------------------------- page helpers


def show_no_runs(listing: RunListing) -> None:
    """The friendly empty state: what a run is and how to make one."""
    st.title("No trained runs yet")
    folder = runs_dir()
    if listing.problems:
        st.warning(f"{len(listing.problems)} folder(s) in {md(folder)} could not be read: "
                   + "; ".join(f"**{md(name)}** ({md(reason)})"
                               for name, reason in listing.problems))
    st.markdown(
        f"""
This dashboard compares **runs**: a small classifier head trained on the frozen features of an
ImageNet CNN, with its test-split scores and held-out results. It looks for run folders in
{md(folder)} and found none it could read.

**Train one** with the form in the sidebar, or from a terminal in the repository folder
(about a minute on a laptop CPU):
""")
    st.code(TRAIN_COMMAND, language="bash", wrap_lines=True)
    st.markdown("""
Add `--folds 5` for patient-wise cross-validation, `--resize pad` to keep the aspect ratio, or
`--weights random` for a random-init control. When the run is written, reload this page.
""")


def require_runs() -> list[Run]:
    """The selected runs; shows the empty state (and stops the page) when there are none."""
    listing = load_listing()
    if not listing.runs:
        show_no_runs(listing)
        st.stop()
    runs = selected_runs()
    if not runs:
        st.info("No run is selected. Pick at least one run under **Runs to compare** in the "
                "sidebar.", icon=":material/arrow_back:")
        st.stop()
    return runs


def teaching_banner() -> None:
    """The "teaching, not diagnosis" banner."""
    st.warning(
        "**Teaching, not diagnosis.** The models compared here learn from a few hundred public "
        "chest X-rays from sources that differ by age and hospital. They must never be used on "
        "patients; a high score here is a reason for suspicion, not for trust.",
        icon=":material/school:")


def plot(figure, key: str | None = None) -> None:
    """A plotly figure at the container's width, enlarged in presenter mode, with plotly's
    toolbar (its camera button downloads the chart as a PNG at twice the screen's pixels)."""
    if presenter_mode():
        figure = for_projector(figure)
    st.plotly_chart(figure, width="stretch", key=key, config=plot_config(key))


def plot_config(key: str | None = None) -> dict:
    """Plotly's options for every chart: its toolbar kept (PNG download named after the
    chart), no plotly logo."""
    name = "xrcompare-" + (slug(key) if key else "chart")
    return {"displaylogo": False,
            "toImageButtonOptions": {"format": "png", "filename": name, "scale": 2}}


def _csv_label(name: str, config) -> str:
    """The CSV header of a column: its label in the column config when it has one."""
    if isinstance(config, dict):
        return config.get("label") or name
    if isinstance(config, str):
        return config
    return name


def csv_bytes(frame, column_config: dict | None = None,
              column_order: list[str] | None = None, index: bool = False) -> bytes:
    """A table as UTF-8 CSV, with the headers the page shows (the column config's labels)."""
    import pandas as pd

    frame = pd.DataFrame(frame)
    if column_order is not None:
        frame = frame[[column for column in column_order if column in frame.columns]]
    config = column_config or {}
    frame = frame.rename(columns={column: _csv_label(str(column), config.get(column))
                                  for column in frame.columns if column in config})
    return frame.to_csv(index=index).encode("utf-8")


def table(frame, name: str, *, key: str | None = None, index: bool = False, **options) -> None:
    """``st.dataframe`` of ``frame`` and, under it, a "CSV" button that downloads the table
    as shown (its columns, in order, with their headers). ``options`` go to ``st.dataframe``
    (column_config, column_order, height, placeholder, ...); ``name`` names the file."""
    options.setdefault("placeholder", "–")
    options.setdefault("hide_index", not index)
    st.dataframe(frame, key=key, **options)
    st.download_button(
        "CSV", csv_bytes(frame, options.get("column_config"), options.get("column_order"),
                         index=index),
        file_name=f"xrcompare-{slug(name)}.csv", mime="text/csv", key=f"csv-{key or name}",
        icon=":material/download:", type="tertiary", on_click="ignore",
        help="Download this table as a CSV file (opens in a spreadsheet).")


# --------------------------------------------------------------------------- presenter mode

#: Session-state key of the presenter-mode toggle.
PRESENTER_KEY = "presenter_mode"
#: What presenter mode does to the page: larger type everywhere (Streamlit sizes in rem),
#: wider content.
PRESENTER_CSS = """
<style>
html { font-size: 125% !important; }
[data-testid="stMainBlockContainer"] { max-width: 100%; }
</style>
"""


def presenter_mode() -> bool:
    return bool(st.session_state.get(PRESENTER_KEY))


def presenter_toggle() -> None:
    """The sidebar's presenter-mode switch (kept for this browser session), and its style."""
    with st.sidebar:
        st.toggle("Presenter mode", key=PRESENTER_KEY, persist_state="session",
                  help="Larger type and charts for a projector. Every chart's toolbar "
                       "(camera icon) saves it as a PNG; every table has a CSV button.")
    if presenter_mode():
        st.html(PRESENTER_CSS)


#: Room for the main column: less side padding than Streamlit's wide layout, so the
#: leaderboard's key columns fit beside the sidebar at 1280 px.
LAYOUT_CSS = """
<style>
[data-testid="stMainBlockContainer"] { padding-left: 2.5rem; padding-right: 2.5rem; }
</style>
"""


def page_style() -> None:
    st.html(LAYOUT_CSS)


# --------------------------------------------------------------------------- training banner

#: The anchor of the sidebar's running-job panel (the banner links to it).
TRAINING_ANCHOR = "training-now"


def job_banner() -> None:
    """A line at the top of every page while training requests run: what runs, where it is,
    how many wait, and that the sidebar shows them."""
    try:
        from xrcompare import jobs

        view = jobs.queue_view()
    except (OSError, ValueError) as error:
        LOG.warning("training banner: %s", error)
        return
    if not view.open:
        return
    from xrcompare.backbones import REGISTRY

    waiting = (f"; {len(view.queued)} request{'s' if len(view.queued) != 1 else ''} waiting"
               if view.queued else "")
    if not view.active:
        st.info(f"**Training queue**: the engine is taking the first request{waiting}. "
                f"Follow it at the top of the sidebar ([Training now](#{TRAINING_ANCHOR})).",
                icon=":material/model_training:")
        return
    status = view.active[0]
    plan, progress = status.plan, status.progress
    names = [REGISTRY[name].display_name if name in REGISTRY else str(name)
             for name in plan.get("backbones") or ["?"]]
    what = f"{', '.join(names)} on {plan.get('data_name', '?')}"
    more = len(view.active) - 1
    others = f" (and {more} more running)" if more else ""
    left = progress.get("eta_text") or ""
    st.info(f"**Training in progress** ({md(what)}, for {md(status.owner)}){others}: "
            f"{md(progress.get('phase_text', ''))}, {progress.get('fraction', 0):.0%} done"
            + (f", {md(left)}" if left else "") + f"{waiting}. Follow the queue, or cancel "
            f"your request, at the top of the sidebar ([Training now](#{TRAINING_ANCHOR})); "
            "each new run appears on every page when it is written.",
            icon=":material/model_training:")


def show_only_run(run_id: str) -> None:
    """Tick only ``run_id`` in the run picker (filters cleared): a callback."""
    state = st.session_state
    state[_BACKBONE_FILTER_KEY] = []
    state[_DATA_FILTER_KEY] = []
    for run in all_runs():
        state[_pick_key(run.run_id)] = run.run_id == run_id


@st.cache_data(show_spinner=False, max_entries=1024)
def _thumbnail(path: str, size: int, modified: float):
    try:
        return thumbnail(read_gray(path), size)
    except (ImageError, ValueError) as error:
        LOG.warning("thumbnail of %s failed: %s", path, error)
        return None


def load_thumbnail(path: Path, size: int = 200):
    """A small gray image of ``path`` (None if it cannot be read); cached."""
    try:
        modified = path.stat().st_mtime
    except OSError:
        return None
    return _thumbnail(str(path), size, modified)


def thumbnail_grid(items: list[tuple[Path, str]], columns: int = 6, size: int = 200) -> int:
    """Thumbnails with captions in rows of ``columns``; returns how many could be shown."""
    shown = 0
    for start in range(0, len(items), columns):
        cells = st.columns(columns)
        for cell, (path, caption) in zip(cells, items[start:start + columns], strict=False):
            image = load_thumbnail(path, size)
            with cell:
                if image is None:
                    st.caption(f"{md(path.name)}: could not be read")
                else:
                    st.image(image, caption=caption, width="stretch")
                    shown += 1
    return shown


def table_height(rows: int, most: int = 20) -> int:
    """Pixels for a dataframe showing ``rows`` rows without scrolling (up to ``most``)."""
    return 35 * (min(rows, most) + 1) + 3


def percent(value) -> str:
    return "–" if value is None else f"{value:.0%}"


@st.cache_data(show_spinner=False, max_entries=4)
def _manifest(path: str, modified: float):
    import pandas as pd

    return pd.read_csv(path)


def load_manifest(path: Path | None):
    """A dataset's manifest.csv as a frame (None when missing or unreadable); cached."""
    if path is None:
        return None
    try:
        return _manifest(str(path), path.stat().st_mtime)
    except (OSError, ValueError) as error:
        LOG.warning("manifest %s unreadable: %s", path, error)
        return None


def label_set_note(runs: list[Run]) -> None:
    """Say so when the selected runs predict different sets of classes."""
    from xrcompare.summary import label_set_note as note_for

    note = note_for(runs)
    if note:
        st.info(md(note), icon=":material/category:")


# --------------------------------------------------------------------------- background tasks

#: How often a page polls its background task (seconds).
TASK_POLL_SECONDS = 0.5


@st.fragment(run_every=TASK_POLL_SECONDS)
def watch_task(task_key: str, describe) -> None:
    """Poll the :class:`xrcompare.background.Task` kept under ``st.session_state[task_key]``
    (an entry with its ``"task"``): rerun the page when it ends, else show its progress.
    ``describe(snapshot)`` gives (fraction or None, text)."""
    snapshot = st.session_state[task_key]["task"].snapshot()
    if snapshot["state"] != "running":
        st.rerun(scope="app")
    fraction, text = describe(snapshot)
    if fraction is None:
        st.info(f"{text} ({snapshot['seconds']:.0f} s)", icon=":material/hourglass_top:")
    else:
        st.progress(min(1.0, fraction), text=f"{text} · {snapshot['seconds']:.0f} s")
