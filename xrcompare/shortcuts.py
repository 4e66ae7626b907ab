"""The shortcut lab: what the models really use, measured with controls.

Per backbone, the main run beside its controls, each a run like any other:

- **random-init**: the same recipe on an untrained base (does it need ImageNet features?);
- **lungs-out**: the lung fields blacked out (does it need the lungs? Maguolo & Nanni 2021);
- **lungs-only**: only the lung box kept, borders and corners blacked out (does it need the
  burned-in markers and text at the edges? DeGrave et al. 2021);
- **image statistics**: a logistic regression on size, brightness and border statistics, no
  CNN at all (are the classes separable without anatomy?).

Each is scored on the test split and on every held-out folder with its 95% interval, and set
against the main run image by image (:func:`xrcompare.compare.compare_runs`: McNemar's exact
test and a paired patient bootstrap), with a plain verdict. Nothing here is typed in: every
figure comes from the runs' own predictions and metrics, so the lab stays true when runs are
regenerated. ``python -m xrcompare shortcuts`` prints the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from xrcompare.compare import NotComparable, compare_runs
from xrcompare.evaluate import format_interval_points, format_points, p_phrase
from xrcompare.imagestats import FEATURES, STATISTICS_KIND
from xrcompare.imaging import LUNG_BOX
from xrcompare.runs import TEST_SCOPE, Run, heldout_scope, scope_text

#: The controls, in the lab's order.
CONTROL_KINDS = ("random-init", "lungs-out", "lungs-only", STATISTICS_KIND)
MAIN = "main"
#: Each row's name in the lab.
ROW_NAMES = {MAIN: "main run", "random-init": "random-init base",
             "lungs-out": "lungs blacked out", "lungs-only": "lungs only",
             STATISTICS_KIND: "image statistics (no CNN)"}
#: The question each control answers.
QUESTIONS = {
    "random-init": "Does the model need ImageNet features?",
    "lungs-out": "Does the model need the lungs?",
    "lungs-only": "Does the model need the borders and corners, where markers and text sit?",
    STATISTICS_KIND: "Can the classes be told apart without any anatomy?",
}
#: How to make a missing control of a run (the main run's own flags, plus these).
HOW_TO_TRAIN = {
    "random-init": "--weights random",
    "lungs-out": "--mask lungs-out",
    "lungs-only": "--mask lungs-only",
    STATISTICS_KIND: "--model image-statistics (same --data, --seed and fractions; no "
                     "--backbone)",
}
#: Held-out folders known to have been resized by their source (data/README.md): the
#: statistics baseline reads image size, so say why it fails there.
RESIZED_BY_SOURCE = {"kaggle_test": "squashed to 224×224 by its source"}

REFERENCES = [
    "Maguolo G., Nanni L. (2021). A critic evaluation of methods for COVID-19 automatic "
    "detection from X-ray images. Information Fusion 76, 1–7. doi:10.1016/j.inffus.2021.04.008",
    "DeGrave A. J., Janizek J. D., Lee S.-I. (2021). AI for radiographic COVID-19 detection "
    "selects shortcuts over signal. Nature Machine Intelligence 3, 610–619. "
    "doi:10.1038/s42256-021-00338-7",
    "Roberts M. et al. (2021). Common pitfalls and recommendations for using machine learning "
    "to detect and prognosticate for COVID-19 using chest radiographs and CT scans. Nature "
    "Machine Intelligence 3, 199–217. doi:10.1038/s42256-021-00307-0",
    "Adebayo J. et al. (2018). Sanity checks for saliency maps. NeurIPS 31. arXiv:1810.03292",
]

LESSON = (
    "Every COVID image here is an adult from papers and case reports of many hospitals, often "
    "with arrows and letters burned in; every normal and pneumonia image is a child from one "
    "hospital. A model can separate them without learning anything about the disease. "
    "Maguolo & Nanni (2021) blacked out the lungs and found COVID classifiers kept most of "
    "their accuracy; DeGrave et al. (2021) showed such models key on laterality markers, text "
    "and borders; Roberts et al. (2021) found none of 62 published models fit for clinical "
    "use. The controls above repeat those experiments on this data: when a model still scores "
    "far above chance with the lungs hidden, or a few image statistics do nearly as well, its "
    "accuracy measures the dataset's shortcut, not radiology. Saliency maps do not settle it "
    "either: Adebayo et al. (2018) showed maps of a randomised model often look the same.")


def box_text() -> str:
    """The masks' box in words (:data:`xrcompare.imaging.LUNG_BOX`)."""
    left, top, right, bottom = LUNG_BOX
    return (f"x {left:.2f}–{right:.2f}, y {top:.2f}–{bottom:.2f} of the square model input")


