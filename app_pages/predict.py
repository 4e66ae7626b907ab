"""Predict & explain: one X-ray through every selected run, with saliency maps.

Layout only: decoding is :func:`xrcompare.uploads.load_upload`; predictions, agreement,
saliency and overlays are :mod:`xrcompare.predictor` on the server's one
:class:`xrcompare.engine.Engine` (``app_pages/_engine.py``). Predictions and maps are cached
per (image, run, method, options), so a rerun only redraws; the saliency section is a
fragment, so its display settings rerun only that section. The page is drawn before any
model runs, and the results fill in run by run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app_pages import _common as common
from app_pages import _engine
from app_pages._common import md
from xrcompare import errors_gallery, limits, neighbours, predictor, sanity
from xrcompare.errors import one_line
from xrcompare.explain import CAM_METHODS, METHODS
from xrcompare.imaging import ImageError
from xrcompare.runs import Run
from xrcompare.uploads import UploadedImage, load_upload

LOG = logging.getLogger("xrcompare.app")

#: At most this many maps side by side (more runs wrap into evenly filled rows).
MAPS_PER_ROW = 6
#: What the target-class picker offers first: each run explains its own predicted class.
PREDICTED = "each model's predicted class"
#: While models are still loading, the bar chart is redrawn at most this often (seconds).
REDRAW_S = 0.75
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


@st.cache_data(show_spinner=False, max_entries=32)
def decode(data: bytes, name: str) -> UploadedImage:
    return load_upload(data, name)


def work_slot(what: str):
    """One of the server's work slots (decodes are bounded across every session; model work
    queues on the engine's one model thread); while all are busy the page says so and waits."""
    note = st.empty()
    return limits.work_slot(
        on_wait=lambda: note.info(f"Waiting for a free slot: the server is busy with other "
                                  f"images ({limits.slot_count()} at a time); {what} starts "
                                  "as soon as one is free.", icon=":material/hourglass_top:"),
        on_start=note.empty)


@st.cache_data(show_spinner=False, max_entries=64)
def sample_named_by_content(data: bytes) -> str | None:
    """The file name of the shipped sample with exactly these bytes, or None."""
    sample = predictor.find_sample(data)
    return sample.name if sample else None


# --------------------------------------------------------------------------- choosing an image


@dataclass(frozen=True)
class Chosen:
    image: UploadedImage
    source: str  # Markdown: where the image comes from
    sample: predictor.Sample | None  # the shipped sample it is (picked, or uploaded as is)


def choose_image() -> Chosen | None:
    """The image to analyse (an upload wins over the sample picker)."""
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
                help="Licensed X-rays from the teaching data, and one photo that is not an "
                     "X-ray; see samples/README.md.")
            if sample is not None and uploaded is None:
                st.caption(f"{md(sample.licence)} · {md(sample.attribution)}")
        elif uploaded is None:
            st.caption("No sample images in this copy (samples/ is missing).")

    if uploaded is not None:
        name, data = uploaded.name, uploaded.getvalue()
        source = f"your upload **{md(name)}**"
        known = sample_named_by_content(data)
        sample = next((item for item in samples if item.name == known), None)
    elif sample is not None:
        name = sample.name
        source = f"sample **{md(sample.title)}** (label: {md(sample.label)})"
        try:
            data = sample.path.read_bytes()
        except OSError as error:
            st.error(f"The sample {md(sample.name)} cannot be read ({md(error.strerror)}).")
            return None
    else:
        st.info("Upload a chest X-ray to begin.", icon=":material/upload:")
        return None
    try:
        with work_slot("reading your image"):
            return Chosen(decode(data, name), source, sample)
    except (ImageError, limits.ServerBusy) as error:
        st.error(md(one_line(error, 500)), icon=":material/block:")
        if uploaded is not None:
            st.caption("Remove the file (×) to go back to the sample X-rays, or drop another.")
        return None


# --------------------------------------------------------------------------- sections


