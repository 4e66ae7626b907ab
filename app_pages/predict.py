"""Predict & explain: one X-ray through every selected run, with saliency maps.

Layout only: decoding is :func:`xrcompare.uploads.load_upload`, predictions, agreement,
saliency and overlays are :mod:`xrcompare.predictor`. Models and saliency maps are cached
across reruns and sessions.
"""

from __future__ import annotations

import logging

import streamlit as st

from app_pages import _common as common
from app_pages._common import md
from xrcompare import limits, predictor
from xrcompare.explain import CAM_METHODS, METHODS
from xrcompare.imaging import ImageError
from xrcompare.runs import Run
from xrcompare.uploads import UploadedImage, load_upload

LOG = logging.getLogger("xrcompare.app")

#: At most this many maps side by side (more runs wrap into evenly filled rows).
MAPS_PER_ROW = 6
#: What the target-class picker offers first: each run explains its own predicted class.
PREDICTED = "each model's predicted class"
METHOD_HELP = {
    "saliency": "The gradient of the class score with respect to each pixel: fast, noisy.",
    "smoothgrad": "Vanilla saliency averaged over noisy copies of the image: smoother, slow "
                  "(about 0.3 s per copy on a 2-core CPU).",
    "gradcam": "Weights the last convolutional feature maps (a 7 × 7 grid for ResNet50 at "
               "224 px) by their gradients: coarse blobs, fast.",
    "gradcam++": "Grad-CAM with higher-order weights, meant to cover several regions.",
    "scorecam": "Masks the image with the N most active feature maps and watches the score: "
                "no gradients, slower.",
}


# --------------------------------------------------------------------------- caches


@st.cache_resource(show_spinner=False)
def shared_bases() -> predictor.BaseCache:
    """One frozen base per (backbone, weights, size, seed), shared by the runs' models."""
    return predictor.BaseCache()


@st.cache_resource(show_spinner=False, max_entries=16)
def cached_model(run_id: str, modified: float, _run: Run):
    """The run's full model (one flat graph), kept per run id and folder time."""
    return predictor.load_model(_run, shared_bases())


@st.cache_resource(show_spinner=False)
def saliency_cache() -> predictor.SaliencyCache:
    """Saliency maps by image hash, run, method, class and options (least recently used go)."""
    return predictor.SaliencyCache(max_entries=256)


@st.cache_data(show_spinner=False, max_entries=32)
def decode(data: bytes, name: str) -> UploadedImage:
    return load_upload(data, name)


def model_for(run: Run):
    return cached_model(run.run_id, run.modified, run)


def work_slot(what: str):
    """One of the server's work slots (decodes, predictions, maps are bounded across every
    session); while all are busy the page says so and waits its turn."""
    note = st.empty()
    return limits.work_slot(
        on_wait=lambda: note.info(f"Waiting for a free slot: the server is busy with other "
                                  f"images ({limits.slot_count()} at a time); {what} starts "
                                  "as soon as one is free.", icon=":material/hourglass_top:"),
        on_start=note.empty)


# --------------------------------------------------------------------------- choosing an image


def choose_image() -> tuple[UploadedImage | None, str]:
    """The image to analyse (an upload wins over the sample picker) and its caption."""
    samples = predictor.list_samples()
    upload_column, sample_column = st.columns([3, 2], gap="large")
    with upload_column:
        uploaded = st.file_uploader(
            "Upload a chest X-ray (PNG, JPEG or DICOM)", key="predict_upload",
            help="One frontal chest X-ray. Any file is checked first: what cannot be used is "
                 "refused with a reason. The image stays on this server and is not stored.")
    with sample_column:
        sample = None
        if samples:
            sample = st.selectbox(
                "…or try a sample X-ray", samples, key="predict_sample",
                format_func=lambda item: item.title, disabled=uploaded is not None,
                help="Four licensed images from the teaching data; see samples/README.md.")
            if sample is not None and uploaded is None:
                st.caption(f"{md(sample.licence)} · {md(sample.attribution)}")
        elif uploaded is None:
            st.caption("No sample images in this copy (samples/ is missing).")

    if uploaded is not None:
        name, data = uploaded.name, uploaded.getvalue()
        source = f"your upload **{md(name)}**"
    elif sample is not None:
        name = sample.name
        source = f"sample **{md(sample.title)}** (label: {md(sample.label)})"
        try:
            data = sample.path.read_bytes()
        except OSError as error:
            st.error(f"The sample {md(sample.name)} cannot be read ({md(error.strerror)}).")
            return None, ""
    else:
        st.info("Upload a chest X-ray to begin.", icon=":material/upload:")
        return None, ""
    try:
        with work_slot("reading your image"):
            return decode(data, name), source
    except (ImageError, limits.ServerBusy) as error:
        st.error(md(error), icon=":material/block:")
        if uploaded is not None:
            st.caption("Remove the file (×) to go back to the sample X-rays, or drop another.")
        return None, ""