# --------------------------------------------------------------------------- matching


def recipe_key(run: Run) -> tuple | None:
    """What a control must share with its main run (besides what it changes): backbone, data,
    input size, resize mode, head, augmented views, seed, input scaling, split; None for a
    run without a CNN."""
    if not run.is_cnn:
        return None
    hyper = run.hyperparameters
    return (run.backbone, run.data_name, run.image_size, run.resize_mode, run.head,
            run.augment_views, hyper.get("seed", run.split_record.get("seed")),
            run.preprocess, run.split_method, run.folds)


def is_main_candidate(run: Run) -> bool:
    """A model the lab can hold controls against: a sound, single-split CNN run that is not
    itself a control."""
    return (run.is_cnn and not run.is_control and not run.is_leaky
            and not run.is_cross_validation)


def _same_test_images(run_a: Run, run_b: Run) -> bool:
    files_a, files_b = run_a.split_files.get("test"), run_b.split_files.get("test")
    return (run_a.data_name == run_b.data_name and bool(files_a)
            and set(files_a) == set(files_b or []))


def controls_of(main: Run, runs: Sequence[Run]) -> dict[str, Run]:
    """The controls of ``main`` among ``runs``: per control kind the first run that matches
    (:func:`recipe_key` for CNN controls; same data and test images for the statistics
    baseline)."""
    found: dict[str, Run] = {}
    key = recipe_key(main)
    for run in runs:
        kind = run.control_kind
        if kind not in CONTROL_KINDS or kind in found or run.is_leaky:
            continue
        if kind == STATISTICS_KIND:
            if _same_test_images(main, run):
                found[kind] = run
        elif recipe_key(run) == key:
            found[kind] = run
    return found


def main_runs(runs: Sequence[Run]) -> list[Run]:
    """One main run per backbone: the candidate with the most controls, then the first in
    dashboard order; backbones in the order their first run appears."""
    best: dict[str, tuple] = {}
    for position, run in enumerate(runs):
        if not is_main_candidate(run):
            continue
        score = (len(controls_of(run, runs)), -(run.order if run.order is not None else 10**6),
                 -position)
        if run.backbone not in best or score > best[run.backbone][0]:
            best[run.backbone] = (score, run)
    order = list(dict.fromkeys(run.backbone for run in runs if run.backbone in best))
    return [best[backbone][1] for backbone in order]


# --------------------------------------------------------------------------- results


def chance_level(run: Run, scope: str) -> float | None:
    """The accuracy of always calling the most common true class of ``scope``'s images."""
    rows = run.predictions_for(scope)
    if rows.empty:
        return None
    return float(rows["label"].value_counts(normalize=True).iloc[0])


