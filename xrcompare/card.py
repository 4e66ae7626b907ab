"""A model card per run (after Mitchell et al. 2019), rendered as Markdown from what the run
recorded (run.json, metrics.json, predictions.csv, read through :class:`Run`) and from the
controls found among the other runs: intended use (teaching only), data and sources, split,
metrics with intervals, calibration, the controls' results, subgroups, known shortcuts and
caveats. ``python -m xrcompare card RUN_DIR`` prints the same Markdown the app shows and
offers for download.

Everything quoted from a run folder (names, descriptions, folder names) is data from outside
and is escaped (:func:`xrcompare.escaping.escape_markdown`).
"""

from __future__ import annotations

from collections.abc import Sequence

from xrcompare.escaping import escape_markdown as md
from xrcompare.evaluate import ECE_BINS, overlap_sentence
from xrcompare.runs import TEST_SCOPE, Run, scope_text

REFERENCE = ("Mitchell M. et al. (2019). Model cards for model reporting. FAT* '19, 220–229. "
             "doi:10.1145/3287560.3287596")

INTENDED_USE = (
    "**Teaching only.** This run exists to show students how transfer-learning CNNs behave on "
    "a small, biased chest X-ray collection, and why their scores mislead. It must never be "
    "used on patients, for diagnosis, triage or screening, or to claim anything about "
    "COVID-19 or pneumonia in real people.")

SHORTCUTS = [
    "**Source and age shortcut.** Every COVID image is an adult from papers and case reports "
    "of many hospitals (often with arrows, letters and captions burned in); every normal and "
    "pneumonia image is a child aged 1–5 from one hospital (Kermany et al. 2018). A model can "
    "separate the classes by age, body shape, source and text without learning anything "
    "about disease (DeGrave et al. 2021; Roberts et al. 2021).",
    "**The held-out Kaggle copy was squashed to 224×224 by its source**, unlike every "
    "training image: a preprocessing difference that shifts what a model sees.",
    "**Small test sets.** A few hundred test images, a few dozen per class: see the "
    "intervals, not the point estimates.",
    "**Saliency maps are hints, not proof** (Saporta et al. 2022; Adebayo et al. 2018).",
]


def _number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(pair) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return ""
    return f" ({pair[0]:.3f}–{pair[1]:.3f})"


def _code(value) -> str:
    """Outside text as inline code (backticks dropped): shown exactly as written."""
    return f"`{' '.join(str(value).replace('`', '').splitlines())}`"


def _model_lines(run: Run) -> list[str]:
    lines = [f"- Run folder: `{md(run.run_id)}`"]
    if run.is_cnn:
        weights = ("ImageNet" if run.weights == "imagenet"
                   else f"random initialisation (seed {run.weights_seed}): a control")
        lines += [f"- Model: a classifier head ({md(run.head)}) on a frozen "
                  f"{md(run.backbone_display)} base, {weights} weights",
                  f"- Input: {run.image_size} px, {md(run.resize_mode)}, "
                  f"{md(run.preprocess)} preprocessing"]
        if run.mask != "none":
            box = run.mask_box or {}
            lines.append(f"- Mask: **{md(run.mask)}** (box x {box.get('left', 0):.2f}–"
                         f"{box.get('right', 1):.2f}, y {box.get('top', 0):.2f}–"
                         f"{box.get('bottom', 1):.2f} of the square input)")
        lines.append(f"- Kept epoch: {md(run.kept_epoch_text)} ({md(run.selection)})")
    else:
        lines.append("- Model: logistic regression on image statistics (no CNN): "
                     + ", ".join(md(name.replace("_", " "))
                                 for name in (run.info.get("model") or {}).get("features", {})))
        try:
            model = run.statistics_model()
        except ValueError:
            model = None
        if model is not None:
            from xrcompare.imagestats import describe_weights

            for label in model.classes:
                lines.append(f"  - leans towards {md(label)} on: "
                             + ", ".join(describe_weights(model, label)))
    if run.trainable_params is not None:
        lines.append(f"- Trained parameters: {run.trainable_params:,}")
    if run.control_label:
        lines.append(f"- **This run is a control ({md(run.control_label)}), not a model.**")
    versions = run.versions
    if versions:
        lines.append("- Made with: " + ", ".join(f"{md(key)} {_code(value)}" for key, value
                                                 in versions.items()))
    if run.info.get("created"):
        lines.append(f"- Created: {_code(run.info['created'])}")
    if run.command:
        lines.append(f"- Command: {_code(run.command)}")
    return lines


