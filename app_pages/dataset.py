"""Dataset: images per class, split and source, thumbnails per class, and the traps of this
data in plain words."""

from pathlib import Path

import streamlit as st

from app_pages import _common as common
from app_pages._common import md
from xrcompare.charts import (
    called_as_by_run,
    class_counts_figure,
    mask_examples,
    split_counts,
    split_counts_figure,
)
from xrcompare.imaging import ImageError, read_gray
from xrcompare.runs import RunError
from xrcompare.shortcuts import box_text
from xrcompare.summary import (
    class_sources,
    resize_contrast,
    sample_files,
    sample_heldout_files,
)


def _short(path: str) -> str:
    """A file's stem without the source prefix, short enough for a caption."""
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    for prefix in ("youngsoul_", "kermany_", "cohen_"):
        stem = stem.removeprefix(prefix)
    return stem if len(stem) <= 24 else stem[:22] + "…"


runs = common.require_runs()
st.title("Dataset: what the models learned from")
common.teaching_banner()

TRAPS = """
**1 · Shortcuts: the classes come from different people and places.** The normal and pneumonia
X-rays (Kermany et al. 2018, the Kaggle "Chest X-Ray Images (Pneumonia)" set) are **children
aged 1–5 from one hospital** in Guangzhou. The COVID X-rays (Cohen et al. 2020) are **adults**,
collected from papers and web case reports of **many hospitals**, often with arrows, letters or
labels burned in. A network can tell the classes apart by age, body shape, scanner or text
without learning anything about COVID-19, so a high accuracy on this data is a warning sign,
not a success. Roberts et al. (2021) reviewed hundreds of COVID-19 imaging models and found none
fit for clinical use, many for exactly this reason; DeGrave et al. (2021) showed such models
rely on shortcuts like text markers and patient position instead of the lungs.

**2 · Patient leakage.** One patient often has several X-rays. If they land on both sides of a
split, the test score rewards recognising the patient, not the disease. Every run here splits
**by patient**. The 2020 blog split images at random and picked its epoch on the test split, so
its test score was also used for tuning.

**3 · Preprocessing mismatch.** Our training images keep their aspect ratio (longest side up to
512 px), but the only complete copy of the Kaggle test split had been **squashed to 224×224**
by its owner. A model trained on *padded* images (aspect kept, black borders) meets stretched,
border-less chests there.{shipped_measured}{runs_measured} Preprocessing that differs between
training and use is a domain shift.

**4 · Saliency is not proof.** A heat map on the *Predict & explain* page shows where the
gradient of the score is large. It does not show *why* the model is right, and saliency maps
often disagree with where radiologists look (Saporta et al. 2022).
"""

REFERENCES = """
- Roberts M. et al. (2021). Common pitfalls and recommendations for using machine learning to
  detect and prognosticate for COVID-19 using chest radiographs and CT scans. *Nature Machine
  Intelligence* 3, 199–217. [doi:10.1038/s42256-021-00307-0](https://doi.org/10.1038/s42256-021-00307-0)
- DeGrave A. J., Janizek J. D., Lee S.-I. (2021). AI for radiographic COVID-19 detection selects
  shortcuts over signal. *Nature Machine Intelligence* 3, 610–619.
  [doi:10.1038/s42256-021-00338-7](https://doi.org/10.1038/s42256-021-00338-7)
- Saporta A. et al. (2022). Benchmarking saliency methods for chest X-ray interpretation.
  *Nature Machine Intelligence* 4, 867–878.
  [doi:10.1038/s42256-022-00536-x](https://doi.org/10.1038/s42256-022-00536-x)
- Kermany D. S. et al. (2018). Identifying medical diagnoses and treatable diseases by
  image-based deep learning. *Cell* 172(5), 1122–1131. Data: Mendeley Data V2,
  [doi:10.17632/rscbjbr9sj.2](https://doi.org/10.17632/rscbjbr9sj.2) (CC BY 4.0).
- Cohen J. P. et al. (2020). COVID-19 image data collection. arXiv:2003.11597.
"""


