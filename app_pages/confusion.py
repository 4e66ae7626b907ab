"""Confusion matrices side by side, with each run's positive-class false negatives and false
positives called out, and the images behind any cell (:mod:`xrcompare.errors_gallery`), one of
them explained with Grad-CAM through the Predict page's engine."""

import streamlit as st

from app_pages import _common as common
from app_pages import _engine
from app_pages._common import md
from xrcompare import errors_gallery, limits, predictor
from xrcompare.charts import confusion_figure, covid_errors
from xrcompare.errors import one_line
from xrcompare.imaging import ImageError
from xrcompare.runs import TEST_SCOPE, heldout_names

#: Thumbnails shown at first, and added by each "Show more".
GALLERY_PAGE = 12
GALLERY_COLUMNS = 6
NONE = "(none)"

runs = common.require_runs()
st.title("Confusion matrices")
labels, _ = common.labels_and_colors(runs)
common.label_set_note(runs)

left, middle, right = st.columns([2, 2, 1])
with left:
    scopes = [TEST_SCOPE, *heldout_names(runs)]
    scope = st.selectbox(
        "Images scored", scopes, key="confusion_scope", persist_state="session",
        format_func=lambda s: "test split (patient-wise)" if s == TEST_SCOPE
        else f"held-out folder: {s}")
with middle:
    mode = st.segmented_control("Cells show", ["counts", "row shares"], default="counts",
                                required=True, key="confusion_mode", persist_state="session",
                                help="Row shares divide each row by its number of images: "
                                     "the diagonal is then each class's recall.")
with right:
    per_row = st.selectbox("Per row", [1, 2, 3, 4], index=2, key="confusion_columns",
                           persist_state="session")

st.caption("Rows are the true class, columns the predicted class; the diagonal is right. "
           "Outlined in **red**: cases of the run's positive class (covid unless the run "
           "chose another) the model missed (false negatives). Outlined in **orange**: other "
           "images it called positive (false positives).")

shown = [(run, run.metrics_for(scope)) for run in runs]
shown = [(run, metrics) for run, metrics in shown if metrics]
if not shown:
    st.info("None of the selected runs was evaluated on this folder.")
    st.stop()

for start in range(0, len(shown), per_row):
    cells = st.columns(per_row)
    for cell, (run, metrics) in zip(cells, shown[start:start + per_row], strict=False):
        with cell:
            name = labels[run.run_id]
            positive = run.positive
            common.plot(confusion_figure(metrics, normalise=mode == "row shares", title=name,
                                         positive=positive),
                        key=f"confusion_{run.run_id}")
            errors = covid_errors(metrics, positive)
            if errors["fn"] is None:
                st.markdown(f":orange-badge[**{errors['fp']}** of {errors['negatives']} called "
                            f"{md(positive)}]  \n(no {md(positive)} images here, so no misses "
                            "to count)")
            else:
                missed = ", ".join(f"{count} as {md(label)}" for label, count
                                   in errors["fn_to"].items() if count)
                alarms = ", ".join(f"{count} {md(label)}" for label, count
                                   in errors["fp_from"].items() if count)
                st.markdown(
                    f":red-badge[**{errors['fn']}** of {errors['positives']} {md(positive)} "
                    "missed]" + (f" {missed}" if missed else "") + "  \n"
                    f":orange-badge[**{errors['fp']}** of {errors['negatives']} not "
                    f"{md(positive)} called {md(positive)}]" + (f" {alarms}" if alarms else ""))
            st.caption(f"{metrics['n']} images · {md(metrics.get('scope', scope))}")

# --------------------------------------------------------------------------- one cell's images

st.divider()
st.subheader("The images behind a cell")
st.caption("Pick a run and a cell (true class, predicted class) to see its X-rays, the most "
           "confident first, with the probabilities the run recorded for each. Mistakes made "
           "with near-certainty are where a shortcut shows itself.")
cell_runs = {run.run_id: run for run, _ in shown}
first, second, third = st.columns([2, 1, 1])
with first:
    gallery_id = st.selectbox("Run", list(cell_runs), format_func=lambda key: labels[key],
                              key="gallery_run", persist_state="session")
