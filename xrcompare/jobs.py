"""Training jobs run as subprocesses, with their state in files on disk (no Streamlit here).

The sidebar calls :func:`start_job`, :func:`job_status`, :func:`current_job` and
:func:`request_cancel` (:func:`cancel_job` also waits for the end); a test can call the very
same functions. One job runs at a time per jobs folder (``<repo>/jobs/``, or
``$XRCOMPARE_JOBS_DIR``).

How a job runs::

    start_job ──► python -m xrcompare.jobs supervise <job dir>    (own session = process group)
                     └─► python -m xrcompare train ... --progress-file <job dir>/progress.jsonl

The supervisor waits for the training process, records its outcome in ``state.json``,
removes any half-written run folder and frees the lock. Cancel sends SIGTERM to the whole
process group; the supervisor outlives it (its handler is set before the training process
starts), sees the training process end and records "cancelled". It kills the training
process after ``CANCEL_KILL_AFTER_S``; a reader kills the whole group if it is still there
``CANCEL_ESCALATE_S`` after the cancel. If the supervisor itself is gone without a final
state (app or machine restart, ``kill -9``), the next reader notices through the pid and the
process start time, records "stale" and frees the lock.

Files in the jobs folder::

    lock                   {"job_id"}: the job holding the app's single training slot
    <job-id>/job.json      the request, the resolved folders, the command, the plan (written once)
    <job-id>/launch.json   {"pid", "identity"}: the supervisor process (pid = process group id)
    <job-id>/state.json    written by the supervisor (or by a reader that proved it dead):
                           {"state", "cli_pid", "cli_identity", "started", "finished",
                            "exit_code", "error", "runs"}
    <job-id>/cancel        present once cancel was asked for
    <job-id>/progress.jsonl  one JSON object per line, appended by the training process
    <job-id>/log.txt       the training process's stdout and stderr

A process identity is ``"<boot id>:<start time in clock ticks>"`` from ``/proc``, so a pid
reused after a restart never passes for the job's process.

States: ``starting`` → ``running`` → ``done`` | ``failed`` | ``cancelled`` | ``stale``.

Progress schema (``progress.jsonl``, written by :func:`progress_file_writer` from the events of
:func:`xrcompare.experiment.train_runs`; every line has ``time`` (Unix seconds) and
``phase``; all but ``scan`` and ``done`` also carry ``backbone``, ``backbone_index``
(1-based) and ``backbones`` (how many in the job))::

    {"phase": "scan", "what": <dataset folder>}
    {"phase": "load_backbone"}
    {"phase": "extract", "what": "dataset" | "augmented views" | "held-out <name>",
     "done": int, "total": int, "cached": int}
    {"phase": "train", "epoch": int, "epochs": int, "metrics": {"loss", "accuracy",
     "val_loss", "val_accuracy"}, "best_epoch": int, "fold": int, "folds": int}
    {"phase": "evaluate", "fold": int, "folds": int}
    {"phase": "heldout", "what": <held-out folder name>}
    {"phase": "write"}
    {"phase": "written", "run": <run folder>}
    {"phase": "done", "runs": [<run folder>, ...]}

:func:`summarize_progress` turns these lines into what the page shows: a phase sentence,
a fraction done, an estimate of the time left and the loss/accuracy curve so far.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from xrcompare.backbones import first_line

REPO = Path(__file__).resolve().parent.parent
JOBS_DIR_VARIABLE = "XRCOMPARE_JOBS_DIR"
DATA_ROOT_VARIABLE = "XRCOMPARE_DATA_ROOT"  # read by xrcompare.data.default_data_root

STATES_ACTIVE = ("starting", "running")
STATES_FINAL = ("done", "failed", "cancelled", "stale")
STARTING_GRACE_S = 30.0  # a job with no supervisor pid after this long is stale
CANCEL_KILL_AFTER_S = 10.0  # SIGTERM, then SIGKILL if the training process is still there
CANCEL_ESCALATE_S = CANCEL_KILL_AFTER_S + 5.0  # then a reader SIGKILLs the whole group
KEEP_JOBS = 30  # finished job folders kept; older ones are pruned when a job starts
LOG_TAIL_LINES = 20

# Supervisor processes started by this Python process, so they are reaped (no zombies).
_CHILDREN: dict[str, subprocess.Popen] = {}


class JobError(ValueError):
    """A request that cannot start, with one readable line."""


class JobRunning(JobError):
    """Another job holds the training slot; ``job`` is its status."""

    def __init__(self, job: JobStatus):
        self.job = job
        super().__init__(f"A training job is already running ({job.job_id}, "
                         f"{job.progress.get('phase_text', job.state)}); watch it or cancel it")


def error_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    return first_line(error, limit=500)


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


# --------------------------------------------------------------------------- folders


def default_jobs_dir() -> Path:
    value = os.environ.get(JOBS_DIR_VARIABLE, "").strip()
    return Path(value).expanduser() if value else REPO / "jobs"


def default_data_root() -> Path:
    """Where the sidebar looks for datasets: ``$XRCOMPARE_DATA_ROOT`` or ``../shared/data``."""
    from xrcompare.data import default_data_root as data_root

    return data_root()


def list_datasets(data_root: str | Path | None = None) -> list[str]:
    """Names of the folders directly under the data root that hold class sub-folders (see
    :func:`xrcompare.data.list_datasets`)."""
    from xrcompare.data import list_datasets as datasets

    return datasets(data_root)


def resolve_data_folder(text: str | Path, data_root: str | Path | None = None) -> Path:
    """The dataset folder for a listed name or a typed path, kept inside the data root (see
    :func:`xrcompare.data.resolve_data_folder`); :class:`JobError` otherwise."""
    from xrcompare.data import DatasetError
    from xrcompare.data import resolve_data_folder as resolve

    try:
        return resolve(text, data_root)
    except DatasetError as error:
        raise JobError(str(error)) from None


# --------------------------------------------------------------------------- requests


TUNABLE = ("epochs", "batch_size", "learning_rate", "image_size", "augment_views", "seed")


@dataclass
class TrainRequest:
    """What the sidebar form collects.

    A tunable parameter left at None takes :class:`xrcompare.experiment.TrainConfig`'s
    default (:func:`request_defaults`), so the defaults are defined in one place.
    """

    dataset: str  # a folder name from list_datasets, or a path inside the data root
    backbones: list[str]
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    image_size: int | None = None  # None: each backbone's own
    augment_views: int | None = None
    seed: int | None = None
    heldout: str | None = None  # optional held-out folder, same rules as dataset


def request_defaults() -> dict:
    """TrainConfig's defaults for the parameters a request can set (the form's start values)."""
    from xrcompare.experiment import TrainConfig

    return {item.name: item.default for item in fields(TrainConfig) if item.name in TUNABLE}


def prepare(request: TrainRequest, *, data_root: str | Path | None = None,
            runs_dir: str | Path | None = None) -> tuple[list[str], dict]:
    """Check a request completely before anything starts; return (train argv, plan).

    Raises :class:`JobError` (or another ``ValueError``) with one readable line.
    """
    from xrcompare.backbones import get_backbone, weights_status
    from xrcompare.data import scan_dataset, split_by_patient
    from xrcompare.experiment import TrainConfig
    from xrcompare.runs import check_runs_dir, default_runs_dir

    backbones = []
    for name in request.backbones:
        backbone = get_backbone(name)
        if backbone.name not in backbones:
            backbones.append(backbone.name)
    data = resolve_data_folder(request.dataset, data_root)
    heldout = (resolve_data_folder(request.heldout, data_root)
               if request.heldout not in (None, "") else None)
    if heldout is not None and heldout == data:
        raise JobError("the held-out folder must differ from the training dataset")
    runs = Path(runs_dir or default_runs_dir()).expanduser().resolve()
    chosen = {name: getattr(request, name) for name in TUNABLE
              if getattr(request, name) is not None}
    config = TrainConfig(data=data, backbones=backbones, heldout=[heldout] if heldout else [],
                         runs_dir=runs, **chosen)
    config.validate()
    check_runs_dir(runs)  # writable, with room for a run: say so now, not after training
    for name in backbones:
        status = weights_status(name)
        if not status.available:
            raise JobError(status.detail)
    dataset = scan_dataset(data)
    split_by_patient(dataset, val_fraction=config.val_fraction,  # too few patients: say now
                     test_fraction=config.test_fraction, seed=config.seed)
    held = scan_dataset(heldout) if heldout else None
    argv = [sys.executable, "-m", "xrcompare", "train", "--data", str(data),
            "--epochs", str(config.epochs), "--batch-size", str(config.batch_size),
            "--learning-rate", repr(float(config.learning_rate)), "--seed", str(config.seed),
            "--augment-views", str(config.augment_views), "--runs-dir", str(runs)]
    for name in backbones:
        argv += ["--backbone", name]
    if config.image_size is not None:
        argv += ["--image-size", str(config.image_size)]
    if heldout is not None:
        argv += ["--heldout", str(heldout)]
    plan = {"data": str(data), "data_name": data.name, "images": len(dataset.records),
            "patients": len(set(dataset.groups)), "class_counts": dataset.class_counts(),
            "heldout": str(heldout) if heldout else None,
            "heldout_name": heldout.name if heldout else None,
            "heldout_images": len(held.records) if held else 0,
            "backbones": backbones, "epochs": config.epochs,
            "augment_views": config.augment_views, "runs_dir": str(runs),
            "image_size": config.image_size}
    return argv, plan


# --------------------------------------------------------------------------- processes


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "no-boot-id"


def process_identity(pid: int | None) -> str | None:
    """``"<boot id>:<start ticks>"`` of a live process, or None (gone, zombie, no access)."""
    if not pid or pid <= 0:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        text = None
    if text is None or not Path("/proc/self/stat").exists():
        try:  # no /proc (not Linux): a signal-0 probe, without start time
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"{_boot_id()}:unknown"
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X", "x"):  # zombie or dead: finished, only not yet reaped
        return None
    return f"{_boot_id()}:{fields[19]}"  # field 22 of /proc/<pid>/stat: start time


def _alive(pid: int | None, identity: str | None) -> bool:
    return bool(pid) and identity is not None and process_identity(pid) == identity


def _reap_children() -> None:
    for job_id, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            _CHILDREN.pop(job_id, None)


# --------------------------------------------------------------------------- small files


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, payload: dict) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    temporary.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _lock_path(jobs_dir: Path) -> Path:
    return jobs_dir / "lock"


def _lock_holder(jobs_dir: Path) -> str | None:
    payload = _read_json(_lock_path(jobs_dir))
    return payload.get("job_id") if payload else None


def _try_lock(jobs_dir: Path, job_id: str) -> bool:
    """Take the lock atomically (hard link of a complete file); False when it is held."""
    temporary = jobs_dir / f".lock.{job_id}.tmp"
    temporary.write_text(json.dumps({"job_id": job_id, "time": time.time()}) + "\n")
    try:
        os.link(temporary, _lock_path(jobs_dir))
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)


def _release_lock(jobs_dir: Path, job_id: str) -> None:
    lock = _lock_path(jobs_dir)
    if _lock_holder(jobs_dir) == job_id:
        lock.unlink(missing_ok=True)


def _acquire_lock(jobs_dir: Path, job_id: str) -> None:
    for _ in range(5):
        if _try_lock(jobs_dir, job_id):
            return
        holder = _lock_holder(jobs_dir)
        lock = _lock_path(jobs_dir)
        if holder is None or not (jobs_dir / holder / "job.json").is_file():
            # unreadable lock or one without its job folder: stale once it is not brand new
            try:
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > STARTING_GRACE_S:
                lock.unlink(missing_ok=True)
                continue
            raise JobError("another training job is starting; try again in a moment")
        status = job_status(holder, jobs_dir)  # frees the lock of a dead job
        if status.active:
            raise JobRunning(status)
        _release_lock(jobs_dir, holder)
    raise JobError("could not take the training lock; try again")


# --------------------------------------------------------------------------- status


@dataclass
class JobStatus:
    job_id: str
    folder: Path
    state: str
    request: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    exit_code: int | None = None
    runs: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    progress: dict = field(default_factory=dict)
    cancel_requested: bool = False

    @property
    def active(self) -> bool:
        return self.state in STATES_ACTIVE

    @property
    def elapsed(self) -> float | None:
        begin = self.started or self.created
        if begin is None:
            return None
        return (self.finished or time.time()) - begin

    def to_dict(self) -> dict:
        return {**asdict(self), "folder": str(self.folder), "active": self.active,
                "elapsed": self.elapsed}


def read_progress(folder: Path) -> list[dict]:
    """The progress events so far (a half-written last line is skipped)."""
    events = []
    try:
        lines = (folder / "progress.jsonl").read_text(encoding="utf-8").splitlines()
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


def log_tail(folder: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    path = folder / "log.txt"
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 64_000))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    # progress bars on a terminal use carriage returns; keep the last state of each line
    rows = [row.split("\r")[-1].rstrip() for row in text.splitlines()]
    return [row for row in rows if row.strip()][-lines:]


def failure_reason(tail: list[str], exit_code: int | None) -> str:
    """One line: the CLI's ``error: ...``, else the last line of a traceback, else the code."""
    for row in reversed(tail):
        if row.startswith("error: "):
            return row[len("error: "):].strip()
    for row in reversed(tail):
        if row.strip() and not row.startswith(" "):
            if "Error" in row or "Exception" in row or "Killed" in row:
                return row.strip()[:300]
    if exit_code is not None and exit_code < 0:
        return f"the training process was killed by signal {-exit_code}"
    return f"the training process ended with exit code {exit_code}"


