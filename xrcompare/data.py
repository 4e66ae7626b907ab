"""Datasets: folder layout, manifest, patient ids and patient-grouped splits.

A dataset is a folder with one sub-folder per class, two classes at least to train on. A
class folder is a sub-folder holding image files; its class is its name in lower case
(:func:`xrcompare.classes.class_name`), so the Kaggle test split's ``NORMAL/`` and
``PNEUMONIA/`` are ``normal`` and ``pneumonia``. A held-out folder may hold only some of a
run's classes.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xrcompare import paths
from xrcompare.classes import class_name
from xrcompare.errors import one_line
from xrcompare.imaging import IMAGE_SUFFIXES
from xrcompare.paths import DATA_ROOT_VARIABLE

MANIFEST_NAME = "manifest.csv"

#: The patient ids Kermany / Kaggle chest X-ray file names carry, most specific first.
PATIENT_ID_CORES = (r"person\d+", r"NORMAL2-IM-\d+", r"IM-\d+")
#: Known file-name patterns that carry a patient id (``person`` ids end with ``_``).
PATIENT_PATTERNS = tuple(
    re.compile(rf"(?P<id>{core})" + ("_" if core.startswith("person") else ""), re.IGNORECASE)
    for core in PATIENT_ID_CORES)
#: The prefix of the one-id-per-image fallback (an image whose patient is unknown).
IMAGE_ID_PREFIX = "image:"

SPLIT_NAMES = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset folder that cannot be used, with a one-line reason."""


