"""Recall trade-offs: thresholds, sensitivity targets and the cost of a missed case."""

import streamlit as st

from app_pages import _common as common
from app_pages._common import md
from xrcompare.calibration import calibrate, calibration_table, reliability_frame
from xrcompare.charts import (
    cost_figure,
    curves_for_runs,
    precision_recall_figure,
    reliability_figure,
    roc_figure,
    threshold_tables,
)

runs = common.require_runs()
st.title("Recall trade-offs: missed cases against false alarms")
st.markdown(
    "A model gives each image a probability per class. Calling an image *covid* only when "
    "p(covid) passes a **threshold** is a choice: lower it and fewer COVID cases are missed "
    "(higher sensitivity) but more healthy people get a false alarm (lower specificity). "
    "The 2020 blog argued that a missed COVID case is worse than a false alarm. Here you "
    "can see what that argument costs, run by run.")
labels, colors = common.labels_and_colors(runs)
common.label_set_note(runs)

classes = list(dict.fromkeys(label for run in runs for label in run.labels))
default = runs[0].positive  # the first selected run's own positive class
positive = st.selectbox(
    "Positive class (one against the rest)", classes,
    index=classes.index(default), key="tradeoff_positive",
    persist_state="session",
    help="The class treated as 'positive'; the other classes together are 'negative'. "
         "Each run records its own (--positive, covid by default); runs that do not "
         "predict the class chosen here are left out.")
positive_md = md(positive)  # a class name from run.json: shown as written, never as Markdown
st.caption("Scored on each run's patient-wise test split (out-of-fold predictions for "
           "cross-validation runs). With a few dozen positive images, one image moves "
           "sensitivity by several points.")

common_config = {
    "run": st.column_config.TextColumn("run", pinned=True),
    "threshold": st.column_config.NumberColumn(
        "threshold", format="%.3f", help=f"Call {positive_md} when p({positive_md}) ≥ threshold."),
    "sensitivity": st.column_config.NumberColumn(
        "sensitivity", format="%.3f", help=f"Share of {positive_md} images called {positive_md}."),
    "specificity": st.column_config.NumberColumn(
        "specificity", format="%.3f", help=f"Share of other images not called {positive_md}."),
    "ppv": st.column_config.NumberColumn(
        "PPV", format="%.3f", help=f"Of the images called {positive_md}, the share that are."),
    "npv": st.column_config.NumberColumn(
        "NPV", format="%.3f", help=f"Of the images not called {positive_md}, the share that "
                                   "are not."),
    "fn": st.column_config.NumberColumn("missed (FN)",
                                        help=f"{positive_md} images not called {positive_md}."),
    "fp": st.column_config.NumberColumn("false alarms (FP)",
                                        help=f"Other images called {positive_md}."),
    "tp": st.column_config.NumberColumn("found (TP)"),
    "tn": st.column_config.NumberColumn("cleared (TN)"),
    "positives": st.column_config.NumberColumn(f"{positive_md} images"),
    "negatives": st.column_config.NumberColumn("other images"),
    "cost": st.column_config.NumberColumn("cost", format="%.0f",
                                          help="cost of a miss × missed + false alarms"),
    "rule": st.column_config.TextColumn("rule"),
}

# The three controls come first in their sections; the tables are appended to each section
# once all three values are known.
section_target, section_threshold, section_cost = st.container(), st.container(), st.container()
with section_target:
    st.subheader("1 · Which threshold reaches a target sensitivity?")
    target = st.slider(f"Target {positive_md} sensitivity", 0.50, 1.00, 0.95, 0.01,
                       key="tradeoff_target", persist_state="session",
                       help="For each run, the threshold that finds at least this share of "
                            f"the {positive_md} images with the fewest false alarms.")
with section_threshold:
    st.subheader("2 · Move the threshold yourself")
    threshold = st.slider(f"Threshold on p({positive_md})", 0.00, 1.00, 0.50, 0.01,
                          key="tradeoff_threshold", persist_state="session",
                          help=f"Images with p({positive_md}) at or above it are called "
                               f"{positive_md}.")
with section_cost:
    st.subheader("3 · What does a missed case cost?")
    miss_cost = st.slider(f"One missed {positive_md} case costs as much as … false alarms",
                          1, 100, 10, 1, key="tradeoff_cost", persist_state="session",
                          help="The cheapest threshold minimises cost × missed + false "
                               "alarms.")

tables = threshold_tables(runs, positive, threshold, target, miss_cost, labels)
if tables["skipped"]:
    st.warning("Left out (their test split lacks either positive or negative images): "
               + ", ".join(md(name) for name in tables["skipped"]))
if tables["at_threshold"].empty:
    st.info(f"No selected run has both {positive_md} and other images in its test split.")
    st.stop()