@dataclass
class ScopeResult:
    """One run on one scope, and against the main run there."""

    scope: str
    n: int | None = None
    accuracy: float | None = None
    interval: tuple[float | None, float | None] = (None, None)
    chance: float | None = None
    comparison: dict | None = None  # compare_runs(main, this).stats
    refused: str | None = None  # why it could not be paired with the main run

    @property
    def above_chance(self) -> bool | None:
        """Whether the 95% interval lies above the chance level (None when unknown)."""
        low = self.interval[0]
        if low is None or self.chance is None:
            return None
        return low > self.chance

    def margin_kept(self, main: ScopeResult) -> float | None:
        """Share of the main run's margin over chance this run keeps (1 = all of it)."""
        if None in (self.accuracy, main.accuracy, self.chance):
            return None
        margin = main.accuracy - self.chance
        return None if margin <= 0 else (self.accuracy - self.chance) / margin


@dataclass
class LabRow:
    kind: str  # MAIN or a control kind
    run: Run | None  # None: this control was not trained
    results: dict[str, ScopeResult] = field(default_factory=dict)
    verdict: str = ""

    @property
    def name(self) -> str:
        return ROW_NAMES[self.kind]


@dataclass
class BackboneLab:
    """The main run of one backbone with its controls."""

    main: Run
    scopes: list[str]
    rows: list[LabRow]

    @property
    def backbone(self) -> str:
        return self.main.backbone

    def row(self, kind: str) -> LabRow:
        return next(row for row in self.rows if row.kind == kind)


def _result(run: Run, scope: str) -> ScopeResult:
    metrics = run.metrics_for(scope)
    if not metrics:
        return ScopeResult(scope, chance=chance_level(run, scope))
    low, high = (metrics.get("intervals") or {}).get("accuracy") or (None, None)
    return ScopeResult(scope, metrics.get("n"), metrics["accuracy"], (low, high),
                       chance_level(run, scope))


def _ci(result: ScopeResult) -> str:
    low, high = result.interval
    return "" if low is None else f" (95% CI {low:.3f}–{high:.3f})"


def _difference(result: ScopeResult) -> str:
    """"4.1 points below the main run (95% CI …; McNemar p = …)": the control minus main."""
    stats = result.comparison
    if not stats:
        return ""
    difference = -stats["difference"]  # main is a, the control b
    low, high = stats["difference_95ci"] or (None, None)
    interval = "–" if low is None else format_interval_points([-high, -low])
    side = "below" if difference < 0 else "above"
    return (f"{format_points(abs(difference), False)} points {side} the main run (95% CI "
            f"{interval} points; McNemar {p_phrase(stats['mcnemar_p'])})")


def _significant(result: ScopeResult) -> str | None:
    """"main" or "control" when the paired comparison names a better run, else None."""
    stats = result.comparison or {}
    better = stats.get("better")
    return {"a": "main", "b": "control"}.get(better) if better else None