# --------------------------------------------------------------------------- confinement


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path``, once symlinks and ``..`` are resolved, lies in ``folder`` (the
    folder itself included)."""
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return False


def path_inside(folder: str | Path, relative: str | Path,
                also: str | Path | None = None) -> Path | None:
    """``folder / relative`` if it stays inside ``folder`` once resolved, else None.

    An absolute ``relative``, ``..`` parts or a symlink leading out are all refused, except a
    symlink whose target lies inside ``also`` (the data root: a derived dataset's links,
    :mod:`xrcompare.derive`), when ``relative`` itself has no ``..`` part.
    """
    text = str(relative)
    if not text or "\x00" in text or Path(text).is_absolute():
        return None
    candidate = Path(folder) / text
    if is_inside(candidate, folder):
        return candidate
    if also is not None and ".." not in Path(text).parts and is_inside(candidate, also):
        return candidate
    return None


def list_datasets(data_root: str | Path | None = None) -> list[str]:
    """Names of the folders directly under the data root that hold class sub-folders and
    that :func:`resolve_data_folder` accepts (a symlink leading out of the root is not
    offered)."""
    root = Path(data_root) if data_root else paths.data_root()
    if not root.is_dir():
        return []
    return sorted(child.name for child in root.iterdir()
                  if not child.name.startswith(".") and child.is_dir()
                  and is_inside(child, root) and _looks_like_dataset(child))


def _looks_like_dataset(folder: Path) -> bool:
    """Class sub-folders, none of them a link out of the folder (as scan_dataset demands)."""
    try:
        classes = [child for child in folder.iterdir() if _is_class_folder(child)]
    except OSError:
        return False
    return bool(classes) and all(is_inside(child, folder) for child in classes)


def resolve_data_folder(text: str | Path, data_root: str | Path | None = None) -> Path:
    """The dataset folder for a listed name or a typed path, kept inside the data root.

    Rule: a relative path is taken from the data root; any path, once symlinks are
    resolved, must lie inside the data root (the root itself included). Anything else is
    refused with :class:`DatasetError`, so a browser user can never make the app read
    elsewhere on the machine.
    """
    root = Path(data_root) if data_root else paths.data_root()
    text = str(text).strip()
    if not text:
        raise DatasetError("choose a dataset folder")
    if "\x00" in text:
        raise DatasetError("the folder name contains a NUL character")
    if not root.is_dir():
        raise DatasetError(f"the data root {root} does not exist; set {DATA_ROOT_VARIABLE} "
                           "to the folder that holds your datasets")
    root = root.resolve()
    candidate = Path(text).expanduser()
    folder = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not folder.is_relative_to(root):
        raise DatasetError(f"{text} is outside the data root {root}; only folders inside it "
                           f"can be used (set {DATA_ROOT_VARIABLE} to use another root)")
    return folder


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: str
    patient_id: str
    patient_id_source: str  # "manifest", "filename" or "image"


@dataclass
class Dataset:
    root: Path
    records: list[ImageRecord]
    class_folders: dict[str, str]
    manifest_path: Path | None = None
    ignored_files: list[str] = field(default_factory=list)
    #: Why a manifest.csv that was found gave no patient ids (None when it did or none was
    #: found): the split then groups by file name or image, and a patient may be split.
    manifest_problem: str | None = None
    #: Near-duplicate images found across patient ids and merged into one group each
    #: (see :func:`group_near_duplicates`): {"paths", "patients", "group", "score"}.
    near_duplicates: list[dict] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return [record.label for record in self.records]

    @property
    def groups(self) -> list[str]:
        return [record.patient_id for record in self.records]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {label: counts[label] for label in sorted(counts) if counts[label]}

    @property
    def classes(self) -> list[str]:
        """The classes of this folder's class folders, sorted (a run's output order)."""
        return sorted(self.class_folders)

    def patient_id_sources(self) -> dict[str, int]:
        return dict(Counter(record.patient_id_source for record in self.records))

    def summary(self) -> dict:
        return {
            "folder": str(self.root),
            "images": len(self.records),
            "patients": len(set(self.groups)),
            "class_counts": self.class_counts(),
            "class_folders": self.class_folders,
            "patient_id_sources": self.patient_id_sources(),
            "manifest": str(self.manifest_path) if self.manifest_path else None,
            "manifest_problem": self.manifest_problem,
            "ignored_files": self.ignored_files,
            "near_duplicates": self.near_duplicates,
        }

    def check_trainable(self) -> None:
        """Raise :class:`DatasetError` unless at least two classes hold images: one class
        would train a head that is always right and report accuracy 1.000."""
        counts = self.class_counts()
        if len(counts) < 2:
            found = ", ".join(f"{label} ({count} images)" for label, count in counts.items())
            raise DatasetError(f"{self.root} has images of only one class ({found}); training "
                               "needs at least two classes with images")


def _find_manifest(root: Path) -> Path | None:
    for folder in (root, *root.parents[:2]):
        candidate = folder / MANIFEST_NAME
        if candidate.is_file():
            return candidate
    return None


MANIFEST_FALLBACK = ("patient ids come from file names or one per image instead, so images "
                     "of one patient may land in different splits")


def _read_manifest(manifest: Path) -> tuple[dict[Path, str], str | None]:
    """(resolved image path → patient id, problem) from a manifest with path,patient_id
    columns; the problem is one sentence when the file gives no ids at all."""
    patient_ids: dict[Path, str] = {}
    try:
        with manifest.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = [str(name).strip() for name in (reader.fieldnames or [])]
            missing = [name for name in ("path", "patient_id") if name not in columns]
            if missing:
                found = ", ".join(columns[:6]) or "no header"
                return {}, (f"{manifest} was ignored: it lacks the column"
                            f"{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                            f"(found: {found}); {MANIFEST_FALLBACK}")
            for row in reader:
                if row.get("path") and row.get("patient_id"):
                    patient_ids[(manifest.parent / row["path"]).resolve()] = row["patient_id"]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        reason = getattr(error, "strerror", None) or one_line(error, 120)
        return {}, f"{manifest} was ignored: it cannot be read ({reason}); {MANIFEST_FALLBACK}"
    return patient_ids, None


def patient_id_from_filename(name: str) -> str | None:
    for pattern in PATIENT_PATTERNS:
        match = pattern.search(name)
        if match:
            identifier = match.group("id")
            return identifier.lower() if identifier.lower().startswith("person") \
                else identifier.upper()
    return None


def match_class_folder(name: str) -> str | None:
    """The class a folder of this name holds (its name in lower case), None for a hidden
    folder or a name that cannot be a class (see :func:`xrcompare.classes.class_name`)."""
    return class_name(name)


def _holds_images(folder: Path) -> bool:
    try:
        return any(child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES
                   and not child.name.startswith(".") for child in folder.iterdir())
    except OSError:
        return False


def _is_class_folder(child: Path) -> bool:
    """A class folder: a sub-folder with a class name holding image files directly (a folder
    of datasets, such as the data root, is therefore not a dataset)."""
    return child.is_dir() and match_class_folder(child.name) is not None \
        and _holds_images(child)


def _is_named_class_folder(child: Path) -> bool:
    """A sub-folder with a class name holding files, none of them images (for the "hold no
    images" message; an empty folder is no class at all)."""
    if not child.is_dir() or match_class_folder(child.name) is None:
        return False
    try:
        return any(path.is_file() for path in child.rglob("*"))
    except OSError:
        return False


def scan_dataset(root: str | Path, *, use_manifest: bool = True) -> Dataset:
    """List a dataset folder's images with their labels and patient ids.

    Raises :class:`DatasetError` with one line saying what was expected when the folder
    does not exist or holds no class folders with images.
    """
    root = Path(root).expanduser()
    expected = (f"expected one sub-folder per class (covid/, normal/, ... any names, two "
                f"classes at least) holding {'/'.join(IMAGE_SUFFIXES)} images")
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist; {expected}")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; {expected}")
    class_folders: dict[str, str] = {}
    for child in sorted(root.iterdir()):
        if not _is_class_folder(child):
            if (child.is_dir() and not child.name.startswith((".", "_"))
                    and match_class_folder(child.name) is None and _holds_images(child)):
                raise DatasetError(f"{root} has images in {child.name!r}, which cannot be a "
                                   "class name: use letters, digits, '_' and '-' (up to 40)")
            continue
        label = match_class_folder(child.name)
        if not is_inside(child, root):
            raise DatasetError(f"class folder {child.name} in {root} is a link to "
                               f"{child.resolve()}, outside the dataset folder; copy the "
                               "images into the dataset folder instead")
        if label in class_folders:
            raise DatasetError(f"{root} has two folders for class {label!r}: "
                               f"{class_folders[label]} and {child.name}")
        class_folders[label] = child.name
    if not class_folders:
        named = sorted(c.name for c in root.iterdir() if _is_named_class_folder(c))
        datasets = [name for name in named if _looks_like_dataset(root / name)]
        if datasets:
            raise DatasetError(f"{root} holds dataset folders ({', '.join(datasets[:6])}), not "
                               "class folders: give one of them")
        if named:
            raise DatasetError(f"the class folders in {root} ({', '.join(named[:6])}) hold no "
                               f"images; {expected}")
        found = ", ".join(sorted(c.name for c in root.iterdir() if c.is_dir())[:6]) or "none"
        raise DatasetError(f"no class folders in {root} (found: {found}); {expected}")

    data_root = paths.data_root()
    manifest = _find_manifest(root) if use_manifest else None
    manifest_ids, manifest_problem = _read_manifest(manifest) if manifest else ({}, None)
    records: list[ImageRecord] = []
    ignored: list[str] = []
    for label in sorted(class_folders):
        for path in sorted((root / class_folders[label]).rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                ignored.append(str(path.relative_to(root)))
                continue
            # A symlinked image leading out of the folder is refused, unless it leads into the
            # data root (a derived dataset's links: xrcompare.derive).
            if not is_inside(path, root) and not is_inside(path, data_root):
                ignored.append(f"{path.relative_to(root)} (a link outside the dataset folder)")
                continue
            patient_id = manifest_ids.get(path.resolve())
            source = "manifest"
            if patient_id is None:
                from_name = patient_id_from_filename(path.name)
                if from_name:
                    patient_id, source = from_name, "filename"
                else:
                    patient_id, source = f"{IMAGE_ID_PREFIX}{path.relative_to(root)}", "image"
            records.append(ImageRecord(path, label, patient_id, source))
    if not records:
        raise DatasetError(f"the class folders in {root} hold no images; {expected}")
    return Dataset(root, records, class_folders,
                   manifest if manifest_ids else None, ignored, manifest_problem)


def check_heldout_classes(heldout: Dataset, classes: Sequence[str]) -> None:
    """A held-out folder may hold some of a run's classes, never one the run never saw:
    :class:`DatasetError` (one line) otherwise."""
    unseen = [label for label in heldout.classes if label not in classes]
    if unseen:
        raise DatasetError(f"held-out folder {heldout.root.name} has class "
                           f"{', '.join(unseen)}, which the run never saw (its classes: "
                           f"{', '.join(classes)}); leave that folder out or rename it")


# --------------------------------------------------------------------------- patient groups


def merge_groups(groups: Sequence[str], pairs: Iterable[tuple]) -> list[str]:
    """Group ids after joining the groups of each index pair ``(i, j, ...)`` (union-find).

    A merged group is named by its members' ids, sorted and joined with ``+`` (as the shared
    manifest names the Cohen cases it merged), so it stays readable and deterministic. Used
    for near-duplicate images (:func:`group_near_duplicates`) and for images that share a
    patient in either of two runs (:func:`xrcompare.compare.align_runs`).
    """
    parent = {group: group for group in groups}

    def root(group: str) -> str:
        while parent[group] != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    for i, j, *_ in pairs:
        a, b = root(groups[i]), root(groups[j])
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for group in parent:
        members.setdefault(root(group), []).append(group)
    names = {top: "+".join(sorted(items)) for top, items in members.items()}
    return [names[root(group)] for group in groups]


def patient_keys(patient_id: str) -> set[str]:
    """The keys under which a patient id is compared across datasets: every part of a merged
    id (``a+b``), a Kermany id reduced to its core (the manifest's ``kermany-person1044`` and
    the file name's ``person1044`` are one patient), lower case. A per-image id (patient
    unknown) has none: it can never match."""
    keys = set()
    for part in str(patient_id).split("+"):
        part = part.strip()
        if not part or part.startswith(IMAGE_ID_PREFIX) or part.lower() == "nan":
            continue
        for core in PATIENT_ID_CORES:
            match = re.search(core, part, re.IGNORECASE)
            if match:
                part = match.group(0)
                break
        keys.add(part.lower())
    return keys


def patient_overlap(own_patients: Iterable[str], patients: Sequence[str]
                    ) -> tuple[dict, list[bool]]:
    """Which images of a folder (``patients``: one id per image) belong to a patient that a
    run's own data also holds (``own_patients``: every patient id of the run's data folder,
    train, validation and test alike, since the run's whole dataset shaped its selection).

    Returns ``({"patients": distinct ids shared, "images": images of them, "ids": [...]},
    one flag per image)``; ids are compared by :func:`patient_keys`.
    """
    own: set[str] = set()
    for patient in own_patients:
        own |= patient_keys(patient)
    shared = [bool(patient_keys(patient) & own) for patient in patients]
    ids = sorted({str(patient) for patient, hit in zip(patients, shared, strict=True) if hit})
    return {"patients": len(ids), "images": int(sum(shared)), "ids": ids}, shared


# --------------------------------------------------------------------------- near-duplicates


def group_near_duplicates(dataset: Dataset, threshold: float | None = None) -> list[dict]:
    """Merge the patient ids of near-duplicate images (the same radiograph under two ids).

    Every image is compared with every other by small, crop- and contrast-tolerant thumbnails
    (:mod:`xrcompare.near_duplicates`); each near-duplicate pair's patients become one group,
    so a patient-wise split can never put the two copies on both sides. Records are updated in
    place (their ``patient_id`` becomes the merged group's id, ``patient_id_source`` gains
    ``+near-duplicate``) and the merged pairs are returned and kept in
    ``dataset.near_duplicates``. Unreadable images are left alone (training skips them).
    """
    from dataclasses import replace

    from xrcompare import near_duplicates
    from xrcompare.imaging import ImageError, read_gray

    grays = []
    for record in dataset.records:
        try:
            grays.append(read_gray(record.path))
        except ImageError:
            grays.append(None)
    pairs = near_duplicates.find_near_duplicates(
        grays, near_duplicates.THRESHOLD if threshold is None else threshold)
    del grays
    before = dataset.groups
    pairs = [(i, j, score) for i, j, score in pairs if before[i] != before[j]]
    after = merge_groups(before, pairs)
    found = []
    for i, j, score in pairs:
        found.append({"paths": [str(dataset.records[k].path.relative_to(dataset.root))
                                for k in (i, j)],
                      "patients": [before[i], before[j]], "group": after[i], "score": score})
    for index, (old, new) in enumerate(zip(before, after, strict=True)):
        if old != new:
            record = dataset.records[index]
            dataset.records[index] = replace(
                record, patient_id=new,
                patient_id_source=f"{record.patient_id_source}+near-duplicate")
    dataset.near_duplicates = found
    return found


# --------------------------------------------------------------------------- splits


def _check_splittable(labels: np.ndarray, groups: np.ndarray, parts: int) -> None:
    for label in np.unique(labels):
        patients = len(set(groups[labels == label]))
        if patients < parts:
            raise DatasetError(
                f"class '{label}' has images from only {patients} patient(s); this "
                f"patient-wise split needs at least {parts} per class (use smaller "
                "validation/test fractions or fewer folds, or add images)")


def _stratified_group_folds(labels, groups, n_splits: int, seed: int):
    _check_splittable(labels, groups, n_splits)
    from sklearn.model_selection import StratifiedGroupKFold  # lazily: a second to import

    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def split_by_patient(dataset: Dataset, *, val_fraction: float | None = 0.15,
                     test_fraction: float = 0.2, seed: int = 42) -> dict[str, list[int]]:
    """Stratified train / val / test indices with no patient in two splits.

    Fractions are approximated with stratified group folds (``1/fraction`` folds).
    ``val_fraction=None`` makes no validation split (``val`` is empty; the same test split).
    """
    if not (0 < test_fraction < 0.5 and (val_fraction is None or 0 < val_fraction < 0.5)):
        raise ValueError("val_fraction and test_fraction must be between 0 and 0.5")
    dataset.check_trainable()
    labels = np.asarray(dataset.labels)
    groups = np.asarray(dataset.groups)
    test_folds = max(2, round(1 / test_fraction))
    rest, test = _stratified_group_folds(labels, groups, test_folds, seed)[0]
    if val_fraction is None:
        splits = {"train": sorted(rest.tolist()), "val": [], "test": sorted(test.tolist())}
    else:
        val_folds = max(2, round((1 - test_fraction) / val_fraction))
        sub_train, sub_val = _stratified_group_folds(labels[rest], groups[rest], val_folds,
                                                     seed)[0]
        splits = {"train": sorted(rest[sub_train].tolist()),
                  "val": sorted(rest[sub_val].tolist()), "test": sorted(test.tolist())}
    check_no_patient_overlap(dataset, splits)
    return splits


def split_by_image(dataset: Dataset, *, val_fraction: float | None = 0.15,
                   test_fraction: float = 0.2, seed: int = 42) -> dict[str, list[int]]:
    """Stratified random train / val / test indices of IMAGES, patients ignored: the 2020
    blog's split (scikit-learn ``train_test_split(..., stratify=labels, random_state=seed)``).

    Images of one patient can land on both sides, so test figures are optimistic; kept only to
    reproduce that protocol. ``val_fraction=None`` makes no validation split.
    """
    from sklearn.model_selection import train_test_split

    if not (0 < test_fraction < 0.5 and (val_fraction is None or 0 < val_fraction < 0.5)):
        raise ValueError("val_fraction and test_fraction must be between 0 and 0.5")
    labels = np.asarray(dataset.labels)
    indices = np.arange(len(labels))
    parts = 2 if val_fraction is None else 3
    for label in np.unique(labels):
        if int(np.sum(labels == label)) < parts:
            raise DatasetError(f"class '{label}' has fewer than {parts} images; a stratified "
                               "image split needs at least one per split")
    try:
        rest, test = train_test_split(indices, test_size=test_fraction, stratify=labels,
                                      random_state=seed)
        if val_fraction is None:
            train, val = rest, np.array([], dtype=int)
        else:
            train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction),
                                          stratify=labels[rest], random_state=seed)
    except ValueError as error:  # too few images for the fractions asked
        raise DatasetError(f"cannot split {len(labels)} images by class with these "
                           f"fractions: {one_line(error, 160)}") from None
    return {"train": sorted(train.tolist()), "val": sorted(val.tolist()),
            "test": sorted(test.tolist())}


