"""Many images through many runs: one table of every run's probabilities per image.

What the CLI's ``predict RUN PATH...`` (a folder, several files) and the *Predict a batch*
page share. Files are decoded as a single upload is (:func:`xrcompare.inference.
load_image_file`: bounded, checked, PNG/JPEG/DICOM) and go through the Predict page's
:class:`xrcompare.engine.Engine` in chunks: per chunk, the runs sharing a trunk and a model
input one after the other, so each image goes through each distinct trunk once (the engine
keeps its feature map), then each run's tail on the whole chunk. A file that cannot be read,
or a run that cannot predict, gets its reason in its row; the other rows are still made. No
Streamlit here.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xrcompare import CLASSES
from xrcompare.errors import one_line
from xrcompare.imaging import IMAGE_SUFFIXES, ImageError
from xrcompare.runs import Run

#: The most images one batch may hold (the CLI and the page alike), and their most bytes.
MAX_IMAGES = 500
MAX_TOTAL_BYTES = 200 * 1024 * 1024
#: Files taken from a folder or a .zip: the training images' suffixes and DICOM's.
SUFFIXES = (*IMAGE_SUFFIXES, ".dcm", ".dicom")
#: Images decoded and sent through each trunk at once (memory: decoded images of at most
#: 2048 px a side, 4 MB each, and one feature map per image and trunk, under 1 MB).
CHUNK = 16
#: The table's fixed columns (one probability column per class goes between them).
LEADING = ["image", "run", "predicted", "confidence"]
TRAILING = ["note"]


class BatchError(ValueError):
    """A batch that cannot be started (too many images, too large, none), in one sentence."""


@dataclass(frozen=True)
class BatchItem:
    """One image of a batch: how it is named in the table, and its file."""

    name: str
    path: Path


def _folder_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (sorted; hidden files and folders left out; symbolic
    links leading out of it are not followed)."""
    from xrcompare.data import is_inside

    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in SUFFIXES and path.is_file() and is_inside(path, folder):
            found.append(path)
    return found


def collect(paths: Sequence[str | Path], *, max_images: int = MAX_IMAGES,
            max_bytes: int = MAX_TOTAL_BYTES) -> list[BatchItem]:
    """The images of ``paths``: each file as given (whatever its suffix: it is checked when
    read), each folder's image files (:data:`SUFFIXES`, recursively, named by their path
    under the folder as given). Raises :class:`BatchError` when there is no image at all, more
    than ``max_images`` or more than ``max_bytes`` in all."""
    items: list[BatchItem] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            images = _folder_images(path)
            if not images:
                raise BatchError(f"{given} holds no images ({', '.join(SUFFIXES)})")
            items += [BatchItem(str(Path(given) / image.relative_to(path)), image)
                      for image in images]
        else:  # a file, or something that will say in its row why it cannot be read
            items.append(BatchItem(str(given), path))
        if len(items) > max_images:
            break
    if not items:
        raise BatchError("no images given")
    check_limits(items, max_images, max_bytes)
    return items


def check_limits(items: Sequence[BatchItem], max_images: int = MAX_IMAGES,
                 max_bytes: int = MAX_TOTAL_BYTES) -> None:
    """:class:`BatchError` with one sentence when ``items`` are too many or too large."""
    if len(items) > max_images:
        raise BatchError(f"more than {max_images} images given; at most {max_images} are "
                         "predicted at once (split the folder, or score a labelled folder with "
                         "evaluate)")
    total = 0
    for item in items:
        with contextlib.suppress(OSError):
            if item.path.is_file():
                total += item.path.stat().st_size
    if total > max_bytes:
        raise BatchError(f"the images take {total / 1e6:.0f} MB; at most "
                         f"{max_bytes / 1e6:.0f} MB are predicted at once")


def labels_of(runs: Sequence[Run]) -> list[str]:
    """Every class any of ``runs`` predicts, the usual three first."""
    labels = [label for label in CLASSES if any(label in run.labels for run in runs)]
    for run in runs:
        labels += [label for label in run.labels if label not in labels]
    return labels


def _run_order(runs: Sequence[Run]) -> list[Run]:
    """Runs sharing a trunk and a model input next to each other, so each chunk's feature
    maps are computed once and found in the engine's cache by the next run of the group."""
    from xrcompare.engine import trunk_key

    def key(run: Run):
        if not run.is_cnn:
            return ("~statistics", run.run_id)
        return (str(trunk_key(run)), run.resize_mode, run.mask, run.preprocess)

    return sorted(runs, key=key)


