"""Streamlit glue shared by the pages: the page list, cached run loading, the sidebar run
picker, the empty state, banners and thumbnails. The logic itself lives in ``xrcompare``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from xrcompare import paths
from xrcompare.charts import run_colors, run_labels, thumbnail
from xrcompare.escaping import escape_markdown as md  # noqa: F401 - pages use common.md
from xrcompare.imaging import ImageError, read_gray
from xrcompare.runs import Run, RunListing, list_runs, runs_fingerprint

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
    """A plotly figure at the container's width."""
    st.plotly_chart(figure, width="stretch", key=key, config={"displaylogo": False})


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