def shipped_measured(runs, labels: dict[str, str], heldout: str = "kaggle_test") -> str:
    """The runs folder's own padded-vs-squashed contrast on the held-out pneumonia images."""
    pairs = resize_contrast(runs, heldout)
    return "".join(
        f" In the runs here, *{md(labels.get(pair['padded'].run_id, pair['padded'].title))}* "
        f"(padded) called **{pair['padded_called']} of {pair['total']}** {md(heldout)} "
        "pneumonia images covid; the same recipe squashed, "
        f"*{md(labels.get(pair['squashed'].run_id, pair['squashed'].title))}*, "
        f"**{pair['squashed_called']} of {pair['total']}**." for pair in pairs)


def runs_measured(runs, labels: dict[str, str], heldout: str = "kaggle_test") -> str:
    """The selected runs' own counts of Kaggle pneumonia images called covid (Markdown)."""
    counts = called_as_by_run(runs, heldout, "pneumonia", labels=labels)
    if counts.empty:
        return ""
    return (" The runs shown here, Kaggle pneumonia images called covid:\n\n" + "\n".join(
        f"- *{md(row.run)}* ({md(row.resize_mode)}): **{row.called} of {row.total}**"
        for row in counts.itertuples()) + "\n\n")


labels, _ = common.labels_and_colors(runs)
with st.container(border=True):
    st.subheader("The traps of this data")
    st.markdown(TRAPS.replace("{shipped_measured}", shipped_measured(common.all_runs(), labels))
                .replace("{runs_measured}", runs_measured(runs, labels)))
    with st.expander("References"):
        st.markdown(REFERENCES)

datasets = list(dict.fromkeys(run.data_name or "?" for run in runs))
left, right = st.columns(2)
with left:
    data_name = st.selectbox("Training folder", datasets, key="dataset_name",
                             help="The folders the selected runs were trained on.")
using = [run for run in runs if (run.data_name or "?") == data_name]
with right:
    chosen = st.selectbox("Split of run", [run.run_id for run in using],
                          format_func=labels.get, key="dataset_run",
                          help="Runs can split the same folder differently (seed, folds).")
run = next(run for run in using if run.run_id == chosen)

columns = st.columns(4)
columns[0].metric("Images", run.data_images if run.data_images is not None else "–")
columns[1].metric("Patients", run.data_patients if run.data_patients is not None else "–",
                  help="Distinct patient ids: the unit every split is made by.")
columns[2].metric("Classes", len(run.data_class_counts))
columns[3].metric("Split", f"{run.folds}-fold CV" if run.folds else "train / val / test",
                  help=run.split_method or None)

counts = split_counts(run)
left, right = st.columns([3, 2])
with left:
    if counts.empty:
        common.plot(class_counts_figure(run.data_class_counts,
                                        f"Images per class in {data_name}"), key="dataset_counts")
    else:
        title = f"Images per class and split in {data_name}"
        if run.folds:
            title += " (fold 1)"
        common.plot(split_counts_figure(counts, title), key="dataset_counts")
with right:
    if not counts.empty:
        table = counts.pivot_table(index="split", columns="class", values="images",
                                   aggfunc="sum").reindex(["train", "val", "test"])
        table["patients"] = counts.groupby("split")["patients"].first()
        common.table(table, f"split-{data_name}", key="dataset_split_table", index=True)
        st.caption("No patient appears in more than one split.")
if run.manifest_problem:
    st.warning(f"**Patient ids:** {md(run.manifest_problem)}.", icon=":material/group_off:")
manifest = common.load_manifest(run.manifest_path())
if manifest is not None:
    try:
        sources = class_sources(manifest, data_name)
    except ValueError as error:
        sources = None
        st.caption(f"Sources unavailable: {md(error)}")
    if sources is not None and not sources.empty:
        st.markdown("**Where the images come from**")
        common.table(sources, f"sources-{data_name}", key="dataset_sources",
                     column_config={"origin": st.column_config.TextColumn(width="large")})
        st.caption("Every class comes from a different place, age group and mix of views: "
                   "the shortcut a CNN can learn instead of the disease.")