# --------------------------------------------------------------------------- sections


def show_image(image: UploadedImage, source: str) -> None:
    info = image.info
    width, height = info.get("size", (image.gray.shape[1], image.gray.shape[0]))
    st.image(image.gray, width="stretch")
    details = [f"{info.get('format', '?')}", f"{width} × {height} px"]
    if info.get("bit_depth"):
        details.append(f"{info['bit_depth']}-bit")
    window = info.get("dicom_window") or {}
    if window.get("source"):
        details.append(f"window: {window['source']}")
    st.caption(f"{source} · " + " · ".join(details))
    for warning in image.warnings:
        st.warning(md(warning), icon=":material/warning:")


def run_predictions(runs: list[Run], image: UploadedImage) -> list[predictor.RunPrediction]:
    bar = st.empty()

    def progress(number: int, total: int, run: Run) -> None:
        bar.progress(number / total, text=f"Loading and running model {number + 1} of "
                                          f"{total}: {md(run.title)}")

    try:
        with work_slot("the prediction"):
            predictions = predictor.predict_runs(runs, image.gray, model_for,
                                                 progress=progress)
    except limits.ServerBusy as error:
        bar.empty()
        st.error(md(error), icon=":material/hourglass_disabled:")
        st.stop()
    bar.empty()
    return predictions


def show_predictions(predictions, labels: dict[str, str]) -> None:
    summary = predictor.agreement(predictions, labels)
    if summary.majority is None and not summary.votes:
        st.error(summary.headline, icon=":material/error:")
    elif summary.unanimous:
        st.success(summary.headline, icon=":material/check_circle:")
    else:
        st.warning(summary.headline, icon=":material/call_split:")
    if len(summary.votes) > 1:
        st.markdown("\n".join(f"- **{md(label)}**: {', '.join(md(name) for name in names)}"
                              for label, names in summary.votes.items()))
    if summary.controls:
        st.caption("Random-init controls (not counted): "
                   + "; ".join(md(control) for control in summary.controls)
                   + ". A head on random features learns little; compare its bars.")
    for prediction in predictions:
        if not prediction.ok:
            st.error(f"**{md(labels.get(prediction.run_id, prediction.title))}** gave no "
                     f"prediction. {md(prediction.problem)}", icon=":material/block:")
    if any(prediction.ok for prediction in predictions):
        common.plot(predictor.probability_figure(predictions, labels),
                    key="predict_probabilities")


def show_table(predictions, labels: dict[str, str]) -> None:
    table = predictor.probability_table(predictions, labels).drop(columns=["run_id"])
    classes = [column for column in table.columns
               if column not in ("run", "kind", "predicted", "confidence", "note")]
    config = {"run": st.column_config.TextColumn("run", pinned=True),
              "kind": st.column_config.TextColumn("weights"),
              "predicted": st.column_config.TextColumn("predicted"),
              "confidence": st.column_config.NumberColumn(
                  "top probability", format="percent",
                  help="The predicted class's probability. Softmax outputs are not calibrated "
                       "chances: these models are often 99% sure and wrong.")}
    for label in classes:
        config[label] = st.column_config.ProgressColumn(f"p({label})", min_value=0.0,
                                                        max_value=1.0, format="percent",
                                                        width="small")
    config["note"] = st.column_config.TextColumn("note", width="large")
    if not table["note"].astype(bool).any():
        table = table.drop(columns=["note"])
    st.dataframe(table, hide_index=True, width="stretch", column_config=config)


