"""The engine that runs training requests: Ray (no Streamlit here).

A Ray cluster when ``$RAY_ADDRESS`` names one (its dashboard, ``http://head:8265``: the
address Ray Jobs use), else a local Ray this module starts with ``ray start --head --block``
on free loopback ports, capped small (its CPUs are the worker slots, 100 MB of object store),
and records in ``<jobs folder>/engine.json`` so a restarted app finds it again.

Training runs as Ray Jobs: Ray schedules each one's CPUs (and a GPU when the cluster has
them), runs its entrypoint in a process group of its own, keeps its status and its log, and
stops it on request (SIGTERM, SIGKILL a few seconds later); it kills the entrypoint if the
process that supervises it dies. Those are what the old home-made supervisor, lock and
pid/boot-id checks did on one machine.

Stopping the local Ray is SIGTERM to the ``ray start --block`` process this module started
(its pid and temporary folder are in ``engine.json``): it stops every process of that Ray
and no other (never ``ray stop``, which stops every Ray of the user on the machine).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from xrcompare import paths
from xrcompare.jobs import _read_json, _write_json  # the jobs folder's small files

ADDRESS_VARIABLE = "RAY_ADDRESS"
SLOTS_VARIABLE = "XRCOMPARE_TRAIN_SLOTS"
JOB_CPUS_VARIABLE = "XRCOMPARE_JOB_CPUS"
PYTHON_VARIABLE = "XRCOMPARE_RAY_PYTHON"
ENGINE_FILE = "engine.json"
#: How long a local Ray may take to answer after ``ray start`` (about 6 s on 2 cores).
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
OBJECT_STORE_BYTES = 100 * 1024 * 1024
#: Training runs below the web server's priority, so pages stay quick while jobs run.
NICENESS = 10
#: Environment variables a training process gets from the app (the teacher key never).
PASSED_PREFIXES = ("XRCOMPARE_", "KERAS_", "TF_CPP_")


class EngineError(RuntimeError):
    """The engine cannot be reached or started, with one readable line."""


@dataclass(frozen=True)
class Engine:
    """A Ray that takes jobs: ``address`` is its dashboard (Ray Jobs' HTTP address)."""

    address: str
    local: bool
    cpus: float = 0.0
    gpus: float = 0.0
    pid: int | None = None
    temp_dir: str | None = None

    @property
    def label(self) -> str:
        where = "local Ray" if self.local else f"Ray cluster at {self.address}"
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{where} ({self.cpus:g} CPU{gpus})"


# --------------------------------------------------------------------------- settings


def machine_slots() -> int:
    """Training jobs at once on this machine: one per two cores (1 on 2 cores)."""
    return max(1, (os.cpu_count() or 2) // 2)


def configured_slots() -> int | None:
    """``$XRCOMPARE_TRAIN_SLOTS`` (1–256), or None when unset; a bad value is refused."""
    text = os.environ.get(SLOTS_VARIABLE, "").strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise ValueError(f"{SLOTS_VARIABLE} must be a whole number from 1 to 256, not {text!r}")
    return int(text)


def job_cpus() -> float:
    """CPUs Ray reserves for one training job (``$XRCOMPARE_JOB_CPUS``, default 1)."""
    text = os.environ.get(JOB_CPUS_VARIABLE, "").strip() or "1"
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 512:
        raise ValueError(f"{JOB_CPUS_VARIABLE} must be a number of CPUs from 0 to 512, "
                         f"not {text!r}")
    return value


def slots_for(engine: Engine) -> int:
    """Worker slots: ``$XRCOMPARE_TRAIN_SLOTS``, else what the engine's CPUs (or GPUs) allow."""
    configured = configured_slots()
    if configured:
        return configured
    if engine.local:
        return max(1, int(engine.cpus // job_cpus()) or 1)
    if engine.gpus >= 1:
        return max(1, int(engine.gpus))
    return max(1, int(engine.cpus // max(job_cpus(), 2.0)))


def cluster_address() -> str | None:
    value = os.environ.get(ADDRESS_VARIABLE, "").strip()
    return value or None


# --------------------------------------------------------------------------- Ray's client


_CLIENTS: dict[str, object] = {}


def client(address: str):
    """A cached ``JobSubmissionClient`` for the dashboard at ``address``."""
    from ray.job_submission import JobSubmissionClient

    if address not in _CLIENTS:
        try:
            _CLIENTS[address] = JobSubmissionClient(address)
        except Exception as error:  # ConnectionError, ValueError, RuntimeError: Ray's words
            raise EngineError(f"Ray does not answer at {address}: {_one_line(error)}") from error
    return _CLIENTS[address]


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:limit]


def resources(address: str) -> tuple[float, float]:
    """(CPUs, GPUs) of the live nodes of the Ray at ``address`` (its state API)."""
    from ray.util.state import list_nodes

    cpus = gpus = 0.0
    try:
        nodes = list_nodes(address=address, detail=True, raise_on_missing_output=False)
    except Exception as error:
        raise EngineError(f"cannot list the nodes of Ray at {address}: "
                          f"{_one_line(error)}") from error
    for node in nodes:
        if getattr(node, "state", "ALIVE") != "ALIVE":
            continue
        total = getattr(node, "resources_total", None) or {}
        cpus += float(total.get("CPU", 0))
        gpus += float(total.get("GPU", 0))
    return cpus, gpus


def _answers(address: str, timeout: float = 3.0) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{address}/api/version", timeout=timeout) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --------------------------------------------------------------------------- local Ray


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _engine_file(jobs_dir: Path) -> Path:
    return Path(jobs_dir) / ENGINE_FILE


def _is_our_ray(pid: int | None, temp_dir: str | None) -> bool:
    """Whether ``pid`` is the ``ray start`` process of that temporary folder (so a reused pid
    is never signalled)."""
    if not pid or not temp_dir:
        return False
    try:
        command = Path(f"/proc/{int(pid)}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return False
    return "ray" in command and f"--temp-dir={temp_dir}" in command.split("\0")


def find_local(jobs_dir: str | Path) -> Engine | None:
    """The local Ray recorded for this jobs folder, when it is still there and answers."""
    record = _read_json(_engine_file(Path(jobs_dir)))
    if not record or not _is_our_ray(record.get("pid"), record.get("temp_dir")):
        return None
    address = str(record.get("address", ""))
    if not address.startswith("http://127.0.0.1:") or not _answers(address):
        return None
    return Engine(address=address, local=True, cpus=float(record.get("cpus", 1)),
                  gpus=float(record.get("gpus", 0)), pid=int(record["pid"]),
                  temp_dir=str(record["temp_dir"]))


def _ray_environment() -> dict:
    from xrcompare.access import TEACHER_KEY_SECRET, TEACHER_KEY_VARIABLE

    env = dict(os.environ)
    for name in (TEACHER_KEY_VARIABLE, TEACHER_KEY_SECRET, ADDRESS_VARIABLE):
        env.pop(name, None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray 2.5x turns token authentication on for every `ray start` once any ray.init() on
    # this machine has left a token in ~/.ray/auth_token; this Ray listens on 127.0.0.1
    # only and the app calls its dashboard without a token: off, whatever the home holds
    env["RAY_AUTH_MODE"] = "disabled"
    # a training job in the queue waits in the app's queue, not in Ray's: Ray's own pending
    # limit only matters when a cluster is busy with other work
    env.setdefault("RAY_JOB_START_TIMEOUT_SECONDS", "3600")
    return env


def start_local(jobs_dir: str | Path, cpus: int | None = None) -> Engine:
    """Start a local Ray for this jobs folder (or return the one already recorded)."""
    jobs_dir = Path(jobs_dir)
    found = find_local(jobs_dir)
    if found:
        return found
    jobs_dir.mkdir(parents=True, exist_ok=True)
    cpus = int(cpus or (configured_slots() or machine_slots()) * max(1, round(job_cpus())))
    # short: Ray's socket paths must stay under 107 characters
    temp_dir = tempfile.mkdtemp(prefix="xr-ray-", dir="/tmp" if Path("/tmp").is_dir() else None)
    dashboard = _free_port()
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
               f"--num-cpus={cpus}", f"--port={_free_port()}",
               f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
               f"--dashboard-agent-listen-port={_free_port()}",
               f"--ray-client-server-port={_free_port()}",
               f"--object-store-memory={OBJECT_STORE_BYTES}", "--include-dashboard=true",
               "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    if not Path(command[0]).is_file():
        command[0:1] = [sys.executable, "-m", "ray.scripts.scripts"]
    log = (jobs_dir / "engine.log").open("ab")
    started = time.monotonic()
    try:
        process = subprocess.Popen(command, cwd=paths.REPO_ROOT, env=_ray_environment(),
                                   stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    address = f"http://127.0.0.1:{dashboard}"
    record = {"pid": process.pid, "temp_dir": temp_dir, "address": address, "cpus": cpus,
              "gpus": 0, "started": time.time(), "token": secrets.token_hex(4)}
    _write_json(_engine_file(jobs_dir), record)
    while time.monotonic() - started < START_TIMEOUT_S:
        if process.poll() is not None:
            _engine_file(jobs_dir).unlink(missing_ok=True)
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise EngineError(f"the local Ray did not start (exit code {process.returncode}); "
                              f"see {jobs_dir / 'engine.log'}")
        if _answers(address, timeout=1.0):
            break
        time.sleep(0.3)
    else:
        stop_local(jobs_dir)
        raise EngineError(f"the local Ray did not answer within {START_TIMEOUT_S:.0f} s")
    while time.monotonic() - started < START_TIMEOUT_S:  # until the node has registered
        with contextlib.suppress(EngineError):
            found_cpus, found_gpus = resources(address)
            if found_cpus:
                record["cpus"], record["gpus"] = found_cpus, found_gpus
                break
        time.sleep(0.3)
    record["start_s"] = round(time.monotonic() - started, 2)
    _write_json(_engine_file(jobs_dir), record)
    return Engine(address=address, local=True, cpus=float(record["cpus"]),
                  gpus=float(record["gpus"]), pid=process.pid, temp_dir=temp_dir)


def stop_local(jobs_dir: str | Path, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the local Ray recorded for this jobs folder (its jobs end with it); True when
    one was stopped."""
    path = _engine_file(Path(jobs_dir))
    record = _read_json(path) or {}
    pid, temp_dir = record.get("pid"), record.get("temp_dir")
    ours = bool(temp_dir) and Path(temp_dir).name.startswith("xr-ray-")
    deadline = time.monotonic() + timeout
    stopped = False
    if _is_our_ray(pid, temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGTERM)  # --block stops every process of this Ray
        while _is_our_ray(pid, temp_dir) and time.monotonic() < deadline:
            _reap(int(pid))
            time.sleep(0.2)
        if _is_our_ray(pid, temp_dir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)
        _reap(int(pid))
        stopped = True
    if ours:
        # Ray's own processes (GCS, raylet, dashboard, workers, job supervisors) leave after
        # the head, later on a loaded machine, and a head that died leaves them behind: any
        # that still name this Ray's folder are waited for, then killed (this Ray's only).
        while leftover_processes(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        for leftover in leftover_processes(temp_dir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(leftover, signal.SIGKILL)
            _reap(leftover)
        gone_by = time.monotonic() + 5.0
        while leftover_processes(temp_dir) and time.monotonic() < gone_by:
            time.sleep(0.1)
    path.unlink(missing_ok=True)
    if ours:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return stopped


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def leftover_processes(temp_dir: str) -> list[int]:
    """Pids of processes that still name ``temp_dir`` (a check for tests and the CLI)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if temp_dir in command:
            found.append(int(entry.name))
    return found


def connect(jobs_dir: str | Path, *, start: bool = True) -> Engine:
    """The engine for this jobs folder: the cluster at ``$RAY_ADDRESS``, else the local Ray
    (started when ``start`` and none answers)."""
    address = cluster_address()
    if address:
        if not re.match(r"^https?://", address):
            raise EngineError(f"{ADDRESS_VARIABLE} must be the Ray dashboard's address, "
                              f"like http://head-node:8265, not {address!r}")
        address = address.rstrip("/")
        if not _answers(address, timeout=5.0):
            raise EngineError(f"the Ray cluster at {address} does not answer")
        cpus, gpus = resources(address)
        return Engine(address=address, local=False, cpus=cpus, gpus=gpus)
    found = find_local(jobs_dir)
    if found:
        return found
    if not start:
        raise EngineError("no local Ray is running for this jobs folder")
    return start_local(jobs_dir)


# --------------------------------------------------------------------------- jobs


def entrypoint(argv: list[str]) -> str:
    """The shell line Ray runs: the training command from the repository, below the web
    server's priority."""
    return (f"cd {shlex.quote(str(paths.REPO_ROOT))} && exec nice -n {NICENESS} "
            + shlex.join(argv))


def python_executable() -> str:
    return os.environ.get(PYTHON_VARIABLE, "").strip() or sys.executable


def job_environment() -> dict[str, str]:
    from xrcompare.access import TEACHER_KEY_SECRET, TEACHER_KEY_VARIABLE

    env = {name: value for name, value in os.environ.items()
           if name.startswith(PASSED_PREFIXES)
           and name not in (TEACHER_KEY_VARIABLE, TEACHER_KEY_SECRET)}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(paths.REPO_ROOT))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def submit(engine: Engine, submission_id: str, argv: list[str]) -> None:
    """Submit one training command as a Ray Job named ``submission_id`` (Ray refuses a
    second job of the same name, so a request never runs twice)."""
    jobs = client(engine.address)
    env = job_environment()
    if engine.local:  # Ray sets $RAY_ADDRESS in every job: say this one is no cluster
        from xrcompare.ray_extract import LOCAL_RAY_VARIABLE

        env[LOCAL_RAY_VARIABLE] = "1"
    try:
        jobs.submit_job(entrypoint=entrypoint(argv), submission_id=submission_id,
                        runtime_env={"env_vars": env},
                        entrypoint_num_cpus=job_cpus(),
                        entrypoint_num_gpus=1 if engine.gpus >= 1 else None,
                        metadata={"app": "xrcompare"})
    except Exception as error:
        raise EngineError(f"Ray refused the job: {_one_line(error)}") from error


def job_states(engine: Engine) -> dict[str, dict]:
    """Every Ray Job the engine knows: submission id → {"status", "message", "start",
    "end"} (one call)."""
    try:
        listed = client(engine.address).list_jobs()
    except Exception as error:
        raise EngineError(f"cannot list the jobs of Ray at {engine.address}: "
                          f"{_one_line(error)}") from error
    states = {}
    for info in listed:
        if not info.submission_id:
            continue
        status = getattr(info.status, "value", str(info.status))
        states[info.submission_id] = {
            "status": status, "message": info.message or "",
            "start": (info.start_time or 0) / 1000 or None,
            "end": (info.end_time or 0) / 1000 or None}
    return states


def stop_job(engine: Engine, submission_id: str) -> None:
    with contextlib.suppress(Exception):  # already ended, or unknown: nothing to stop
        client(engine.address).stop_job(submission_id)


def job_logs(engine: Engine, submission_id: str) -> str:
    try:
        return client(engine.address).get_job_logs(submission_id)
    except Exception:
        return ""


def exit_code_of(message: str) -> int | None:
    """The entrypoint's exit code as Ray's message gives it, if it does."""
    found = re.search(r"exit code (-?\d+)", message or "")
    return int(found.group(1)) if found else None


def main(argv: list[str] | None = None) -> int:
    """``python -m xrcompare.ray_engine start|stop|status [JOBS_FOLDER]``: the local Ray of a
    jobs folder (default the app's)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("start", "stop", "status") or len(argv) > 2:
        print("usage: python -m xrcompare.ray_engine start|stop|status [JOBS_FOLDER]",
              file=sys.stderr)
        return 2
    jobs_dir = Path(argv[1]) if len(argv) == 2 else paths.jobs_dir()
    try:
        if argv[0] == "start":
            engine = connect(jobs_dir)
            print(f"{engine.label}: {engine.address}")
        elif argv[0] == "stop":
            print("stopped" if stop_local(jobs_dir) else "no local Ray was running")
        else:
            engine = connect(jobs_dir, start=False)
            print(f"{engine.label}: {engine.address}, {slots_for(engine)} slot(s)")
    except (EngineError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
