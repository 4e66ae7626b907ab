"""Evaluate on a folder: any run on any labelled folder under the data root, or on an
uploaded .zip of class folders, with the figures the command line's ``evaluate`` prints.

Layout only: the evaluation is :func:`xrcompare.inference.evaluate_request` (feature cache,
server-wide work slots, bounded archives), run in a background thread
(:class:`xrcompare.background.Task`); its tables and text are :mod:`xrcompare.report`, the
same the CLI prints.
"""

import json

import streamlit as st

from app_pages import _common as common
from app_pages._common import md
from xrcompare import paths
from xrcompare.archives import MAX_ARCHIVE_MB, MAX_IMAGES
from xrcompare.background import Task
from xrcompare.charts import confusion_figure
from xrcompare.data import DatasetError, list_datasets, resolve_data_folder
from xrcompare.evaluate import overlap_sentence
from xrcompare.inference import evaluate_request
from xrcompare.report import classes_present, evaluation_lines, heldout_share_rows, per_class_rows
from xrcompare.summary import KAGGLE_HELDOUT

TASK_KEY = "evaluate_task"
FOLDER, ARCHIVE = "A folder under the data root", "A .zip of class folders"

listing = common.load_listing()
if not listing.runs:
    common.show_no_runs(listing)
    st.stop()
runs = {run.run_id: run for run in listing.runs}
labels, _ = common.labels_and_colors()

st.title("Evaluate on a folder: a run on images it never saw")
st.markdown(
    "Score any run on a labelled folder it has never seen: a folder under the data root, or "
    "your own images as a .zip with one folder per class of the run (`covid/`, `normal/`, "
    "`pneumonia/` for the shipped runs; some may be missing). You get exactly what "
    "`python -m xrcompare evaluate RUN FOLDER` prints: accuracy, macro-F1 over the classes "
    "present, the confusion matrix, per-class scores, what the run called each class and "
    "whether the folder's patients are in the run's own data.")

selected = common.selected_runs() or listing.runs
left, right = st.columns([3, 2])
with left:
    run_id = st.selectbox("Run", list(runs), index=list(runs).index(selected[0].run_id),
                          format_func=lambda key: labels.get(key, key), key="evaluate_run")
with right:
    source = st.segmented_control("Images", [FOLDER, ARCHIVE], default=FOLDER, required=True,
                                  key="evaluate_source", persist_state="session")
folder, upload = None, None
if source == FOLDER:
    root = paths.data_root()
    datasets = list_datasets(root)
    if not datasets:
        st.info(f"No labelled folder under the data root {md(root)}: upload a .zip instead, "
                "or set XRCOMPARE_DATA_ROOT.", icon=":material/folder_off:")
    else:
        folder = st.selectbox(
            "Folder", datasets,
            index=datasets.index(KAGGLE_HELDOUT) if KAGGLE_HELDOUT in datasets else 0,
            key="evaluate_folder", help=f"Labelled folders under the data root {md(root)}.")
else:
    limit = min(MAX_ARCHIVE_MB, int(st.get_option("server.maxUploadSize")))
    upload = st.file_uploader(
        "A .zip of class folders", type=["zip"], max_upload_size=limit, key="evaluate_zip",
        help=f"Up to {limit} MB and {MAX_IMAGES:,} images (.png, .jpg, .jpeg) in one folder "
             "per class, named as the run's classes (covid, normal, pneumonia for the shipped "
             "runs), at the top of the archive or inside one folder; a "
             "manifest.csv beside them gives patient ids. Unpacked into a temporary folder "
             "and deleted after the evaluation.")

entry = st.session_state.get(TASK_KEY)
busy = bool(entry) and not entry["task"].done
if st.button("Evaluate", type="primary", icon=":material/play_arrow:", key="evaluate_start",
             disabled=busy or (folder is None and upload is None),
             help="One evaluation at a time per browser tab." if busy else None):
    run = runs[run_id]
    try:
        if folder is not None:
            target = resolve_data_folder(folder, paths.data_root())
            task = Task(evaluate_request, run, name=folder, folder=target)
            name = folder
        else:
            name = upload.name
            task = Task(evaluate_request, run, name=name, archive=upload.getvalue())
    except (DatasetError, ValueError, OSError) as error:
        st.error(f"Cannot evaluate: {md(error)}")
    else:
        st.session_state[TASK_KEY] = entry = {"task": task.start(), "run_id": run_id,
                                              "name": name}


def progress_text(snapshot: dict) -> tuple[float | None, str]:
    event = snapshot["event"]
    phase = event.get("phase")
    if phase == "waiting":
        return None, "Waiting for a free slot: the server is busy with other images."
    if phase == "unpack":
        return None, "Unpacking and checking the archive…"
    if phase == "extract":
        done, total = int(event.get("done", 0)), max(1, int(event.get("total", 1)))
        cached = int(event.get("cached") or 0)
        if done == cached:  # the base is built before the first batch
            return done / total, (f"Building the run's frozen base; {done} of {total} images "
                                  "from the feature cache")
        return done / total, (f"Features of image {done} of {total}"
                              + (f" ({cached} from the cache)" if cached else ""))
    return None, "Building the run's frozen base and reading the folder…"


