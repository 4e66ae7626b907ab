"""Training progress: the event schema, a file writer and reader, the summary a page shows,
and the time left, with rates measured on this machine.

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
    {"phase": "fine_tune", "epoch": int, "epochs": int, "metrics": {...}, "best_epoch": int,
     "selected_on": "val" | "test"}  (--fine-tune last-block: after the head, before evaluate)
    {"phase": "evaluate", "fold": int, "folds": int}
    {"phase": "heldout", "what": <held-out folder name>}
    {"phase": "write"}
    {"phase": "written", "run": <run folder>}
    {"phase": "done", "runs": [<run folder>, ...]}

One cost model serves both the fraction done and the time left. A job first starts Python and
Keras and lists its dataset (:func:`start_costs`); then, per backbone (:func:`phase_costs`), it
loads the base (the first backbone also looks for near-duplicate images), extracts features
(every image once, augmented views for the training images; images already in the feature
cache cost almost nothing), trains the head (epochs × folds), evaluates, predicts the held-out
folders and writes the run. Extraction is priced at the backbone's real input size.

Rates come, in this order, from what this job has measured so far, from the rates measured on
this machine by earlier jobs (``rates.json`` in the jobs folder: :func:`measure_job`,
:func:`update_rates`, :func:`plan_rates`, copied into a job's plan when it starts), and from
the defaults below. The fraction uses the plan's rates only, so the bar only moves forward.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

#: The file a training job's events are appended to.
PROGRESS_FILE = "progress.jsonl"

#: Default rates, used until this machine has measured its own (see :func:`plan_rates`):
#: seconds to extract one 224-px image on a CPU, to read one image's features back from the
#: cache, per epoch per training row (the head on cached features), and fixed seconds for
#: loading a base, evaluating and writing a run.
SECONDS_PER_IMAGE_224 = 0.05
SECONDS_PER_CACHED_IMAGE = 0.002
SECONDS_PER_EPOCH_PER_IMAGE = 0.001
LOAD_SECONDS = 3.0
EVALUATE_SECONDS = 1.0
WRITE_SECONDS = 1.0
#: Before any backbone: starting Python and Keras (until the first event), then listing the
#: dataset and its manifest (per image); the first backbone also compares every image with
#: every other for near-duplicates (per image) on a patient-wise split.
STARTUP_SECONDS = 8.0
SCAN_SECONDS_PER_IMAGE = 0.002
NEAR_DUPLICATE_SECONDS_PER_IMAGE = 0.005
#: The input size the per-image rate refers to.
REFERENCE_SIZE = 224
#: Extraction rates are measured once this many images were computed over this long.
MEASURE_MIN_IMAGES = 8
MEASURE_MIN_SECONDS = 0.5
#: The file in the jobs folder that keeps the rates measured by finished jobs, and how many
#: measurements of each rate it keeps (their median is used).
RATES_FILE = "rates.json"
RATES_KEPT = 5
#: Below this many seconds left, the page says "a few seconds left" rather than a number.
FEW_SECONDS = 5.0

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


def _rate(value) -> float | None:
    """A usable measured rate (a finite positive number), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


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


def _images(plan: dict) -> int:
    return max(1, _int(plan.get("images"), 0) or 100)


def _prior(plan: dict, backbone: str | None, key: str) -> float | None:
    """A rate this machine measured in earlier jobs, as the plan carries it."""
    rates = plan.get("rates") if isinstance(plan.get("rates"), dict) else {}
    if backbone is None:
        return _rate(rates.get(key))
    entry = (rates.get("backbones") or {}).get(backbone) or {}
    return _rate(entry.get(key)) if isinstance(entry, dict) else None


def start_costs(plan: dict) -> dict[str, float]:
    """Seconds before the first backbone: ``startup`` (Python and Keras, until the first
    event) and ``scan`` (listing the dataset and its manifest)."""
    return {"startup": _prior(plan, None, "startup_s") or STARTUP_SECONDS,
            "scan": _images(plan) * (_prior(plan, None, "scan_s_per_image")
                                     or SCAN_SECONDS_PER_IMAGE)}


def near_duplicate_seconds(plan: dict) -> float:
    """Seconds the first backbone spends comparing images for near-duplicates (a patient-wise
    split only)."""
    if plan.get("split", "patients") != "patients":
        return 0.0
    return _images(plan) * (_prior(plan, None, "near_dup_s_per_image")
                            or NEAR_DUPLICATE_SECONDS_PER_IMAGE)


