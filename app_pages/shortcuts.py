"""Shortcut lab: per backbone, the main run against its controls (random-init base, lungs
blacked out, lungs only, image statistics) on the test split and the held-out folders, with
intervals, paired comparisons and a verdict per control; then subgroups by view and source."""

import pandas as pd
import streamlit as st

from app_pages import _common as common
from app_pages._common import md
from xrcompare.charts import lab_figure
from xrcompare.runs import TEST_SCOPE, scope_text
from xrcompare.shortcuts import (
    HOW_TO_TRAIN,
    LESSON,
    QUESTIONS,
    REFERENCES,
    box_text,
    lab_table,
    shortcut_lab,
)
from xrcompare.subgroups import GROUPINGS, SMALL_GROUP, subgroup_table

runs = common.require_runs()
st.title("Shortcut lab: what do the models really use?")
st.markdown(
    "Each control changes one thing and asks one question. A model that keeps most of its "
    "accuracy **with the lungs blacked out**, or is matched by **nine image statistics and no "
    "network at all**, is scoring the dataset's shortcut (adults from many hospitals against "
    "children from one), not the disease. Every figure below comes from the runs themselves; "
    "`python -m xrcompare shortcuts` prints the same.")
labels, _ = common.labels_and_colors(runs)
everything = common.all_runs()


@st.cache_data(show_spinner="Comparing each control with its main run…", max_entries=4)
def cached_lab(_runs, key: tuple):
    return shortcut_lab(_runs)


key = tuple(sorted((run.run_id, run.modified) for run in everything))
labs = cached_lab(everything, key)
selected = {run.run_id for run in runs}
labs = [lab for lab in labs if lab.main.run_id in selected]
if not labs:
    st.info("None of the selected runs is a sound, single-split CNN run to hold controls "
            "against. Select a main run (e.g. the ResNet50 main run) in the sidebar.",
            icon=":material/arrow_back:")
    st.stop()

st.caption(f"The masks' box over the lung fields: {box_text()} (the Dataset page shows it "
           "over real images). Controls are matched to a main run by recipe: same backbone, "
           "data, input size, head, augmentation and seed, so they are scored on the same "
           "images and compared image by image (McNemar's exact test and a paired patient "
           "bootstrap; *better* only when both agree at 5%).")

tabs = st.tabs([lab.main.backbone_display for lab in labs])
for tab, lab in zip(tabs, labs, strict=True):
    with tab:
        main_name = labels.get(lab.main.run_id, lab.main.title)
        st.markdown(f"**Main run:** {md(main_name)}")
        columns = st.columns(len(lab.scopes))
        for column, scope in zip(columns, lab.scopes, strict=True):
            with column:
                common.plot(lab_figure(lab, scope, labels), key=f"lab_{lab.backbone}_{scope}")
        table = pd.DataFrame(lab_table(lab, labels))
        shown = {"row": table["row"], "run": table["run"].fillna("not trained")}
        for scope in lab.scopes:
            prefix = "test" if scope == TEST_SCOPE else scope.split(":", 1)[1]
            name = "test" if scope == TEST_SCOPE else prefix

            def interval(row, prefix=prefix):
                low, high = row[f"{prefix}_low"], row[f"{prefix}_high"]
                return "" if pd.isna(low) else f"{low:.3f}–{high:.3f}"

            def versus(row, prefix=prefix):
                value = row[f"{prefix}_vs_main"]
                if pd.isna(value):
                    return ""
                low, high = row[f"{prefix}_vs_main_low"], row[f"{prefix}_vs_main_high"]
                text = f"{value * 100:+.1f}"
                return text + ("" if pd.isna(low) else f" ({low * 100:+.1f} to {high * 100:+.1f})")

            shown[f"{name} accuracy"] = table[f"{prefix}_accuracy"]
            shown[f"{name} 95% CI"] = table.apply(interval, axis=1)
            shown[f"{name} vs main (points, 95% CI)"] = table.apply(versus, axis=1)
            shown[f"{name} McNemar p"] = table[f"{prefix}_mcnemar_p"]
        frame = pd.DataFrame(shown)
        st.dataframe(
            frame, hide_index=True, placeholder="–", key=f"lab_table_{lab.backbone}",
            column_config={
                "row": st.column_config.TextColumn("", pinned=True),
                **{column: st.column_config.NumberColumn(format="%.3f")
                   for column in frame.columns if column.endswith("accuracy")
                   or column.endswith("McNemar p")}})
        for row in lab.rows[1:]:
            with st.container(border=True):
                st.markdown(f"**{md(row.name)}** · {QUESTIONS[row.kind]}")
                if row.run is None:
                    st.caption(f"Not trained yet. Train the main recipe with "
                               f"`{HOW_TO_TRAIN[row.kind]}`.")
                else:
                    st.markdown(md(row.verdict))

st.subheader("The lesson")
st.markdown(LESSON)
with st.expander("References"):
    st.markdown("\n".join(f"- {reference}" for reference in REFERENCES))

st.subheader("Subgroups: where are the errors?")
st.caption(f"Scores sliced by what the dataset's manifest says about each image. Groups under "
           f"{SMALL_GROUP} images are flagged, not hidden: their intervals are wide. "
           "`python -m xrcompare subgroups RUN --by view|source --on test|heldout:NAME` "
           "prints the same.")
left, middle, right = st.columns([3, 1, 2])
with left:
    chosen = st.selectbox("Run", [run.run_id for run in runs], format_func=labels.get,
                          key="lab_subgroup_run")
run = next(run for run in runs if run.run_id == chosen)
with middle:
    by = st.segmented_control("By", list(GROUPINGS), default="view", required=True,
                              key="lab_subgroup_by")
with right:
    scope = st.selectbox("Images", run.scopes, format_func=scope_text,
                         key="lab_subgroup_scope")


@st.cache_data(show_spinner=False, max_entries=32)
def cached_subgroups(_run, key: tuple, scope: str, by: str):
    try:
        return subgroup_table(_run, scope, by)
    except ValueError as error:
        return str(error)


table = cached_subgroups(run, (run.run_id, run.modified), scope, by)
if isinstance(table, str):
    st.info(f"No subgroups: {md(table)}", icon=":material/info:")
else:
    small = int(table["small"].sum())
    st.dataframe(
        table, hide_index=True, placeholder="–", key="lab_subgroup_table",
        column_config={
            "group": st.column_config.TextColumn(by, pinned=True),
            "accuracy": st.column_config.NumberColumn(format="%.3f"),
            "accuracy_low": st.column_config.NumberColumn("low", format="%.3f"),
            "accuracy_high": st.column_config.NumberColumn("high", format="%.3f"),
            "sensitivity": st.column_config.NumberColumn(f"{run.positive} sensitivity",
                                                         format="%.3f"),
            "sensitivity_low": st.column_config.NumberColumn("low ", format="%.3f"),
            "sensitivity_high": st.column_config.NumberColumn("high ", format="%.3f"),
            "small": st.column_config.CheckboxColumn(f"n < {SMALL_GROUP}")})
    if small:
        st.warning(f"{small} group(s) have fewer than {SMALL_GROUP} images: read their "
                   "intervals, not their point estimates.", icon=":material/groups:")
    st.caption("In this data the view is tied to the class: every normal and pneumonia image "
               "is AP (children), covid images are PA, AP or AP supine (adults, often the "
               "sickest lying down). A model can use the view as a shortcut too.")