@dataclass
class BatchResult:
    """The table (:data:`LEADING`, one column per class, :data:`TRAILING`; one row per image
    and run, or one row for an image that could not be read), and how it went."""

    table: pd.DataFrame
    images: int
    unreadable: int
    seconds: float
    labels: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def csv_bytes(self) -> bytes:
        return self.table.to_csv(index=False, float_format="%.6g").encode("utf-8")


def predict_batch(runs: Sequence[Run], items: Sequence[BatchItem], engine=None, *,
                  chunk: int = CHUNK, hold: Callable[[], contextlib.AbstractContextManager]
                  | None = None, progress: Callable[[int, int], None] | None = None
                  ) -> BatchResult:
    """Every run's probabilities for every image of ``items``.

    ``hold()`` is entered around each chunk's work (the app passes a server work slot);
    ``progress(done, total)`` is called after each chunk. A file that cannot be read gets
    one row with its reason in ``note``; a run that cannot predict gets its reason in its
    rows' ``note``. Nothing raises for one bad file or run.
    """
    from xrcompare.engine import Engine
    from xrcompare.inference import load_image_file
    from xrcompare.predictor import MODEL_ERRORS, problem_sentence

    if not runs:
        raise BatchError("no run chosen")
    engine = engine or Engine()
    labels = labels_of(runs)
    ordered = _run_order(runs)
    problems: dict[str, str] = {}
    rows: list[dict] = []
    unreadable = 0
    start = time.perf_counter()
    for first in range(0, len(items), max(1, chunk)):
        part = items[first:first + chunk]
        with hold() if hold is not None else contextlib.nullcontext():
            grays, failed = {}, {}
            for number, item in enumerate(part):
                try:
                    grays[number] = load_image_file(item.path).gray
                except (ImageError, OSError, ValueError) as error:
                    failed[number] = one_line(error, 300)
            answers: dict[str, np.ndarray] = {}
            usable = sorted(grays)
            for run in ordered:
                if run.run_id in problems or not usable:
                    continue
                try:
                    answers[run.run_id] = engine.probabilities_batch(
                        run, [grays[number] for number in usable])
                except MODEL_ERRORS as error:
                    problems[run.run_id] = problem_sentence(run, error)
        for number, item in enumerate(part):
            if number in failed:
                unreadable += 1
                rows.append({"image": item.name, "run": "", "predicted": None,
                             "confidence": None, "note": failed[number]})
                continue
            position = usable.index(number)
            for run in runs:
                row = {"image": item.name, "run": run.run_id, "predicted": None,
                       "confidence": None, "note": problems.get(run.run_id, "")}
                values = answers.get(run.run_id)
                if values is not None:
                    scores = dict(zip(run.labels, map(float, values[position]), strict=True))
                    row.update(scores)
                    row["predicted"] = max(scores, key=scores.get)
                    row["confidence"] = max(scores.values())
                rows.append(row)
        if progress is not None:
            progress(min(first + chunk, len(items)), len(items))
    table = pd.DataFrame(rows, columns=[*LEADING, *labels, *TRAILING])
    return BatchResult(table, len(items), unreadable, time.perf_counter() - start, labels)


def predict_archive(runs: Sequence[Run], data: bytes, name: str, engine=None, **options
                    ) -> BatchResult:
    """:func:`predict_batch` on the images of an uploaded .zip (any folders), unpacked within
    :mod:`xrcompare.archives`'s bounds and this module's into a temporary folder deleted
    afterwards. Members that cannot be unpacked get their row like unreadable files."""
    import tempfile

    from xrcompare.archives import extract_image_zip

    with tempfile.TemporaryDirectory(prefix="xrcompare-batch-") as folder:
        extracted = extract_image_zip(io.BytesIO(data), folder, size=len(data),
                                      suffixes=SUFFIXES, max_images=MAX_IMAGES,
                                      max_total=MAX_TOTAL_BYTES)
        items = [BatchItem(relative, extracted.root / relative)
                 for relative in extracted.files]
        if items:
            result = predict_batch(runs, items, engine, **options)
        else:
            result = BatchResult(pd.DataFrame(columns=[*LEADING, *labels_of(runs),
                                                       *TRAILING]), 0, 0, 0.0,
                                 labels_of(runs))
    if extracted.failed:
        broken = pd.DataFrame([{"image": member, "run": "", "note": reason}
                               for member, reason in extracted.failed])
        result.table = pd.concat([result.table, broken], ignore_index=True)[
            result.table.columns]
        result.images += len(extracted.failed)
        result.unreadable += len(extracted.failed)
    return result


