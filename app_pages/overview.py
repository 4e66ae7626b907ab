"""Overview: the leaderboard of the selected runs, the teaching banner and the traps in brief."""

import streamlit as st

from app_pages import _common as common
from app_pages._common import md
from xrcompare.summary import (
    LEADERBOARD_COLUMNS,
    LEADERBOARD_HEADERS,
    LEADERBOARD_MORE_COLUMNS,
    blog_comparison,
    extract_throughput,
    leaderboard,
    leaderboard_columns,
)

runs = common.require_runs()
st.title("Overview: which head did best, and how sure are we?")
common.teaching_banner()
labels, _ = common.labels_and_colors(runs)
common.label_set_note(runs)

throughput = extract_throughput()
table = leaderboard(runs, throughput)
table["run"] = [labels[run_id] for run_id in table["run_id"]]
for column in ("accuracy", "macro_f1", "sensitivity", "specificity", "kaggle_accuracy"):
    table[column] = table[column].astype(float)

help_text = {**LEADERBOARD_COLUMNS, "run_id": "The run's folder under trained/."}
#: How each column's values are shown (the header and width come from LEADERBOARD_HEADERS).
NUMBER_FORMATS = {"accuracy": "%.3f", "macro_f1": "%.3f", "sensitivity": "%.3f",
                  "specificity": "%.3f", "kaggle_accuracy": "%.3f",
                  "kaggle_normal_non_covid_pct": "%.1f%%",
                  "kaggle_pneumonia_non_covid_pct": "%.1f%%", "image_size": "%d",
                  "train_seconds": "%.0f", "trainable_params": "localized",
                  "base_params": "localized", "extract_images_per_s": "%.1f",
                  "run_size_bytes": "bytes"}


def column(key: str):
    label, width = LEADERBOARD_HEADERS[key]
    options = {"help": help_text[key], "width": width}
    if key in NUMBER_FORMATS:
        return st.column_config.NumberColumn(label, format=NUMBER_FORMATS[key], **options)
    return st.column_config.TextColumn(label, pinned=key == "run", **options)


column_config = {key: column(key) for key in LEADERBOARD_HEADERS}

st.subheader("Leaderboard")
st.caption("One row per run. **Test** columns: the run's own test split, held back by patient "
           "(pooled out-of-fold predictions for cross-validation runs; by image for the 2020 "
           "protocol). **Kaggle** columns: the held-out Kaggle test split, children's X-rays "
           "no run trained on. Click a header to sort; hover it for what it means.")
more = st.pills("More columns", list(LEADERBOARD_MORE_COLUMNS), selection_mode="multi",
                key="leaderboard_more", persist_state="session",
                help="The key columns are always shown; add how each run was trained, its "
                     "size and speed, or its folder.")
order = leaderboard_columns(more or [])
common.table(table, "leaderboard", key="leaderboard", column_config=column_config,
             column_order=order, height=common.table_height(len(table)))
if throughput["backbones"] and "Size and speed" in (more or []):
    st.caption(f"Extraction images/s: measured by `benchmarks/extract_throughput.py` on "
               f"{throughput['machine'] or 'this machine'}"
               + (f", {throughput['measured']}" if throughput["measured"] else "") + ".")
st.download_button("Download every column as CSV",
                   common.csv_bytes(table, column_config, leaderboard_columns(
                       list(LEADERBOARD_MORE_COLUMNS))),
                   file_name="xrcompare-leaderboard-all-columns.csv", mime="text/csv",
                   icon=":material/download:", type="tertiary", on_click="ignore")

with st.expander("What each column means"):
    st.markdown("\n".join(f"- **{LEADERBOARD_HEADERS[key][0]}**: {help_text[key]}"
                          for key in leaderboard_columns(list(LEADERBOARD_MORE_COLUMNS))))
    st.page_link(common.page_spec("Glossary").path, label="All the terms, in the glossary",
                 icon=":material/menu_book:")