def show_image(chosen: Chosen, runs: list[Run], labels: dict[str, str]) -> dict[str, str]:
    """The X-ray, what it is, and which selected runs met it in their data (returned as
    run id → split)."""
    image = chosen.image
    info = image.info
    width, height = info.get("size", (image.gray.shape[1], image.gray.shape[0]))
    st.image(image.gray, width="stretch")
    details = [f"{info.get('format', '?')}", f"{width} × {height} px"]
    if info.get("bit_depth"):
        details.append(f"{info['bit_depth']}-bit")
    window = info.get("dicom_window") or {}
    if window.get("source"):
        details.append(f"window: {window['source']}")
    st.caption(f"{chosen.source} · " + " · ".join(details))
    for warning in image.warnings:
        st.warning(md(warning), icon=":material/warning:")
    if chosen.sample is None:
        return {}
    splits = predictor.sample_splits(chosen.sample, runs)
    folder = chosen.sample.source.partition("/")[0]
    where = f"This sample is `{chosen.sample.source}` in the shared data."
    unseen = [md(labels.get(run.run_id, run.title)) for run in runs if run.run_id not in splits]
    sentence = predictor.splits_sentence(splits, {run_id: md(title) for run_id, title
                                                  in labels.items()}, md(folder), unseen)
    if not splits:
        st.caption(f"{where} It is in none of the selected runs' data: every model meets it "
                   "for the first time.")
    elif any(split in ("train", "val") for split in splits.values()):
        st.warning(f"{where} {sentence}", icon=":material/school:")
    else:
        st.caption(f":material/school: {where} {sentence}")
    return splits


def run_predictions(runs: list[Run], chosen: Chosen, digest: str,
                    labels: dict[str, str]) -> list[predictor.RunPrediction]:
    """Every run's prediction, drawn as they come: the bar chart grows run by run while
    models are still loading (the first use after a start); warm, it is drawn once."""
    engine = _engine.engine()
    cache = _engine.prediction_cache()
    status, summary_slot, chart_slot = st.empty(), st.empty(), st.empty()
    results: list[predictor.RunPrediction] = []
    drawn = time.perf_counter()
    for number, run in enumerate(runs):
        if not engine.is_warm(run):
            status.caption(f":material/hourglass_top: Model {number + 1} of {len(runs)}: "
                           f"loading **{md(labels.get(run.run_id, run.title))}** (the first use "
                           "after a start builds its frozen base)…")
        results.append(predictor.predict_run(engine, run, chosen.image.gray, cache=cache,
                                             digest=digest))
        if number + 1 < len(runs) and time.perf_counter() - drawn > REDRAW_S \
                and any(result.ok for result in results):
            chart_slot.plotly_chart(predictor.probability_figure(results, labels),
                                    width="stretch", config={"displaylogo": False})
            drawn = time.perf_counter()
    status.empty()
    show_predictions(results, labels, summary_slot, chart_slot)
    return results


def show_predictions(predictions, labels: dict[str, str], summary_slot, chart_slot) -> None:
    summary = predictor.agreement(predictions, labels)
    with summary_slot.container():
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
            st.caption("Controls (not counted): "
                       + "; ".join(md(control) for control in summary.controls)
                       + ". A control sees no ImageNet features, no lungs, or no image at all, "
                         "yet often answers with confidence: compare its bars.")
        for prediction in predictions:
            if not prediction.ok:
                st.error(f"**{md(labels.get(prediction.run_id, prediction.title))}** gave no "
                         f"prediction. {md(prediction.problem)}", icon=":material/block:")
    if any(prediction.ok for prediction in predictions):
        with chart_slot.container():
            common.plot(predictor.probability_figure(predictions, labels),
                        key="predict_probabilities")
    else:
        chart_slot.empty()


def show_table(predictions, labels: dict[str, str], splits: dict[str, str]) -> None:
    table = predictor.probability_table(predictions, labels)
    if splits:
        table.insert(3, "image in", [predictor.SPLIT_NAMES.get(splits.get(run_id), "–")
                                     for run_id in table["run_id"]])
    table = table.drop(columns=["run_id"])
    if not table["note"].astype(bool).any():
        table = table.drop(columns=["note"])
    numbers = [column for column in table.columns
               if column not in ("run", "kind", "image in", "predicted", "note")]
    config = {"run": st.column_config.TextColumn("run", pinned=True),
              "kind": st.column_config.TextColumn(
                  "kind", help="A model, or a control (random-init, masked input, image "
                               "statistics) showing what a model without the real signal does."),
              "image in": st.column_config.TextColumn(
                  "image in", help="Where this run met the sample: in a split of its own "
                                   "data, in a held-out folder, or nowhere (–)."),
              "predicted": st.column_config.TextColumn("predicted"),
              "confidence": st.column_config.NumberColumn(
                  "top probability",
                  help="The predicted class's probability. Softmax outputs are not calibrated "
                       "chances: these models are often 99% sure and wrong."),
              "note": st.column_config.TextColumn("note", width="large")}
    for label in numbers:
        if label != "confidence":
            config[label] = st.column_config.NumberColumn(f"p({label})")
    styled = table.style.format(predictor.format_probability, subset=numbers)
    st.dataframe(styled, hide_index=True, width="stretch", column_config=config)


