"""The images behind a confusion-matrix cell: which X-rays a run called ``predicted`` when they
were ``true``, most confident first, with each image's probabilities and its file.

Everything comes from what the run recorded (:class:`xrcompare.runs.Run`: its predictions per
scope, its probability columns, its data folders); an image file is looked for only inside the
run's recorded folder for that scope (:meth:`Run.data_folder`, itself only inside the data
root), and a recorded path leading out of that folder is never opened. No Streamlit here: the
*Confusion matrices* page and the CLI's ``errors`` lay out what these functions return.

Predicted classes are the argmax of the recorded probabilities (as :mod:`xrcompare.compare`
and the metrics do), so the cells add up to the run's confusion matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xrcompare.runs import Run, RunError, normalise_scope, prediction_column, scope_text

#: The most images one call returns (a page shows a few at a time; the CLI says how many more).
MAX_LIMIT = 1000


def scope_predictions(run: Run, scope: str) -> pd.DataFrame:
    """The run's predictions.csv rows of ``scope`` with ``predicted`` (argmax of the recorded
    probabilities), ``p_predicted`` and ``p_true`` added; ValueError when the run has no
    predictions there."""
    scope = normalise_scope(scope)
    rows = run.predictions_for(scope)
    if rows.empty:
        offered = ", ".join(run.scopes) or "none"
        raise ValueError(f"{run.run_id} has no predictions on {scope_text(scope)} "
                         f"(its scopes: {offered})")
    labels = run.labels
    probabilities = rows[run.probability_columns()].to_numpy(float)
    index = probabilities.argmax(axis=1)
    frame = rows.reset_index(drop=True).copy()
    frame["label"] = frame["label"].astype(str)
    frame["predicted"] = [labels[i] for i in index]
    frame["p_predicted"] = probabilities[np.arange(len(frame)), index]
    true_index = [labels.index(label) if label in labels else -1 for label in frame["label"]]
    frame["p_true"] = [probabilities[row, i] if i >= 0 else np.nan
                       for row, i in enumerate(true_index)]
    return frame


def confusion_cells(run: Run, scope: str = "test") -> pd.DataFrame:
    """One row per (true, predicted) pair of the run's classes: ``true``, ``predicted``,
    ``images`` (how many of the scope's images fall in that cell) and ``mistake``."""
    frame = scope_predictions(run, scope)
    counts = frame.groupby(["label", "predicted"]).size()
    rows = [{"true": true, "predicted": predicted,
             "images": int(counts.get((true, predicted), 0)), "mistake": true != predicted}
            for true in run.labels for predicted in run.labels]
    return pd.DataFrame(rows, columns=["true", "predicted", "images", "mistake"])


def probabilities_of(row: dict, labels: list[str]) -> dict[str, float]:
    """Class → recorded probability of one row of :attr:`CellImages.rows`."""
    return {label: float(row[prediction_column(label)]) for label in labels}


def check_class(run: Run, label: str | None, what: str) -> str | None:
    if label is not None and label not in run.labels:
        raise ValueError(f"unknown {what} class {label!r}; {run.run_id} predicts "
                         f"{', '.join(run.labels)}")
    return label


@dataclass
class CellImages:
    """The images of one selection of cells, most confident first.

    ``rows``: path (as recorded), label, predicted, p_predicted, p_true, one ``prob_<class>``
    column per class, patient_id when recorded, ``file`` (the image on this machine, or None)
    and ``missing`` (one sentence when the file is not here, else ""). ``total`` counts every
    image of the selection, ``rows`` only those from ``offset`` up to ``limit``. ``folder`` is
    the scope's image folder on this machine (None when it is not here) and ``folder_problem``
    says why in one sentence.
    """

    run: Run
    scope: str
    true: str | None
    predicted: str | None
    rows: pd.DataFrame
    total: int
    offset: int
    folder: Path | None
    folder_problem: str | None = None
    labels: list[str] = field(default_factory=list)

    @property
    def description(self) -> str:
        """The selection in words: "true covid called normal", "every mistake"."""
        if self.true is not None and self.predicted is not None:
            kind = "right" if self.true == self.predicted else "mistakes"
            return f"true {self.true} called {self.predicted} ({kind})"
        if self.true is not None:
            return f"mistakes on true {self.true}"
        if self.predicted is not None:
            return f"mistakes called {self.predicted}"
        return "every mistake"

    @property
    def more(self) -> int:
        """Images of the selection after the ones returned."""
        return max(0, self.total - self.offset - len(self.rows))

    def to_json(self) -> dict:
        images = []
        for row in self.rows.to_dict("records"):
            images.append({
                "path": str(row["path"]), "label": row["label"], "predicted": row["predicted"],
                "p_predicted": float(row["p_predicted"]),
                "p_true": None if pd.isna(row["p_true"]) else float(row["p_true"]),
                "probabilities": probabilities_of(row, self.labels),
                "file": None if row["file"] is None else str(row["file"]),
                "missing": row["missing"] or None})
        return {"run": self.run.run_id, "scope": self.scope, "true": self.true,
                "predicted": self.predicted, "selection": self.description,
                "total": self.total, "offset": self.offset, "shown": len(images),
                "more": self.more, "folder": None if self.folder is None else str(self.folder),
                "folder_problem": self.folder_problem, "images": images}


def scope_folder(run: Run, scope: str) -> tuple[Path | None, str | None]:
    """The folder of a scope's images on this machine and, when it is not usable, why (one
    sentence)."""
    try:
        folder = run.data_folder(scope)
    except RunError as error:  # recorded outside the data root: never read
        return None, str(error)
    if folder is None:
        record = run.scope_record(scope)
        where = record.get("folder_absolute") or record.get("folder") or "no folder"
        return None, (f"The images of {scope_text(scope)} are not on this machine (the run "
                      f"recorded {where}), so only their names and probabilities are shown.")
    return folder, None


def cell_images(run: Run, scope: str = "test", true: str | None = None,
                predicted: str | None = None, *, limit: int | None = 24,
                offset: int = 0) -> CellImages:
    """The images of ``run`` on ``scope`` whose true class is ``true`` and predicted class is
    ``predicted``, most confident first (by the probability the run gave its answer; ties by
    path).

    With both classes given this is one cell (the diagonal included); with one or neither,
    only the mistakes among them. ``limit`` (None: up to :data:`MAX_LIMIT`) and ``offset``
    page through them. Each image's file is resolved inside the scope's folder; a missing
    file gets one sentence in ``missing``.
    """
    scope = normalise_scope(scope)
    check_class(run, true, "true")
    check_class(run, predicted, "predicted")
    if limit is not None and limit < 1:
        raise ValueError("the limit must be at least 1")
    if offset < 0:
        raise ValueError("the offset cannot be negative")
    frame = scope_predictions(run, scope)
    chosen = pd.Series(True, index=frame.index)
    if true is not None:
        chosen &= frame["label"] == true
    if predicted is not None:
        chosen &= frame["predicted"] == predicted
    if true is None or predicted is None:
        chosen &= frame["label"] != frame["predicted"]
    frame = frame[chosen].sort_values(["p_predicted", "path"], ascending=[False, True],
                                      kind="mergesort")
    total = len(frame)
    limit = MAX_LIMIT if limit is None else min(limit, MAX_LIMIT)
    page = frame.iloc[offset:offset + limit].reset_index(drop=True)
    columns = ["path", "label", "predicted", "p_predicted", "p_true",
               *run.probability_columns()]
    if "patient_id" in page:
        columns.append("patient_id")
    page = page[columns].copy()
    folder, problem = scope_folder(run, scope)
    files, missing = [], []
    for path in page["path"].astype(str):
        file, why = resolve_image(run, scope, path, folder, problem)
        files.append(file)
        missing.append(why)
    page["file"] = files
    page["missing"] = missing
    return CellImages(run, scope, true, predicted, page, total, offset, folder, problem,
                      list(run.labels))


def resolve_image(run: Run, scope: str, path: str, folder: Path | None,
                  folder_problem: str | None) -> tuple[Path | None, str]:
    """(the file of a recorded image path inside the scope's folder, "") or (None, one
    sentence why it cannot be shown)."""
    if folder is None:
        return None, folder_problem or f"{path} is not on this machine."
    file = run.image_path(path, scope)
    if file is None:
        return None, f"{path} leads out of the run's image folder, so it is not opened."
    if not file.is_file():
        return None, f"{path} is not in {folder} on this machine."
    return file, ""


def cells_lines(run: Run, scope: str, cells: pd.DataFrame) -> list[str]:
    """The cells as the CLI prints them: a matrix of counts, rows true."""
    labels = run.labels
    width = max(10, *(len(label) + 2 for label in labels))
    lines = [f"{run.title} on {scope_text(scope)}: images per cell (rows true, columns "
             "predicted)", " " * width + "".join(f"{label:>{width}}" for label in labels)]
    table = cells.set_index(["true", "predicted"])["images"]
    for true in labels:
        lines.append(f"{true:>{width}}" + "".join(f"{table[(true, predicted)]:>{width}}"
                                                  for predicted in labels))
    return lines


def images_lines(selection: CellImages) -> list[str]:
    """The selected images as the CLI prints them, one per line."""
    labels = selection.labels
    lines = [f"{selection.description}: {selection.total} image"
             f"{'s' if selection.total != 1 else ''}, most confident first"]
    if selection.folder_problem:
        lines.append(selection.folder_problem)
    for row in selection.rows.to_dict("records"):
        probabilities = " ".join(f"{label} {value:.3f}" for label, value
                                 in probabilities_of(row, labels).items())
        note = (f"  ({row['missing']})" if row["missing"] and not selection.folder_problem
                else "")
        lines.append(f"  true {row['label']:<10} called {row['predicted']:<10} "
                     f"p {row['p_predicted']:.3f}  [{probabilities}]  {row['path']}{note}")
    if selection.more:
        lines.append(f"  … and {selection.more} more (--limit to see more)")
    return lines


# --------------------------------------------------------------------------- one image


@dataclass(frozen=True)
class ImageExplanation:
    """One gallery image through the Predict page's engine: what the shipped head says now,
    and its Grad-CAM overlay for ``target``."""

    probabilities: dict[str, float]
    target: str
    overlay: np.ndarray  # RGB uint8, the image at display size with the map over it
    note: str  # a sentence when the recorded and the recomputed answers may differ, else ""


def explain_image(engine, run: Run, file: Path, target: str | None = None, *,
                  cache=None, alpha: float = 0.45) -> ImageExplanation:
    """Grad-CAM of ``run`` for one image file (``target``: None explains the predicted
    class), through the same engine, caches and overlay as *Predict & explain*."""
    from xrcompare import predictor
    from xrcompare.inference import load_image_file

    if not run.is_cnn:
        raise ValueError(f"{run.title} has no CNN, so it has no Grad-CAM map")
    image = load_image_file(file)
    digest = predictor.image_digest(image.gray)
    probabilities = engine.probabilities(run, image.gray)
    target = target or max(probabilities, key=probabilities.get)
    explanation = predictor.explain_cached(cache, engine, run, image.gray, "gradcam", target,
                                           digest=digest)
    picture = predictor.display_image(image.gray)
    overlay = predictor.overlay_for_run(run, picture, explanation.saliency, alpha=alpha)
    note = ""
    if run.is_cross_validation:
        note = ("This run is cross-validated: its recorded probabilities on the test split "
                "are out-of-fold (each image scored by the head that did not train on it), "
                "while the map comes from its shipped head (fold 1).")
    return ImageExplanation(probabilities, target, overlay, note)
