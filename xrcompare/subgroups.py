"""Subgroups: a run's scores sliced by what the dataset's manifest says about each image (its
X-ray ``view``: PA, AP, AP supine; or its ``source`` repository), with counts and
patient-bootstrap 95% intervals. Small groups are flagged, never hidden.

The manifest is the training data's ``manifest.csv`` as :meth:`xrcompare.runs.Run.
manifest_path` finds it (only inside the data root); its ``path`` column is relative to the
manifest's folder, the run's predictions to the scored folder, so rows are matched through
that folder's place under the manifest. Images the manifest does not list form the group
"not in the manifest".
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from xrcompare.evaluate import POSITIVE_CLASS, evaluate_predictions
from xrcompare.runs import TEST_SCOPE, Run, RunError, normalise_scope, scope_name

#: How an image can be grouped: the manifest column each uses.
GROUPINGS = {"view": "view", "source": "source_repo"}
#: Groups with fewer images than this are flagged: their intervals are wide and a single
#: patient can swing them.
SMALL_GROUP = 20
#: The group of images the manifest does not list (or lists without a value).
UNLISTED = "not in the manifest"
COLUMNS = ["group", "images", "patients", "classes", "accuracy", "accuracy_low",
           "accuracy_high", "sensitivity", "sensitivity_low", "sensitivity_high", "small"]


def read_manifest(path: Path) -> pd.DataFrame:
    """A manifest.csv as text columns; ValueError (one line) when unreadable or pathless."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        from xrcompare.errors import one_line

        raise ValueError(f"cannot read {path.name} ({one_line(error, 100)})") from None
    if "path" not in frame.columns:
        raise ValueError(f"{path.name} has no path column")
    return frame


def _prefix(run: Run, scope: str, manifest_path: Path) -> str:
    """The scored folder's path relative to the manifest's folder (its record's name when the
    folder is not on this machine)."""
    try:
        folder = run.data_folder(TEST_SCOPE if scope == TEST_SCOPE else scope)
    except RunError:
        folder = None
    if folder is not None:
        try:
            return folder.resolve().relative_to(manifest_path.parent.resolve()).as_posix()
        except ValueError:
            pass
    record = run.data_record(scope)
    return str(record.get("name") or (run.data_name if scope == TEST_SCOPE
                                      else scope_name(scope)))


def group_values(run: Run, scope: str, by: str, manifest: pd.DataFrame,
                 manifest_path: Path) -> pd.Series:
    """Per predictions row of ``scope``, its group (the manifest's value, or
    :data:`UNLISTED`)."""
    if by not in GROUPINGS:
        raise ValueError(f"group by one of {', '.join(GROUPINGS)}, got {by!r}")
    column = GROUPINGS[by]
    if column not in manifest.columns:
        raise ValueError(f"{manifest_path.name} has no {column} column")
    rows = run.predictions_for(scope)
    prefix = PurePosixPath(_prefix(run, scope, manifest_path))
    lookup = dict(zip(manifest["path"].map(lambda p: PurePosixPath(p).as_posix()),
                      manifest[column].astype(str).str.strip(), strict=True))
    values = [lookup.get((prefix / str(path)).as_posix(), "") or UNLISTED
              for path in rows["path"]]
    return pd.Series(values, index=rows.index, name=by)


def subgroup_table(run: Run, scope: str = TEST_SCOPE, by: str = "view", *,
                   manifest_path: Path | None = None, repeats: int = 1000,
                   seed: int = 0) -> pd.DataFrame:
    """One row per group of ``scope``'s images: images, patients, classes (counts), accuracy
    with its 95% patient-bootstrap interval, the positive class's sensitivity (recall) with
    its interval where the group holds such images, and ``small`` (fewer than
    :data:`SMALL_GROUP` images). Groups by size, largest first.

    Raises ValueError (one line) when the run's manifest is not found or lacks the column.
    """
    scope = normalise_scope(scope)
    manifest_path = manifest_path or run.manifest_path()
    if manifest_path is None:
        raise ValueError(f"{run.run_id}: no manifest.csv found for its data (it must lie in "
                         "the data folder or up to two folders above it, inside the data root)")
    rows = run.predictions_for(scope)
    if rows.empty:
        raise ValueError(f"{run.run_id} has no predictions for {scope}")
    groups = group_values(run, scope, by, read_manifest(manifest_path), manifest_path)
    probabilities = rows[run.probability_columns()].to_numpy(dtype=float)
    labels = rows["label"].astype(str).to_numpy()
    patients = (rows["patient_id"].astype(str).to_numpy() if "patient_id" in rows
                else np.array([f"image{i}" for i in range(len(rows))]))
    table = []
    for group, members in groups.groupby(groups, sort=False):
        mask = groups.index.isin(members.index)
        metrics = evaluate_predictions(list(labels[mask]), probabilities[mask],
                                       list(patients[mask]), labels=run.labels,
                                       positive=run.positive,
                                       repeats=repeats, seed=seed)
        counts = pd.Series(labels[mask]).value_counts()
        low, high = metrics["intervals"]["accuracy"]
        entry = {"group": group, "images": int(mask.sum()),
                 "patients": int(len(set(patients[mask]))),
                 "classes": ", ".join(f"{label} {counts[label]}" for label in run.labels
                                      if label in counts),
                 "accuracy": metrics["accuracy"], "accuracy_low": low, "accuracy_high": high,
                 "sensitivity": None, "sensitivity_low": None, "sensitivity_high": None,
                 "small": bool(mask.sum() < SMALL_GROUP)}
        if run.positive in counts:
            index = run.labels.index(run.positive)
            entry["sensitivity"] = metrics["per_class"][run.positive]["recall"]
            bounds = metrics["intervals"]["per_class"]["recall"][index]
            entry["sensitivity_low"], entry["sensitivity_high"] = bounds
        table.append(entry)
    frame = pd.DataFrame(table, columns=COLUMNS)
    return frame.sort_values(["images", "group"], ascending=[False, True]).reset_index(
        drop=True)


def subgroup_lines(table: pd.DataFrame, by: str, positive: str = POSITIVE_CLASS) -> list[str]:
    """The table as aligned text (what ``python -m xrcompare subgroups`` prints)."""
    def interval(low, high):
        return "" if low is None or pd.isna(low) else f" ({low:.2f}–{high:.2f})"

    width = max([len(by), *(len(str(group)) for group in table["group"])])
    lines = [f"{by:<{width}}  {'images':>6} {'patients':>8}  accuracy (95% CI)   "
             f"{positive} sensitivity (95% CI)  classes"]
    for row in table.itertuples():
        sensitivity = ("–" if row.sensitivity is None or pd.isna(row.sensitivity)
                       else f"{row.sensitivity:.3f}"
                       + interval(row.sensitivity_low, row.sensitivity_high))
        flag = f"  [small: n < {SMALL_GROUP}]" if row.small else ""
        accuracy = f"{row.accuracy:.3f}{interval(row.accuracy_low, row.accuracy_high)}"
        lines.append(f"{row.group:<{width}}  {row.images:>6} {row.patients:>8}  "
                     f"{accuracy:<19} {sensitivity:<29} {row.classes}{flag}")
    return lines
