"""Training jobs run as subprocesses, with their state in files on disk (no Streamlit here).

The sidebar calls :func:`start_job`, :func:`job_status`, :func:`current_job` and
:func:`request_cancel` (:func:`cancel_job` also waits for the end); a test can call the very
same functions. One job runs at a time per jobs folder (``<repo>/jobs/``, or
``$XRCOMPARE_JOBS_DIR``). This module owns processes, the lock and the job's status; the
configuration is :class:`xrcompare.config.TrainConfig`, the checks before a start are
:func:`xrcompare.experiment.preflight`, and the progress events are :mod:`xrcompare.progress`.

How a job runs::

    start_job ──► python -m xrcompare.jobs supervise <job dir>    (own session = process group)
                     └─► python -m xrcompare train --config <job dir>/config.json
                                                   --progress-file <job dir>/progress.jsonl

The configuration is validated once in the app (``preflight``) and once in the training
process (``train_runs``). The supervisor waits for the training process, records its outcome
in ``state.json``, removes any half-written run folder and frees the lock. Cancel sends
SIGTERM to the whole process group; the supervisor outlives it (its handler is set before the
training process starts), sees the training process end and records "cancelled". It kills
the training process after ``CANCEL_KILL_AFTER_S``; a reader kills the whole group if it is
still there ``CANCEL_ESCALATE_S`` after the cancel. If the supervisor itself is gone without a
final state (app or machine restart, ``kill -9``), the next reader notices through the pid and
the process start time, records "stale" and frees the lock.

Files in the jobs folder::

    lock                   {"job_id"}: the job holding the app's single training slot
    <job-id>/config.json   the TrainConfig, as JSON (paths as strings): what the child trains
    <job-id>/job.json      the config, the plan, the command (written once)
    <job-id>/launch.json   {"pid", "identity"}: the supervisor process (pid = process group id)
    <job-id>/state.json    written by the supervisor (or by a reader that proved it dead):
                           {"state", "cli_pid", "cli_identity", "started", "finished",
                            "exit_code", "error", "runs"}
    <job-id>/cancel        present once cancel was asked for
    <job-id>/progress.jsonl  the training process's progress events (see xrcompare.progress)
    <job-id>/log.txt       the training process's stdout and stderr
    rates.json             the rates finished jobs measured on this machine (xrcompare.progress)

A process identity is ``"<boot id>:<start time in clock ticks>"`` from ``/proc``, so a pid
reused after a restart never passes for the job's process.

States: ``starting`` → ``running`` → ``done`` | ``failed`` | ``cancelled`` | ``stale``.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xrcompare import paths
from xrcompare.config import TrainConfig
from xrcompare.errors import one_line
from xrcompare.progress import (
    ACTIVE_STATES,
    PROGRESS_FILE,
    RATES_FILE,
    finished,
    load_rates,
    measure_job,
    plan_rates,
    read_progress,
    summarize_progress,
    update_rates,
    written_runs,
)

STATES_ACTIVE = ACTIVE_STATES
STATES_FINAL = ("done", "failed", "cancelled", "stale")
STARTING_GRACE_S = 30.0  # a job with no supervisor pid after this long is stale
CANCEL_KILL_AFTER_S = 10.0  # SIGTERM, then SIGKILL if the training process is still there
CANCEL_ESCALATE_S = CANCEL_KILL_AFTER_S + 5.0  # then a reader SIGKILLs the whole group
KEEP_JOBS = 30  # finished job folders kept; older ones are pruned when a job starts
LOG_TAIL_LINES = 20
CONFIG_FILE = "config.json"
#: How long a recorded error line may be.
ERROR_LIMIT = 500

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


def _jobs_dir(jobs_dir: str | Path | None) -> Path:
    return Path(jobs_dir) if jobs_dir else paths.jobs_dir()


def train_command(folder: Path) -> list[str]:
    """The training process's command line for the job in ``folder``."""
    return [sys.executable, "-m", "xrcompare", "train", "--config", str(folder / CONFIG_FILE),
            "--progress-file", str(folder / PROGRESS_FILE)]


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
    config: dict = field(default_factory=dict)
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
    jobs_dir = _jobs_dir(jobs_dir)
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
        config=job.get("config", {}), plan=job.get("plan", {}), created=job.get("created"),
        started=state.get("started"), finished=state.get("finished"), error=state.get("error"),
        exit_code=state.get("exit_code"), runs=list(state.get("runs") or []),
        cancel_requested=(folder / "cancel").exists())
    status.log_tail = log_tail(folder)
    if not status.runs:
        status.runs = written_runs(events)
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
    done = finished(events)
    _cleanup_partial(job, state.get("cli_pid"))
    final = {**state, "finished": time.time(), "runs": written_runs(events)}
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
    jobs_dir = _jobs_dir(jobs_dir)
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
    env["PYTHONPATH"] = str(paths.REPO_ROOT) + (os.pathsep + path if path else "")
    return env