def kfold_by_patient(dataset: Dataset, folds: int, *, val_fraction: float = 0.15,
                     seed: int = 42) -> list[dict[str, list[int]]]:
    """Grouped stratified k-fold: each fold's test part, and a val part from its rest."""
    if folds < 2:
        raise ValueError("--folds must be at least 2")
    dataset.check_trainable()
    labels = np.asarray(dataset.labels)
    groups = np.asarray(dataset.groups)
    result = []
    val_folds = max(2, round(1 / val_fraction))
    for rest, test in _stratified_group_folds(labels, groups, folds, seed):
        sub_train, sub_val = _stratified_group_folds(labels[rest], groups[rest], val_folds,
                                                     seed)[0]
        splits = {"train": sorted(rest[sub_train].tolist()),
                  "val": sorted(rest[sub_val].tolist()), "test": sorted(test.tolist())}
        check_no_patient_overlap(dataset, splits)
        result.append(splits)
    return result


def check_no_patient_overlap(dataset: Dataset, splits: dict[str, list[int]]) -> None:
    seen: dict[str, str] = {}
    for name, indices in splits.items():
        for index in indices:
            patient = dataset.records[index].patient_id
            if seen.setdefault(patient, name) != name:
                raise RuntimeError(f"patient {patient} is in both {seen[patient]} and {name}")


def split_summary(dataset: Dataset, splits: dict[str, list[int]]) -> dict:
    summary = {}
    for name, indices in splits.items():
        labels = Counter(dataset.records[i].label for i in indices)
        summary[name] = {
            "images": len(indices),
            "patients": len({dataset.records[i].patient_id for i in indices}),
            "class_counts": {label: labels.get(label, 0) for label in dataset.classes},
        }
    return summary