def _list_jobs(jobs_dir: Path) -> list[str]:
    if not jobs_dir.is_dir():
        return []
    return sorted(child.name for child in jobs_dir.iterdir()
                  if child.is_dir() and (child / "job.json").is_file())


def job_status(job_id: str, jobs_dir: str | Path | None = None) -> JobStatus:
    """The job's state as its files and processes say; a dead job is recorded as stale."""
    jobs_dir = Path(jobs_dir) if jobs_dir else default_jobs_dir()
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise JobError(f"no such job {job_id!r}")
    folder = jobs_dir / job_id
    job = _read_json(folder / "job.json")
    if job is None:
        raise JobError(f"no such job {job_id!r}")
    _reap_children()
    state = _read_json(folder / "state.json") or {}
    if state.get("state") not in STATES_FINAL:
        launch = _read_json(folder / "launch.json")
        supervisor_alive = bool(launch) and _alive(launch.get("pid"), launch.get("identity"))
        cli_alive = _alive(state.get("cli_pid"), state.get("cli_identity"))
        if supervisor_alive or cli_alive:
            state = {**state, "state": state.get("state") or "starting"}
            _escalate_cancel(folder)
        elif launch is None and time.time() - job.get("created", 0) < STARTING_GRACE_S:
            state = {**state, "state": "starting"}
        else:
            state = _read_json(folder / "state.json") or {}  # it may have just finished
            if state.get("state") not in STATES_FINAL:
                state = _finalize_orphan(jobs_dir, job_id, job, state)
    return _status_from(folder, job, state)


