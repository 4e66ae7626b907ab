"""Per-class precision, recall and F1 across runs, with intervals, and the table with support."""

import streamlit as st

from app_pages import _common as common
from xrcompare.charts import per_class_figure, per_class_frame
from xrcompare.runs import TEST_SCOPE, heldout_names

runs = common.require_runs()
st.title("Per-class scores")
labels, colors = common.labels_and_colors(runs)

scopes = [TEST_SCOPE, *heldout_names(runs)]
left, right = st.columns([2, 3])
with left:
    scope = st.selectbox(
        "Images scored", scopes, key="per_class_scope", persist_state="session",
        format_func=lambda s: "test split (patient-wise)" if s == TEST_SCOPE
        else f"held-out folder: {s}",
        help="The test split is held back from training by patient. A held-out folder comes "
             "from elsewhere (the Kaggle test split has no covid images).")
with right:
    metric = st.segmented_control(
        "Score", ["recall", "precision", "f1"], default="recall", required=True,
        key="per_class_metric", persist_state="session",
        format_func={"recall": "Recall (sensitivity)", "precision": "Precision",
                     "f1": "F1"}.get)

st.caption(
    "**Recall**: of the images that truly are this class, the share the model found. "
    "**Precision**: of the images the model put in this class, the share that belong there. "
    "**F1** balances the two. Error bars are 95% intervals from resampling patients: "
    "overlapping bars mean the data cannot tell those runs apart.")

table = per_class_frame(runs, scope, labels)
if table.empty:
    st.info("None of the selected runs was evaluated on this folder.")
    st.stop()
common.plot(per_class_figure(table, metric, colors), key="per_class_chart")

st.subheader("Table")


def interval(low, high):
    return "" if low is None or low != low else f"{low:.2f}–{high:.2f}"


shown = table.copy()
for key in ("precision", "recall", "f1"):
    shown[f"{key} 95% CI"] = [interval(low, high) for low, high
                              in zip(shown[f"{key}_low"], shown[f"{key}_high"], strict=True)]
shown = shown[["run", "class", "support", "precision", "precision 95% CI", "recall",
               "recall 95% CI", "f1", "f1 95% CI"]]
st.dataframe(
    shown, hide_index=True, placeholder="–", key="per_class_table",
    height=common.table_height(len(shown)),
    column_config={
        "support": st.column_config.NumberColumn(
            "support", help="Images of this true class in the scored set."),
        "precision": st.column_config.NumberColumn(format="%.3f"),
        "recall": st.column_config.NumberColumn(format="%.3f"),
        "f1": st.column_config.NumberColumn(format="%.3f")})
if scope != TEST_SCOPE:
    st.caption("The held-out folder has no covid images, so covid recall is undefined there "
               "and covid precision is 0 as soon as one image is called covid.")
