"""Confusion matrices side by side, with each run's positive-class false negatives and false
positives called out."""

import streamlit as st

from app_pages import _common as common
from app_pages._common import md
from xrcompare.charts import confusion_figure, covid_errors
from xrcompare.runs import TEST_SCOPE, heldout_names

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
