"""Hands queued training requests to Ray and records what Ray says of them (no Streamlit).

:func:`tick` is one pass, under the queue's lock: ask Ray once for every job's status,
record the requests that started or ended, pass cancels on as Ray stops, then submit the
head of the queue while a worker slot is free. A :class:`Dispatcher` thread in the app calls
it every second, starting the local Ray the first time a request waits; the command line
``python -m xrcompare.dispatch [JOBS_FOLDER]`` does the same in the foreground (for an app
run with ``XRCOMPARE_DISPATCHER=off``).

A request is submitted under a name of its own (``xrcompare-<job id>-<attempt>``) that is
written before the submission: Ray refuses a second job of that name, so a crash between
the two never runs a request twice. A request the engine does not know any more (its local
Ray stopped with the app) goes back to the front of the queue, once; then it is "stale".
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from xrcompare import paths, ray_engine
from xrcompare.errors import one_line
from xrcompare.jobs import (
    STATES_ACTIVE,
    _jobs_dir,
    _list_jobs,
    _read_json,
    _state_of,
    _write_json,
    _write_order,
    failure_reason,
    log_tail,
    queue_lock,
    read_order,
    train_command,
)
from xrcompare.progress import (
    RATES_FILE,
    finished,
    measure_job,
    read_progress,
    update_rates,
    written_runs,
)

LOG = logging.getLogger("xrcompare.dispatch")
TICK_S = 1.0
MAX_ATTEMPTS = 2
#: A stop is sent again when Ray still runs the job this long after the last one.
RESEND_STOP_S = 10.0
LOG_LIMIT = 200_000
DISPATCHER_VARIABLE = "XRCOMPARE_DISPATCHER"


def submission_id(job_id: str, attempt: int) -> str:
    return f"xrcompare-{job_id}-{attempt}"


def _cleanup_partial(plan: dict, events: list[dict]) -> list[str]:
    """Remove the ``<runs>/.tmp-*-<pid>`` folders the training process left (its pid is its
    first progress event); return their names."""
    from xrcompare.runs import TEMPORARY_PREFIX

    pids = {event.get("pid") for event in events if event.get("phase") == "process"}
    runs_dir = Path(str(plan.get("runs_dir", ""))).resolve()
    removed = []
    if not runs_dir.is_dir():
        return removed
    for pid in pids:
        if not isinstance(pid, int) or pid <= 0:
            continue
        for leftover in runs_dir.glob(f"{TEMPORARY_PREFIX}*-{pid}"):
            if leftover.is_dir() and leftover.resolve().parent == runs_dir:
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append(leftover.name)
    return removed


def _finish(engine, folder: Path, job: dict, state: dict, ray_state: dict) -> dict:
    """The final state of a request Ray reports ended; copies its log, removes a
    half-written run, keeps what a finished job measured."""
    sid = state["submission"]
    text = ray_engine.job_logs(engine, sid)
    if text:
        with contextlib.suppress(OSError):
            (folder / "log.txt").write_text(text[-LOG_LIMIT:], encoding="utf-8")
    events = read_progress(folder)
    status = ray_state["status"]
    exit_code = 0 if status == "SUCCEEDED" else ray_engine.exit_code_of(ray_state["message"])
    final = {**state, "finished": ray_state.get("end") or time.time(), "exit_code": exit_code,
             "runs": written_runs(events), "error": None}
    if status == "SUCCEEDED" and finished(events):
        final["state"] = "done"
        try:
            update_rates(folder.parent / RATES_FILE,
                         measure_job(events, job.get("plan") or {}, state.get("started")))
        except (OSError, ValueError, TypeError) as error:
            LOG.warning("could not record the rates of %s: %s", folder.name, one_line(error))
        return final
    _cleanup_partial(job.get("plan") or {}, events)
    if (folder / "cancel").exists() or status == "STOPPED":
        final["state"] = "cancelled"
    else:
        final["state"] = "failed"
        final["error"] = failure_reason(log_tail(folder, 200), exit_code)
    return final


def _lost(folder: Path, job: dict, state: dict, order: list[str]) -> dict:
    """The engine does not know a request it was given: back to the front, once."""
    events = read_progress(folder)
    _cleanup_partial(job.get("plan") or {}, events)
    if (folder / "cancel").exists():
        return {**state, "state": "cancelled", "finished": time.time()}
    attempts = int(state.get("attempts") or 0)
    if attempts >= MAX_ATTEMPTS:
        return {**state, "state": "stale", "finished": time.time(),
                "error": "the engine lost this request twice (Ray stopped while it ran); "
                         "its partial files were removed"}
    (folder / "progress.jsonl").unlink(missing_ok=True)
    order.insert(0, folder.name)
    return {"state": "queued", "attempts": attempts,
            "note": "the engine stopped while this request ran (an app restart): it runs "
                    "again from the start"}


def tick(jobs_dir: str | Path | None, engine, slots: int | None = None) -> dict:
    """One pass; returns counts {"submitted", "ended", "active", "queued"}."""
    jobs_dir = _jobs_dir(jobs_dir)
    slots = slots or ray_engine.slots_for(engine)
    counts = {"submitted": 0, "ended": 0}
    with queue_lock(jobs_dir):
        ray_states = ray_engine.job_states(engine)
        order = read_order(jobs_dir)
        active = 0
        last_dispatched = 0
        for job_id in _list_jobs(jobs_dir):
            folder = jobs_dir / job_id
            state = _state_of(folder)
            if isinstance(state.get("dispatched"), int):
                last_dispatched = max(last_dispatched, state["dispatched"])
            if state["state"] not in STATES_ACTIVE:
                continue
            job = _read_json(folder / "job.json") or {}
            ray_state = ray_states.get(str(state.get("submission")))
            if ray_state is None:
                new = _lost(folder, job, state, order)
            elif ray_state["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                new = _finish(engine, folder, job, state, ray_state)
                counts["ended"] += 1
            else:
                new = dict(state)
                if ray_state["status"] == "RUNNING" and state["state"] != "running":
                    new.update(state="running", started=ray_state.get("start") or time.time())
                if (folder / "cancel").exists() and \
                        time.time() - float(state.get("stop_sent") or 0) > RESEND_STOP_S:
                    ray_engine.stop_job(engine, state["submission"])
                    new["stop_sent"] = time.time()
            if new != state:
                _write_json(folder / "state.json", new)
            if new["state"] in STATES_ACTIVE:
                active += 1
        while active < slots and order:
            job_id = order.pop(0)
            folder = jobs_dir / job_id
            state = _state_of(folder)
            if state["state"] != "queued":
                continue
            attempt = int(state.get("attempts") or 0) + 1
            last_dispatched += 1
            starting = {**state, "state": "starting", "attempts": attempt,
                        "submission": submission_id(job_id, attempt),
                        "dispatched": last_dispatched, "submitted": time.time()}
            _write_json(folder / "state.json", starting)
            try:
                ray_engine.submit(engine, starting["submission"],
                                  train_command(folder, ray_engine.python_executable()))
            except ray_engine.EngineError:
                _write_json(folder / "state.json", state)  # still queued, still first
                order.insert(0, job_id)
                _write_order(jobs_dir, order)
                raise
            active += 1
            counts["submitted"] += 1
        _write_order(jobs_dir, order)
    counts.update(active=active, queued=len(order))
    return counts


def has_open_requests(jobs_dir: Path) -> bool:
    return any(_state_of(jobs_dir / job_id)["state"] in ("queued", *STATES_ACTIVE)
               for job_id in _list_jobs(jobs_dir))


# --------------------------------------------------------------------------- the thread


class Dispatcher:
    """Calls :func:`tick` every second for one jobs folder; starts the engine when a
    request first waits (never while the queue is empty), and stops the local Ray it
    started when this process exits."""

    def __init__(self, jobs_dir: Path):
        self.jobs_dir = Path(jobs_dir)
        self.engine = None
        self.problem: str | None = None
        self.started_engine = False
        self.engine_start_s: float | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xrcompare-dispatcher",
                                        daemon=True)

    def start(self) -> Dispatcher:
        self._thread.start()
        return self

    def wake(self) -> None:
        """Tick now (a request was filed or cancelled)."""
        self._wake.set()

    @property
    def status_text(self) -> str:
        if self.problem:
            return f"the training engine has a problem: {self.problem}"
        if self.engine is None:
            return "starting the training engine (Ray)…" if has_open_requests(self.jobs_dir) \
                else "the training engine (Ray) starts with the first request"
        return f"{self.engine.label}, {ray_engine.slots_for(self.engine)} worker slot(s)"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.engine is None and has_open_requests(self.jobs_dir):
                    began = time.monotonic()
                    found = ray_engine.find_local(self.jobs_dir) \
                        if not ray_engine.cluster_address() else None
                    if found is None and not ray_engine.cluster_address():
                        # Marked before the start: a process that exits while its Ray is
                        # still starting stops it too (its record is written at once).
                        self.started_engine = True
                    self.engine = found or ray_engine.connect(self.jobs_dir)
                    if found is None and self.engine.local:
                        self.engine_start_s = time.monotonic() - began
                    LOG.info("training engine: %s", self.engine.label)
                if self.engine is not None:
                    tick(self.jobs_dir, self.engine)
                self.problem = None
            except (ray_engine.EngineError, ValueError, OSError) as error:
                self.problem = one_line(error)
                LOG.warning("dispatcher: %s", self.problem)
                if self.engine is not None and self.engine.local and \
                        ray_engine.find_local(self.jobs_dir) is None:
                    self.engine = None  # the local Ray is gone: start another
            except Exception as error:  # never let the thread die
                self.problem = f"{type(error).__name__}: {one_line(error)}"
                LOG.exception("dispatcher failed")
            self._wake.wait(TICK_S)
            self._wake.clear()

    def stop(self, stop_engine: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
        if stop_engine and self.started_engine:
            ray_engine.stop_local(self.jobs_dir)


_DISPATCHERS: dict[str, Dispatcher] = {}
_LOCK = threading.Lock()


def dispatcher_enabled() -> bool:
    return os.environ.get(DISPATCHER_VARIABLE, "").strip().lower() not in ("off", "0", "no")


def ensure_dispatcher(jobs_dir: str | Path | None = None) -> Dispatcher | None:
    """This process's dispatcher for the jobs folder (started on first call); None when
    ``$XRCOMPARE_DISPATCHER`` is off (another process dispatches)."""
    if not dispatcher_enabled():
        return None
    jobs_dir = _jobs_dir(jobs_dir).resolve()
    with _LOCK:
        found = _DISPATCHERS.get(str(jobs_dir))
        if found is None:
            found = _DISPATCHERS[str(jobs_dir)] = Dispatcher(jobs_dir).start()
            if len(_DISPATCHERS) == 1:
                atexit.register(stop_dispatchers)
    return found


def stop_dispatchers() -> None:
    """Stop every dispatcher of this process and the local Rays they started."""
    with _LOCK:
        found = list(_DISPATCHERS.values())
        _DISPATCHERS.clear()
    for dispatcher in found:
        dispatcher.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: python -m xrcompare.dispatch [JOBS_FOLDER]", file=sys.stderr)
        return 2
    jobs_dir = Path(argv[0]) if argv else paths.jobs_dir()
    os.environ[DISPATCHER_VARIABLE] = "on"
    dispatcher = ensure_dispatcher(jobs_dir)
    print(f"dispatching {jobs_dir} (Ctrl-C stops it, and the local Ray it started)")
    try:
        while True:
            time.sleep(5)
            if dispatcher.problem:
                print(f"problem: {dispatcher.problem}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        stop_dispatchers()
    return 0


if __name__ == "__main__":
    sys.exit(main())