def show_results(run, result: dict) -> None:
    metrics, name = result["metrics"], result["name"]
    present, absent = classes_present(metrics)
    st.subheader(f"{labels.get(run.run_id, run.title)} on {name}")
    interval = (metrics.get("intervals") or {}).get("accuracy") or [None, None]
    cells = st.columns(4)
    cells[0].metric("Images", f"{metrics['n']:,}",
                    help=", ".join(f"{label} {metrics['per_class'][label]['support']}"
                                   for label in present))
    cells[1].metric("Accuracy", f"{metrics['accuracy']:.3f}",
                    help=("95% patient-bootstrap interval "
                          f"{interval[0]:.3f}–{interval[1]:.3f}" if interval[0] is not None
                          else None))
    cells[2].metric("Macro-F1", f"{metrics['macro_f1']:.3f}",
                    help=f"Mean F1 over the {len(present)} classes present"
                         + (f" (no images of {', '.join(absent)})" if absent else ""))
    overlap = metrics.get("patient_overlap")
    cells[3].metric("Patients shared with the run's data",
                    "–" if overlap is None else f"{overlap['patients']}",
                    help=f"Patients of {name} also in {run.data_name}, the run's own data, "
                         "by patient id.")
    sentence = overlap_sentence(metrics, name, run.data_name)
    if overlap and overlap.get("images"):
        st.warning(f"**Not fully held out.** {md(sentence)}", icon=":material/group:")
    elif sentence:
        st.caption(md(sentence))
    if absent:
        st.caption("No images of " + ", ".join(f"**{md(label)}**" for label in absent)
                   + " in this folder: " + "; ".join(
                       md(per_class_rows(metrics).set_index("class").loc[label, "note"])
                       for label in absent) + ".")
    left, right = st.columns([2, 3])
    with left:
        common.plot(confusion_figure(metrics, title="Confusion matrix (rows true)",
                                     positive=run.positive),
                    key="evaluate_confusion")
    with right:
        st.markdown("**Per class**")
        common.table(
            per_class_rows(metrics), f"evaluate-{run.run_id}-{name}-per-class",
            key="evaluate_per_class",
            column_config={
                "class": st.column_config.TextColumn("Class"),
                "support": st.column_config.NumberColumn("Images"),
                "precision": st.column_config.NumberColumn("Precision", format="%.3f"),
                "precision_95ci": st.column_config.TextColumn("Precision CI"),
                "recall": st.column_config.NumberColumn("Recall", format="%.3f"),
                "recall_95ci": st.column_config.TextColumn("Recall CI"),
                "f1": st.column_config.NumberColumn("F1", format="%.3f"),
                "f1_95ci": st.column_config.TextColumn("F1 CI"),
                "note": None})
        shares = heldout_share_rows(metrics)
        if not shares.empty:
            st.markdown(f"**What the run called each class** (no {md(run.positive)} images "
                        f"here, so every *{md(run.positive)}* call is a false alarm)")
            common.table(shares, f"evaluate-{run.run_id}-{name}-called", key="evaluate_shares",
                         column_config={column: st.column_config.NumberColumn(format="%.1f")
                                        for column in shares.columns if column.endswith("%")})
    if result["skipped"]:
        with st.expander(f"{len(result['skipped'])} file(s) could not be read and were skipped"):
            common.table([{"file": path, "reason": reason}
                          for path, reason in result["skipped"]],
                         f"evaluate-{run.run_id}-{name}-skipped", key="evaluate_skipped")
    with st.expander("The same, as the command line prints it"):
        st.code("\n".join(evaluation_lines(run.title, name, metrics, result["skipped"],
                                           run.data_name)), language=None)
        st.caption(f"`python -m xrcompare evaluate {md(run.path.parent.name)}/{md(run.run_id)} "
                   f"FOLDER` prints this for a folder on disk; add `--json` for the figures as "
                   "JSON (the button below).")
        payload = {"run": run.run_id, "data": name, **metrics,
                   "skipped": [{"path": p, "reason": r} for p, r in result["skipped"]]}
        st.download_button("Download as JSON", json.dumps(payload, indent=1).encode("utf-8"),
                           file_name=f"xrcompare-evaluate-{run.run_id}.json",
                           mime="application/json", icon=":material/download:",
                           on_click="ignore", key="evaluate_json")


if entry:
    snapshot = entry["task"].snapshot()
    if snapshot["state"] == "running":
        common.watch_task(TASK_KEY, progress_text)
    elif snapshot["state"] == "failed":
        st.error(f"Could not evaluate {md(labels.get(entry['run_id'], entry['run_id']))} on "
                 f"{md(entry['name'])}: {md(snapshot['error'])}")
    elif entry["run_id"] in runs:
        show_results(runs[entry["run_id"]], entry["task"].result)
        st.caption(f"Evaluated in {snapshot['seconds']:.1f} s (features of images already "
                   "seen come from the cache).")