gallery_run = cell_runs[gallery_id]
try:
    cells = errors_gallery.confusion_cells(gallery_run, scope)
except ValueError as error:  # scored there, but no per-image predictions recorded
    st.info(md(one_line(error, 300)), icon=":material/info:")
    st.stop()
mistakes = cells[cells["mistake"] & (cells["images"] > 0)].sort_values("images",
                                                                       ascending=False)
default = mistakes.iloc[0] if not mistakes.empty else cells.iloc[0]
classes = list(gallery_run.labels)
with second:
    true_class = st.selectbox("True class", classes,
                              index=classes.index(default["true"]), key="gallery_true")
with third:
    predicted_class = st.selectbox("Predicted class", classes,
                                   index=classes.index(default["predicted"]),
                                   key="gallery_predicted")
count_key = f"gallery_count::{gallery_id}::{scope}::{true_class}::{predicted_class}"
count = st.session_state.get(count_key, GALLERY_PAGE)
selection = errors_gallery.cell_images(gallery_run, scope, true_class, predicted_class,
                                       limit=count)
st.markdown(f"**{md(labels[gallery_id])}**, {md(selection.description)}: "
            f"**{selection.total}** image{'s' if selection.total != 1 else ''}"
            + (", most confident first." if selection.total else "."))
if selection.folder_problem:
    st.warning(md(selection.folder_problem), icon=":material/folder_off:")
items, unshown = [], []
for row in selection.rows.to_dict("records"):
    odds = " · ".join(f"{md(label)} {value:.2f}" for label, value
                      in errors_gallery.probabilities_of(row, classes).items())
    if row["file"] is not None:
        items.append((row["file"], odds))
    elif not selection.folder_problem:
        unshown.append(row["missing"])
if items:
    common.thumbnail_grid(items, columns=GALLERY_COLUMNS, size=200)
for sentence in unshown:
    st.caption(f":material/image_not_supported: {md(sentence)}")
if selection.more:
    st.button(f"Show {min(GALLERY_PAGE, selection.more)} more (of {selection.more} left)",
              key=f"gallery_more::{count_key}", icon=":material/expand_more:",
              on_click=lambda: st.session_state.__setitem__(count_key, count + GALLERY_PAGE))


@st.fragment
def explain_one(run, selection) -> None:
    """Grad-CAM of one chosen image through the Predict page's engine (model work only when
    an image is chosen)."""
    files = {str(row["path"]): row for row in selection.rows.to_dict("records")
             if row["file"] is not None}
    if not files or not run.is_cnn:
        if not run.is_cnn:
            st.caption(f"{md(run.title)} has no CNN, so its images have no Grad-CAM map.")
        return
    chosen = st.selectbox("Explain one of these images (Grad-CAM)", [NONE, *files],
                          key="gallery_explain")
    if chosen == NONE:
        return
    row = files[chosen]
    try:
        with limits.work_slot():
            with st.spinner("Computing Grad-CAM (the first use after a start builds the "
                            "run's frozen base)…"):
                result = errors_gallery.explain_image(
                    _engine.engine(), run, row["file"], row["predicted"],
                    cache=_engine.saliency_cache())
    except (ImageError, limits.ServerBusy, *predictor.MODEL_ERRORS) as error:
        st.error(md(one_line(error, 300)), icon=":material/block:")
        return
    left, right = st.columns([1, 1])
    with left:
        st.image(result.overlay, width="stretch")
    with right:
        st.markdown(f"`{md(chosen)}`: true **{md(row['label'])}**, recorded as "
                    f"**{md(row['predicted'])}** (p = {row['p_predicted']:.3f}). The map "
                    f"shows what raised the *{md(result.target)}* score.")
        now = " · ".join(f"{md(label)} {predictor.format_probability(value)}"
                         for label, value in result.probabilities.items())
        st.caption(f"The run's head on this file now: {now}.")
        if result.note:
            st.caption(md(result.note))
        st.caption("A saliency map is a hint, not proof: look for heat on letters, markers "
                   "or borders rather than the lungs.")


explain_one(gallery_run, selection)