def uploads_batch(runs: Sequence[Run], files: Sequence[tuple[str, bytes]], engine=None,
                  **options) -> BatchResult:
    """:func:`predict_batch` on uploaded files (name, bytes): written to a temporary folder
    deleted afterwards, each named as uploaded; bounded by :data:`MAX_IMAGES` and
    :data:`MAX_TOTAL_BYTES`."""
    import tempfile

    if len(files) > MAX_IMAGES:
        raise BatchError(f"{len(files)} files uploaded; at most {MAX_IMAGES} are predicted at "
                         "once")
    total = sum(len(data) for _, data in files)
    if total > MAX_TOTAL_BYTES:
        raise BatchError(f"the files take {total / 1e6:.0f} MB; at most "
                         f"{MAX_TOTAL_BYTES / 1e6:.0f} MB are predicted at once")
    with tempfile.TemporaryDirectory(prefix="xrcompare-batch-") as folder:
        items = []
        for number, (name, data) in enumerate(files):
            # the uploaded name is shown, never used as a path: files are numbered here
            target = Path(folder) / f"{number:05d}{Path(name).suffix.lower()[:8]}"
            target.write_bytes(data)
            items.append(BatchItem(Path(name).name or f"file {number + 1}", target))
        return predict_batch(runs, items, engine, **options)


def table_lines(result: BatchResult) -> list[str]:
    """The table as the CLI prints it: one line per row."""
    labels = result.labels
    width = max(12, *(len(label) + 2 for label in labels))
    lines = ["predicted".rjust(12) + "".join(label.rjust(width) for label in labels)
             + "  image"]
    many_runs = result.table["run"].replace("", np.nan).dropna().nunique() > 1
    for row in result.table.to_dict("records"):
        name = f"{row['image']}" + (f"  [{row['run']}]" if many_runs and row["run"] else "")
        if row["predicted"] is None or pd.isna(row["predicted"]):
            lines.append(f"{'–':>12}" + "".join(f"{'':>{width}}" for _ in labels)
                         + f"  {name}  ({row['note']})")
            continue
        values = "".join(f"{row[label]:>{width}.3f}" if pd.notna(row.get(label)) else
                         f"{'–':>{width}}" for label in labels)
        note = f"  ({row['note']})" if row["note"] else ""
        lines.append(f"{row['predicted']:>12}{values}  {name}{note}")
    return lines


def batch_request(runs: Sequence[Run], engine, *, files: Sequence[tuple[str, bytes]] = (),
                  progress: Callable[[dict], None] | None = None) -> BatchResult:
    """One batch asked for in the app: uploaded ``files`` (name, bytes), or a single .zip
    among them, through ``runs`` on the server's ``engine``, each chunk holding one of the
    server-wide work slots (:mod:`xrcompare.limits`). ``progress`` gets ``{"phase":
    "waiting"}`` while every slot is busy, ``{"phase": "unpack"}``, then ``{"phase":
    "predict", "done", "total"}`` after each chunk."""
    from xrcompare import limits

    def tell(event: dict) -> None:
        if progress is not None:
            progress(event)

    def hold():
        return limits.work_slot(on_wait=lambda: tell({"phase": "waiting"}))

    def step(done: int, total: int) -> None:
        tell({"phase": "predict", "done": done, "total": total})

    archives = [name for name, _ in files if name.lower().endswith(".zip")]
    if archives and len(files) > 1:
        raise BatchError("upload either one .zip or image files, not both (found "
                         f"{len(archives)} .zip among {len(files)} files)")
    if not files:
        raise BatchError("no files uploaded")
    if archives:
        tell({"phase": "unpack"})
        name, data = files[0]
        return predict_archive(runs, data, name, engine, hold=hold, progress=step)
    return uploads_batch(runs, files, engine, hold=hold, progress=step)


def shown_table(result: BatchResult, titles: dict[str, str]) -> pd.DataFrame:
    """The table with each run's shown name beside its id (for a page)."""
    table = result.table.copy()
    table.insert(1, "model", [titles.get(run_id, run_id) if run_id else "–"
                              for run_id in table["run"]])
    return table
