"""Overview: the leaderboard of the selected runs, the teaching banner and the traps in brief."""

import streamlit as st

from app_pages import _common as common
from xrcompare.summary import LEADERBOARD_COLUMNS, leaderboard

runs = common.require_runs()
st.title("Overview: which head did best, and how sure are we?")
common.teaching_banner()
labels, _ = common.labels_and_colors(runs)

table = leaderboard(runs)
table["run"] = [labels[run_id] for run_id in table["run_id"]]
for column in ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity",
               "kaggle_accuracy"):
    table[column] = table[column].astype(float)

help_text = LEADERBOARD_COLUMNS
column_config = {
    "run": st.column_config.TextColumn("Run", help=help_text["run"], pinned=True),
    "run_id": st.column_config.TextColumn("Run folder", help="The folder under trained/."),
    "backbone": st.column_config.TextColumn("Backbone", help=help_text["backbone"]),
    "weights": st.column_config.TextColumn("Weights", help=help_text["weights"]),
    "data": st.column_config.TextColumn("Data", help=help_text["data"]),
    "split": st.column_config.TextColumn("Split", help=help_text["split"]),
    "image_size": st.column_config.NumberColumn("Input px", help=help_text["image_size"]),
    "resize": st.column_config.TextColumn("Resize", help=help_text["resize"]),
    "epochs": st.column_config.TextColumn("Epochs", help=help_text["epochs"]),
    "accuracy": st.column_config.NumberColumn("Accuracy", help=help_text["accuracy"],
                                              format="%.3f", width="small"),
    "accuracy_95ci": st.column_config.TextColumn("95% CI", help=help_text["accuracy_95ci"],
                                                 width="small"),
    "macro_f1": st.column_config.NumberColumn("Macro-F1", help=help_text["macro_f1"],
                                              format="%.3f", width="small"),
    "covid_sensitivity": st.column_config.NumberColumn(
        "COVID sens.", help=help_text["covid_sensitivity"], format="%.3f", width="small"),
    "covid_specificity": st.column_config.NumberColumn(
        "COVID spec.", help=help_text["covid_specificity"], format="%.3f", width="small"),
    "kaggle_normal_non_covid_pct": st.column_config.NumberColumn(
        "Kaggle NORMAL not covid", help=help_text["kaggle_normal_non_covid_pct"],
        format="%.1f%%"),
    "kaggle_pneumonia_non_covid_pct": st.column_config.NumberColumn(
        "Kaggle PNEUMONIA not covid", help=help_text["kaggle_pneumonia_non_covid_pct"],
        format="%.1f%%"),
    "kaggle_accuracy": st.column_config.NumberColumn(
        "Kaggle accuracy", help=help_text["kaggle_accuracy"], format="%.3f"),
    "train_seconds": st.column_config.NumberColumn("Training time (s)",
                                                   help=help_text["train_seconds"],
                                                   format="%.0f"),
    "feature_engine": st.column_config.TextColumn("Feature engine",
                                                  help=help_text["feature_engine"]),
    "trainable_params": st.column_config.NumberColumn(
        "Trainable params", help=help_text["trainable_params"], format="localized"),
}
# Scores first (they are what the page is about), then how each run was made.
order = ["run", "accuracy", "accuracy_95ci", "macro_f1", "covid_sensitivity", "covid_specificity",
         "kaggle_normal_non_covid_pct", "kaggle_pneumonia_non_covid_pct", "kaggle_accuracy",
         "weights", "backbone", "data", "split", "image_size", "resize", "epochs",
         "train_seconds", "feature_engine", "trainable_params", "run_id"]

st.subheader("Leaderboard")
st.caption("One row per run, scored on its own patient-wise test split (pooled out-of-fold "
           "predictions for cross-validation runs). Click a column header to sort; hover it "
           "for what it means.")
st.dataframe(table, column_config=column_config, column_order=order, hide_index=True,
             placeholder="–", key="leaderboard", height=common.table_height(len(table)))
st.download_button("Download as CSV",
                   table[order].to_csv(index=False).encode("utf-8"),
                   file_name="xrcompare-leaderboard.csv", mime="text/csv",
                   icon=":material/download:")

with st.expander("What each column means"):
    names = {key: config["label"] for key, config in column_config.items()}
    st.markdown("\n".join(f"- **{names.get(key, key)}**: {text}"
                          for key, text in [*help_text.items(),
                                            ("run_id", "The run's folder under trained/.")]))

folds = [(labels[run.run_id], run.metrics["folds"]) for run in runs if run.metrics.get("folds")]
if folds:
    with st.expander("Cross-validation runs: spread over folds"):
        rows = []
        for name, summary in folds:
            row = {"run": name, "folds": summary.get("folds")}
            for key in ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity"):
                stats = summary.get(key) or {}
                row[key] = (f"{stats['mean']:.3f} ± {stats['sd']:.3f}" if stats else "–")
            rows.append(row)
        st.dataframe(rows, hide_index=True, placeholder="–")
        st.caption("Mean ± standard deviation of each fold's test score: how much the number "
                   "moves when other patients land in the test split.")

st.subheader("Before you trust these numbers")
st.markdown(
    """
- **Shortcuts.** The Kaggle normal and pneumonia X-rays are children aged 1–5 from one
  hospital; the COVID X-rays are adults from many sources. A CNN can separate the classes by
  age, hospital or burned-in text without learning anything about COVID-19.
- **Patient leakage.** Several images of one patient must not sit on both sides of a split.
  Every run here splits by patient; the 2020 blog split images at random and chose its epoch on
  its test split.
- **Preprocessing mismatch.** The held-out Kaggle copy was squashed to 224×224 before we got it;
  a head trained on aspect-kept, padded images sees something different there (a domain shift).
- **Saliency is not proof.** A heat map shows where a gradient is large, not why a model is
  right.
""")
st.page_link(common.page_spec("Dataset").path, label="The data and its traps, with references",
             icon=":material/photo_library:")