def saliency_controls(classes: list[str]) -> dict:
    """The saliency settings, from widgets that keep their value across pages."""
    left, middle, right = st.columns([3, 2, 2], gap="medium")
    with left:
        methods = st.multiselect(
            "Methods", list(METHODS), default=["gradcam"], key="predict_methods",
            persist_state="session", format_func=METHODS.get,
            help="\n\n".join(f"**{METHODS[name]}**: {text}"
                             for name, text in METHOD_HELP.items()))
    with middle:
        target = st.selectbox("Explain which class", [PREDICTED, *classes],
                              key="predict_target", persist_state="session",
                              help="The class whose score the map explains. A map for a "
                                   "class the model did not predict shows what would speak "
                                   "for it.")
    with right:
        alpha = st.slider("Heat-map opacity", 0.0, 1.0, 0.45, 0.05, key="predict_alpha",
                          persist_state="session",
                          help="0 shows the X-ray only, 1 the heat map only.")
    with st.expander("More settings: colour map, raw maps, SmoothGrad and ScoreCAM samples"):
        first, second, third, fourth = st.columns(4)
        with first:
            colormap = st.selectbox("Colour map", list(predictor.COLORMAPS),
                                    key="predict_colormap", persist_state="session",
                                    help="OpenCV colour map; red is where the map is "
                                         "strongest in jet and turbo.")
            raw = st.toggle("Show the raw maps too", key="predict_raw",
                            persist_state="session",
                            help="The map alone, without the X-ray under it.")
        with second:
            samples = st.slider("SmoothGrad noisy copies", 5, 50, 20, 5,
                                key="predict_smooth_samples", persist_state="session",
                                help="More copies: smoother map, proportionally slower.")
        with third:
            noise = st.slider("SmoothGrad noise level", 0.05, 0.50, 0.20, 0.05,
                              key="predict_smooth_noise", persist_state="session",
                              help="Noise spread as a share of the image's value range.")
        with fourth:
            max_n = st.slider("Faster-ScoreCAM feature maps (N)", 1, 64, 10, 1,
                              key="predict_score_max_n", persist_state="session",
                              help="ScoreCAM masks the image with the N feature maps that "
                                   "vary most; more maps: slower, maybe clearer.")
    methods = [name for name in METHODS if name in methods]  # always in the same order
    return {"methods": methods, "target": target, "alpha": alpha, "colormap": colormap,
            "raw": raw, "options": {"smooth_samples": samples, "smooth_noise": noise,
                                    "score_max_n": max_n}}


def compute_maps(jobs, image: UploadedImage, digest: str, options: dict) -> dict:
    """Every (method, run, target) map, through the shared cache, with a progress bar."""
    cache = saliency_cache()
    bar = st.empty()
    results: dict[tuple[str, str], predictor.Explanation | str] = {}
    for number, (method, run, target) in enumerate(jobs):
        label = f"{METHODS[method]} · {md(run.title)} ({number + 1} of {len(jobs)})"

        def progress(fraction: float, number=number, label=label) -> None:
            bar.progress(min(1.0, (number + fraction) / len(jobs)), text=label)

        progress(0.0)
        try:
            with work_slot("this saliency map"):
                results[method, run.run_id] = predictor.explain_cached(
                    cache, run, model_for(run), image.gray, method, target, digest=digest,
                    progress=progress, **options)
        except Exception as error:  # one failing map must not hide the others
            LOG.exception("saliency %s for %s failed", method, run.run_id)
            results[method, run.run_id] = (f"{METHODS[method]} failed for this model "
                                           f"({type(error).__name__}: {str(error)[:160]}).")
    bar.empty()
    return results