folds = [(labels[run.run_id], run.folds_summary) for run in runs if run.folds_summary]
if folds:
    with st.expander("Cross-validation runs: spread over folds"):
        rows = []
        for name, summary in folds:
            row = {"run": name, "folds": summary.get("folds")}
            for key in ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity"):
                stats = summary.get(key) or {}
                row[key] = (f"{stats['mean']:.3f} ± {stats['sd']:.3f}" if stats else "–")
            rows.append(row)
        common.table(
            rows, "cross-validation-spread", key="cv_spread",
            column_config={
                "run": st.column_config.TextColumn("Run"),
                "folds": st.column_config.NumberColumn("Folds"),
                "accuracy": st.column_config.TextColumn(
                    "Test accuracy", help=help_text["accuracy"]),
                "macro_f1": st.column_config.TextColumn("Macro-F1", help=help_text["macro_f1"]),
                "covid_sensitivity": st.column_config.TextColumn(
                    "Sensitivity", help=help_text["sensitivity"]),
                "covid_specificity": st.column_config.TextColumn(
                    "Specificity", help=help_text["specificity"])})
        st.caption("Mean ± standard deviation of each fold's test score: how much the number "
                   "moves when other patients land in the test split.")

leaky = [run for run in runs if run.is_leaky]
if leaky:
    st.warning(
        "**2020 protocol (leaky).** "
        + "; ".join(f"*{md(labels[run.run_id])}*: {md(', '.join(run.leaky_reasons))}"
                    for run in leaky)
        + ". These runs reproduce the 2020 blog's mistakes on purpose; their test figures are "
        "optimistic and are not comparable with the sound runs.", icon=":material/warning:")

comparison = blog_comparison(runs)
if not comparison.empty:
    st.subheader("The 2020 blog beside its reproductions")
    st.caption("The blog's reported figures (VGG16/VGG19 on its own images, 62 test images) and "
               "the selected runs trained on the same images: as the blog did it (leaky) and "
               "the sound way. Test figures of different splits are not like for like; the "
               "Kaggle columns are the same 624 held-out images for every run.")
    common.table(
        comparison, "blog-comparison", key="blog_comparison",
        column_config={
            "run": st.column_config.TextColumn("Run", pinned=True),
            "backbone": st.column_config.TextColumn("Backbone"),
            "protocol": st.column_config.TextColumn("Protocol", help=help_text["protocol"]),
            "why": st.column_config.TextColumn("Split / why leaky"),
            "test_images": st.column_config.NumberColumn("Test images"),
            "accuracy": st.column_config.NumberColumn("Test accuracy", format="%.3f"),
            "kaggle_normal_non_covid_pct": st.column_config.NumberColumn(
                "Kaggle NORMAL not covid", format="%.1f%%"),
            "kaggle_pneumonia_non_covid_pct": st.column_config.NumberColumn(
                "Kaggle PNEUMONIA not covid", format="%.1f%%")})

st.subheader("Before you trust these numbers")
st.markdown(
    """
- **Shortcuts.** The Kaggle normal and pneumonia X-rays are children aged 1–5 from one
  hospital; the COVID X-rays are adults from many sources. A CNN can separate the classes by
  age, hospital or burned-in text without learning anything about COVID-19.
- **Patient leakage.** Several images of one patient must not sit on both sides of a split.
  Every sound run here splits by patient; the 2020 blog split images at random and chose its
  epoch on its test split, and runs reproducing it are labelled "2020 protocol (leaky)".
- **Preprocessing mismatch.** The held-out Kaggle copy was squashed to 224×224 before we got it;
  a head trained on aspect-kept, padded images sees something different there (a domain shift).
- **Saliency is not proof.** A heat map shows where a gradient is large, not why a model is
  right.
""")
st.page_link(common.page_spec("Dataset").path, label="The data and its traps, with references",
             icon=":material/photo_library:")
st.page_link(common.page_spec("Glossary").path,
             label="Glossary: frozen base, head, patient-wise split, PPV/NPV, bootstrap…",
             icon=":material/menu_book:")
