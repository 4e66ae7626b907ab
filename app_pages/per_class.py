"""Per-class precision, recall and F1 across runs, with intervals, and the table with support."""

import streamlit as st

from app_pages import _common as common
from app_pages._common import md
from xrcompare.charts import per_class_figure, per_class_frame
from xrcompare.glossary import explain
from xrcompare.runs import TEST_SCOPE, heldout_names

runs = common.require_runs()
st.title("Per-class scores")
labels, colors = common.labels_and_colors(runs)
common.label_set_note(runs)

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


def interval(low, high, note=""):
    if note:
        return note
    return "" if low is None or low != low else f"{low:.2f}–{high:.2f}"


shown = table.copy()
for key in ("precision", "recall", "f1"):
    notes = shown["note"] if key != "precision" else [""] * len(shown)
    shown[f"{key} 95% CI"] = [interval(low, high, note) for low, high, note
                              in zip(shown[f"{key}_low"], shown[f"{key}_high"], notes,
                                     strict=True)]
shown = shown[["run", "class", "support", "precision", "precision 95% CI", "recall",
               "recall 95% CI", "f1", "f1 95% CI"]]
common.table(
    shown, f"per-class-{scope}", key="per_class_table",
    height=common.table_height(len(shown)),
    column_config={
        "run": st.column_config.TextColumn("Run", pinned=True),
        "class": st.column_config.TextColumn("Class"),
        "support": st.column_config.NumberColumn(
            "Images", help="Images of this true class in the scored set."),
        "precision": st.column_config.NumberColumn("Precision", format="%.3f",
                                                   help=explain("ppv")),
        "precision 95% CI": st.column_config.TextColumn("Precision CI",
                                                        help=explain("bootstrap")),
        "recall": st.column_config.NumberColumn("Recall", format="%.3f",
                                                help=explain("sensitivity")),
        "recall 95% CI": st.column_config.TextColumn("Recall CI", help=explain("bootstrap")),
        "f1": st.column_config.NumberColumn("F1", format="%.3f", help=explain("macro_f1")),
        "f1 95% CI": st.column_config.TextColumn("F1 CI", help=explain("bootstrap"))})
absent = sorted(set(table.loc[table["note"] != "", "class"]))
if absent:
    st.caption("**" + ", ".join(md(label) for label in absent) + "**: no images of this class "
               "in the scored set, so no recall or F1 (shown as –, not 0). Its precision is "
               "0 as soon as one image is called that class: every such call is wrong.")
