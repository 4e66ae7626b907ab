"""Calibration of a run: reliability diagrams, expected calibration error (ECE) and optional
temperature scaling, computed from the run's own predictions (read through :class:`Run`).

The temperature is fitted on the run's **validation** rows of predictions.csv (never its test
rows, never a held-out folder) and then applied to the test split and each held-out folder, so
before/after figures there are honest. A run without a validation split (the 2020 protocol
chose its epoch on the test split) gets no temperature: fitting one on the test split would
grade it on the images it was tuned on. The binning and the fit live in
:mod:`xrcompare.evaluate` (:func:`~xrcompare.evaluate.reliability`,
:func:`~xrcompare.evaluate.fit_temperature`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from xrcompare.evaluate import ECE_BINS, apply_temperature, fit_temperature, reliability
from xrcompare.runs import TEST_SCOPE, Run, normalise_scope, scope_text

#: Fewer validation images than this give a temperature too noisy to trust: it is not fitted.
MIN_VALIDATION_IMAGES = 20


@dataclass(frozen=True)
class Temperature:
    """A run's fitted temperature, or why there is none."""

    value: float | None
    images: int  # validation images it was fitted on
    note: str  # how it was fitted, or why it was not

    @property
    def fitted(self) -> bool:
        return self.value is not None


def _frame_arrays(run: Run, rows: pd.DataFrame):
    probabilities = rows[run.probability_columns()].to_numpy(dtype=float)
    return rows["label"].astype(str).tolist(), probabilities


def temperature_for(run: Run) -> Temperature:
    """The temperature fitted on the run's validation rows (see the module docstring)."""
    rows = run.split_predictions("val")
    if rows.empty:
        why = ("no validation split: its epoch was chosen on the test split (2020 protocol), "
               "and fitting a temperature on test images would grade it on what it was tuned "
               "on" if run.protocol["select_on"] == "test" else "no validation split recorded")
        return Temperature(None, 0, f"temperature scaling is not possible ({why})")
    if len(rows) < MIN_VALIDATION_IMAGES:
        return Temperature(None, len(rows), f"temperature scaling skipped: only {len(rows)} "
                                            "validation images")
    y_true, probabilities = _frame_arrays(run, rows)
    value = fit_temperature(y_true, probabilities, run.labels)
    note = f"fitted on the {len(rows)} validation images (negative log-likelihood)"
    if run.is_cross_validation:
        note += "; cross-validation: fold 1's validation split, applied to every fold's output"
    return Temperature(value, len(rows), note)


@dataclass(frozen=True)
class Calibration:
    """One run on one scope: reliability before (and after) temperature scaling."""

    run: Run
    scope: str
    before: dict  # evaluate.reliability: ece, bins, n, table
    temperature: Temperature
    after: dict | None  # the same with the temperature applied; None without one

    @property
    def ece(self) -> float:
        return self.before["ece"]

    @property
    def ece_after(self) -> float | None:
        return None if self.after is None else self.after["ece"]


def calibrate(run: Run, scope: str = TEST_SCOPE, *, bins: int = ECE_BINS,
              temperature: Temperature | None = None) -> Calibration | None:
    """The run's calibration on ``scope`` (None when it has no predictions there)."""
    rows = run.predictions_for(scope)
    if rows.empty:
        return None
    y_true, probabilities = _frame_arrays(run, rows)
    temperature = temperature or temperature_for(run)
    before = reliability(y_true, probabilities, run.labels, bins)
    after = None
    if temperature.fitted:
        after = reliability(y_true, apply_temperature(probabilities, temperature.value),
                            run.labels, bins)
    return Calibration(run, normalise_scope(scope), before, temperature, after)


def calibration_table(runs: Sequence[Run], scopes: Sequence[str] | None = None,
                      labels: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per run and scope: images, ECE, the temperature, ECE after it, and a note.

    ``scopes`` defaults to each run's own (test first, then its held-out folders).
    """
    rows = []
    for run in runs:
        temperature = temperature_for(run)
        for scope in (scopes or run.scopes):
            found = calibrate(run, scope, temperature=temperature)
            if found is None:
                continue
            rows.append({"run": (labels or {}).get(run.run_id, run.title),
                         "run_id": run.run_id, "scope": scope_text(scope),
                         "images": found.before["n"], "ece": found.ece,
                         "temperature": temperature.value, "ece_after": found.ece_after,
                         "note": temperature.note})
    return pd.DataFrame(rows, columns=["run", "run_id", "scope", "images", "ece", "temperature",
                                       "ece_after", "note"])


def reliability_frame(calibration: Calibration, after: bool = False) -> pd.DataFrame:
    """The non-empty bins of a reliability diagram: low, high, count, confidence, accuracy."""
    data = calibration.after if after else calibration.before
    if data is None:
        return pd.DataFrame(columns=["low", "high", "count", "confidence", "accuracy"])
    frame = pd.DataFrame(data["table"])
    return frame[frame["count"] > 0].reset_index(drop=True)
