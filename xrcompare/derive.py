"""Derived datasets: the same images under another class scheme, without copying them.

``python -m xrcompare dataset derive SOURCE --scheme SCHEME OUT`` writes ``OUT/<class>/`` folders
of symbolic links to SOURCE's images (a copy only where a link cannot be made) and a
``manifest.csv`` that carries every image's patient id (and the source manifest's other columns)
over, so a run on OUT splits by the same patients as one on SOURCE. Schemes:

- ``covid-vs-rest``: ``covid`` against ``non-covid`` (normal and pneumonia together), the
  two-class protocol of Apostolopoulos & Mpesiana (2020);
- ``four-class``: ``covid`` / ``bacterial`` / ``viral`` / ``normal``, pneumonia split by the
  source manifest's notes (``bacterial``, ``viral``) or else the Kermany file name
  (``person…_bacteria_…``, ``person…_virus_…``); a pneumonia image with neither is left out
  and counted.

Links lead into SOURCE only and are named by the source file's own name inside their class
folder (prefixed by its source class when two would collide), so nothing is written outside
OUT. :func:`xrcompare.data.scan_dataset` accepts such links when their target lies in the data
root.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from collections import Counter
from pathlib import Path

from xrcompare.data import DatasetError, is_inside, path_inside, scan_dataset

SCHEMES = ("covid-vs-rest", "four-class")
#: The classes a scheme needs in SOURCE.
SOURCE_CLASSES = {"covid", "normal", "pneumonia"}
MANIFEST_COLUMNS = ("path", "label", "patient_id", "source_label", "source_path")


def pneumonia_kind(file_name: str, notes: str = "") -> str | None:
    """``bacterial`` or ``viral`` from a manifest's notes, else from a Kermany file name;
    None when neither says."""
    found = re.search(r"\b(bacterial|viral)\b", notes or "", re.IGNORECASE)
    if found:
        return found.group(1).lower()
    name = file_name.lower()
    if "_bacteria_" in name:
        return "bacterial"
    if "_virus_" in name:
        return "viral"
    return None


def derived_label(scheme: str, label: str, file_name: str, notes: str = "") -> str | None:
    """The class of a SOURCE image of class ``label`` under ``scheme`` (None: left out)."""
    if scheme == "covid-vs-rest":
        return "covid" if label == "covid" else "non-covid"
    if scheme == "four-class":
        return pneumonia_kind(file_name, notes) if label == "pneumonia" else label
    raise ValueError(f"--scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")


def _source_rows(dataset) -> tuple[dict[Path, dict], list[str]]:
    """The source manifest's rows by resolved image path, and its columns (none without a
    manifest)."""
    if dataset.manifest_path is None:
        return {}, []
    with dataset.manifest_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [str(name) for name in (reader.fieldnames or [])]
        rows = {}
        for row in reader:
            if row.get("path"):
                rows[(dataset.manifest_path.parent / row["path"]).resolve()] = row
    return rows, columns


def _link(target: Path, link: Path) -> str:
    """A symbolic link ``link`` → ``target``, else a copy: "link" or "copy"."""
    try:
        os.symlink(target, link)
        return "link"
    except OSError:
        shutil.copy2(target, link)
        return "copy"


def derive_dataset(source: str | Path, scheme: str, out: str | Path) -> dict:
    """Write the derived dataset (see the module) and return what was written: ``classes``
    (images per class), ``links``, ``copies``, ``left_out`` (file names), ``manifest``.

    SOURCE holds covid / normal / pneumonia, or some of them (a held-out copy such as
    ``kaggle_test``, which has no covid: its derived copy scores a derived run on Kaggle).
    Raises ValueError (one line): an unknown scheme, OUT not empty, a SOURCE with another
    class.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"--scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    source, out = Path(source).expanduser(), Path(out).expanduser()
    dataset = scan_dataset(source)
    extra = sorted(set(dataset.classes) - SOURCE_CLASSES)
    if extra:  # a held-out copy may hold some of the three classes, never another
        raise DatasetError(f"{source} has classes {', '.join(dataset.classes)}; --scheme "
                           f"{scheme} takes a dataset of covid, normal and pneumonia (or a "
                           f"held-out copy with some of them), not {', '.join(extra)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder: choose a new one")
    if is_inside(out, source):
        raise ValueError(f"{out} is inside the source dataset {source}: choose a folder beside it")
    rows, columns = _source_rows(dataset)
    carried = [name for name in columns if name not in MANIFEST_COLUMNS]
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written, methods, left_out = [], Counter(), []
    try:
        names: set[str] = set()
        for record in dataset.records:
            row = rows.get(record.path.resolve(), {})
            label = derived_label(scheme, record.label, record.path.name, row.get("notes", ""))
            if label is None:
                left_out.append(str(record.path.relative_to(dataset.root)))
                continue
            name = record.path.name
            if f"{label}/{name}" in names:  # two source classes, one file name
                name = f"{record.label}__{name}"
            names.add(f"{label}/{name}")
            link = path_inside(out, f"{label}/{name}")
            if link is None:  # a file name that would lead out of OUT: never written
                left_out.append(str(record.path.relative_to(dataset.root)))
                continue
            link.parent.mkdir(exist_ok=True)
            methods[_link(record.path.resolve(), link)] += 1
            written.append({"path": f"{label}/{name}", "label": label,
                            "patient_id": record.patient_id, "source_label": record.label,
                            "source_path": str(record.path.relative_to(dataset.root)),
                            **{key: row.get(key, "") for key in carried}})
        manifest = out / "manifest.csv"
        with manifest.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=[*MANIFEST_COLUMNS, *carried])
            writer.writeheader()
            writer.writerows(written)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return {"source": str(source), "scheme": scheme, "out": str(out),
            "classes": dict(sorted(Counter(row["label"] for row in written).items())),
            "links": methods["link"], "copies": methods["copy"], "left_out": left_out,
            "manifest": str(manifest)}