with section_target:
    st.markdown(f"**Sensitivity ≥ {target:.2f}: the threshold each run needs, and what it "
                "costs in false alarms**")
    common.table(tables["target"], "sensitivity-target", key="tradeoff_target_table",
                 column_config=common_config,
                 column_order=["run", "threshold", "sensitivity", "specificity", "fp", "fn",
                               "ppv", "negatives"])

with section_threshold:
    st.markdown(f"**At threshold {threshold:.2f}**")
    common.table(tables["at_threshold"], "at-threshold", key="tradeoff_threshold_table",
                 column_config=common_config,
                 column_order=["run", "sensitivity", "specificity", "ppv", "npv", "fn", "fp",
                               "positives", "negatives"])
    curves = curves_for_runs(runs, positive, labels)
    zoom = st.toggle("Zoom in on the corner where good models differ", key="tradeoff_zoom",
                     persist_state="session")
    left, right = st.columns(2)
    with left:
        common.plot(roc_figure(curves, tables["at_threshold"], colors, positive, zoom=zoom),
                    key="tradeoff_roc")
    with right:
        common.plot(precision_recall_figure(curves, tables["at_threshold"], colors, positive,
                                            zoom=zoom), key="tradeoff_pr")

with section_cost:
    st.markdown(f"**One missed {positive_md} case costs as much as {miss_cost} false alarms: "
                "the cheapest threshold per run**")
    common.table(tables["cheapest"], "cheapest-threshold", key="tradeoff_cost_table",
                 column_config=common_config,
                 column_order=["run", "rule", "fn", "fp", "cost", "sensitivity",
                               "specificity"])
    common.plot(cost_figure(runs, positive, miss_cost, labels, colors),
                key="tradeoff_cost_chart")
    st.caption("A threshold chosen on the test split is tuned on that split, so these "
               "numbers flatter the runs a little; in practice the threshold is fixed on the "
               "validation split and then checked once on the test split.")

st.subheader("4 · Calibration: is 90% confident right 90% of the time?")
st.markdown(
    "A model's probability is only useful if it means what it says. The **expected "
    "calibration error** (ECE) sorts the images into 15 equal-width bins of confidence (the "
    "probability of the predicted class) and averages the gap between confidence and the "
    "share actually right, weighted by the images in each bin: 0 is perfect, 0.10 means ten "
    "points off on average. **Temperature scaling** divides the log-probabilities by one "
    "number T, fitted on each run's *validation* split (never on the images it is judged on): "
    "T > 1 tones an over-confident model down; the predicted class never changes.")
left, right = st.columns([2, 2])
scopes = list(dict.fromkeys(scope for run in runs for scope in run.scopes))
with left:
    calibration_scope = st.selectbox(
        "Images", scopes, key="tradeoff_calibration_scope", persist_state="session",
        format_func=lambda s: "test split" if s == "test" else f"held-out folder: {s[8:]}")
with right:
    scaled = st.toggle("Show the runs after temperature scaling", key="tradeoff_temperature",
                       persist_state="session",
                       help="Fitted on each run's validation split, then applied here.")


@st.cache_data(show_spinner=False, max_entries=16)
def cached_calibration(_runs, key: tuple, scope: str, names: tuple):
    """The calibration table of ``scope`` and each run's reliability bins before and after
    temperature scaling (keyed on the runs' ids and modification times)."""
    table = calibration_table(_runs, [scope], dict(names))
    bins = {}
    for run in _runs:
        found = calibrate(run, scope)
        if found is not None:
            bins[run.run_id] = (reliability_frame(found), reliability_frame(found, after=True))
    return table, bins


calibration_rows, reliability_bins = cached_calibration(
    runs, tuple((run.run_id, run.modified) for run in runs), calibration_scope,
    tuple(labels.items()))
if calibration_rows.empty:
    st.info("None of the selected runs was scored on these images.")
else:
    common.table(
        calibration_rows, "calibration", key="tradeoff_calibration_table",
        column_order=["run", "images", "ece", "temperature", "ece_after", "note"],
        column_config={
            "run": st.column_config.TextColumn("run", pinned=True),
            "ece": st.column_config.NumberColumn("ECE", format="%.3f",
                                                 help="Expected calibration error, 15 bins."),
            "temperature": st.column_config.NumberColumn(
                "T", format="%.2f", help="The temperature fitted on the validation split."),
            "ece_after": st.column_config.NumberColumn("ECE after T", format="%.3f"),
            "note": st.column_config.TextColumn("temperature fitted on", width="large")})
    curves = {labels[run_id]: (before, after if scaled else None)
              for run_id, (before, after) in reliability_bins.items()}
    common.plot(reliability_figure(curves, colors), key="tradeoff_reliability")
    st.caption("Points below the diagonal: over-confident (the model is sure more often than "
               "it is right); above: under-confident. Marker size: images in the bin. "
               "`python -m xrcompare calibration RUN` prints the same figures; "
               "`evaluate --json` includes `ece`.")
