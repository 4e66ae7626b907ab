"""Two runs side by side on the same images: line their predictions up, refuse when they were
scored on different images, and report the paired statistics of :mod:`xrcompare.evaluate`.

A paired comparison is only meaningful image by image: both runs must have scored exactly the
same images (same paths, same true labels) with the same classes. Anything else is refused with
one readable sentence (:class:`NotComparable`), never compared approximately. Runs are read
through :class:`xrcompare.runs.Run`'s accessors only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from xrcompare.data import merge_groups
from xrcompare.evaluate import compare_predictions, per_class_differences
from xrcompare.runs import (
    TEST_SCOPE,
    Run,
    normalise_scope,
    prediction_column,
    scope_name,
    scope_text,
)

#: How many discordant images a listing shows per side by default.
DISCORDANT_SHOWN = 24


class NotComparable(ValueError):
    """Two runs that cannot be compared image by image, with a one-line reason."""


@dataclass
class PairedPredictions:
    """Two runs' predictions on the same images, one row per image.

    ``frame`` columns: ``path``, ``label``, ``group`` (patient: images that share a patient in
    either run share a group), ``predicted_a``, ``predicted_b``, ``right_a``, ``right_b`` and
    per class of ``labels`` each run's probability (:func:`paired_column`: ``a_prob_<class>``,
    ``b_prob_<class>``).
    """

    run_a: Run
    run_b: Run
    scope: str
    labels: list[str]
    frame: pd.DataFrame


@dataclass
class RunComparison:
    """A paired comparison of two runs on one scope (see :func:`compare_runs`)."""

    paired: PairedPredictions
    name_a: str
    name_b: str
    stats: dict
    per_class: pd.DataFrame = field(repr=False)

    @property
    def run_a(self) -> Run:
        return self.paired.run_a

    @property
    def run_b(self) -> Run:
        return self.paired.run_b

    @property
    def scope(self) -> str:
        return self.paired.scope

    @property
    def verdict(self) -> str:
        return self.stats["verdict"]

    @property
    def better(self) -> str | None:
        """"a" or "b" when the verdict names a better run, else None."""
        return self.stats["better"]

    def agreement_table(self, name_a: str | None = None,
                        name_b: str | None = None) -> pd.DataFrame:
        """The 2×2 table of images: rows run a right/wrong, columns run b right/wrong
        (named ``name_a`` / ``name_b``, default the comparison's names)."""
        s = self.stats
        name_a, name_b = name_a or self.name_a, name_b or self.name_b
        return pd.DataFrame(
            [[s["both_right"], s["a_right_b_wrong"]], [s["a_wrong_b_right"], s["both_wrong"]]],
            index=[f"{name_a} right", f"{name_a} wrong"],
            columns=[f"{name_b} right", f"{name_b} wrong"])

    def discordant(self, right: str, count: int | None = DISCORDANT_SHOWN
                   ) -> tuple[pd.DataFrame, int]:
        """Images exactly one run gets right: ``right="a"`` (a right, b wrong) or ``"b"``.

        Most confident first: sorted by the probability the wrong run gave its wrong answer.
        Returns the first ``count`` rows (all when None) and how many there are in all.
        Columns: path, label, predicted_a, predicted_b, p_true_a, p_true_b, p_predicted_a,
        p_predicted_b (each run's probability of its own answer), p_wrong (the wrong run's)
        and the probability columns.
        """
        if right not in ("a", "b"):
            raise ValueError(f"right must be 'a' or 'b', got {right!r}")
        wrong = "b" if right == "a" else "a"
        frame = self.paired.frame
        rows = frame[frame[f"right_{right}"] & ~frame[f"right_{wrong}"]].copy()
        rows["p_wrong"] = _probability_of(rows, wrong, rows[f"predicted_{wrong}"])
        rows["p_true_a"] = _probability_of(rows, "a", rows["label"])
        rows["p_true_b"] = _probability_of(rows, "b", rows["label"])
        rows["p_predicted_a"] = _probability_of(rows, "a", rows["predicted_a"])
        rows["p_predicted_b"] = _probability_of(rows, "b", rows["predicted_b"])
        rows = rows.sort_values(["p_wrong", "path"], ascending=[False, True])
        total = len(rows)
        if count is not None:
            rows = rows.head(count)
        return rows.reset_index(drop=True), total

    def to_json(self) -> dict:
        """The comparison as plain JSON values (what ``compare --json`` prints)."""
        per_class = self.per_class.replace({np.nan: None}).to_dict(orient="records")
        return {"run_a": self.run_a.run_id, "run_b": self.run_b.run_id,
                "title_a": self.run_a.title, "title_b": self.run_b.title, "scope": self.scope,
                "labels": self.paired.labels, **self.stats, "per_class": per_class}


def paired_column(side: str, label: str) -> str:
    """The paired frame's column of run ``side``'s (``"a"`` or ``"b"``) probability of
    ``label``: ``a_prob_covid``."""
    return f"{side}_{prediction_column(label)}"


def _probability_of(frame: pd.DataFrame, side: str, labels: pd.Series) -> np.ndarray:
    """Per row, run ``side``'s probability of the class named in ``labels``."""
    if frame.empty:
        return np.zeros(0)
    return np.array([frame.at[index, paired_column(side, label)]
                     for index, label in zip(frame.index, labels, strict=True)], dtype=float)


# --------------------------------------------------------------------------- aligning


def shared_scopes(run_a: Run, run_b: Run) -> list[str]:
    """The scopes both runs have predictions for, in run a's order."""
    other = set(run_b.scopes)
    return [scope for scope in run_a.scopes if scope in other]


def _name(run: Run, names: dict[str, str] | None) -> str:
    return (names or {}).get(run.run_id, run.run_id)


def _rows(run: Run, scope: str, name: str) -> pd.DataFrame:
    """The run's rows of ``scope``, checked: unique paths, known labels, numeric
    probabilities."""
    rows = run.predictions_for(scope)
    words = scope_text(scope)
    if rows.empty:
        have = ", ".join(run.scopes) or "none"
        what = ("test predictions" if scope == TEST_SCOPE else
                f"predictions for the held-out folder {scope_name(scope)}")
        raise NotComparable(f"{name} has no {what} (it has: {have})")
    paths = rows["path"].astype(str)
    if paths.duplicated().any():
        raise NotComparable(f"{name} lists {int(paths.duplicated().sum())} {words} image(s) "
                            "twice in predictions.csv")
    unknown = sorted(set(rows["label"].astype(str)) - set(run.labels))
    if unknown:
        raise NotComparable(f"{name} has {words} images labelled {', '.join(unknown)}, not "
                            f"among its classes ({', '.join(run.labels)})")
    columns = [run.prediction_column(label) for label in run.labels]
    probabilities = rows[columns].apply(pd.to_numeric, errors="coerce")
    if probabilities.isna().to_numpy().any():
        bad = int(probabilities.isna().any(axis=1).sum())
        raise NotComparable(f"{name} has unreadable probabilities for {bad} {words} image(s)")
    frame = pd.DataFrame({"path": paths.to_numpy(), "label": rows["label"].astype(str)
                          .to_numpy()})
    if "patient_id" in rows:
        patients = rows["patient_id"].astype(str).where(rows["patient_id"].notna(), None)
        frame["patient"] = patients.to_numpy()
    else:
        frame["patient"] = None
    for column in columns:
        frame[column] = probabilities[column].to_numpy(dtype=float)
    return frame


def _groups(patients_a: Sequence, patients_b: Sequence, paths: Sequence[str]) -> list[str]:
    """One group per set of images sharing a patient in either run (union-find through
    :func:`xrcompare.data.merge_groups`); an image without a patient id is its own group."""
    def known(patient) -> bool:
        return patient is not None and patient != ""

    groups = [f"image:{path}" for path in paths]
    pairs = []
    for patients in (patients_a, patients_b):
        first: dict[str, int] = {}
        for index, patient in enumerate(patients):
            if not known(patient):
                continue
            if patient in first:
                pairs.append((first[patient], index))
            else:
                first[patient] = index
    return merge_groups(groups, pairs)


def comparable(run_a: Run, run_b: Run, scope: str = TEST_SCOPE,
               names: dict[str, str] | None = None) -> str | None:
    """Why the two runs cannot be compared on ``scope`` (one sentence), or None."""
    try:
        align_runs(run_a, run_b, scope, names=names)
    except NotComparable as error:
        return str(error)
    return None


def align_runs(run_a: Run, run_b: Run, scope: str = TEST_SCOPE, *,
               names: dict[str, str] | None = None) -> PairedPredictions:
    """Join the two runs' predictions of ``scope`` (``"test"`` or ``"heldout:<name>"``) on the
    image path, or raise :class:`NotComparable` saying why they cannot be paired.

    ``names`` maps run ids to the names used in messages (default: the run ids).
    """
    try:
        scope = normalise_scope(scope)
    except ValueError as error:
        raise NotComparable(str(error)) from None
    name_a, name_b = _name(run_a, names), _name(run_b, names)
    if run_a is run_b or run_a.path.resolve() == run_b.path.resolve():
        raise NotComparable(f"{name_a} is compared with itself: pick two different runs")
    if set(run_a.labels) != set(run_b.labels):
        raise NotComparable(f"{name_a} predicts {', '.join(run_a.labels)} and {name_b} "
                            f"predicts {', '.join(run_b.labels)}: a paired comparison needs "
                            "the same classes")
    words = scope_text(scope)
    rows_a, rows_b = _rows(run_a, scope, name_a), _rows(run_b, scope, name_b)
    if scope == TEST_SCOPE:
        folder_a = (run_a.scope_record(scope) or {}).get("name")
        folder_b = (run_b.scope_record(scope) or {}).get("name")
        if folder_a and folder_b and folder_a != folder_b:
            raise NotComparable(f"{name_a} was tested on {folder_a} and {name_b} on "
                                f"{folder_b}: a paired comparison needs the same images")
    paths_a, paths_b = set(rows_a["path"]), set(rows_b["path"])
    if paths_a != paths_b:
        shared = len(paths_a & paths_b)
        note = ""
        if scope == TEST_SCOPE and run_a.is_cross_validation != run_b.is_cross_validation:
            cv = name_a if run_a.is_cross_validation else name_b
            note = f" ({cv} is cross-validated: its test rows span the whole dataset)"
        raise NotComparable(f"{name_a} and {name_b} were scored on different {words} images "
                            f"({len(paths_a)} vs {len(paths_b)}, {shared} shared): a paired "
                            f"comparison needs the same images{note}")
    merged = rows_a.merge(rows_b, on="path", suffixes=("_a", "_b"), validate="one_to_one")
    disagree = merged[merged["label_a"] != merged["label_b"]]
    if not disagree.empty:
        first = disagree.iloc[0]
        raise NotComparable(f"{name_a} and {name_b} disagree on the true label of "
                            f"{len(disagree)} {words} image(s) (e.g. {first['path']}: "
                            f"{first['label_a']} vs {first['label_b']})")
    labels = list(run_a.labels)
    merged = merged.sort_values("path").reset_index(drop=True)
    frame = pd.DataFrame({"path": merged["path"], "label": merged["label_a"]})
    frame["group"] = _groups(merged["patient_a"].tolist(), merged["patient_b"].tolist(),
                             frame["path"].tolist())
    for side in ("a", "b"):
        probabilities = merged[[f"{prediction_column(label)}_{side}"
                                for label in labels]].to_numpy(float)
        frame[f"predicted_{side}"] = [labels[j] for j in probabilities.argmax(axis=1)]
        frame[f"right_{side}"] = frame[f"predicted_{side}"] == frame["label"]
        for k, label in enumerate(labels):
            frame[paired_column(side, label)] = probabilities[:, k]
    return PairedPredictions(run_a, run_b, scope, labels, frame)


def compare_runs(run_a: Run, run_b: Run, scope: str = TEST_SCOPE, *,
                 names: dict[str, str] | None = None, repeats: int = 2000,
                 seed: int = 0) -> RunComparison:
    """Compare two runs image by image on ``scope``: McNemar's exact test, a paired patient
    bootstrap of the accuracy (and positive-class sensitivity) difference, per-class
    differences and a one-sentence verdict. Raises :class:`NotComparable` (one line) when
    the runs were not scored on the same images."""
    paired = align_runs(run_a, run_b, scope, names=names)
    name_a, name_b = _name(run_a, names), _name(run_b, names)
    y_true, y_pred_a, y_pred_b, groups = (paired.frame[column].to_numpy(dtype=object) for column
                                          in ("label", "predicted_a", "predicted_b", "group"))
    images = f"{scope_text(paired.scope)} images"
    stats = compare_predictions(y_true, y_pred_a, y_pred_b, groups, labels=paired.labels,
                                pos_label=run_a.positive if run_a.positive == run_b.positive
                                else None, name_a=name_a, name_b=name_b,
                                images=images, repeats=repeats, seed=seed)
    per_class = per_class_differences(y_true, y_pred_a, y_pred_b, paired.labels)
    return RunComparison(paired, name_a, name_b, stats, per_class)


# --------------------------------------------------------------------------- choosing a pair


def _test_accuracy(run: Run) -> float:
    value = run.test_metrics.get("accuracy")
    return float(value) if isinstance(value, (int, float)) else float("-inf")


def _images_key(run: Run, scope: str) -> tuple | None:
    """What must match for two runs to pair on ``scope``: the folder (test split) and the
    set of image paths; None when the run has no such predictions. A cheap pre-check: the
    pair is then confirmed by :func:`comparable`."""
    rows = run.predictions_for(scope)
    if rows.empty:
        return None
    folder = run.scope_record(scope).get("name") if scope == TEST_SCOPE else None
    return folder, frozenset(rows["path"].astype(str))


def default_pair(runs: Sequence[Run]) -> tuple[Run, Run] | None:
    """The pair a comparison page opens with: the two best (test accuracy) ImageNet runs that
    are neither controls nor leaky and were tested on the same images; else the best
    comparable pair of any runs (test split, then a shared held-out folder); else the first
    two runs; None for fewer than two."""
    if len(runs) < 2:
        return None
    ranked = sorted(runs, key=_test_accuracy, reverse=True)
    preferred = [run for run in ranked if not run.is_control and not run.is_leaky]
    keys: dict[tuple[str, str], tuple | None] = {}

    def key(run: Run, scope: str):
        if (run.run_id, scope) not in keys:
            keys[(run.run_id, scope)] = _images_key(run, scope)
        return keys[(run.run_id, scope)]

    def pairs(pool: Sequence[Run], scope_of):
        for index, run_a in enumerate(pool):
            for run_b in pool[index + 1:]:
                for scope in scope_of(run_a, run_b):
                    same = key(run_a, scope) is not None and key(run_a, scope) == key(run_b,
                                                                                       scope)
                    if same and comparable(run_a, run_b, scope) is None:
                        return run_a, run_b
        return None

    def test_only(run_a, run_b):
        return [TEST_SCOPE]

    return (pairs(preferred, test_only) or pairs(ranked, test_only)
            or pairs(ranked, shared_scopes) or (ranked[0], ranked[1]))