def verdict(kind: str, lab_main: LabRow, row: LabRow) -> str:
    """The plain verdict of one control, from its test-split figures (and a held-out note)."""
    if row.run is None:
        return (f"Not trained yet: train the main recipe with {HOW_TO_TRAIN[kind]} to answer "
                "this.")
    test, main_test = row.results.get(TEST_SCOPE), lab_main.results.get(TEST_SCOPE)
    if test is None or test.accuracy is None or main_test is None:
        return "No test-split figures to judge it by."
    kept = test.margin_kept(main_test)
    kept_text = (f", {kept:.0%} of the main run's margin over chance ({test.chance:.2f})"
                 if kept is not None else "")
    above = test.above_chance
    score = f"{test.accuracy:.3f}{_ci(test)}"
    versus = _difference(test)
    versus = f"; {versus}" if versus else ""
    if test.refused:
        versus = f" (not paired with the main run: {test.refused})"
    backbone = lab_main.run.backbone_display if lab_main.run else "CNN"
    if kind == "random-init":
        if above:
            text = (f"Without ImageNet features (an untrained {backbone} base) the head still "
                    f"scores {score}{kept_text}{versus}. Much of what separates these classes "
                    "needs no pretrained vision at all.")
        else:
            text = (f"Without ImageNet features the head is at chance: {score} against chance "
                    f"{test.chance:.2f}{versus}. The main run does rely on ImageNet features.")
    elif kind == "lungs-out":
        if above:
            text = (f"With the lung fields blacked out the model still scores {score}"
                    f"{kept_text}{versus}. It does not need the lungs to tell these classes "
                    "apart: what lies outside them (body shape, age, borders, text) is enough, "
                    "as Maguolo & Nanni (2021) found.")
        else:
            text = (f"With the lung fields blacked out the model falls to chance: {score} "
                    f"against chance {test.chance:.2f}{versus}. Here it needs what is inside "
                    "the box.")
    elif kind == "lungs-only":
        better = _significant(test)
        if better == "main":
            text = (f"With only the lung box kept (borders and corners, where markers and text "
                    f"sit, blacked out) the model scores {score}{versus}: part of the main "
                    "run's score came from the edges of the image (DeGrave et al. 2021).")
        elif better == "control":
            text = (f"With only the lung box kept the model scores {score}{versus}: hiding the "
                    "edges even helped it here.")
        else:
            text = (f"With only the lung box kept (borders and corners blacked out) the model "
                    f"scores {score}{versus}: no measurable loss. Hiding the markers does not "
                    "remove the shortcut: age and body shape are inside the box too.")
    else:
        if above:
            text = (f"A logistic regression on {len(FEATURES)} image statistics (size, aspect, "
                    f"brightness, borders, corners), with no CNN and no anatomy, scores "
                    f"{score} against chance {test.chance:.2f}{versus}. The classes are "
                    "separable without looking at the lungs.")
        else:
            text = (f"Image statistics alone are at chance here: {score} against chance "
                    f"{test.chance:.2f}{versus}. The shortcut, if any, is not in size and "
                    "brightness.")
    return text + _heldout_note(kind, lab_main, row)


def _heldout_note(kind: str, lab_main: LabRow, row: LabRow) -> str:
    notes = []
    for scope, result in row.results.items():
        if scope == TEST_SCOPE or result.accuracy is None:
            continue
        main = lab_main.results.get(scope)
        name = scope_text(scope)
        text = f" On {name}: {result.accuracy:.3f}{_ci(result)}"
        if main is not None and main.accuracy is not None:
            text += f" against the main run's {main.accuracy:.3f}"
        if result.chance is not None:
            text += f" (chance {result.chance:.2f})"
        folder = scope[len("heldout:"):]
        if (kind == STATISTICS_KIND and folder in RESIZED_BY_SOURCE and result.chance
                is not None and result.accuracy < result.chance):
            text += (f"; that folder was {RESIZED_BY_SOURCE[folder]}, so its size and aspect "
                     "alone set it apart from every training image, and the baseline reads "
                     "exactly that")
        notes.append(text + ".")
    return "".join(notes)


def backbone_lab(main: Run, runs: Sequence[Run], *, repeats: int = 2000,
                 seed: int = 0) -> BackboneLab:
    """The lab of one main run: its row, one row per control kind (trained or not), each
    scored on the test split and every held-out folder of the main run."""
    scopes = [TEST_SCOPE, *(heldout_scope(name) for name in main.heldout_names)]
    controls = controls_of(main, runs)
    main_row = LabRow(MAIN, main, {scope: _result(main, scope) for scope in scopes})
    rows = [main_row]
    for kind in CONTROL_KINDS:
        run = controls.get(kind)
        row = LabRow(kind, run)
        if run is not None:
            for scope in scopes:
                result = _result(run, scope)
                if result.accuracy is not None:
                    try:
                        result.comparison = compare_runs(main, run, scope, repeats=repeats,
                                                         seed=seed).stats
                    except NotComparable as error:
                        result.refused = str(error)
                row.results[scope] = result
        row.verdict = verdict(kind, main_row, row)
        rows.append(row)
    main_row.verdict = ("The model the controls are set against: " + "; ".join(
        f"{scope_text(scope)} {result.accuracy:.3f}{_ci(result)}"
        for scope, result in main_row.results.items() if result.accuracy is not None) + ".")
    return BackboneLab(main, scopes, rows)


