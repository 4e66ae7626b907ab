"""The training queue: requests from any number of browser sessions, in files (no Streamlit).

A request is a :class:`xrcompare.config.TrainConfig` checked by
:func:`xrcompare.experiment.preflight`, an owner (a name typed once per browser session) and
a hash of that session's secret token (so a student can cancel their own and nobody
else's). :func:`submit_request` files it at the end of the queue; :mod:`xrcompare.dispatch`
hands the head of the queue to Ray (:mod:`xrcompare.ray_engine`) whenever a worker slot is
free, follows it there and records its outcome here. The page reads only files, so thirty
polling browsers never call Ray.

Everything is in the jobs folder (``<repo>/jobs/`` or ``$XRCOMPARE_JOBS_DIR``), so queued and
running requests come back after an app restart::

    queue.json             {"order": [job ids]}: the queued requests, first to run first
    queue.lock             flock'ed by whoever changes the queue (app threads, the CLI);
                           the kernel frees it when its holder dies, so no liveness checks
    engine.json            the local Ray the app started (xrcompare.ray_engine)
    rates.json             what finished jobs measured on this machine (xrcompare.progress)
    <job-id>/job.json      written once: owner, owner's key hash, created, config, plan, argv
    <job-id>/config.json   the TrainConfig the training process reads
    <job-id>/state.json    {"state", "submission", "dispatched", "submitted", "started",
                            "finished", "exit_code", "error", "runs", "attempts", "note"}
    <job-id>/cancel        present once a cancel was asked for
    <job-id>/progress.jsonl  the training process's progress events (xrcompare.progress)
    <job-id>/log.txt       the training process's output, copied from Ray when it ended

States: ``queued`` → ``starting`` (handed to Ray) → ``running`` → ``done`` | ``failed`` |
``cancelled`` | ``stale``.

What Ray does that this module once did itself: running the process in its own group,
stopping it (SIGTERM, then SIGKILL), noticing a dead supervisor, keeping the outcome and
the log. What stays here, and why: the order of the queue (Ray Jobs have no order or
priority, and a job waiting in Ray for resources fails after a timeout), who may cancel
what, and removing a half-written run folder (Ray does not know the runs folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xrcompare import paths
from xrcompare.config import TrainConfig
from xrcompare.progress import (
    ACTIVE_STATES,
    PROGRESS_FILE,
    RATES_FILE,
    load_rates,
    plan_rates,
    read_progress,
    summarize_progress,
    written_runs,
)

STATES_ACTIVE = ACTIVE_STATES  # handed to the engine: starting, running
STATES_QUEUED = ("queued",)
STATES_OPEN = STATES_QUEUED + STATES_ACTIVE
STATES_FINAL = ("done", "failed", "cancelled", "stale")
#: Requests waiting or running at once, in all, and per browser session.
MAX_OPEN = 100
MAX_OPEN_PER_OWNER = 3
OWNER_MAX_LENGTH = 40
KEEP_FINISHED = 200  # finished request folders kept; older ones are pruned on submit
LOG_TAIL_LINES = 20
CONFIG_FILE = "config.json"
QUEUE_FILE = "queue.json"
LOCK_FILE = "queue.lock"
ERROR_LIMIT = 500
#: How long a queue snapshot is shared by every page of this process.
VIEW_MAX_AGE_S = 0.5
_JOB_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
_OWNER = re.compile(r"^[\w][\w .'\-]*$")


class JobError(ValueError):
    """A request that cannot be filed or changed, with one readable line."""


class NotAllowed(JobError):
    """This session may not do that (cancel another's request, reorder the queue)."""


def _jobs_dir(jobs_dir: str | Path | None) -> Path:
    return Path(jobs_dir) if jobs_dir else paths.jobs_dir()


def train_command(folder: Path, python: str | None = None) -> list[str]:
    """The training process's command line for the request in ``folder``."""
    return [python or sys.executable, "-m", "xrcompare", "train",
            "--config", str(folder / CONFIG_FILE),
            "--progress-file", str(folder / PROGRESS_FILE)]


def owner_key(token: str | None) -> str | None:
    """What is stored of a session's token: its SHA-256 (the token itself stays in the
    browser session)."""
    if not token:
        return None
    return hashlib.sha256(str(token).encode("utf-8")).hexdigest()


def new_session_token() -> str:
    return secrets.token_urlsafe(24)


def check_owner(name) -> str:
    """A typed owner name, stripped; one sentence when it cannot be one."""
    text = " ".join(str(name or "").split())
    if not text:
        raise JobError("type your name first: it shows beside your request in the queue")
    if len(text) > OWNER_MAX_LENGTH or not _OWNER.match(text):
        raise JobError(f"a name uses letters, digits, spaces, dots, hyphens and apostrophes, "
                       f"up to {OWNER_MAX_LENGTH} characters")
    return text


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


@contextlib.contextmanager
def queue_lock(jobs_dir: Path):
    """One writer of the queue at a time, across threads and processes (``flock``)."""
    jobs_dir.mkdir(parents=True, exist_ok=True)
    with _THREAD_LOCK, (jobs_dir / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            _forget_view(jobs_dir)


_THREAD_LOCK = threading.RLock()


# --------------------------------------------------------------------------- status


@dataclass
class JobStatus:
    job_id: str
    folder: Path
    state: str
    owner: str = "?"
    owner_key: str | None = None
    config: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    created: float | None = None
    submitted: float | None = None
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    exit_code: int | None = None
    runs: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    progress: dict = field(default_factory=dict)
    cancel_requested: bool = False
    position: int | None = None  # 1 = next to run, while queued
    attempts: int = 0
    dispatched: int | None = None  # the order in which requests were handed to the engine
    note: str | None = None

    @property
    def active(self) -> bool:
        return self.state in STATES_ACTIVE

    @property
    def queued(self) -> bool:
        return self.state in STATES_QUEUED

    @property
    def open(self) -> bool:
        return self.state in STATES_OPEN

    @property
    def elapsed(self) -> float | None:
        begin = self.started or self.submitted or self.created
        if begin is None or self.queued:
            return None
        return (self.finished or time.time()) - begin

    @property
    def waited(self) -> float | None:
        """Seconds in the queue before the engine got it (so far, while queued)."""
        if self.created is None:
            return None
        end = self.submitted or (self.finished if not self.submitted and self.finished
                                 else None) or time.time()
        return max(0.0, end - self.created)

    def owned_by(self, token: str | None) -> bool:
        key = owner_key(token)
        return bool(key and self.owner_key) and secrets.compare_digest(key, self.owner_key)

    def to_dict(self) -> dict:
        return {**asdict(self), "folder": str(self.folder), "active": self.active,
                "elapsed": self.elapsed, "waited": self.waited}


def log_tail(folder: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    path = folder / "log.txt"
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 64_000))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
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
    if exit_code is None:
        return "the training process ended without an outcome"
    return f"the training process ended with exit code {exit_code}"


def _list_jobs(jobs_dir: Path) -> list[str]:
    if not jobs_dir.is_dir():
        return []
    return sorted(child.name for child in jobs_dir.iterdir()
                  if _JOB_ID.match(child.name) and (child / "job.json").is_file())


def _check_id(job_id: str) -> None:
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise JobError(f"no such request {str(job_id)[:40]!r}")


def _state_of(folder: Path) -> dict:
    state = _read_json(folder / "state.json") or {}
    if state.get("state") not in STATES_OPEN + STATES_FINAL:
        state = {**state, "state": "queued"}
    return state


def _status_from(folder: Path, job: dict, state: dict, position: int | None = None,
                 *, with_progress: bool = True) -> JobStatus:
    status = JobStatus(
        job_id=str(job.get("job_id", folder.name)), folder=folder, state=state["state"],
        owner=str(job.get("owner") or "?")[:OWNER_MAX_LENGTH],
        owner_key=job.get("owner_key") if isinstance(job.get("owner_key"), str) else None,
        config=job.get("config") if isinstance(job.get("config"), dict) else {},
        plan=job.get("plan") if isinstance(job.get("plan"), dict) else {},
        created=_number(job.get("created")), submitted=_number(state.get("submitted")),
        started=_number(state.get("started")), finished=_number(state.get("finished")),
        error=str(state["error"])[:ERROR_LIMIT] if state.get("error") else None,
        exit_code=state.get("exit_code") if isinstance(state.get("exit_code"), int) else None,
        runs=[str(run) for run in state.get("runs") or [] if isinstance(run, str)],
        cancel_requested=(folder / "cancel").exists(), position=position,
        attempts=int(state.get("attempts") or 0) if str(state.get("attempts") or 0).isdigit()
        else 0,
        dispatched=state.get("dispatched") if isinstance(state.get("dispatched"), int) else None,
        note=str(state["note"])[:ERROR_LIMIT] if state.get("note") else None)
    if status.state in ("failed", "stale"):
        status.log_tail = log_tail(folder)
    if with_progress:
        events = read_progress(folder) if not status.queued else []
        if not status.runs:
            status.runs = written_runs(events)
        status.progress = summarize_progress(
            events, plan=status.plan, state=status.state if not status.queued else "starting",
            started=status.started or status.submitted, finished=status.finished)
        if status.queued:
            status.progress.update(phase_text=f"waiting in the queue (place {position})",
                                   fraction=0.0, eta_text="")
    return status


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def read_order(jobs_dir: Path, states: dict[str, str] | None = None) -> list[str]:
    """The queued requests, first to run first: ``queue.json``'s order, then any queued
    request it does not name (an interrupted write), oldest first."""
    jobs_dir = Path(jobs_dir)
    if states is None:
        states = {job_id: _state_of(jobs_dir / job_id)["state"] for job_id in
                  _list_jobs(jobs_dir)}
    recorded = (_read_json(jobs_dir / QUEUE_FILE) or {}).get("order")
    order = []
    for job_id in recorded if isinstance(recorded, list) else []:
        if isinstance(job_id, str) and states.get(job_id) == "queued" and job_id not in order:
            order.append(job_id)
    missing = [job_id for job_id in states if states[job_id] == "queued"
               and job_id not in order]
    order += sorted(missing, key=lambda job_id: (_created(jobs_dir / job_id), job_id))
    return order


def _created(folder: Path) -> float:
    """When a request was filed (job.json's ``created``; ids share a second, so they alone
    cannot order two requests filed in the same one)."""
    created = (_read_json(folder / "job.json") or {}).get("created")
    return float(created) if isinstance(created, (int, float)) else float("inf")


def _write_order(jobs_dir: Path, order: list[str]) -> None:
    _write_json(jobs_dir / QUEUE_FILE, {"order": order})


def job_status(job_id: str, jobs_dir: str | Path | None = None) -> JobStatus:
    """A request's state as its files say (the dispatcher keeps them up to date)."""
    jobs_dir = _jobs_dir(jobs_dir)
    _check_id(job_id)
    folder = jobs_dir / job_id
    job = _read_json(folder / "job.json")
    if job is None:
        raise JobError(f"no such request {job_id!r}")
    state = _state_of(folder)
    position = None
    if state["state"] == "queued":
        order = read_order(jobs_dir)
        position = order.index(job_id) + 1 if job_id in order else len(order) + 1
    return _status_from(folder, job, state, position)


@dataclass
class QueueView:
    """What the sidebar shows: the requests the engine has, the queue in order, the last
    ones that ended (newest first)."""

    active: list[JobStatus]
    queued: list[JobStatus]
    finished: list[JobStatus]
    read_at: float = 0.0

    @property
    def open(self) -> list[JobStatus]:
        return self.active + self.queued

    @property
    def signature(self) -> tuple:
        """Changes when a request starts, ends, moves, or is filed."""
        return tuple((status.job_id, status.state, status.position) for status in self.open)


_VIEWS: dict[str, QueueView] = {}
_VIEWS_LOCK = threading.Lock()


def _forget_view(jobs_dir: Path) -> None:
    with _VIEWS_LOCK:
        _VIEWS.pop(str(jobs_dir), None)


def queue_view(jobs_dir: str | Path | None = None, recent: int = 5,
               max_age: float = VIEW_MAX_AGE_S) -> QueueView:
    """The queue as files say, shared by every page of this process for ``max_age`` s."""
    jobs_dir = _jobs_dir(jobs_dir)
    key = str(jobs_dir)
    with _VIEWS_LOCK:
        cached = _VIEWS.get(key)
        if cached is not None and time.monotonic() - cached.read_at < max_age:
            return cached
    ids = _list_jobs(jobs_dir)
    records = {}
    for job_id in ids:
        job = _read_json(jobs_dir / job_id / "job.json")
        if job is not None:
            records[job_id] = (job, _state_of(jobs_dir / job_id))
    order = read_order(jobs_dir, {job_id: state["state"]
                                  for job_id, (_, state) in records.items()})
    active = [_status_from(jobs_dir / job_id, job, state) for job_id, (job, state)
              in records.items() if state["state"] in STATES_ACTIVE]
    active.sort(key=lambda status: (status.dispatched or 0, status.job_id))
    queued = [_status_from(jobs_dir / job_id, *records[job_id], position)
              for position, job_id in enumerate(order, start=1)]
    ended = [job_id for job_id, (_, state) in records.items()
             if state["state"] in STATES_FINAL]
    ended.sort(key=lambda job_id: (_number(records[job_id][1].get("finished")) or 0, job_id),
               reverse=True)
    finished = [_status_from(jobs_dir / job_id, *records[job_id]) for job_id in ended[:recent]]
    view = QueueView(active=active, queued=queued, finished=finished, read_at=time.monotonic())
    with _VIEWS_LOCK:
        _VIEWS[key] = view
    return view


def all_statuses(jobs_dir: str | Path | None = None) -> list[JobStatus]:
    """Every request of the jobs folder, without progress (tests, the CLI, the load test)."""
    jobs_dir = _jobs_dir(jobs_dir)
    found = []
    for job_id in _list_jobs(jobs_dir):
        job = _read_json(jobs_dir / job_id / "job.json")
        if job is not None:
            found.append(_status_from(jobs_dir / job_id, job, _state_of(jobs_dir / job_id),
                                      with_progress=False))
    return found


def current_job(jobs_dir: str | Path | None = None) -> JobStatus | None:
    """The first request the engine runs, else the first queued, else the last that ended
    (None when none was ever filed)."""
    view = queue_view(jobs_dir)
    for group in (view.active, view.queued, view.finished):
        if group:
            return group[0]
    return None


# --------------------------------------------------------------------------- filing


def _new_job_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _prune(jobs_dir: Path, keep: int = KEEP_FINISHED) -> None:
    ended = [job_id for job_id in _list_jobs(jobs_dir)
             if _state_of(jobs_dir / job_id)["state"] in STATES_FINAL]
    for job_id in ended[:-keep] if len(ended) > keep else []:
        shutil.rmtree(jobs_dir / job_id, ignore_errors=True)


def submit_request(config: TrainConfig, owner: str, owner_token: str | None = None, *,
                   jobs_dir: str | Path | None = None) -> JobStatus:
    """Check the configuration (:func:`xrcompare.experiment.preflight`) and file it at the
    end of the queue; never waits for it to run.

    Raises a ``ValueError`` (one line): a configuration that cannot train, a bad owner name,
    a full queue, or a session that has :data:`MAX_OPEN_PER_OWNER` requests open already.
    """
    jobs_dir = _jobs_dir(jobs_dir)
    owner = check_owner(owner)
    key = owner_key(owner_token)
    from xrcompare.experiment import preflight

    plan = preflight(config)  # validated once here, once more in the training process
    plan["rates"] = plan_rates(load_rates(jobs_dir / RATES_FILE), plan)
    with queue_lock(jobs_dir):
        open_jobs = [status for status in all_statuses(jobs_dir) if status.open]
        if len(open_jobs) >= MAX_OPEN:
            raise JobError(f"the queue is full ({MAX_OPEN} requests): try again once some "
                           "have finished")
        if key and sum(status.owner_key == key for status in open_jobs) >= MAX_OPEN_PER_OWNER:
            raise JobError(f"you already have {MAX_OPEN_PER_OWNER} requests waiting or "
                           "running: wait for one, or cancel one")
        job_id = _new_job_id()
        while (jobs_dir / job_id).exists():
            job_id = _new_job_id()
        folder = jobs_dir / job_id
        folder.mkdir()
        try:
            config.write(folder / CONFIG_FILE)
            _write_json(folder / "state.json", {"state": "queued", "attempts": 0})
            _write_json(folder / "job.json", {
                "job_id": job_id, "created": time.time(), "owner": owner, "owner_key": key,
                "config": config.to_json(), "plan": plan})
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        order = [other for other in read_order(jobs_dir) if other != job_id]
        _write_order(jobs_dir, [*order, job_id])
    _prune(jobs_dir)
    return job_status(job_id, jobs_dir)


def start_job(config: TrainConfig, *, jobs_dir: str | Path | None = None,
              owner: str = "command line", owner_token: str | None = None) -> JobStatus:
    """:func:`submit_request` under the name the command line and benchmarks use."""
    return submit_request(config, owner, owner_token, jobs_dir=jobs_dir)


# --------------------------------------------------------------------------- cancel, reorder


def request_cancel(job_id: str, jobs_dir: str | Path | None = None, *,
                   owner_token: str | None = None, teacher: bool = False) -> JobStatus:
    """Cancel a request: at once while it waits; through Ray's stop when it runs (the
    dispatcher passes it on within a second and records "cancelled" once Ray has stopped
    it). Only its owner's session or the teacher may."""
    jobs_dir = _jobs_dir(jobs_dir)
    status = job_status(job_id, jobs_dir)
    if not (teacher or status.owned_by(owner_token)):
        raise NotAllowed("only the teacher or the student who asked for it can cancel "
                         "this request")
    with queue_lock(jobs_dir):
        folder = jobs_dir / job_id
        state = _state_of(folder)
        if state["state"] == "queued":
            _write_json(folder / "state.json", {**state, "state": "cancelled",
                                                "finished": time.time(), "error": None})
            _write_order(jobs_dir, [other for other in read_order(jobs_dir) if other != job_id])
        elif state["state"] in STATES_ACTIVE and not (folder / "cancel").exists():
            (folder / "cancel").write_text(f"{time.time()}\n")
    return job_status(job_id, jobs_dir)


def move(job_id: str, to: int, jobs_dir: str | Path | None = None, *,
         teacher: bool = False) -> list[str]:
    """Put a queued request at place ``to`` (1 = next to run); the teacher only. Returns
    the new order."""
    jobs_dir = _jobs_dir(jobs_dir)
    _check_id(job_id)
    if not teacher:
        raise NotAllowed("only the teacher can reorder the queue")
    if not isinstance(to, int) or isinstance(to, bool):
        raise JobError("a place in the queue is a whole number")
    with queue_lock(jobs_dir):
        order = read_order(jobs_dir)
        if job_id not in order:
            raise JobError("that request is not waiting in the queue any more")
        order.remove(job_id)
        order.insert(min(max(to, 1), len(order) + 1) - 1, job_id)
        _write_order(jobs_dir, order)
    return order
