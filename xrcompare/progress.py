"""Training progress: the event schema, a file writer and reader, the summary a page shows,
and the time left.

:func:`xrcompare.experiment.train_runs` reports its work as events (dicts) to a progress hook.
The CLI prints them, and with ``--progress-file`` also appends them to a file through
:func:`progress_file_writer`; the app's training jobs read that file back with
:func:`read_progress` and show :func:`summarize_progress`.

Event schema (``progress.jsonl``: one JSON object per line). Every line has ``time`` (Unix
seconds, added by the writer) and ``phase``; all but ``scan`` and ``done`` also carry
``backbone``, ``backbone_index`` (1-based) and ``backbones`` (how many in the job)::

    {"phase": "scan", "what": <dataset folder, or what the scan is doing>}
    {"phase": "warning", "what": <one sentence>}
    {"phase": "load_backbone"}
    {"phase": "extract", "what": "dataset" | "augmented views" | "held-out <name>",
     "done": int, "total": int, "cached": int}
    {"phase": "train", "epoch": int, "epochs": int, "metrics": {"loss", "accuracy",
     "val_loss", "val_accuracy"}, "best_epoch": int, "fold": int, "folds": int,
     "selected_on": "val" | "test"}
    {"phase": "evaluate", "fold": int, "folds": int}
    {"phase": "heldout", "what": <held-out folder name>}
    {"phase": "write"}
    {"phase": "written", "run": <run folder>}
    {"phase": "done", "runs": [<run folder>, ...]}

One cost model serves both the fraction done and the time left (:func:`phase_costs`): per
backbone, loading the base, extracting features (every image once, augmented views for the
training images), training the head (epochs × folds), evaluating, the held-out folders and
writing. Extraction scales with the backbone's real input area (an Xception at 299 px costs
(299/224)² of a 224-px image). The fraction uses the model's default rates, so the bar only
moves forward; the time left replaces them with the rates this job measured.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

#: The file a training job's events are appended to.
PROGRESS_FILE = "progress.jsonl"

#: Default rates, replaced by measured ones in :func:`time_left`: seconds to extract one
#: 224-px image on a CPU, seconds per epoch per training image (the head on cached features),
#: and fixed seconds for loading a base, evaluating and writing a run.
SECONDS_PER_IMAGE_224 = 0.05
SECONDS_PER_EPOCH_PER_IMAGE = 0.001
LOAD_SECONDS = 3.0
EVALUATE_SECONDS = 1.0
WRITE_SECONDS = 1.0
#: The input size the per-image rate refers to.
REFERENCE_SIZE = 224
#: Extraction rates are measured once this many images were computed over this long.
MEASURE_MIN_IMAGES = 8
MEASURE_MIN_SECONDS = 0.5

PHASES = ("load", "extract", "train", "evaluate", "heldout", "write")
ACTIVE_STATES = ("starting", "running")


# --------------------------------------------------------------------------- writing, reading


def progress_file_writer(path: str | Path) -> Callable[[dict], None]:
    """A progress hook that appends one JSON line per event (flushed, so readers see it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(event: dict) -> None:
        line = json.dumps({"time": time.time(), **event}, default=str)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    return write


def read_progress(folder: str | Path) -> list[dict]:
    """The events so far of a job folder's progress file (or of that file itself); a
    half-written last line and anything that is not a JSON object are skipped."""
    path = Path(folder)
    if path.is_dir() or not path.name.endswith(".jsonl"):
        path = path / PROGRESS_FILE
    events = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return events
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def written_runs(events: list[dict]) -> list[str]:
    """The run folders the events say were written."""
    return [event["run"] for event in events if event.get("phase") == "written"
            and event.get("run")]


def finished(events: list[dict]) -> bool:
    """Whether the events end the job normally (a ``done`` event)."""
    return any(event.get("phase") == "done" for event in events)


# --------------------------------------------------------------------------- the cost model


def _int(value, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def input_size(plan: dict, backbone: str | None) -> int:
    """The input size a backbone of the plan trains at (the plan's per-backbone sizes, else
    its one size, else the registry's default, else 224)."""
    sizes = plan.get("image_sizes") or {}
    if backbone in sizes:
        return _int(sizes[backbone], REFERENCE_SIZE) or REFERENCE_SIZE
    if plan.get("image_size"):
        return _int(plan["image_size"], REFERENCE_SIZE)
    if backbone:
        from xrcompare.backbones import get_backbone

        try:
            return get_backbone(backbone).default_size
        except ValueError:
            pass
    return REFERENCE_SIZE


def area_factor(plan: dict, backbone: str | None) -> float:
    """How much one image of ``backbone`` costs against a 224-px image (its input area)."""
    return (input_size(plan, backbone) / REFERENCE_SIZE) ** 2


def train_share(plan: dict) -> float:
    """The share of a dataset's images that get augmented views (the training images): all
    of them under cross-validation (every image trains some fold), else what the fractions
    leave for training."""
    if plan.get("folds"):
        return 1.0
    test = float(plan.get("test_fraction") or 0.2)
    val = float(plan.get("val_fraction") or 0.15) if plan.get("select_on", "val") == "val" else 0
    return max(0.0, (1 - test) * (1 - val))


def phase_costs(plan: dict, backbone: str | None, *, per_image_224: float = SECONDS_PER_IMAGE_224,
                per_epoch: float | None = None) -> dict[str, float]:
    """Seconds per phase of one backbone of the plan (see the module's cost model)."""
    images = max(1, _int(plan.get("images"), 0) or 100)
    views = _int(plan.get("augment_views"))
    per_image = per_image_224 * area_factor(plan, backbone)
    if per_epoch is None:
        per_epoch = SECONDS_PER_EPOCH_PER_IMAGE * images * (1 + views)
    epochs = _int(plan.get("epochs"), 25) or 25
    folds = max(1, _int(plan.get("folds"), 1))
    return {"load": LOAD_SECONDS,
            "extract": images * (1 + views * train_share(plan)) * per_image,
            "train": epochs * folds * per_epoch,
            "evaluate": EVALUATE_SECONDS,
            "heldout": _int(plan.get("heldout_images")) * per_image,
            "write": WRITE_SECONDS}


def _backbones(plan: dict, events: list[dict]) -> list[str | None]:
    names = list(plan.get("backbones") or [])
    count = max([len(names)] + [_int(e.get("backbones")) for e in events]) or 1
    return (names + [None] * count)[:count]


def _position(event: dict, costs: dict[str, float]) -> float | None:
    """Seconds of one backbone's work done when ``event`` was reported (None: no change)."""
    phase = event.get("phase")
    before = {name: sum(costs[p] for p in PHASES[:index]) for index, name in enumerate(PHASES)}
    if phase == "load_backbone":
        return 0.0
    if phase == "extract":
        share = _int(event.get("done")) / max(1, _int(event.get("total"), 1) or 1)
        if str(event.get("what", "")).startswith("held-out"):
            return before["heldout"] + share * costs["heldout"]
        return before["extract"] + share * costs["extract"]
    if phase == "train":
        epochs = max(1, _int(event.get("epochs"), 1))
        folds = max(1, _int(event.get("folds"), 1))
        done = (_int(event.get("fold"), 1) - 1) * epochs + _int(event.get("epoch"))
        return before["train"] + done / (folds * epochs) * costs["train"]
    if phase == "evaluate":
        return before["evaluate"]
    if phase == "heldout":
        return before["heldout"]
    if phase == "write":
        return before["write"]
    if phase == "written":
        return sum(costs.values())
    return None


# --------------------------------------------------------------------------- the summary


def summarize_progress(events: list[dict], *, plan: dict | None = None,
                       state: str = "running", started: float | None = None,
                       finished: float | None = None, now: float | None = None) -> dict:
    """What the page shows from the progress events: a pure function of its inputs.

    Returns ``phase_text`` (a sentence), ``fraction`` (0–1), ``eta_seconds`` (None while
    too early to tell), ``elapsed`` (s), ``curve`` (one dict per epoch with backbone, fold,
    epoch and the Keras metrics), ``backbone``, ``backbone_index``, ``backbones`` and
    ``runs`` (run folders written so far).
    """
    plan = plan or {}
    now = time.time() if now is None else now
    names = _backbones(plan, events)
    costs = [phase_costs(plan, name) for name in names]
    total = sum(sum(cost.values()) for cost in costs)
    backbones = len(names)
    fraction, text = 0.0, "starting Python and TensorFlow"
    backbone, index, curve, runs = None, 0, [], []
    for event in events:
        phase = event.get("phase")
        if event.get("backbones"):
            backbones = _int(event["backbones"], backbones)
        if event.get("backbone_index"):
            backbone, index = event.get("backbone"), _int(event["backbone_index"])
        where = f" (backbone {index} of {backbones}: {backbone})" if backbone else ""
        done = None
        if phase == "scan":
            text = "reading images (listing the dataset)"
        elif phase == "load_backbone":
            text = f"loading the ImageNet base{where}"
        elif phase == "extract":
            cached = f", {event['cached']} from the cache" if event.get("cached") else ""
            text = (f"extracting features for backbone {index} of {backbones} ({backbone}): "
                    f"{event.get('what', '')} {event.get('done', 0)}/{event.get('total', 0)}"
                    f"{cached}")
        elif phase == "train":
            folds = max(1, _int(event.get("folds"), 1))
            fold = _int(event.get("fold"), 1)
            fold_text = f", fold {fold} of {folds}" if folds > 1 else ""
            text = (f"training epoch {_int(event.get('epoch'))} of "
                    f"{max(1, _int(event.get('epochs'), 1))}{fold_text}{where}")
            metrics = event.get("metrics") or {}
            curve.append({"backbone": backbone, "fold": fold, "epoch": _int(event.get("epoch")),
                          **{key: value for key, value in metrics.items()
                             if isinstance(value, (int, float))}})
        elif phase == "evaluate":
            text = f"evaluating on the test split{where}"
        elif phase == "heldout":
            text = f"predicting the held-out folder {event.get('what', '')}{where}"
        elif phase == "write":
            text = f"writing the run folder{where}"
        elif phase == "written":
            text = f"run written{where}"
            if event.get("run"):
                runs.append(event["run"])
        elif phase == "done":
            text = "done"
            done = total
        if index and phase not in ("done", None) and 1 <= index <= len(costs):
            position = _position(event, costs[index - 1])
            if position is not None:
                done = sum(sum(cost.values()) for cost in costs[:index - 1]) + position
        if done is not None and total > 0:
            fraction = max(fraction, min(1.0, done / total))
    end = finished if finished else now
    elapsed = max(0.0, end - started) if started is not None else 0.0
    eta = time_left(events, plan, now=end) if state in ACTIVE_STATES else None
    if state == "done":
        fraction, text = 1.0, "done"
    elif state in ("failed", "cancelled", "stale"):
        text = {"failed": "failed", "cancelled": "cancelled",
                "stale": "ended without an outcome (stale)"}[state] + f" during: {text}"
    return {"phase_text": text, "fraction": fraction, "eta_seconds": eta, "elapsed": elapsed,
            "curve": curve, "backbone": backbone, "backbone_index": index,
            "backbones": backbones, "runs": runs}


def measured_rates(events: list[dict], plan: dict) -> tuple[float | None, float | None]:
    """(seconds per 224-px image extracted, seconds per epoch) measured from the events;
    None for a rate not measured yet. Extraction passes of several backbones are pooled by
    their input area; epochs by the median of the last few gaps within one backbone and
    fold."""
    passes: dict[tuple, list[dict]] = {}
    epochs_seen: list[dict] = []
    for event in events:
        if not isinstance(event.get("time"), (int, float)):
            continue
        if event.get("phase") == "extract":
            passes.setdefault((event.get("backbone_index"), event.get("what")), []).append(event)
        elif event.get("phase") == "train":
            epochs_seen.append(event)
    computed, seconds = 0.0, 0.0
    for items in passes.values():
        images = _int(items[-1].get("done")) - _int(items[0].get("done"))
        computed += images * area_factor(plan, items[-1].get("backbone"))
        seconds += items[-1]["time"] - items[0]["time"]
    per_image = (seconds / computed if computed >= MEASURE_MIN_IMAGES
                 and seconds > MEASURE_MIN_SECONDS else None)
    gaps = [b["time"] - a["time"] for a, b in zip(epochs_seen, epochs_seen[1:], strict=False)
            if (a.get("backbone_index"), a.get("fold")) == (b.get("backbone_index"),
                                                              b.get("fold"))]
    per_epoch = None
    if gaps:
        recent = sorted(gaps[-9:])
        per_epoch = recent[len(recent) // 2]
    return per_image, per_epoch


def time_left(events: list[dict], plan: dict, *, now: float) -> float | None:
    """Seconds left: the cost model of what remains (this backbone's rest, then every later
    backbone), with the rates this job measured in place of the defaults. None before the
    first event, 0 once done. Early stopping can only make it shorter."""
    timed = [e for e in events if isinstance(e.get("time"), (int, float))]
    if not timed:
        return None
    last = timed[-1]
    if last.get("phase") == "done":
        return 0.0
    per_image, per_epoch = measured_rates(timed, plan)
    names = _backbones(plan, timed)
    costs = [phase_costs(plan, name, per_image_224=per_image or SECONDS_PER_IMAGE_224,
                         per_epoch=per_epoch) for name in names]
    index = _int(last.get("backbone_index"))
    if not index or index > len(costs):  # scan: nothing of any backbone done yet
        left = sum(sum(cost.values()) for cost in costs)
    else:
        current = costs[index - 1]
        position = _position(last, current)
        if position is None:
            position = 0.0
        if last.get("phase") == "extract":  # what is left of this pass, at the measured rate
            rest = _int(last.get("total")) - _int(last.get("done"))
            what = str(last.get("what", ""))
            step = (current["heldout"] / max(1, _int(plan.get("heldout_images"), 1))
                    if what.startswith("held-out") else
                    (per_image or SECONDS_PER_IMAGE_224) * area_factor(plan, names[index - 1]))
            following = ("write" if what.startswith("held-out") else
                         "train" if what != "dataset" or not _int(plan.get("augment_views"))
                         else None)
            if following is None:  # the augmented views still come after the dataset pass
                views = current["extract"] - _int(plan.get("images")) * step
                left = rest * step + max(0.0, views) + sum(
                    current[p] for p in PHASES[PHASES.index("train"):])
            else:
                left = rest * step + sum(current[p] for p in PHASES[PHASES.index(following):])
        elif last.get("phase") == "train":
            epochs = max(1, _int(last.get("epochs"), 1))
            folds = max(1, _int(last.get("folds"), 1))
            remaining = epochs * folds - ((_int(last.get("fold"), 1) - 1) * epochs
                                          + _int(last.get("epoch")))
            epoch_seconds = current["train"] / max(1, epochs * folds)
            left = remaining * epoch_seconds + sum(
                current[p] for p in PHASES[PHASES.index("evaluate"):])
        else:
            left = max(0.0, sum(current.values()) - position)
        left += sum(sum(cost.values()) for cost in costs[index:])
    return max(0.0, left - (now - last["time"]))
