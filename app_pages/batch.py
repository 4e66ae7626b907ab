"""Predict a batch: several X-rays (or one .zip of them) through every selected run, one table
of probabilities per image and run, downloadable as CSV.

Layout only: the work is :func:`xrcompare.batch.batch_request` on the server's one engine
(``app_pages/_engine.py``), in a background thread (:class:`xrcompare.background.Task`), each
chunk of images holding one of the server-wide work slots.
"""

import streamlit as st

from app_pages import _common as common
from app_pages import _engine
from app_pages._common import md
from xrcompare import batch, predictor
from xrcompare.archives import MAX_ARCHIVE_MB
from xrcompare.background import Task

TASK_KEY = "batch_task"

st.title("Predict a batch: many X-rays, every selected model")
common.teaching_banner()
runs = common.require_runs()
labels, _ = common.labels_and_colors(runs)
st.markdown(
    f"Upload several chest X-rays (PNG, JPEG or DICOM), or one .zip of them (any folders), and "
    f"get every selected run's class probabilities for each image in one table, as CSV too. Up "
    f"to {batch.MAX_IMAGES} images and {batch.MAX_TOTAL_BYTES / 1e6:.0f} MB at once "
    f"(a .zip: up to {MAX_ARCHIVE_MB} MB and the server's upload limit). A file that cannot "
    "be read gets its reason in its row; the others are still predicted. The command line "
    "does the same for a folder: `python -m xrcompare predict RUN FOLDER --csv out.csv`.")
st.page_link("app_pages/predict.py", label="One image, with saliency maps: Predict & explain",
             icon=":material/image_search:")

uploads = st.file_uploader(
    "Chest X-rays, or one .zip of them", accept_multiple_files=True,
    type=["png", "jpg", "jpeg", "dcm", "dicom", "zip"], key="batch_files",
    help="Files stay on this server only while they are predicted, and are not stored.")
entry = st.session_state.get(TASK_KEY)
busy = bool(entry) and not entry["task"].done
st.caption(f"{len(runs)} selected run{'s' if len(runs) != 1 else ''}: "
           + ", ".join(md(labels.get(run.run_id, run.title)) for run in runs)
           + " (change them in the sidebar).")
if st.button("Predict", type="primary", icon=":material/play_arrow:", key="batch_start",
             disabled=busy or not uploads,
             help="One batch at a time per browser tab." if busy else None):
    files = [(upload.name, upload.getvalue()) for upload in uploads]
    task = Task(batch.batch_request, runs, _engine.engine(), files=files)
    st.session_state[TASK_KEY] = entry = {"task": task.start(),
                                          "runs": [run.run_id for run in runs]}


def progress_text(snapshot: dict) -> tuple[float | None, str]:
    event = snapshot["event"]
    phase = event.get("phase")
    if phase == "waiting":
        return None, "Waiting for a free slot: the server is busy with other images."
    if phase == "unpack":
        return None, "Unpacking and checking the archive…"
    if phase == "predict":
        done, total = int(event.get("done", 0)), max(1, int(event.get("total", 1)))
        return done / total, f"{done} of {total} images predicted"
    return None, "Reading the images and building the runs' frozen bases…"


def show_result(result: batch.BatchResult) -> None:
    table = batch.shown_table(result, labels)
    readable = result.images - result.unreadable
    cells = st.columns(3)
    cells[0].metric("Images", f"{result.images:,}")
    cells[1].metric("Could not be read", f"{result.unreadable:,}")
    cells[2].metric("Images per second", f"{result.images_per_s:.2f}",
                    help="Every selected run on every image, on this server, this time.")
    if result.unreadable:
        st.warning(f"{result.unreadable} of {result.images} files could not be read; each "
                   "says why in its row (note).", icon=":material/warning:")
    if not readable:
        st.info("No image could be predicted.")
    classes = result.labels
    styled = table.style.format(predictor.format_probability,
                                subset=["confidence", *classes], na_rep="–")
    config = {"image": st.column_config.TextColumn("image", pinned=True),
              "model": st.column_config.TextColumn("model"),
              "run": st.column_config.TextColumn("run id"),
              "confidence": st.column_config.TextColumn(
                  "top probability",
                  help="Softmax outputs are not calibrated chances: these models are often "
                       "99% sure and wrong."),
              "note": st.column_config.TextColumn("note", width="large"),
              **{label: st.column_config.TextColumn(f"p({label})") for label in classes}}
    st.dataframe(styled, hide_index=True, width="stretch", column_config=config,
                 height=common.table_height(len(table), 25), key="batch_table")
    st.download_button("Download the table as CSV", result.csv_bytes(),
                       file_name="xrcompare-batch-predictions.csv", mime="text/csv",
                       icon=":material/download:", on_click="ignore", key="batch_csv",
                       help="One row per image and run: image, run id, predicted class, "
                            "top probability, one probability per class, note.")
    st.caption("Teaching models, not a diagnosis. Predictions for images the models were "
               "trained on test nothing.")


if entry:
    snapshot = entry["task"].snapshot()
    if snapshot["state"] == "running":
        common.watch_task(TASK_KEY, progress_text)
    elif snapshot["state"] == "failed":
        st.error(f"Could not predict this batch: {md(snapshot['error'])}",
                 icon=":material/block:")
    else:
        show_result(entry["task"].result)
