"""Held-out Kaggle test: what each run calls children's X-rays it never saw, and its worst
mistakes."""

import streamlit as st

from app_pages import _common as common
from app_pages._common import md
from xrcompare.charts import (
    BLOG_REFERENCE_NAME,
    called_as_by_run,
    heldout_figure,
    heldout_shares,
    heldout_summary,
    worst_mistakes,
)
from xrcompare.evaluate import BLOG_2020_REPORTED, overlap_sentence
from xrcompare.runs import RunError, heldout_names
from xrcompare.summary import blog_comparison

runs = common.require_runs()
st.title("Held-out Kaggle test: images from elsewhere")
st.markdown(
    "The Kaggle (Kermany) **test** split holds NORMAL and PNEUMONIA X-rays of children; no run "
    "trained on these images. It has no COVID images, so every *covid* call on it is a false "
    "alarm. It is the closest thing here to asking how a model behaves outside its own "
    "dataset, as long as its patients are not in a run's own data (checked below).")
labels, colors = common.labels_and_colors(runs)

names = heldout_names(runs)
if not names:
    st.info("None of the selected runs was evaluated on a held-out folder. Train with "
            "`--heldout ../shared/data/kaggle_test` to add one.")
    st.stop()
heldout = (st.selectbox("Held-out folder", names, key="heldout_name", persist_state="session")
           if len(names) > 1 else names[0])
with_heldout = [run for run in runs if run.metrics_for(heldout)]
missing = [labels[run.run_id] for run in runs if run not in with_heldout]
if missing:
    st.caption("Not evaluated on this folder: " + ", ".join(md(name) for name in missing))
common.label_set_note(with_heldout)

shared = []  # runs whose own data holds patients of this folder
for run in with_heldout:
    overlap = run.patient_overlap(heldout)
    if overlap and overlap.get("images"):
        metrics = {**run.metrics_for(heldout), "patient_overlap": overlap}
        shared.append(f"*{md(labels[run.run_id])}*: "
                      f"{md(overlap_sentence(metrics, heldout, run.data_name))}")
if shared:
    st.warning("**Not fully held out.** Patients of this folder are also in some runs' own "
               "data, so their figures here include images of patients the run has seen:\n\n"
               + "\n".join(f"- {line}" for line in shared), icon=":material/group:")

padded = [run for run in with_heldout if run.resize_mode == "pad"]
if padded:
    here = [f"*{md(row.run)}* ({md(row.resize_mode)}): **{row.called} of {row.total}**"
            for row in called_as_by_run(with_heldout, heldout, "pneumonia",
                                        labels=labels).itertuples()]
    st.warning(
        "**Preprocessing mismatch.** "
        + ", ".join(f"*{md(labels[run.run_id])}*" for run in padded)
        + (" was" if len(padded) == 1 else " were")
        + " trained on padded images (aspect ratio kept, black borders), but this Kaggle copy "
        "was already squashed to 224×224 before we got it, so it shows the model stretched, "
        "border-less chests it never saw in training. A mismatch in preprocessing is a domain "
        "shift, the kind that breaks models in a new hospital. PNEUMONIA images called covid, "
        "by the runs shown:\n\n" + "\n".join(f"- {line}" for line in here),
        icon=":material/aspect_ratio:")

shares = heldout_shares(with_heldout, heldout, labels, reference=True)
if shares.empty:
    st.info("These runs have no per-class table for this folder.")
    st.stop()
common.plot(heldout_figure(shares, heldout), key="heldout_chart")

summary = heldout_summary(shares)
config = {"run": st.column_config.TextColumn("run", pinned=True)}
for true_class in ("normal", "pneumonia"):
    upper = true_class.upper()
    config[f"{true_class}_images"] = st.column_config.NumberColumn(f"{upper} images")
    config[f"{true_class}_called_{true_class}_pct"] = st.column_config.NumberColumn(
        f"{upper} called {true_class} %", format="%.1f",
        help=f"Share of the true {upper} images the run called {true_class} (right).")
    config[f"{true_class}_called_covid_pct"] = st.column_config.NumberColumn(
        f"{upper} called covid %", format="%.1f",
        help=f"Share of the true {upper} images called covid (always wrong here).")
    config[f"{true_class}_non_covid_pct"] = st.column_config.NumberColumn(
        f"{upper} non-COVID %", format="%.1f",
        help="Share kept out of 'covid': the figure the 2020 blog reported.")