def show_maps(runs_by_id: dict[str, Run], predictions, image: UploadedImage,
              settings: dict, labels: dict[str, str]) -> None:
    usable = [p for p in predictions if p.ok]
    jobs = []
    for method in settings["methods"]:
        for prediction in usable:
            target = prediction.predicted if settings["target"] == PREDICTED \
                else settings["target"]
            if target in prediction.labels:
                jobs.append((method, runs_by_id[prediction.run_id], target))
    results = compute_maps(jobs, image, predictor.image_digest(image.gray),
                           settings["options"])
    rows = -(-len(usable) // MAPS_PER_ROW)  # ceil: as few rows as possible, evenly filled
    per_row = max(1, -(-len(usable) // max(rows, 1)))
    for method in settings["methods"]:
        st.markdown(f"#### {METHODS[method]}")
        st.caption(METHOD_HELP[method])
        for start in range(0, len(usable), per_row):
            cells = st.columns(per_row, gap="small")
            for cell, prediction in zip(cells, usable[start:start + per_row], strict=False):
                with cell:
                    show_one_map(runs_by_id[prediction.run_id], prediction,
                                 results.get((method, prediction.run_id)), image, settings,
                                 labels)


def show_one_map(run: Run, prediction, result, image: UploadedImage, settings: dict,
                 labels: dict[str, str]) -> None:
    name = md(labels.get(run.run_id, run.title))
    if result is None:
        st.caption(f"**{name}** does not predict {md(settings['target'])}.")
        return
    if isinstance(result, str):
        st.error(f"**{name}**: {md(result)}", icon=":material/error:")
        return
    probability = prediction.probabilities.get(result.target, 0.0)
    caption = (f"**{name}**  \nexplains *{md(result.target)}* (p = {probability:.0%}) · "
               f"{result.seconds:.1f} s")
    if result.is_blank:
        st.image(image.gray, width="stretch")
        st.caption(caption + f"  \n:material/visibility_off: blank map: nothing in the "
                             f"image raises the {md(result.target)} score here.")
        return
    st.image(predictor.overlay_for_run(run, image.gray, result.saliency,
                                       alpha=settings["alpha"], colormap=settings["colormap"]),
             width="stretch")
    st.caption(caption)
    if settings["raw"]:
        st.image(predictor.raw_map_for_run(run, image.gray, result.saliency,
                                           colormap=settings["colormap"]), width="stretch")
        st.caption("raw map")


# --------------------------------------------------------------------------- the page

st.title("Predict & explain: one X-ray, every model")
common.teaching_banner()
runs = common.require_runs()
labels, _ = common.labels_and_colors(runs)
st.markdown("Give the models one chest X-ray. Each selected run gives its class "
            "probabilities, and saliency maps show which pixels moved its score most.")

image, source = choose_image()
if image is None:
    st.stop()

picture_column, result_column = st.columns([1, 2], gap="large")
with picture_column:
    show_image(image, source)
with result_column:
    st.subheader("Predictions")
    predictions = run_predictions(runs, image)
    show_predictions(predictions, labels)
show_table(predictions, labels)

st.subheader("Saliency: where did each model look?")
classes = list(dict.fromkeys(label for run in runs for label in run.labels))
settings = saliency_controls(classes)
if not settings["methods"]:
    st.info("Pick at least one method to see saliency maps.", icon=":material/touch_app:")
elif not any(prediction.ok for prediction in predictions):
    st.info("No model gave a prediction, so there is nothing to explain.")
else:
    runs_by_id = {run.run_id: run for run in runs}
    show_maps(runs_by_id, predictions, image, settings, labels)
    if any(method in CAM_METHODS for method in settings["methods"]):
        grids = sorted({(run.info["image_size"], *run.info["feature_shape"][:2])
                        for run in runs if run.info.get("feature_shape")})
        grid_text = ", ".join(f"{rows} × {columns} cells at {size} px"
                              for size, rows, columns in grids)
        st.caption(f"CAM maps come from the last convolutional block ({grid_text}), so they "
                   "are blurry by construction. Maps of padded runs are cropped back to the "
                   "image; those of squashed runs are stretched back.")
st.info(
    "**A saliency map is a hint, not proof.** It shows where the score is sensitive, not "
    "what the model understood, and different methods disagree on the same image. Saporta "
    "et al. (*Nature Machine Intelligence*, 2022) found that saliency maps of chest X-ray "
    "models localise disease far worse than radiologists. Look for heat on letters, arrows, "
    "borders or outside the lungs: signs that a model uses a shortcut such as the source of "
    "the image.", icon=":material/lightbulb:")