def _status_from(folder: Path, job: dict, state: dict) -> JobStatus:
    events = read_progress(folder)
    status = JobStatus(
        job_id=job["job_id"], folder=folder, state=state.get("state", "starting"),
        request=job.get("request", {}), plan=job.get("plan", {}), created=job.get("created"),
        started=state.get("started"), finished=state.get("finished"), error=state.get("error"),
        exit_code=state.get("exit_code"), runs=list(state.get("runs") or []),
        cancel_requested=(folder / "cancel").exists())
    status.log_tail = log_tail(folder)
    if not status.runs:
        status.runs = [event["run"] for event in events if event.get("phase") == "written"]
    status.progress = summarize_progress(events, plan=status.plan, state=status.state,
                                         started=status.started or status.created,
                                         finished=status.finished)
    return status


def _cleanup_partial(job: dict, cli_pid: int | None) -> list[str]:
    """Remove ``<runs>/.tmp-*-<pid>`` folders the training process left; return their names."""
    from xrcompare.runs import TEMPORARY_PREFIX

    if not cli_pid:
        return []
    runs_dir = Path(job.get("plan", {}).get("runs_dir", "")).resolve()
    removed = []
    if not runs_dir.is_dir():
        return removed
    for leftover in runs_dir.glob(f"{TEMPORARY_PREFIX}*-{int(cli_pid)}"):
        if leftover.is_dir() and leftover.resolve().parent == runs_dir:
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover.name)
    return removed


