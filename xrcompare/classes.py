"""Class names: what a class folder may be called, and which class is the positive one.

A dataset is any folder with two or more class sub-folders; a class is named by its folder,
in lower case (``NORMAL/`` is ``normal``). A run records its classes (sorted) and its
positive class: the class that sensitivity, specificity, thresholds and the trade-off page
treat as "positive", every other class together being "negative".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: The classes of the shipped three-class runs (and of runs that recorded none).
THREE_CLASSES = ("covid", "normal", "pneumonia")
#: The positive class when a run names none and the class is present.
DEFAULT_POSITIVE = "covid"
#: What a class name may hold (it becomes a predictions.csv column ``prob_<name>``).
CLASS_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


def class_name(folder_name: str) -> str | None:
    """The class a folder called ``folder_name`` holds (its name in lower case), or None for
    a hidden folder (``.git``, ``__MACOSX``) or a name that is not a class name."""
    lowered = str(folder_name).strip().lower()
    return lowered if CLASS_NAME.fullmatch(lowered) else None


def default_positive(labels: Sequence[str]) -> str:
    """``covid`` when it is one of ``labels``, else the first class in sorted order."""
    labels = list(labels)
    if not labels:
        raise ValueError("no classes to choose a positive class from")
    return DEFAULT_POSITIVE if DEFAULT_POSITIVE in labels else sorted(labels)[0]


def choose_positive(positive: str | None, labels: Sequence[str]) -> str:
    """The positive class asked for (``--positive``), checked against ``labels``, else
    :func:`default_positive`; ValueError (one line) for a name that is not a class."""
    if positive in (None, ""):
        return default_positive(labels)
    name = str(positive).strip().lower()
    if name not in labels:
        raise ValueError(f"--positive {positive} is not a class of this dataset (its classes: "
                         f"{', '.join(labels)})")
    return name