def engine_caption(runs: list[Run]) -> None:
    """Which engine runs the frozen bases now (the warm-up moves them to the inference
    engine once built: :meth:`xrcompare.engine.Engine.accelerate`)."""
    engine = _engine.engine()
    names = sorted({name for run in runs if (name := engine.engine_label(run))})
    if names:
        st.caption(f":material/memory: Frozen bases run on {' and '.join(names)}; the heads "
                   "and the saliency maps on Keras. A base moves to the faster inference "
                   "engine once the app has warmed it up; its probabilities may then differ "
                   "in the third decimal.")


def saliency_controls(classes: list[str]) -> dict:
    """The saliency settings, from widgets that keep their value across pages."""
    chosen = st.pills("Methods", list(METHODS), selection_mode="multi", default=["gradcam"],
                      key="predict_methods", persist_state="session", format_func=METHODS.get,
                      help="\n\n".join(f"**{METHODS[name]}**: {text}"
                                       for name, text in METHOD_HELP.items()))
    left, right = st.columns([1, 1], gap="medium")
    with left:
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
                                    help="OpenCV colour map; the bar above the maps shows "
                                         "which colour is low and which is high.")
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
    methods = [name for name in METHODS if name in (chosen or [])]  # always in the same order
    return {"methods": methods, "target": target, "alpha": alpha, "colormap": colormap,
            "raw": raw, "options": {"smooth_samples": samples, "smooth_noise": noise,
                                    "score_max_n": max_n}}


def colour_bar(colormap: str) -> None:
    """A small legend: the colour map from low to high saliency."""
    stops = predictor.colormap_colors(colormap)
    gradient = ", ".join(f"{colour} {100 * number / (len(stops) - 1):.0f}%"
                         for number, colour in enumerate(stops))
    st.html(
        '<div style="display:flex;align-items:center;gap:0.5rem;font-size:0.85rem;'
        'opacity:0.8">'
        f'<span>low</span><div style="width:220px;height:12px;border-radius:3px;'
        f'background:linear-gradient(to right, {gradient})"></div><span>high</span>'
        f'<span>&nbsp;saliency ({colormap}), each map scaled to its own 0–1</span></div>')


@st.fragment
def saliency_section(runs: list[Run], predictions, chosen: Chosen, digest: str,
                     labels: dict[str, str]) -> None:
    """Controls and maps; a display change reruns only this, and only from cached maps."""
    st.subheader("Saliency: where did each model look?")
    classes = list(dict.fromkeys(label for run in runs for label in run.labels))
    settings = saliency_controls(classes)
    if not settings["methods"]:
        st.info("Pick at least one method to see saliency maps.", icon=":material/touch_app:")
        return
    if not any(prediction.ok for prediction in predictions):
        st.info("No model gave a prediction, so there is nothing to explain.")
        return
    show_maps({run.run_id: run for run in runs}, predictions, chosen.image, digest, settings,
              labels, predictor.display_image(chosen.image.gray))
    if any(method in CAM_METHODS for method in settings["methods"]):
        engine = _engine.engine()
        grids = {}
        for run, prediction in zip(runs, predictions, strict=True):
            if prediction.ok and run.is_cnn:  # the statistics baseline has no conv layer
                rows, columns = engine.conv_grid(run)
                grids[(run.backbone_display, run.image_size)] = (rows, columns, run.last_conv_layer)
        grid_text = ", ".join(f"{backbone} `{layer}` {rows} × {columns} at {size} px"
                              for (backbone, size), (rows, columns, layer)
                              in sorted(grids.items()))
        st.caption(f"CAM maps come from each backbone's last convolutional layer ({grid_text}), "
                   "so they are blurry by construction. Maps of padded runs are cropped back "
                   "to the image; those of squashed runs are stretched back.")
    if "gradcam" in settings["methods"]:
        sanity_check(runs, predictions, chosen, digest, settings, labels)


