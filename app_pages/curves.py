"""Training curves: loss and accuracy, training vs validation, with the kept epoch marked."""

import streamlit as st

from app_pages import _common as common
from app_pages._common import md
from xrcompare.charts import training_curves_figure

runs = common.require_runs()
st.title("Training curves")
st.caption(
    "Each run trains its head for a number of epochs and keeps the epoch with the best "
    "validation loss (dotted line), never looking at the test split. A training curve that "
    "keeps improving while validation stalls or worsens is overfitting: the head is "
    "memorising the training images.")
labels, _ = common.labels_and_colors(runs)

for run in runs:
    history = run.history
    if not run.is_cnn:
        st.caption(f"{md(labels[run.run_id])}: no training curve (one fit of a logistic "
                   "regression, no epochs).")
        continue
    if history.empty:
        st.warning(f"{md(labels[run.run_id])}: its history.csv holds no epochs.")
        continue
    title = labels[run.run_id]
    common.plot(training_curves_figure(history, run.best_epoch, title),
                key=f"curves_{run.run_id}")
    notes = [f"kept epoch {run.best_epoch} of {run.epochs_run}", run.selection]
    if run.folds:
        notes.append(f"curves of fold 1 of {run.folds}; every fold's kept epoch: "
                     f"{run.kept_epoch_text}")
    st.caption(" · ".join(md(note) for note in notes if note))