common.table(summary, f"heldout-{heldout}", column_config=config, key="heldout_table")
reported = BLOG_2020_REPORTED["kaggle_test"]["per_class"]
st.caption(f"**{BLOG_REFERENCE_NAME}** (hatched): the blog reported only the share called "
           "right and the share kept out of covid ("
           + ", ".join(f"{entry['called_right_pct']:.0f}% / {entry['non_covid_pct']:.0f}% on "
                       f"{true_class.upper()}" for true_class, entry in reported.items())
           + "); the rest is split by subtraction. Its model was trained on a random "
           "image split with the epoch chosen on the test split, so it is a reference, not a "
           "like-for-like result. It is drawn right after the selected VGG16 runs on its own "
           "images (its reproductions), when there are any.")
comparison = blog_comparison(with_heldout)
if not comparison.empty:
    with st.expander("The 2020 blog beside the runs trained on its images", expanded=True):
        common.table(
            comparison[["run", "backbone", "protocol", "why", "kaggle_normal_non_covid_pct",
                        "kaggle_pneumonia_non_covid_pct"]],
            "heldout-blog-comparison", key="heldout_blog_comparison",
            column_config={
                "run": st.column_config.TextColumn("Run", pinned=True),
                "why": st.column_config.TextColumn("Split / why leaky"),
                "kaggle_normal_non_covid_pct": st.column_config.NumberColumn(
                    "NORMAL non-COVID %", format="%.1f"),
                "kaggle_pneumonia_non_covid_pct": st.column_config.NumberColumn(
                    "PNEUMONIA non-COVID %", format="%.1f")})
        st.caption("Runs labelled *2020 protocol (leaky)* repeat the blog's mistakes on "
                   "purpose; on these held-out images, which no run saw, the leak cannot help, "
                   "so the Kaggle columns compare them fairly.")

st.subheader("Worst mistakes")
left, middle, right = st.columns([3, 2, 1])
with left:
    chosen = st.selectbox("Run", [run.run_id for run in with_heldout],
                          format_func=labels.get, key="heldout_run")
with middle:
    kind = st.segmented_control("Show", ["called positive", "all mistakes"],
                                default="called positive", required=True, key="heldout_kind",
                                persist_state="session",
                                help="Called positive: images the run called its positive "
                                     "class (covid unless it chose another) wrongly.")
with right:
    count = st.selectbox("How many", [6, 12, 18], key="heldout_count", persist_state="session")
run = next(run for run in with_heldout if run.run_id == chosen)
mistakes = worst_mistakes(run, heldout, count=count,
                          called=run.positive if kind == "called positive" else None)
if mistakes.empty:
    st.success("This run made no such mistake on this folder.")
    st.stop()
st.caption("The most confident wrong answers first. Each caption: the true class, then the "
           "probability the run gave each class.")
entry = run.data_record(heldout)
try:
    folder = run.data_folder(heldout)
except RunError as error:
    folder = None
    st.warning(f"{md(error)}; only the table is shown.", icon=":material/block:")
else:
    if folder is None:
        st.warning(f"The held-out images are not on this machine (the run recorded "
                   f"{md(entry.get('folder_absolute') or entry.get('folder') or heldout)}), "
                   "so only the table is shown.", icon=":material/folder_off:")
if folder is not None:
    items, refused = [], 0
    for row in mistakes.to_dict("records"):
        path = run.image_path(str(row["path"]), heldout)
        if path is None:
            refused += 1
            continue
        probabilities = " · ".join(f"{md(label)} {row[run.prediction_column(label)]:.2f}"
                                   for label in run.labels)
        items.append((path, f"true {md(row['label'])} → {md(row['predicted'])}  \n"
                            f"{probabilities}"))
    common.thumbnail_grid(items, columns=6)
    if refused:
        st.warning(f"{refused} recorded image path(s) lead outside the held-out folder and "
                   "were not shown.", icon=":material/block:")
with st.expander("The same mistakes as a table"):
    common.table(mistakes[["path", "label", "predicted", *run.probability_columns()]],
                 f"heldout-{heldout}-mistakes-{run.run_id}", key="heldout_mistakes_table",
                 column_config={column: st.column_config.NumberColumn(format="%.3f")
                                for column in run.probability_columns()})