def _finalize_orphan(jobs_dir: Path, job_id: str, job: dict, state: dict) -> dict:
    """No process left and no final state: record what can be known, free the lock."""
    folder = jobs_dir / job_id
    events = read_progress(folder)
    done = any(event.get("phase") == "done" for event in events)
    _cleanup_partial(job, state.get("cli_pid"))
    final = {**state, "finished": time.time(),
             "runs": [e["run"] for e in events if e.get("phase") == "written"]}
    if done:
        final.update(state="done", error=None)
    elif (folder / "cancel").exists():
        final.update(state="cancelled", error=None)
    else:
        final.update(state="stale", error=(
            "the training process ended without recording an outcome (the app or the machine "
            "restarted, or the process was killed); its partial files were removed"))
    _write_json(folder / "state.json", final)
    _release_lock(jobs_dir, job_id)
    return final


def current_job(jobs_dir: str | Path | None = None) -> JobStatus | None:
    """The job holding the lock if any, else the most recent one (None when none ever ran)."""
    jobs_dir = Path(jobs_dir) if jobs_dir else default_jobs_dir()
    holder = _lock_holder(jobs_dir)
    if holder and (jobs_dir / holder / "job.json").is_file():
        status = job_status(holder, jobs_dir)
        if status.active:
            return status
    jobs = _list_jobs(jobs_dir)
    return job_status(jobs[-1], jobs_dir) if jobs else None