def phase_costs(plan: dict, backbone: str | None, *, per_image_224: float | None = None,
                per_image: float | None = None, per_epoch: float | None = None,
                first: bool = False) -> dict[str, float]:
    """Seconds per phase of one backbone of the plan (see the module's cost model).

    ``per_image`` (seconds per computed image at this backbone's input size) or
    ``per_image_224`` (the same for a 224-px image, scaled by the input area) and
    ``per_epoch`` replace the plan's rates; ``first`` adds the near-duplicate search to the
    loading of the first backbone.
    """
    images = _images(plan)
    views = _int(plan.get("augment_views"))
    if per_image is None:
        per_image = (per_image_224 * area_factor(plan, backbone) if per_image_224 is not None
                     else _prior(plan, backbone, "per_image")
                     or SECONDS_PER_IMAGE_224 * area_factor(plan, backbone))
    if per_epoch is None:
        per_row = _prior(plan, backbone, "epoch_s_per_row") or SECONDS_PER_EPOCH_PER_IMAGE
        per_epoch = per_row * images * (1 + views)
    epochs = _int(plan.get("epochs"), 25) or 25
    folds = max(1, _int(plan.get("folds"), 1))
    cached = ((plan.get("cached") or {}).get(backbone or "") or {}) if isinstance(
        plan.get("cached"), dict) else {}
    share = train_share(plan)
    dataset_cached = min(images, _int(cached.get("dataset")))
    view_images = images * views * share
    views_cached = min(view_images, _int(cached.get("views")) * share)
    held = _int(plan.get("heldout_images"))
    held_cached = min(held, _int(cached.get("heldout")))
    load = (_prior(plan, backbone, "load_s") or LOAD_SECONDS) + (
        near_duplicate_seconds(plan) if first else 0.0)
    return {"load": load,
            "extract": ((images - dataset_cached + view_images - views_cached) * per_image
                        + (dataset_cached + views_cached) * SECONDS_PER_CACHED_IMAGE),
            "train": epochs * folds * per_epoch,
            "evaluate": EVALUATE_SECONDS,
            "heldout": (held - held_cached) * per_image + held_cached * SECONDS_PER_CACHED_IMAGE,
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


def format_duration(seconds: float | None) -> str:
    """"42 s", "3 min 05 s", "1 h 02 min"; "?" for None."""
    if seconds is None:
        return "?"
    seconds = int(round(max(0.0, seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def eta_text(eta_seconds: float | None, finishing: bool = False) -> str:
    """The time left in words: "about 1 min 05 s left (estimate)", "a few seconds left",
    "finishing…" once the work is done and only the outcome is being recorded; "" when there
    is nothing to say."""
    if finishing:
        return "finishing…"
    if eta_seconds is None:
        return ""
    if eta_seconds < FEW_SECONDS:
        return "a few seconds left"
    return f"about {format_duration(eta_seconds)} left (estimate)"


def _work_done(events: list[dict], backbones: int) -> bool:
    """Whether every backbone's run is written (or the job said done): what is left is the
    supervisor recording the outcome."""
    if any(event.get("phase") == "done" for event in events):
        return True
    written = {_int(e.get("backbone_index")) for e in events if e.get("phase") == "written"}
    return bool(written) and len(written) >= backbones


def summarize_progress(events: list[dict], *, plan: dict | None = None,
                       state: str = "running", started: float | None = None,
                       finished: float | None = None, now: float | None = None) -> dict:
    """What the page shows from the progress events: a pure function of its inputs.

    Returns ``phase_text`` (a sentence), ``fraction`` (0–1), ``eta_seconds`` (None when
    there is no estimate: before the start is known, once the work is done, after the end),
    ``eta_text`` (:func:`eta_text`), ``finishing`` (the work is done, the outcome not yet
    recorded), ``elapsed`` (s), ``curve`` (one dict per epoch with backbone, fold, epoch and
    the Keras metrics), ``backbone``, ``backbone_index``, ``backbones`` and ``runs`` (run
    folders written so far).
    """
    plan = plan or {}
    now = time.time() if now is None else now
    names = _backbones(plan, events)
    start = start_costs(plan)
    costs = [phase_costs(plan, name, first=number == 1)
             for number, name in enumerate(names, start=1)]
    total = sum(start.values()) + sum(sum(cost.values()) for cost in costs)
    backbones = len(names)
    fraction, text = 0.0, "starting Python and Keras"
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
            what = str(event.get("what", ""))
            text = (what[:1].lower() + what[1:] if index and what
                    else "reading images (listing the dataset)")
            if not index:
                done = start["startup"]
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
        elif phase == "fine_tune":
            text = (f"fine-tuning the last block: epoch {_int(event.get('epoch'))} of "
                    f"{max(1, _int(event.get('epochs'), 1))}{where}")
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
                done = (sum(start.values()) + sum(sum(cost.values()) for cost in
                                                  costs[:index - 1]) + position)
        if done is not None and total > 0:
            fraction = max(fraction, min(1.0, done / total))
    end = finished if finished else now
    elapsed = max(0.0, end - started) if started is not None else 0.0
    active = state in ACTIVE_STATES
    finishing = active and _work_done(events, backbones)
    eta = (time_left(events, plan, now=end, started=started)
           if active and not finishing else None)
    if finishing:
        text = "done; recording the outcome"
    if state == "done":
        fraction, text = 1.0, "done"
    elif state in ("failed", "cancelled", "stale"):
        text = {"failed": "failed", "cancelled": "cancelled",
                "stale": "ended without an outcome (stale)"}[state] + f" during: {text}"
    return {"phase_text": text, "fraction": fraction, "eta_seconds": eta,
            "eta_text": eta_text(eta, finishing) if active else "", "finishing": finishing,
            "elapsed": elapsed, "curve": curve, "backbone": backbone, "backbone_index": index,
            "backbones": backbones, "runs": runs}


# --------------------------------------------------------------------------- the time left


def measured_rates(events: list[dict], plan: dict) -> dict[int, dict[str, float]]:
    """What this job measured so far, per backbone index: ``per_image`` (seconds per image
    computed through the base, at that backbone's input size) once
    :data:`MEASURE_MIN_IMAGES` images took over :data:`MEASURE_MIN_SECONDS`, and
    ``per_epoch`` (the median of the last few gaps between epochs of one fold)."""
    passes: dict[tuple, list[dict]] = {}
    epochs_seen: dict[int, list[dict]] = {}
    for event in events:
        if not isinstance(event.get("time"), (int, float)) or not event.get("backbone_index"):
            continue
        number = _int(event["backbone_index"])
        if event.get("phase") == "extract":
            passes.setdefault((number, event.get("what")), []).append(event)
        elif event.get("phase") == "train":
            epochs_seen.setdefault(number, []).append(event)
    computed: dict[int, list[float]] = {}
    for (number, _), items in passes.items():
        images = _int(items[-1].get("done")) - _int(items[0].get("done"))
        totals = computed.setdefault(number, [0.0, 0.0])
        totals[0] += images
        totals[1] += items[-1]["time"] - items[0]["time"]
    rates: dict[int, dict[str, float]] = {}
    for number, (images, seconds) in computed.items():
        if images >= MEASURE_MIN_IMAGES and seconds > MEASURE_MIN_SECONDS:
            rates.setdefault(number, {})["per_image"] = seconds / images
    for number, seen in epochs_seen.items():
        gaps = [b["time"] - a["time"] for a, b in zip(seen, seen[1:], strict=False)
                if a.get("fold") == b.get("fold")]
        if gaps:
            recent = sorted(gaps[-9:])
            rates.setdefault(number, {})["per_epoch"] = recent[len(recent) // 2]
    return rates


def _job_costs(events: list[dict], plan: dict) -> list[dict[str, float]]:
    """Each backbone's phase costs with this job's measurements in place of the plan's
    rates: a backbone measured here uses its own; a later one its prior from earlier jobs,
    else this job's speed scaled by input area, else the defaults."""
    names = _backbones(plan, events)
    measured = measured_rates(events, plan)
    speed = None  # seconds per 224-px image, from the latest backbone measured here
    for number in sorted(measured):
        if "per_image" in measured[number] and number <= len(names):
            speed = measured[number]["per_image"] / area_factor(plan, names[number - 1])
    costs = []
    for number, name in enumerate(names, start=1):
        here = measured.get(number, {})
        per_image = here.get("per_image")
        if per_image is None and _prior(plan, name, "per_image") is None and speed:
            per_image = speed * area_factor(plan, name)
        costs.append(phase_costs(plan, name, per_image=per_image,
                                 per_epoch=here.get("per_epoch"), first=number == 1))
    return costs


def _rest_of_backbone(event: dict, costs: dict[str, float], plan: dict,
                      per_image: float | None) -> tuple[float, float]:
    """(seconds left of the step ``event`` began, seconds of this backbone's later steps)."""
    phase = event.get("phase")

    def after(name: str) -> float:
        return sum(costs[p] for p in PHASES[PHASES.index(name) + 1:])

    if phase == "load_backbone":
        return costs["load"], after("load")
    if phase == "scan":  # the near-duplicate search, after the base is built
        return near_duplicate_seconds(plan), after("load")
    if phase == "extract":
        rest = max(0, _int(event.get("total")) - _int(event.get("done")))
        what = str(event.get("what", ""))
        step = per_image or (costs["extract"] / max(1.0, _images(plan)))
        if what.startswith("held-out"):
            return rest * step, after("heldout")
        if what == "dataset" and _int(plan.get("augment_views")):
            views = costs["extract"] - _images(plan) * step
            return rest * step, max(0.0, views) + after("extract")
        return rest * step, after("extract")
    if phase == "train":
        epochs = max(1, _int(event.get("epochs"), 1))
        folds = max(1, _int(event.get("folds"), 1))
        remaining = epochs * folds - ((_int(event.get("fold"), 1) - 1) * epochs
                                      + _int(event.get("epoch")))
        return remaining * costs["train"] / (epochs * folds), after("train")
    if phase in ("evaluate", "heldout", "write"):
        name = {"evaluate": "evaluate", "heldout": "heldout", "write": "write"}[phase]
        return costs[name], after(name)
    return 0.0, 0.0  # written


def time_left(events: list[dict], plan: dict, *, now: float,
              started: float | None = None) -> float | None:
    """Seconds left: what remains of the step under way (less the time it has taken so far,
    never below zero), then this backbone's later steps and every later backbone's, priced by
    :func:`_job_costs`. Before the first event, the start-up from ``started`` (None when that
    is unknown too); None once the work is done (only the outcome is left to record).
    Early stopping can only make it shorter."""
    timed = [e for e in events if isinstance(e.get("time"), (int, float))
             and e.get("phase") != "warning"]
    costs = _job_costs(timed, plan)
    later = sum(sum(cost.values()) for cost in costs)
    start = start_costs(plan)
    if not timed:
        if started is None:
            return None
        return max(0.0, start["startup"] - (now - started)) + start["scan"] + later
    if _work_done(timed, len(costs)):
        return None
    last = timed[-1]
    index = max((_int(e.get("backbone_index")) for e in timed), default=0)
    if not index or index > len(costs):  # listing the dataset: no backbone started yet
        current, following = start["scan"], later
    else:
        measured = measured_rates(timed, plan).get(index, {})
        current, following = _rest_of_backbone(last, costs[index - 1], plan,
                                               measured.get("per_image"))
        following += sum(sum(cost.values()) for cost in costs[index:])
    return max(0.0, current - (now - last["time"])) + following


# --------------------------------------------------------------------------- this machine's rates


def _median(values) -> float | None:
    found = sorted(v for v in (values if isinstance(values, list) else []) if _rate(v))
    return found[len(found) // 2] if found else None


def measure_job(events: list[dict], plan: dict, started: float | None = None) -> dict:
    """The rates one finished job measured, for :func:`update_rates`::

        {"startup_s", "scan_s_per_image", "near_dup_s_per_image",
         "backbones": {name: {"size", "load_s", "per_image", "epoch_s_per_row"}}}

    Only what the events show is included (a job whose features all came from the cache
    measures no ``per_image``)."""
    timed = [e for e in events if isinstance(e.get("time"), (int, float))]
    out: dict = {"backbones": {}}
    if not timed:
        return out
    images = _int(plan.get("images"))
    if started is not None and timed[0]["time"] >= started:
        out["startup_s"] = timed[0]["time"] - started
    loads = [e for e in timed if e.get("phase") == "load_backbone"]
    if loads and images:
        out["scan_s_per_image"] = max(0.0, loads[0]["time"] - timed[0]["time"]) / images
    near = [(position, event) for position, event in enumerate(timed)
            if event.get("phase") == "scan"
            and str(event.get("what", "")).startswith("looking for near-duplicate")]
    near_seconds = 0.0
    if near and near[0][0] + 1 < len(timed) and images:
        position, event = near[0]
        near_seconds = timed[position + 1]["time"] - event["time"]
        out["near_dup_s_per_image"] = near_seconds / images
    names = _backbones(plan, timed)
    rates = measured_rates(timed, plan)
    views = _int(plan.get("augment_views"))
    for load in loads:
        number = _int(load.get("backbone_index"))
        name = load.get("backbone") or (names[number - 1] if 0 < number <= len(names) else None)
        if not name:
            continue
        entry: dict = {"size": input_size(plan, name)}
        extract = next((e for e in timed if e.get("phase") == "extract"
                        and _int(e.get("backbone_index")) == number), None)
        if extract is not None:
            seconds = extract["time"] - load["time"] - (near_seconds if number == 1 else 0.0)
            if seconds > 0:
                entry["load_s"] = seconds
        measured = rates.get(number, {})
        if "per_image" in measured:
            entry["per_image"] = measured["per_image"]
        if "per_epoch" in measured and images:
            entry["epoch_s_per_row"] = measured["per_epoch"] / (images * (1 + views))
        out["backbones"][name] = entry
    return out


def load_rates(path: str | Path) -> dict:
    """The rates file (:data:`RATES_FILE`), or {} when it is missing or unreadable (it is
    only a hint: a bad file never stops a job)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def update_rates(path: str | Path, measured: dict) -> dict:
    """Add one job's :func:`measure_job` to the rates file (the last :data:`RATES_KEPT`
    values of each rate are kept), written atomically; returns the new contents."""
    path = Path(path)
    rates = load_rates(path)

    def add(target: dict, key: str, value) -> None:
        if _rate(value) is None:
            return
        kept = target.get(key) if isinstance(target.get(key), list) else []
        target[key] = [*kept, float(value)][-RATES_KEPT:]

    for key in ("startup_s", "scan_s_per_image", "near_dup_s_per_image"):
        add(rates, key, measured.get(key))
    backbones = rates.setdefault("backbones", {})
    if not isinstance(backbones, dict):
        backbones = rates["backbones"] = {}
    for name, entry in (measured.get("backbones") or {}).items():
        known = backbones.setdefault(str(name), {})
        if not isinstance(known, dict):
            known = backbones[str(name)] = {}
        add(known, "load_s", entry.get("load_s"))
        sizes = known.setdefault("sizes", {})
        if not isinstance(sizes, dict):
            sizes = known["sizes"] = {}
        by_size = sizes.setdefault(str(_int(entry.get("size"), REFERENCE_SIZE)), {})
        add(by_size, "per_image", entry.get("per_image"))
        add(by_size, "epoch_s_per_row", entry.get("epoch_s_per_row"))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(rates, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return rates


def plan_rates(rates: dict, plan: dict) -> dict:
    """The rates a new job's plan carries: the medians of this machine's measurements, per
    backbone at the plan's input size (a size not measured yet: the nearest measured size,
    scaled by input area). Rates never measured are left out (the defaults apply)."""
    out: dict = {"backbones": {}}
    for key in ("startup_s", "scan_s_per_image", "near_dup_s_per_image"):
        value = _median(rates.get(key))
        if value is not None:
            out[key] = value
    known = rates.get("backbones") if isinstance(rates.get("backbones"), dict) else {}
    for name in plan.get("backbones") or []:
        entry = known.get(name) if isinstance(known.get(name), dict) else {}
        size = input_size(plan, name)
        chosen: dict = {}
        load = _median(entry.get("load_s"))
        if load is not None:
            chosen["load_s"] = load
        sizes = entry.get("sizes") if isinstance(entry.get("sizes"), dict) else {}
        for key in ("per_image", "epoch_s_per_row"):
            measured = [(abs(_int(other) - size), _int(other), _median(values.get(key)))
                        for other, values in sizes.items() if isinstance(values, dict)]
            measured = [item for item in measured if item[2] is not None and item[1] > 0]
            if measured:
                _, other, value = min(measured)
                chosen[key] = value * ((size / other) ** 2 if key == "per_image" else 1.0)
        if chosen:
            out["backbones"][name] = chosen
    return out