def _data_lines(run: Run) -> list[str]:
    counts = ", ".join(f"{md(label)} {count}" for label, count in run.data_class_counts.items())
    lines = [f"- Training folder: **{md(run.data_name)}**, {run.data_images} images of "
             f"{run.data_patients} patients ({counts})"]
    manifest = run.manifest_path()
    if manifest is not None:
        try:
            from xrcompare.subgroups import read_manifest
            from xrcompare.summary import class_sources

            sources = class_sources(read_manifest(manifest), run.data_name)
        except (ValueError, KeyError):
            sources = None
        if sources is not None and not sources.empty:
            for entry in sources.to_dict("records"):
                lines.append(f"  - {md(entry['class'])}: {entry['images']} images, "
                             f"{md(entry['origin'])}"
                             + (f"; views {md(entry['views'])}" if entry.get("views") else ""))
    if run.manifest_problem:
        lines.append(f"- Patient ids: {md(run.manifest_problem)}")
    return lines


def _split_lines(run: Run) -> list[str]:
    lines = [f"- Method: {md(run.split_method)}; seed {run.split_record.get('seed', '?')}"]
    summary = run.split_summary
    parts = [f"{name} {summary[name].get('images', '?')} images / "
             f"{summary[name].get('patients', '?')} patients"
             for name in ("train", "val", "test") if name in summary]
    if parts:
        lines.append("- " + "; ".join(parts) + (" (fold 1)" if run.folds else ""))
    duplicates = run.split_record.get("near_duplicates") or []
    if duplicates:
        lines.append(f"- {len(duplicates)} near-duplicate pair(s) merged into one patient "
                     "before splitting")
    lines.append(f"- Protocol: {md(run.protocol_label)}"
                 + (": " + "; ".join(md(reason) for reason in run.leaky_reasons)
                    if run.is_leaky else ""))
    for name in run.heldout_names:
        sentence = overlap_sentence({**(run.metrics_for(name) or {}),
                                     "patient_overlap": run.patient_overlap(name)},
                                    name, run.data_name)
        if sentence:
            lines.append(f"- Held out: {md(sentence)}")
    return lines


def _metric_lines(run: Run) -> list[str]:
    lines = []
    for scope in run.scopes:
        metrics = run.metrics_for(scope)
        if not metrics:
            continue
        intervals = metrics.get("intervals") or {}
        lines += ["", f"**{md(scope_text(scope)).capitalize()}** ({metrics.get('n', '?')} "
                      "images; 95% patient-bootstrap intervals)", ""]
        lines.append(f"- Accuracy {_number(metrics['accuracy'])}"
                     f"{_ci(intervals.get('accuracy'))}, macro-F1 "
                     f"{_number(metrics['macro_f1'])}")
        covid = metrics.get("covid_vs_rest") or {}  # the run's positive class vs the rest
        if covid.get("sensitivity") is not None and metrics["per_class"].get(
                run.positive, {}).get("support"):
            lines.append(f"- {md(run.positive)} sensitivity {_number(covid['sensitivity'])}"
                         f"{_ci(intervals.get('sensitivity'))}, specificity "
                         f"{_number(covid.get('specificity'))}"
                         f"{_ci(intervals.get('specificity'))}")
        table = ["| class | support | precision | recall | F1 |", "|---|---:|---:|---:|---:|"]
        per_class_ci = intervals.get("per_class") or {}
        for index, label in enumerate(metrics["labels"]):
            scores = metrics["per_class"][label]
            if not scores.get("support"):
                continue
            cells = []
            for key in ("precision", "recall", "f1"):
                bounds = (per_class_ci.get(key) or [None] * (index + 1))[index]
                cells.append(f"{_number(scores[key])}{_ci(bounds)}")
            table.append(f"| {md(label)} | {scores['support']} | " + " | ".join(cells) + " |")
        lines += ["", *table, ""]
        held = run.heldout_table(scope)
        for label, entry in held.items():
            shares = ", ".join(f"{md(k)} {v:.1f}%" for k, v in entry["predicted_pct"].items())
            lines.append(f"- true {md(label)} → {shares}")
    return lines


def _calibration_lines(run: Run) -> list[str]:
    from xrcompare.calibration import calibrate, temperature_for

    temperature = temperature_for(run)
    lines = [f"Expected calibration error (top-label confidence, {ECE_BINS} equal-width bins):",
             ""]
    for scope in run.scopes:
        found = calibrate(run, scope, temperature=temperature)
        if found is None:
            continue
        text = f"- {md(scope_text(scope))}: ECE {found.ece:.3f}"
        if found.ece_after is not None:
            text += f", {found.ece_after:.3f} after temperature scaling (T = " \
                    f"{temperature.value:.2f})"
        lines.append(text)
    lines.append(f"- Temperature: {md(temperature.note)}")
    return lines