def start_job(config: TrainConfig, *, jobs_dir: str | Path | None = None) -> JobStatus:
    """Check the configuration (:func:`xrcompare.experiment.preflight`), take the lock and
    launch the job; never waits for it.

    Raises :class:`JobRunning` when a job holds the lock, a ``ValueError`` (one line) for a
    configuration that cannot train.
    """
    jobs_dir = _jobs_dir(jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    holder = _lock_holder(jobs_dir)
    if holder and (jobs_dir / holder / "job.json").is_file():
        running = job_status(holder, jobs_dir)
        if running.active:  # say so before spending time on validation
            raise JobRunning(running)
    from xrcompare.experiment import preflight

    plan = preflight(config)  # validated once here, once more in the training process
    # this machine's rates, measured by earlier jobs: the estimate is right from the start
    plan["rates"] = plan_rates(load_rates(jobs_dir / RATES_FILE), plan)
    job_id = _new_job_id()
    _acquire_lock(jobs_dir, job_id)
    folder = jobs_dir / job_id
    child, launched = None, False
    try:
        folder.mkdir()
        config.write(folder / CONFIG_FILE)
        _write_json(folder / "job.json", {"job_id": job_id, "created": time.time(),
                                          "config": config.to_json(), "plan": plan,
                                          "argv": train_command(folder)})
        with (folder / "supervisor.log").open("ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "xrcompare.jobs", "supervise", str(folder)],
                cwd=paths.REPO_ROOT, env=_child_environment(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
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
    jobs_dir = _jobs_dir(jobs_dir)
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
    jobs_dir = _jobs_dir(jobs_dir)
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
                child = subprocess.Popen(job["argv"], cwd=paths.REPO_ROOT, env=_child_environment(),
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        except (OSError, ValueError) as error:
            _write_json(folder / "state.json", {
                **record, "state": "failed", "finished": time.time(),
                "error": f"could not start the training process: {one_line(error, ERROR_LIMIT)}"})
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
    done = code == 0 and finished(events)
    final = {**running, "finished": time.time(), "exit_code": code,
             "runs": written_runs(events)}
    if done:
        final.update(state="done", error=None)
        _record_rates(folder, job, events, record.get("started"))
    else:
        _cleanup_partial(job, child.pid)
        if (folder / "cancel").exists():
            final.update(state="cancelled", error=None)
        else:
            final.update(state="failed", error=failure_reason(log_tail(folder, 200), code))
    return final


def _record_rates(folder: Path, job: dict, events: list[dict], started: float | None) -> None:
    """Keep what a finished job measured (:func:`xrcompare.progress.measure_job`) in the jobs
    folder's rates file, for the next job's estimate; a failure here never fails the job."""
    try:
        update_rates(folder.parent / RATES_FILE,
                     measure_job(events, job.get("plan") or {}, started))
    except (OSError, ValueError, TypeError) as error:
        print(f"could not record this job's rates: {one_line(error)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "supervise":
        print("usage: python -m xrcompare.jobs supervise JOB_FOLDER", file=sys.stderr)
        return 2
    return supervise(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