def sanity_check(runs: list[Run], predictions, chosen: Chosen, digest: str, settings: dict,
                 labels: dict[str, str]) -> None:
    """Grad-CAM of each selected model beside its selected random-init control's, for the
    same class, with the rank correlation of the two maps (:mod:`xrcompare.sanity`)."""
    by_id = {prediction.run_id: prediction for prediction in predictions if prediction.ok}
    pairs, missing = [], []
    for run in runs:
        if run.run_id not in by_id:
            continue
        control = sanity.random_control_of(run, runs)
        if control is not None and control.run_id in by_id:
            pairs.append((run, control))
        elif control is None and (unselected := sanity.random_control_of(
                run, common.all_runs())) is not None:
            missing.append((run, unselected))
    if not pairs and not missing:
        return
    st.markdown("#### Saliency sanity check: trained model vs untrained base")
    st.caption("The same recipe on a randomly initialised base has learned nothing from "
               "ImageNet. If its Grad-CAM map looks like the trained model's, the map shows "
               f"the image more than the model. {sanity.REFERENCE}.")
    for run, control in missing:
        st.caption(f":material/info: Select **{md(labels.get(control.run_id, control.title))}** "
                   f"in the sidebar as well to check **{md(labels.get(run.run_id, run.title))}**'s "
                   "map against its random-init control.")
    engine, cache = _engine.engine(), _engine.saliency_cache()
    picture = predictor.display_image(chosen.image.gray)
    for run, control in pairs:
        target = (by_id[run.run_id].predicted if settings["target"] == PREDICTED
                  else settings["target"])
        name, control_name = (md(labels.get(item.run_id, item.title)) for item in (run, control))
        if target not in run.labels or target not in control.labels:
            st.caption(f"**{name}** and its control do not both predict {md(target)}.")
            continue
        try:
            check = engine.submit(sanity.saliency_sanity, run, control, chosen.image.gray,
                                  "gradcam", target, engine=engine, cache=cache,
                                  digest=digest).result()
        except Exception as error:  # the check must never hide the maps above
            LOG.exception("saliency sanity check for %s failed", run.run_id)
            st.error(f"The sanity check for **{name}** failed ({md(one_line(error, 160))}).",
                     icon=":material/error:")
            continue
        model_cell, control_cell, text_cell = st.columns([1, 1, 2], gap="small")
        for cell, item, saliency, title in ((model_cell, run, check.map_model, name),
                                            (control_cell, control, check.map_control,
                                             control_name)):
            cell.image(predictor.overlay_for_run(item, picture, saliency,
                                                 alpha=settings["alpha"],
                                                 colormap=settings["colormap"]),
                       width="stretch")
            cell.caption(f"{title} · Grad-CAM of *{md(target)}*")
        rho = "undefined" if check.rho is None else f"{check.rho:.2f}"
        text_cell.metric("Spearman ρ of the two maps", rho,
                         help="Rank correlation of the two maps over their pixels: 1 = the "
                              "same ranking, 0 = unrelated, −1 = opposite.")
        text_cell.markdown(md(check.sentence))