# --------------------------------------------------------------------------- start, cancel


def _new_job_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _prune(jobs_dir: Path, keep: int = KEEP_JOBS) -> None:
    jobs = _list_jobs(jobs_dir)
    for job_id in jobs[:-keep] if len(jobs) > keep else []:
        state = _read_json(jobs_dir / job_id / "state.json") or {}
        if state.get("state") in STATES_FINAL:
            shutil.rmtree(jobs_dir / job_id, ignore_errors=True)


def _child_environment() -> dict:
    from xrcompare.access import TEACHER_KEY_SECRET, TEACHER_KEY_VARIABLE

    env = dict(os.environ)
    for name in (TEACHER_KEY_VARIABLE, TEACHER_KEY_SECRET):  # training never needs the key
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    return env


def start_job(request: TrainRequest, *, jobs_dir: str | Path | None = None,
              data_root: str | Path | None = None,
              runs_dir: str | Path | None = None) -> JobStatus:
    """Validate the request, take the lock and launch the job; never waits for it.

    Raises :class:`JobRunning` when a job holds the lock, :class:`JobError` (a
    ``ValueError``) for a bad request.
    """
    jobs_dir = Path(jobs_dir) if jobs_dir else default_jobs_dir()
    jobs_dir.mkdir(parents=True, exist_ok=True)
    holder = _lock_holder(jobs_dir)
    if holder and (jobs_dir / holder / "job.json").is_file():
        running = job_status(holder, jobs_dir)
        if running.active:  # say so before spending time on validation
            raise JobRunning(running)
    argv, plan = prepare(request, data_root=data_root, runs_dir=runs_dir)
    job_id = _new_job_id()
    _acquire_lock(jobs_dir, job_id)
    folder = jobs_dir / job_id
    child, launched = None, False
    try:
        folder.mkdir()
        argv = [*argv, "--progress-file", str(folder / "progress.jsonl")]
        _write_json(folder / "job.json", {"job_id": job_id, "created": time.time(),
                                          "request": asdict(request), "plan": plan,
                                          "argv": argv})
        with (folder / "supervisor.log").open("ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "xrcompare.jobs", "supervise", str(folder)],
                cwd=REPO, env=_child_environment(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        _CHILDREN[job_id] = child
        _write_json(folder / "launch.json", {"pid": child.pid,
                                             "identity": process_identity(child.pid)})
        launched = True
    except BaseException as error:
        if child is not None:  # started but not recorded: nobody could watch or cancel it
            with contextlib.suppress(OSError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        with contextlib.suppress(OSError):  # the folder itself may be what failed
            _write_json(folder / "state.json", {"state": "failed", "finished": time.time(),
                                                "error": f"could not start the job: {error}"})
        raise
    finally:
        if not launched:
            _release_lock(jobs_dir, job_id)
    _prune(jobs_dir)
    return job_status(job_id, jobs_dir)


def _signal_job(folder: Path, number: int) -> None:
    """Signal the job's process group, only while a process of this job is alive (so a
    reused process group id is never hit)."""
    launch = _read_json(folder / "launch.json") or {}
    state = _read_json(folder / "state.json") or {}
    group = launch.get("pid")
    if group and (_alive(group, launch.get("identity"))
                  or _alive(state.get("cli_pid"), state.get("cli_identity"))):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, number)


def _escalate_cancel(folder: Path) -> None:
    """SIGKILL the group of a job still alive ``CANCEL_ESCALATE_S`` after its cancel."""
    try:
        asked = (folder / "cancel").stat().st_mtime
    except OSError:
        return
    if time.time() - asked > CANCEL_ESCALATE_S:
        _signal_job(folder, signal.SIGKILL)


def request_cancel(job_id: str, jobs_dir: str | Path | None = None) -> JobStatus:
    """Ask a job to stop and return at once (the page's path).

    SIGTERM goes to the job's process group; the supervisor records the outcome and kills
    the training process after ``CANCEL_KILL_AFTER_S``; :func:`job_status` kills the whole
    group if it is still alive ``CANCEL_ESCALATE_S`` after the request.
    """
    jobs_dir = Path(jobs_dir) if jobs_dir else default_jobs_dir()
    status = job_status(job_id, jobs_dir)
    if not status.active:
        return status
    cancel = status.folder / "cancel"
    if not cancel.exists():  # a second request keeps the first one's time
        cancel.write_text(f"{time.time()}\n")
    _signal_job(status.folder, signal.SIGTERM)
    return job_status(job_id, jobs_dir)


def cancel_job(job_id: str, jobs_dir: str | Path | None = None,
               timeout: float = CANCEL_ESCALATE_S + 5) -> JobStatus:
    """Stop the job's whole process tree; returns once it is recorded as ended."""
    jobs_dir = Path(jobs_dir) if jobs_dir else default_jobs_dir()
    status = request_cancel(job_id, jobs_dir)
    deadline = time.monotonic() + timeout
    while status.active and time.monotonic() < deadline:
        time.sleep(0.2)
        status = job_status(job_id, jobs_dir)  # escalates to SIGKILL when it takes long
    if status.active:
        _signal_job(status.folder, signal.SIGKILL)
        time.sleep(0.5)
        status = job_status(job_id, jobs_dir)
    return status


# --------------------------------------------------------------------------- supervisor


def _outlive_signal(number, frame) -> None:
    """The supervisor's handler for the cancel's SIGTERM (and SIGINT, SIGHUP): carry on.

    A handler rather than SIG_IGN: caught signals are reset to their default in a child at
    exec, so the training process still ends on SIGTERM, where an ignored one would stay
    ignored. Set before the training process starts, so an early cancel cannot kill the
    supervisor before it has recorded the training process.
    """


def supervise(folder: Path) -> int:
    """Run the job's training command, wait, record the outcome, free the lock."""
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, _outlive_signal)
    folder = Path(folder)
    job = _read_json(folder / "job.json")
    if job is None:
        print(f"no job.json in {folder}", file=sys.stderr)
        return 2
    jobs_dir = folder.parent
    started = time.time()
    record = {"started": started, "supervisor_pid": os.getpid(), "runs": []}
    try:
        if (folder / "cancel").exists():  # cancelled before the training process started
            _write_json(folder / "state.json", {**record, "state": "cancelled",
                                                "finished": time.time(), "error": None})
            return 0
        try:
            with (folder / "log.txt").open("ab") as log:
                child = subprocess.Popen(job["argv"], cwd=REPO, env=_child_environment(),
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        except (OSError, ValueError) as error:
            _write_json(folder / "state.json", {
                **record, "state": "failed", "finished": time.time(),
                "error": f"could not start the training process: {error_line(error)}"})
            return 1
        try:
            final = _watch(folder, job, child, record)
        except BaseException:  # never free the lock while the training process runs on
            child.kill()
            child.wait()
            _cleanup_partial(job, child.pid)
            raise
        _write_json(folder / "state.json", final)
        return 0
    finally:
        _release_lock(jobs_dir, job["job_id"])


def _watch(folder: Path, job: dict, child: subprocess.Popen, record: dict) -> dict:
    """Record the running training process, wait for it (passing a cancel on), and return
    the final state."""
    running = {**record, "state": "running", "cli_pid": child.pid,
               "cli_identity": process_identity(child.pid)}
    _write_json(folder / "state.json", running)
    cancel_seen = None
    while True:
        try:
            code = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        if (folder / "cancel").exists():
            if cancel_seen is None:
                cancel_seen = time.monotonic()
                child.terminate()
            elif time.monotonic() - cancel_seen > CANCEL_KILL_AFTER_S:
                child.kill()
    events = read_progress(folder)
    done = code == 0 and any(event.get("phase") == "done" for event in events)
    final = {**running, "finished": time.time(), "exit_code": code,
             "runs": [e["run"] for e in events if e.get("phase") == "written"]}
    if done:
        final.update(state="done", error=None)
    else:
        _cleanup_partial(job, child.pid)
        if (folder / "cancel").exists():
            final.update(state="cancelled", error=None)
        else:
            final.update(state="failed", error=failure_reason(log_tail(folder, 200), code))
    return final


# --------------------------------------------------------------------------- progress


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
    images = max(1, int(plan.get("images") or 0) or 100)
    heldout_images = int(plan.get("heldout_images") or 0)
    views = int(plan.get("augment_views") or 0)
    # Work units ≈ images through a backbone; an epoch on cached features costs far less.
    unit = {"load": 20.0, "extract": images * (1 + 0.7 * views),
            "train": max(5.0, 0.008 * images * (1 + views) * int(plan.get("epochs") or 25)),
            "evaluate": 3.0, "heldout": float(heldout_images), "write": 3.0}
    per_backbone = sum(unit.values())
    backbones = len(plan.get("backbones") or []) or 1
    fraction, text = 0.0, "starting Python and TensorFlow"
    backbone, index, curve, runs = None, 0, [], []
    for event in events:
        phase = event.get("phase")
        if event.get("backbones"):
            backbones = int(event["backbones"])
        if event.get("backbone_index"):
            backbone, index = event.get("backbone"), int(event["backbone_index"])
        where = f" (backbone {index} of {backbones}: {backbone})" if backbone else ""
        offset = (index - 1) * per_backbone if index else 0.0
        done_units = None
        if phase == "scan":
            text = "reading images (listing the dataset)"
        elif phase == "load_backbone":
            text = f"loading the ImageNet base{where}"
            done_units = offset
        elif phase == "extract":
            share = event.get("done", 0) / max(1, event.get("total", 0) or 1)
            what = str(event.get("what", ""))
            cached = f", {event['cached']} from the cache" if event.get("cached") else ""
            text = (f"extracting features for backbone {index} of {backbones} ({backbone}): "
                    f"{what} {event.get('done', 0)}/{event.get('total', 0)}{cached}")
            if what.startswith("held-out"):
                done_units = offset + sum(unit[k] for k in ("load", "extract", "train",
                                                            "evaluate")) + share * unit["heldout"]
            else:
                done_units = offset + unit["load"] + share * unit["extract"]
        elif phase == "train":
            epochs = max(1, int(event.get("epochs") or 1))
            folds = max(1, int(event.get("folds") or 1))
            fold = int(event.get("fold") or 1)
            epoch = int(event.get("epoch") or 0)
            fold_text = f", fold {fold} of {folds}" if folds > 1 else ""
            text = f"training epoch {epoch} of {epochs}{fold_text}{where}"
            share = ((fold - 1) * epochs + epoch) / (folds * epochs)
            done_units = offset + unit["load"] + unit["extract"] + share * unit["train"]
            metrics = event.get("metrics") or {}
            curve.append({"backbone": backbone, "fold": fold, "epoch": epoch,
                          **{key: value for key, value in metrics.items()
                             if isinstance(value, (int, float))}})
        elif phase == "evaluate":
            text = f"evaluating on the test split{where}"
            done_units = offset + unit["load"] + unit["extract"] + unit["train"]
        elif phase == "heldout":
            text = f"predicting the held-out folder {event.get('what', '')}{where}"
        elif phase == "write":
            text = f"writing the run folder{where}"
            done_units = offset + per_backbone - unit["write"]
        elif phase == "written":
            text = f"run written{where}"
            done_units = offset + per_backbone
            if event.get("run"):
                runs.append(event["run"])
        elif phase == "done":
            text = "done"
            done_units = backbones * per_backbone
        if done_units is not None:
            fraction = max(fraction, min(1.0, done_units / (backbones * per_backbone)))
    end = finished if finished else now
    elapsed = max(0.0, end - started) if started is not None else 0.0
    eta = time_left(events, plan, now=end) if state in STATES_ACTIVE else None
    if state == "done":
        fraction, text = 1.0, "done"
    elif state in ("failed", "cancelled", "stale"):
        text = {"failed": "failed", "cancelled": "cancelled",
                "stale": "ended without an outcome (stale)"}[state] + f" during: {text}"
    return {"phase_text": text, "fraction": fraction, "eta_seconds": eta, "elapsed": elapsed,
            "curve": curve, "backbone": backbone, "backbone_index": index,
            "backbones": backbones, "runs": runs}


SECONDS_PER_IMAGE_224 = 0.05  # a CPU guess, replaced by the measured rate once known
SECONDS_PER_EPOCH_PER_IMAGE = 0.001
LOAD_SECONDS = 3.0


def time_left(events: list[dict], plan: dict, *, now: float) -> float | None:
    """Seconds left, from rates measured in this job: seconds per computed image (feature
    extraction) and per epoch; defaults stand in until they are measured. None before the
    first event. Early stopping can only make it shorter."""
    timed = [e for e in events if isinstance(e.get("time"), (int, float))]
    if not timed or timed[-1].get("phase") == "done":
        return None if not timed else 0.0
    images = int(plan.get("images") or 0)
    heldout_images = int(plan.get("heldout_images") or 0)
    views = int(plan.get("augment_views") or 0)
    size = int(plan.get("image_size") or 224)
    per_image = SECONDS_PER_IMAGE_224 * (size / 224) ** 2
    per_epoch = SECONDS_PER_EPOCH_PER_IMAGE * images * (1 + views)
    # measured rates
    passes: dict[tuple, list[dict]] = {}
    epochs_seen: list[dict] = []
    for event in timed:
        key = (event.get("backbone_index"), event.get("what"))
        if event.get("phase") == "extract":
            passes.setdefault(key, []).append(event)
        elif event.get("phase") == "train":
            epochs_seen.append(event)
    computed, seconds = 0, 0.0
    for items in passes.values():
        computed += items[-1].get("done", 0) - items[0].get("done", 0)
        seconds += items[-1]["time"] - items[0]["time"]
    if computed >= 8 and seconds > 0.5:
        per_image = seconds / computed
    gaps = [b["time"] - a["time"] for a, b in zip(epochs_seen, epochs_seen[1:], strict=False)
            if (a.get("backbone_index"), a.get("fold")) == (b.get("backbone_index"),
                                                              b.get("fold"))]
    if gaps:
        recent = sorted(gaps[-9:])
        per_epoch = recent[len(recent) // 2]
    epochs = int(plan.get("epochs") or 25)
    folds = 1
    extract_all = images * (1 + 0.65 * views) * per_image
    after_training = 1.0 + heldout_images * per_image + 1.0

    last = timed[-1]
    phase = last.get("phase")
    if phase == "train":
        folds = max(1, int(last.get("folds") or 1))
        epochs = max(1, int(last.get("epochs") or epochs))
        remaining_epochs = (epochs - int(last.get("epoch") or 0)
                            + (folds - int(last.get("fold") or 1)) * epochs)
        left = remaining_epochs * per_epoch + after_training
    elif phase == "extract":
        rest = (last.get("total", 0) - last.get("done", 0)) * per_image
        if str(last.get("what", "")).startswith("held-out"):
            left = rest + 1.0
        else:
            later_views = (images * 0.65 * views * per_image
                           if views and last.get("what") == "dataset" else 0.0)
            left = rest + later_views + epochs * per_epoch + after_training
    elif phase in ("evaluate", "heldout"):
        left = after_training if phase == "evaluate" else heldout_images * per_image + 1.0
    elif phase in ("write", "written"):
        left = 1.0 if phase == "write" else 0.0
    else:  # scan or load_backbone
        left = LOAD_SECONDS + extract_all + epochs * per_epoch + after_training
    backbones = int(last.get("backbones") or len(plan.get("backbones") or []) or 1)
    later = backbones - int(last.get("backbone_index") or 1)
    full = LOAD_SECONDS + extract_all + epochs * folds * per_epoch + after_training
    left += max(0, later) * full
    return max(0.0, left - (now - last["time"]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "supervise":
        print("usage: python -m xrcompare.jobs supervise JOB_FOLDER", file=sys.stderr)
        return 2
    return supervise(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