def _control_lines(run: Run, runs: Sequence[Run]) -> list[str]:
    from xrcompare.shortcuts import (
        MAIN,
        QUESTIONS,
        backbone_lab,
        controls_of,
        is_main_candidate,
        main_runs,
    )

    def controls(candidate: Run) -> bool:
        return any(control.path == run.path for control in controls_of(candidate, runs).values())

    if is_main_candidate(run):
        main = run
    else:  # a control: the main run it is a control of (the backbone's lab main first)
        main = next((candidate for candidate in main_runs(runs) if controls(candidate)), None)
        if main is None:
            main = next((candidate for candidate in runs
                         if is_main_candidate(candidate) and controls(candidate)), None)
    if main is None:
        return ["No matching main run was found for the controls (they are set against a "
                "sound, single-split CNN run of the same recipe)."]
    lab = backbone_lab(main, runs, repeats=1000)
    lines = [f"Against the main run `{md(main.run_id)}` ({md(main.title)}), on the same "
             "images:", ""]
    for row in lab.rows:
        if row.kind == MAIN:
            continue
        mark = " (this run)" if row.run is not None and row.run.path == run.path else ""
        lines.append(f"- **{md(row.name)}**{mark}: {QUESTIONS[row.kind]} {md(row.verdict)}")
    return lines


def _subgroup_lines(run: Run) -> list[str]:
    from xrcompare.subgroups import SMALL_GROUP, subgroup_table

    try:
        table = subgroup_table(run, TEST_SCOPE, "view", repeats=500)
    except ValueError as error:
        return [f"Not available: {md(error)}"]
    lines = ["| view | images | patients | accuracy (95% CI) | "
             f"{md(run.positive)} sensitivity (95% CI) |", "|---|---:|---:|---|---|"]
    for row in table.itertuples():
        accuracy = f"{row.accuracy:.3f}{_ci([row.accuracy_low, row.accuracy_high])}"
        sensitivity = ("–" if row.sensitivity is None or row.sensitivity != row.sensitivity
                       else f"{row.sensitivity:.3f}"
                            f"{_ci([row.sensitivity_low, row.sensitivity_high])}")
        flag = f" (small: n < {SMALL_GROUP})" if row.small else ""
        lines.append(f"| {md(row.group)}{flag} | {row.images} | {row.patients} | {accuracy} | "
                     f"{sensitivity} |")
    return lines


def model_card(run: Run, runs: Sequence[Run] = ()) -> str:
    """The model card of ``run`` as Markdown; ``runs`` are where its controls (or its main
    run) are looked for (``run`` itself is added when missing)."""
    runs = list(runs)
    if all(other.path != run.path for other in runs):  # (Runs hold frames: compare paths)
        runs.append(run)
    lines = [f"# Model card: {md(run.title)}", "",
             "> **Teaching tool. Not for diagnosis.** Never use this model on patients.", ""]
    if run.description:
        lines += [md(run.description), ""]
    lines += ["## Intended use", "", INTENDED_USE, "",
              "## Model", "", *_model_lines(run), "",
              "## Data and sources", "", *_data_lines(run), "",
              "## Split and protocol", "", *_split_lines(run), "",
              "## Metrics", *_metric_lines(run), "",
              "## Calibration", "", *_calibration_lines(run), "",
              "## Controls: what the model really uses", "", *_control_lines(run, runs), "",
              "## Subgroups (test split, by X-ray view)", "", *_subgroup_lines(run), "",
              "## Known shortcuts and caveats", "", *(f"- {text}" for text in SHORTCUTS)]
    if run.is_leaky:
        lines.append("- **2020 protocol (leaky):** " + "; ".join(md(reason) for reason
                                                                   in run.leaky_reasons)
                     + ". Its test figures are optimistic by construction.")
    if run.is_control:
        lines.append(f"- **A control, not a model** ({md(run.control_label)}): it exists to "
                     "be compared with the main run, never to be picked.")
    lines += ["", "## References", "", f"- {REFERENCE}",
              "- Kermany D. S. et al. (2018). Cell 172(5), 1122–1131; data doi:10.17632/"
              "rscbjbr9sj.2 (CC BY 4.0).",
              "- Cohen J. P. et al. (2020). COVID-19 image data collection. arXiv:2003.11597.",
              "- Saporta A. et al. (2022). Benchmarking saliency methods for chest X-ray "
              "interpretation. Nature Machine Intelligence 4, 867–878."]
    from xrcompare.shortcuts import REFERENCES

    lines += [f"- {reference}" for reference in REFERENCES]
    return "\n".join(lines) + "\n"


def card_filename(run: Run) -> str:
    """The download's file name: ``model-card-<run id>.md``."""
    return f"model-card-{run.run_id}.md"