def show_maps(runs_by_id: dict[str, Run], predictions, image: UploadedImage, digest: str,
              settings: dict, labels: dict[str, str], picture) -> None:
    """One map per (method, run), laid out first and filled as each is ready (from the
    cache at once; else computed, with a progress bar); drawn over ``picture``, the image
    at display size."""
    # Saliency needs a network: the image-statistics baseline has none.
    usable = [p for p in predictions if p.ok and runs_by_id[p.run_id].is_cnn]
    rows = -(-len(usable) // MAPS_PER_ROW)  # ceil: as few rows as possible, evenly filled
    per_row = max(1, -(-len(usable) // max(rows, 1)))
    colour_bar(settings["colormap"])
    bar = st.empty()
    slots = []  # (method, prediction, overlay slot, raw slot or None) in display order
    for method in settings["methods"]:
        st.markdown(f"#### {METHODS[method]}")
        st.caption(METHOD_HELP[method])
        for start in range(0, len(usable), per_row):
            chunk = usable[start:start + per_row]
            cells = st.columns(per_row, gap="small")
            # Raw maps get a row of their own, so they line up whatever the captions' length.
            raw_cells = st.columns(per_row, gap="small") if settings["raw"] else [None] * per_row
            for cell, raw_cell, prediction in zip(cells, raw_cells, chunk, strict=False):
                slots.append((method, prediction, cell.empty(),
                              raw_cell.empty() if raw_cell is not None else None))
    engine, cache = _engine.engine(), _engine.saliency_cache()
    for number, (method, prediction, slot, raw_slot) in enumerate(slots):
        run = runs_by_id[prediction.run_id]
        target = prediction.predicted if settings["target"] == PREDICTED else settings["target"]
        name = md(labels.get(run.run_id, run.title))  # shown in Markdown only
        if target not in prediction.labels:
            slot.caption(f"**{name}** does not predict {md(target)}.")
            continue
        label = f"{METHODS[method]} · {name} ({number + 1} of {len(slots)})"

        def progress(fraction: float, number=number, label=label) -> None:
            bar.progress(min(1.0, (number + fraction) / len(slots)), text=label)

        try:
            result = cache.get(cache.key(digest, run, method, target, settings["options"]))
            if result is None:
                result = compute_map(engine, cache, run, image, digest, method, target,
                                     settings["options"], progress)
        except Exception as error:  # one failing map must not hide the others
            LOG.exception("saliency %s for %s failed", method, run.run_id)
            slot.error(f"**{name}**: {METHODS[method]} failed for this model "
                       f"({type(error).__name__}: {md(one_line(error, 160))}).",
                       icon=":material/error:")
            continue
        show_one_map(run, prediction, result, picture, settings, name, slot, raw_slot)
    bar.empty()


def compute_map(engine, cache, run: Run, image: UploadedImage, digest: str, method: str,
                target: str, options: dict, progress) -> predictor.Explanation:
    """One map computed on the engine's model thread, the progress bar drawn from here.

    The map is cached by the model thread itself, so a rerun that interrupts this wait (a
    slider moved meanwhile) finds it when it is done instead of starting it again.
    """
    done = [0.0]  # written by the model thread, read here

    def note(fraction: float) -> None:
        done[0] = fraction

    progress(0.0)
    future = engine.submit(predictor.explain_cached, cache, engine, run, image.gray, method,
                           target, digest=digest, progress=note, **options)
    while True:
        try:
            return future.result(timeout=0.25)
        except TimeoutError:
            progress(done[0])


def show_one_map(run: Run, prediction, result: predictor.Explanation, picture,
                 settings: dict, name: str, slot, raw_slot) -> None:
    probability = predictor.format_probability(prediction.probabilities.get(result.target))
    caption = (f"**{name}**  \nexplains *{result.target}* (p = {probability}) · "
               f"{result.seconds:.2f} s")
    with slot.container():
        if result.is_blank:
            st.image(picture, width="stretch")
            st.caption(caption + f"  \n:material/visibility_off: blank map: nothing in the "
                                 f"image raises the {result.target} score here.")
            return
        st.image(predictor.overlay_for_run(run, picture, result.saliency,
                                           alpha=settings["alpha"],
                                           colormap=settings["colormap"]), width="stretch")
        st.caption(caption)
    if raw_slot is not None:
        with raw_slot.container():
            st.image(predictor.raw_map_for_run(run, picture, result.saliency,
                                               colormap=settings["colormap"]), width="stretch")
            st.caption(f"raw map · {name}")


def check_neighbours(runs: list[Run], predictions, chosen: Chosen) -> dict[str, dict]:
    """Run id → :func:`xrcompare.neighbours.neighbours_of` (the image's distance, threshold,
    out-of-distribution flag and nearest training images, or ``neighbours_note``: why there
    are none), for each CNN run that predicted."""
    engine = _engine.engine()
    answered = {prediction.run_id for prediction in predictions if prediction.ok}
    return {run.run_id: neighbours.neighbours_of(run, chosen.image.gray, engine)
            for run in runs if run.run_id in answered and run.is_cnn}


def out_of_distribution_warning(found: dict[str, dict], labels: dict[str, str]) -> None:
    flagged = [run_id for run_id, result in found.items() if result.get("out_of_distribution")]
    checked = [run_id for run_id, result in found.items() if not result["neighbours_note"]]
    if not flagged:
        return
    names = ", ".join(f"**{md(labels.get(run_id, run_id))}**" for run_id in flagged)
    st.warning(f"**Unlike the training images** of {len(flagged)} of the {len(checked)} runs "
             f"that can tell ({names}): farther from their training X-rays than 99% of their "
             "validation images. Their probabilities say nothing about this image, however "
             "confident they look.", icon=":material/explore_off:")


def neighbours_section(runs_by_id: dict[str, Run], found: dict[str, dict],
                       labels: dict[str, str]) -> None:
    st.subheader("Nearest training images: what does the model think it resembles?")
    st.markdown(
        "Each run's frozen base turns an image into a vector; these are the training images "
        "whose vectors point most nearly the same way (cosine similarity, on the run's first "
        f"{neighbours.COMPONENTS} principal components). If a *covid* call comes with "
        "neighbours that are all case-report figures of one source, the model may be "
        "matching the source, not the disease.")
    usable = [run_id for run_id, result in found.items() if not result["neighbours_note"]]
    for run_id, result in found.items():
        if result["neighbours_note"]:
            st.caption(f"{md(labels.get(run_id, run_id))}: {md(result['neighbours_note'])}.")
    if not usable:
        return
    table = [{"run": labels.get(run_id, run_id), "distance": found[run_id]["distance"],
              "threshold": found[run_id]["threshold"],
              "unlike the training images": "yes" if found[run_id]["out_of_distribution"]
              else "no"} for run_id in usable]
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "distance": st.column_config.NumberColumn(
            "distance", format="%.1f", help="Mahalanobis distance of the image's vector to "
            "the run's training vectors (each principal component scaled by its spread)."),
        "threshold": st.column_config.NumberColumn(
            "threshold", format="%.1f", help="99% of the run's validation images are closer "
            "than this.")})
    run_id = st.selectbox("Nearest training images of", usable, key="predict_neighbours_run",
                          format_func=lambda key: labels.get(key, key))
    run = runs_by_id[run_id]
    folder, problem = errors_gallery.scope_folder(run, "data")
    items, missing = [], []
    for item in found[run_id]["nearest"]:
        file, why = errors_gallery.resolve_image(run, "data", item["path"], folder, problem)
        caption = f"{item['label']} · similarity {item['similarity']:.2f}"
        if file is None:
            missing.append(f"{md(item['path'])} ({md(caption)}): {md(why)}")
        else:
            items.append((file, f"{caption} · {Path(item['path']).name[:28]}"))
    if items:
        common.thumbnail_grid(items, columns=neighbours.K, size=200)
    for sentence in missing:
        st.caption(f":material/image_not_supported: {sentence}")


# --------------------------------------------------------------------------- the page

st.title("Predict & explain: one X-ray, every model")
common.teaching_banner()
runs = common.require_runs()
labels, _ = common.labels_and_colors(runs)
st.markdown("Give the models one chest X-ray. Each selected run gives its class "
            "probabilities, and saliency maps show which pixels moved its score most.")
st.page_link("app_pages/batch.py", label="Several X-rays or a .zip? Predict a batch, as a "
             "table and CSV", icon=":material/table_view:")

chosen = choose_image()
if chosen is None:
    st.stop()
digest = predictor.image_digest(chosen.image.gray)

picture_column, result_column = st.columns([1, 2], gap="large")
with picture_column:
    splits = show_image(chosen, runs, labels)
with result_column:
    st.subheader("Predictions")
    predictions = run_predictions(runs, chosen, digest, labels)
    found = check_neighbours(runs, predictions, chosen)
    out_of_distribution_warning(found, labels)
show_table(predictions, labels, splits)
engine_caption(runs)
saliency_section(runs, predictions, chosen, digest, labels)
st.info(
    "**A saliency map is a hint, not proof.** It shows where the score is sensitive, not "
    "what the model understood, and different methods disagree on the same image. Saporta "
    "et al. (*Nature Machine Intelligence*, 2022) found that saliency maps of chest X-ray "
    "models localise disease far worse than radiologists. Look for heat on letters, arrows, "
    "borders or outside the lungs: signs that a model uses a shortcut such as the source of "
    "the image.", icon=":material/lightbulb:")
if found:
    neighbours_section({run.run_id: run for run in runs}, found, labels)