def shortcut_lab(runs: Sequence[Run], *, repeats: int = 2000, seed: int = 0
                 ) -> list[BackboneLab]:
    """The lab of every backbone with a main run (:func:`main_runs`)."""
    return [backbone_lab(main, runs, repeats=repeats, seed=seed) for main in main_runs(runs)]


# --------------------------------------------------------------------------- output


def lab_table(lab: BackboneLab, labels: dict[str, str] | None = None) -> list[dict]:
    """One flat dict per row: row, run, and per scope accuracy, interval, chance, difference
    to the main run with its interval and McNemar p; then the verdict."""
    table = []
    for row in lab.rows:
        entry = {"row": row.name, "kind": row.kind,
                 "run": (labels or {}).get(row.run.run_id, row.run.title) if row.run else None,
                 "run_id": row.run.run_id if row.run else None}
        for scope in lab.scopes:
            result = row.results.get(scope)
            prefix = "test" if scope == TEST_SCOPE else scope[len("heldout:"):]
            stats = (result.comparison or {}) if result else {}
            low, high = result.interval if result else (None, None)
            difference = stats.get("difference")
            ci = stats.get("difference_95ci") or [None, None]
            entry.update({
                f"{prefix}_accuracy": result.accuracy if result else None,
                f"{prefix}_low": low, f"{prefix}_high": high,
                f"{prefix}_chance": result.chance if result else None,
                f"{prefix}_vs_main": None if difference is None else -difference,
                f"{prefix}_vs_main_low": None if ci[1] is None else -ci[1],
                f"{prefix}_vs_main_high": None if ci[0] is None else -ci[0],
                f"{prefix}_mcnemar_p": stats.get("mcnemar_p"),
            })
        entry["verdict"] = row.verdict
        table.append(entry)
    return table


def lab_json(labs: Sequence[BackboneLab]) -> dict:
    """The lab as plain JSON values (what ``shortcuts --json`` prints)."""
    return {"box": {"left": LUNG_BOX[0], "top": LUNG_BOX[1], "right": LUNG_BOX[2],
                    "bottom": LUNG_BOX[3], "units": "fraction of the square model input"},
            "backbones": [{"backbone": lab.backbone, "main": lab.main.run_id,
                           "scopes": lab.scopes, "rows": lab_table(lab)} for lab in labs],
            "lesson": LESSON, "references": REFERENCES}


def lab_lines(labs: Sequence[BackboneLab]) -> list[str]:
    """The lab as text (what ``python -m xrcompare shortcuts`` prints)."""
    if not labs:
        return ["No sound, single-split CNN run to hold controls against."]
    lines = [f"Masks: the box over the lung fields is {box_text()}."]
    for lab in labs:
        lines += ["", f"{lab.main.backbone_display}: main run {lab.main.run_id}"]
        header = f"{'':<34}" + "".join(f"{scope_text(scope):>32}" for scope in lab.scopes)
        lines.append(header)
        for row in lab.rows:
            cells = []
            for scope in lab.scopes:
                result = row.results.get(scope)
                if result is None or result.accuracy is None:
                    cells.append(f"{'–':>32}")
                    continue
                low, high = result.interval
                text = f"{result.accuracy:.3f}"
                if low is not None:
                    text += f" ({low:.2f}–{high:.2f})"
                if result.comparison:
                    text += f" {format_points(-result.comparison['difference'])}"
                cells.append(f"{text:>32}")
            name = row.name + ("" if row.run else " (not trained)")
            lines.append(f"{name:<34}" + "".join(cells))
        lines.append("(accuracy, 95% patient-bootstrap CI, points against the main run)")
        for row in lab.rows[1:]:
            lines.append(f"- {row.name}: {QUESTIONS[row.kind]} {row.verdict}")
    lines += ["", LESSON]
    return lines