def show_examples(scope: str, by_class: dict[str, list[str]], what: str) -> None:
    """Thumbnails per class of the run's recorded files, read only from inside the run's
    data folder (which must lie in the data root)."""
    record = run.data_record(scope)
    try:
        folder = run.data_folder(scope)
    except RunError as error:
        st.warning(f"{md(error)}.", icon=":material/block:")
        return
    if folder is None:
        st.warning(f"The {what} images are not on this machine (the run recorded "
                   f"{md(record.get('folder_absolute') or record.get('folder'))}).",
                   icon=":material/folder_off:")
        return
    if not by_class:
        st.info("This run recorded no file lists to take examples from.")
        return
    refused = 0
    for label, paths in by_class.items():
        items = [(run.image_path(path, scope), md(_short(path))) for path in paths]
        refused += sum(path is None for path, _ in items)
        items = [(path, caption) for path, caption in items if path is not None]
        if items:
            st.markdown(f"**{md(label)}**")
            common.thumbnail_grid(items, columns=6, size=180)
    if refused:
        st.warning(f"{refused} recorded image path(s) lead outside the run's data folder and "
                   "were not shown.", icon=":material/block:")


@st.cache_data(show_spinner=False, max_entries=64)
def masked_pictures(path: str, modified: float):
    try:
        return mask_examples(read_gray(path), 224)
    except (ImageError, ValueError):
        return None


def show_masks() -> None:
    """A few real images as the masked-input controls see them (the box drawn in red)."""
    picked: list[tuple[Path, str]] = []
    try:
        for label, paths in sample_files(run, per_class=1).items():
            path = run.image_path(paths[0], "data") if paths else None
            if path is not None:
                picked.append((path, f"{md(data_name)} · {md(label)}"))
        for name in run.heldout_names[:1]:
            for label, paths in sample_heldout_files(run, name, per_class=1).items():
                path = run.image_path(paths[0], name) if paths else None
                if path is not None:
                    picked.append((path, f"{md(name)} · {md(label)}"))
                    break
    except RunError:
        picked = []
    shown = 0
    for path, caption in picked:
        try:
            pictures = masked_pictures(str(path), path.stat().st_mtime)
        except OSError:
            pictures = None
        if pictures is None:
            continue
        cells = st.columns([1, 1, 1, 1])
        cells[0].caption(caption)
        for cell, (key, words) in zip(cells[1:], (("box", "model input, box in red"),
                                                  ("lungs-out", "--mask lungs-out"),
                                                  ("lungs-only", "--mask lungs-only")),
                                      strict=True):
            cell.image(pictures[key], caption=words, width="stretch")
        shown += 1
    if not shown:
        st.caption("No image of this run is on this machine to draw the box on.")


st.subheader("The masks of the shortcut controls")
st.caption(f"The masked-input controls black out a fixed box over the lung fields ({box_text()}"
           ", after the image is squashed to the square input) or keep only that box, "
           "hiding the borders and corners where markers, arrows and captions sit. Training, "
           "evaluation, prediction and saliency all apply the run's mask. The *Shortcut lab* "
           "page shows what the models score with them.")
show_masks()

st.subheader(f"Examples per class from {md(data_name)}")
st.caption("Look before you train: ages, image sizes, borders, arrows and text differ by class.")
show_examples("data", sample_files(run, per_class=6), "training")

for entry in run.heldout_records:
    name = entry.get("name", "held-out")
    st.subheader(f"Held-out folder: {md(name)}")
    counts_here = entry.get("class_counts") or {}
    overlap = run.patient_overlap(name) if name in run.heldout_names else None
    if overlap is None:
        seen = "images never used in training (patients not checked)"
    elif overlap.get("images"):
        seen = (f"images never used in training, but {overlap['patients']} of its patients "
                f"({overlap['images']} images) are also in {md(run.data_name)}")
    else:
        seen = "never used in training, and no patient shared with the training data"
    st.caption(f"{entry.get('images', sum(counts_here.values()))} images, "
               f"{entry.get('patients', '–')} patients, {seen}: "
               + ", ".join(f"{count} {md(label)}" for label, count in counts_here.items()))
    show_examples(name, sample_heldout_files(run, name, per_class=6), "held-out")
