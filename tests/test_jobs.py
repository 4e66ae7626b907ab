"""The training queue: the same submit/status/cancel/move calls the sidebar makes; the queue
alone on files, then real requests on a real local Ray with real images and ResNet50 weights."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from xrcompare import dispatch, jobs, progress, ray_engine
from xrcompare.config import FORM_FIELDS, TrainConfig, sidebar_config
from xrcompare.data import DatasetError, list_datasets, resolve_data_folder
from xrcompare.experiment import preflight
from xrcompare.paths import REPO_ROOT
from xrcompare.progress import read_progress
from xrcompare.runs import list_runs

# not `from conftest import DATA`: tests/e2e/conftest.py shadows that module name
DATA = Path(os.environ.get("XRCOMPARE_SHARED", REPO_ROOT.parent / "shared")).resolve() / "data"

PER_CLASS = 8  # the patient-wise split needs 5 patients per class after the test part
SIZE = 64


def make_tiny_dataset(root: Path, name: str = "tiny", per_class: int = PER_CLASS) -> Path:
    """Copy ``per_class`` seed001_0402 images per class, one per patient, with a manifest."""
    folder = root / name
    rows = []
    with (DATA / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["split_pool"] == "seed001_0402":
                rows.append(row)
    chosen, patients = [], set()
    for label in ("covid", "normal", "pneumonia"):
        picked = 0
        for row in sorted(rows, key=lambda r: r["path"]):
            if row["label"] == label and row["patient_id"] not in patients \
                    and picked < per_class:
                patients.add(row["patient_id"])
                chosen.append(row)
                picked += 1
    for row in chosen:
        target = folder / row["label"] / Path(row["path"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / row["path"], target)
    with (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id"])
        for row in chosen:
            writer.writerow([f"{row['label']}/{Path(row['path']).name}", row["patient_id"]])
    return folder


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data-root")
    make_tiny_dataset(root)
    # too few patients per class for a patient-wise split: refused before starting
    few = make_tiny_dataset(root, "two_per_class", per_class=2)
    assert len(list(few.rglob("*.jpg"))) == 6
    # class folders of files that are not images: the training process itself fails
    for label in ("covid", "normal", "pneumonia"):
        for number in range(PER_CLASS):
            path = root / "unreadable" / label / f"{label}_{number}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not a JPEG " + bytes([number]) * 64)
    (root / "not_a_dataset" / "images").mkdir(parents=True)
    return root


@pytest.fixture
def folders(tmp_path, data_root, feature_cache):
    return {"jobs_dir": tmp_path / "jobs", "runs_dir": tmp_path / "runs",
            "data_root": data_root}


def tiny_config(folders: dict, **overrides) -> TrainConfig:
    """What the sidebar form makes of a request (folders kept inside the data root)."""
    values = {"dataset": "tiny", "backbones": ["resnet50"], "epochs": 2, "batch_size": 4,
              "image_size": SIZE, **overrides}
    return sidebar_config(values.pop("dataset"), values.pop("backbones"),
                          values.pop("heldout", None), data_root=folders["data_root"],
                          runs_dir=folders["runs_dir"], **values)


def start(folders: dict, owner: str = "Ann", token: str | None = "ann-token",
          **overrides) -> jobs.JobStatus:
    """The sidebar's path: form values → TrainConfig → a request in the queue."""
    return jobs.submit_request(tiny_config(folders, **overrides), owner, token,
                               jobs_dir=folders["jobs_dir"])


def wait_for(job_id: str, jobs_dir: Path, until, timeout: float = 240) -> jobs.JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.job_status(job_id, jobs_dir)
        if until(status):
            return status
        time.sleep(0.3)
    raise AssertionError(f"request {job_id} stuck: {status.state}, "
                         f"{status.progress['phase_text']}\n{chr(10).join(status.log_tail)}")


def tmp_folders(runs_dir: Path) -> list[str]:
    return [p.name for p in runs_dir.glob(".tmp-*")] if runs_dir.is_dir() else []


# --------------------------------------------------------------------------- the queue alone


def test_requests_queue_in_order_with_their_owners(folders):
    first = start(folders, owner="Ann", token="ann")
    second = start(folders, owner="  Bob   Lee ", token="bob")
    third = start(folders, owner="Cy", token="cy")
    assert [first.position, second.position, third.position] == [1, 2, 3]
    assert first.state == "queued" and not first.active and first.open
    assert second.owner == "Bob Lee"
    assert first.progress["phase_text"] == "waiting in the queue (place 1)"
    job = json.loads((first.folder / "job.json").read_text())
    assert job["owner_key"] == jobs.owner_key("ann") and "ann" not in job.values()
    view = jobs.queue_view(folders["jobs_dir"], max_age=0)
    assert [s.job_id for s in view.queued] == [first.job_id, second.job_id, third.job_id]
    assert view.active == [] and view.finished == []
    # the order is on disk: a restarted app reads the same queue
    order = json.loads((folders["jobs_dir"] / "queue.json").read_text())["order"]
    assert order == [first.job_id, second.job_id, third.job_id]


def test_only_the_owner_or_the_teacher_cancels_and_only_the_teacher_reorders(folders):
    ann = start(folders, owner="Ann", token="ann")
    bob = start(folders, owner="Bob", token="bob")
    cy = start(folders, owner="Cy", token="cy")
    with pytest.raises(jobs.NotAllowed, match="only the teacher or the student"):
        jobs.request_cancel(ann.job_id, folders["jobs_dir"], owner_token="bob")
    with pytest.raises(jobs.NotAllowed):
        jobs.request_cancel(ann.job_id, folders["jobs_dir"], owner_token=None)
    with pytest.raises(jobs.NotAllowed, match="only the teacher can reorder"):
        jobs.move(cy.job_id, 1, folders["jobs_dir"], teacher=False)
    cancelled = jobs.request_cancel(ann.job_id, folders["jobs_dir"], owner_token="ann")
    assert cancelled.state == "cancelled" and cancelled.position is None
    assert jobs.move(cy.job_id, 1, folders["jobs_dir"], teacher=True) == [cy.job_id, bob.job_id]
    assert jobs.job_status(bob.job_id, folders["jobs_dir"]).position == 2
    jobs.request_cancel(bob.job_id, folders["jobs_dir"], teacher=True)
    assert [s.job_id for s in jobs.queue_view(folders["jobs_dir"], max_age=0).queued] == \
        [cy.job_id]
    with pytest.raises(jobs.JobError, match="not waiting"):
        jobs.move(bob.job_id, 1, folders["jobs_dir"], teacher=True)


def test_bad_owners_ids_and_too_many_requests_get_one_sentence(folders, monkeypatch):
    for name, words in (("", "type your name"), ("   ", "type your name"),
                        ("<script>", "a name uses letters"), ("x" * 41, "up to 40")):
        with pytest.raises(jobs.JobError, match=words):
            start(folders, owner=name)
    for job_id in ("../etc", "x", "20000101-000000-abcdef/../../x", 42):
        with pytest.raises(jobs.JobError, match="no such request"):
            jobs.job_status(job_id, folders["jobs_dir"])
    for _ in range(jobs.MAX_OPEN_PER_OWNER):
        start(folders, owner="Dee", token="dee")
    with pytest.raises(jobs.JobError, match="already have 3 requests"):
        start(folders, owner="Dee", token="dee")
    monkeypatch.setattr(jobs, "MAX_OPEN", 3)
    with pytest.raises(jobs.JobError, match="the queue is full"):
        start(folders, owner="Eve", token="eve")


def test_a_damaged_queue_file_loses_no_request(folders):
    ann, bob = start(folders, token="a"), start(folders, owner="Bob", token="b")
    (folders["jobs_dir"] / "queue.json").write_text("{not json")
    assert jobs.read_order(folders["jobs_dir"]) == [ann.job_id, bob.job_id]
    (folders["jobs_dir"] / "queue.json").write_text(json.dumps(
        {"order": [bob.job_id, "../../etc/passwd", 7, bob.job_id]}))
    assert jobs.read_order(folders["jobs_dir"]) == [bob.job_id, ann.job_id]
    (bob.folder / "state.json").write_text("[]")  # unreadable state: still queued
    assert jobs.job_status(bob.job_id, folders["jobs_dir"]).state == "queued"


def test_slots_follow_the_cores_unless_configured(monkeypatch):
    monkeypatch.delenv(ray_engine.SLOTS_VARIABLE, raising=False)
    monkeypatch.delenv(ray_engine.JOB_CPUS_VARIABLE, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert ray_engine.machine_slots() == 1
    local = ray_engine.Engine(address="http://127.0.0.1:1", local=True, cpus=3)
    assert ray_engine.slots_for(local) == 3
    cluster = ray_engine.Engine(address="http://head:8265", local=False, cpus=64, gpus=4)
    assert ray_engine.slots_for(cluster) == 4
    monkeypatch.setenv(ray_engine.SLOTS_VARIABLE, "5")
    assert ray_engine.slots_for(cluster) == 5
    for bad in ("0", "many", "-1", "1000"):
        monkeypatch.setenv(ray_engine.SLOTS_VARIABLE, bad)
        with pytest.raises(ValueError, match="whole number from 1 to 256"):
            ray_engine.configured_slots()
    monkeypatch.setenv(ray_engine.ADDRESS_VARIABLE, "head:6379")
    with pytest.raises(ray_engine.EngineError, match="dashboard's address"):
        ray_engine.connect("/nonexistent")


def test_the_local_ray_starts_when_an_earlier_ray_init_left_a_token(tmp_path, monkeypatch):
    """Any ray.init() on the machine leaves ~/.ray/auth_token, and Ray then turns token
    authentication on for every later `ray start`: the app's dashboard calls, without a
    token, never got an answer ("the local Ray did not answer within 90 s")."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("0" * 64)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv(ray_engine.ADDRESS_VARIABLE, raising=False)
    monkeypatch.setattr(ray_engine, "START_TIMEOUT_S", 45.0)
    jobs_dir = tmp_path / "jobs"
    try:
        engine = ray_engine.start_local(jobs_dir, cpus=1)
        assert engine.cpus == 1
        assert ray_engine.job_states(engine) == {}
    finally:
        record = json.loads((jobs_dir / ray_engine.ENGINE_FILE).read_text()) \
            if (jobs_dir / ray_engine.ENGINE_FILE).is_file() else {}
        ray_engine.stop_local(jobs_dir)
    assert record and ray_engine.leftover_processes(record["temp_dir"]) == []
    assert ray_engine._ray_environment()["RAY_AUTH_MODE"] == "disabled"


def test_the_training_command_carries_its_config_as_a_file_and_runs_below_the_app():
    command = jobs.train_command(Path("/jobs/x"), python="/venv/bin/python")
    assert command[:4] == ["/venv/bin/python", "-m", "xrcompare", "train"]
    assert command[command.index("--config") + 1] == "/jobs/x/config.json"
    assert "--epochs" not in command and "--data" not in command
    line = ray_engine.entrypoint(command)
    assert line.startswith(f"cd {REPO_ROOT} && exec nice -n {ray_engine.NICENESS} ")
    assert ray_engine.exit_code_of("Job entrypoint command failed with exit code 2, ...") == 2


# --------------------------------------------------------------------------- real jobs on Ray


@pytest.mark.slow
def test_requests_run_on_a_real_local_ray_in_queue_order_and_survive_a_restart(folders):
    """Four sessions queue; the teacher moves the last first and a student cancels one
    while it waits; the rest run on a local Ray one at a time in queue order. A long job is
    cancelled by its owner through Ray's stop, another is caught running when the app (and
    its local Ray) stops: it comes back first in the queue and runs again. No run is lost,
    none is written twice, no half-written run or Ray process is left."""
    jobs_dir = folders["jobs_dir"]
    done = start(folders, owner="Ann", token="ann", name="ann-run")
    long_one = start(folders, owner="Bob", token="bob", epochs=500, batch_size=2)
    dropped = start(folders, owner="Cy", token="cy", name="cy-run")
    bad = start(folders, owner="Dee", token="dee", dataset="unreadable")
    jobs.move(bad.job_id, 1, jobs_dir, teacher=True)
    jobs.request_cancel(dropped.job_id, jobs_dir, owner_token="cy")

    started = time.monotonic()
    dispatcher = dispatch.ensure_dispatcher(jobs_dir)
    temp_dirs = []
    try:
        failed = wait_for(bad.job_id, jobs_dir, lambda s: s.state in jobs.STATES_FINAL)
        temp_dirs.append(dispatcher.engine.temp_dir)
        assert dispatcher.engine.local and dispatcher.started_engine
        assert failed.state == "failed", (failed.error, failed.log_tail)
        assert "could be read" in failed.error and "\n" not in failed.error
        assert failed.exit_code == 2
        final = wait_for(done.job_id, jobs_dir, lambda s: s.state in jobs.STATES_FINAL)
        assert final.state == "done", (final.error, final.log_tail)
        events = read_progress(final.folder)
        assert [e["epoch"] for e in events if e["phase"] == "train"] == [1, 2]
        assert final.progress["fraction"] == 1.0 and final.waited > 0
        assert [str(run.path) for run in list_runs(folders["runs_dir"]).runs] == final.runs
        # what this job measured is kept for the next one's estimate
        rates = progress.load_rates(jobs_dir / progress.RATES_FILE)
        assert rates["backbones"]["resnet50"]["load_s"]

        # the long job runs; the app stops (its local Ray with it) and starts again
        wait_for(long_one.job_id, jobs_dir, lambda s: s.state == "running")
        dispatch.stop_dispatchers()
        assert ray_engine.leftover_processes(temp_dirs[0]) == []
        assert jobs.job_status(long_one.job_id, jobs_dir).state == "running"  # on disk
        dispatcher = dispatch.ensure_dispatcher(jobs_dir)
        again = wait_for(long_one.job_id, jobs_dir,
                         lambda s: s.attempts == 2 and s.progress["curve"])
        temp_dirs.append(dispatcher.engine.temp_dir)
        assert "runs again from the start" in (again.note or "")
        with pytest.raises(jobs.NotAllowed):
            jobs.request_cancel(long_one.job_id, jobs_dir, owner_token="ann")
        asked = time.monotonic()
        assert jobs.request_cancel(long_one.job_id, jobs_dir,
                                   owner_token="bob").cancel_requested
        assert time.monotonic() - asked < 2.0
        stopped = wait_for(long_one.job_id, jobs_dir, lambda s: not s.open, timeout=60)
        assert stopped.state == "cancelled", (stopped.error, stopped.log_tail)
        # Ray knows each submission once; the dispatcher handed them out in queue order
        known = ray_engine.job_states(dispatcher.engine)
        assert sorted(known) == [dispatch.submission_id(long_one.job_id, 2)]
    finally:
        dispatch.stop_dispatchers()
    statuses = {s.job_id: s for s in jobs.all_statuses(jobs_dir)}
    assert [statuses[i].state for i in (done.job_id, long_one.job_id, dropped.job_id,
                                        bad.job_id)] == ["done", "cancelled", "cancelled",
                                                         "failed"]
    assert statuses[bad.job_id].dispatched < statuses[done.job_id].dispatched
    assert statuses[dropped.job_id].dispatched is None  # cancelled while waiting: never ran
    assert [run.run_id for run in list_runs(folders["runs_dir"]).runs] == ["ann-run"]
    assert tmp_folders(folders["runs_dir"]) == []
    for temp_dir in temp_dirs:
        assert ray_engine.leftover_processes(temp_dir) == []
    assert not (jobs_dir / ray_engine.ENGINE_FILE).exists()
    assert time.monotonic() - started < 300


# --------------------------------------------------------------------------- refused requests


def test_bad_folders_are_refused_with_a_readable_line(folders, tmp_path):
    for dataset, words in (("not_a_dataset", "no class folders"),
                           ("two_per_class", "patient-wise split needs at least"),
                           ("missing", "does not exist"),
                           ("../", "outside the data root"),
                           (str(DATA / "seed001_0402"), "outside the data root"),
                           ("", "choose a dataset")):
        with pytest.raises(ValueError, match=words):
            start(folders, dataset=dataset)
    link = folders["data_root"] / "escape"
    link.symlink_to(DATA, target_is_directory=True)
    try:
        with pytest.raises(DatasetError, match="outside the data root"):
            start(folders, dataset="escape/seed001_0402")
    finally:
        link.unlink()
    with pytest.raises(DatasetError, match="must differ"):
        start(folders, heldout="tiny")
    # two_per_class holds images of tiny's patients: it is not held out, and says so
    with pytest.raises(DatasetError, match="6 of the 6 images of two_per_class belong to "
                                           "patients of tiny, so two_per_class is not held"):
        start(folders, heldout="two_per_class")
    # a run name that exists already
    (folders["runs_dir"] / "taken").mkdir(parents=True)
    with pytest.raises(ValueError, match="a run named taken already exists"):
        start(folders, name="taken")
    assert jobs.current_job(folders["jobs_dir"]) is None


def test_the_command_line_refuses_a_held_out_folder_of_the_training_patients(data_root,
                                                                            tmp_path):
    """The same rule on the command line, before any base is built."""
    result = subprocess.run(
        [sys.executable, "-m", "xrcompare", "train", "--data", str(data_root / "tiny"),
         "--backbone", "resnet50", "--heldout", str(data_root / "two_per_class"),
         "--runs-dir", str(tmp_path / "runs"), "--image-size", str(SIZE)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: 6 of the 6 images of two_per_class")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_runs_folder_that_cannot_take_a_run_is_refused_before_starting(folders, tmp_path):
    in_the_way = tmp_path / "runs-file"
    in_the_way.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        start({**folders, "runs_dir": in_the_way})
    with pytest.raises(ValueError, match="cannot create the runs folder"):
        start({**folders, "runs_dir": Path("/proc/xrcompare-runs")})
    assert jobs.current_job(folders["jobs_dir"]) is None


def test_a_single_class_dataset_is_refused_before_starting(folders):
    one = folders["data_root"] / "one_class"
    shutil.copytree(folders["data_root"] / "tiny" / "covid", one / "covid")
    try:
        with pytest.raises(ValueError, match="only one class"):
            start(folders, dataset="one_class")
    finally:
        shutil.rmtree(one)


def test_parameters_are_guarded(folders):
    for overrides, words in (({"epochs": 0}, "epochs"), ({"batch_size": 1.5}, "batch size"),
                             ({"learning_rate": 5.0}, "learning rate"),
                             ({"image_size": 16}, "image size"),
                             ({"augment_views": 40}, "augmentation views"),
                             ({"backbones": []}, "at least one backbone"),
                             ({"backbones": ["alexnet"]}, "unknown backbone")):
        with pytest.raises(ValueError, match=words):
            start(folders, **overrides)


def test_backbone_without_weights_is_refused(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("XRCOMPARE_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    with pytest.raises(ValueError, match="no ImageNet weights for VGG16"):
        start(folders, backbones=["vgg16"])


def test_request_defaults_are_the_train_config_defaults(folders):
    defaults = {item.name: item.default for item in fields(TrainConfig)}
    plan = preflight(sidebar_config("tiny", ["resnet50"], data_root=folders["data_root"],
                                    runs_dir=folders["runs_dir"]))
    assert plan["epochs"] == defaults["epochs"]
    assert plan["augment_views"] == defaults["augment_views"]
    assert plan["image_sizes"] == {"resnet50": 224}  # the backbone's own size
    config = tiny_config(folders)
    assert config.batch_size == 4 and config.seed == defaults["seed"]
    # a form value left at None takes TrainConfig's default
    assert tiny_config(folders, seed=None).seed == defaults["seed"]
    assert set(FORM_FIELDS) == {"epochs", "batch_size", "learning_rate", "image_size",
                                "augment_views", "seed", "positive", "weights", "fine_tune",
                                "name"}
    # a random-init control and a run name from the form
    control = tiny_config(folders, weights="random", name="my-control")
    assert control.weights == "random" and control.name == "my-control"
    # the child's command carries the configuration as a file, not as flags
    command = jobs.train_command(Path("/jobs/x"))
    assert command[command.index("--config") + 1] == "/jobs/x/config.json"
    assert "--epochs" not in command and "--data" not in command


def test_datasets_are_listed_from_the_data_root(data_root):
    assert list_datasets(data_root) == ["tiny", "two_per_class", "unreadable"]
    assert {"seed001_0402", "kaggle_test", "cxr3"} <= set(list_datasets(DATA))
    assert resolve_data_folder("tiny/", data_root) == (data_root / "tiny").resolve()
    assert resolve_data_folder(data_root / "tiny", data_root).name == "tiny"


def test_failure_reason_prefers_the_cli_error_line():
    tail = ["resnet50 (1/1) load backbone", "error: class 'covid' has images from only 2 "
            "patient(s)", "more"]
    assert jobs.failure_reason(tail, 2).startswith("class 'covid'")
    traceback = ["Traceback (most recent call last):", "  File x", "RuntimeError: boom"]
    assert jobs.failure_reason(traceback, 1) == "RuntimeError: boom"
    assert "signal 9" in jobs.failure_reason([], -9)


@pytest.mark.slow
def test_an_app_that_stops_while_its_ray_starts_leaves_no_ray_behind(folders):
    """The dispatcher marks the local Ray as its own before starting it: stopped while
    that Ray is still starting (the app closed right after the first request), it stops
    it, and none of its processes stay."""
    jobs_dir = folders["jobs_dir"]
    start(folders, owner="Ann", token="ann")
    dispatcher = dispatch.Dispatcher(jobs_dir).start()
    record_file = jobs_dir / ray_engine.ENGINE_FILE
    deadline = time.monotonic() + 30
    while not record_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    record = json.loads(record_file.read_text())
    try:
        assert dispatcher.engine is None and dispatcher.started_engine  # still starting
    finally:
        dispatcher.stop()
    assert ray_engine.leftover_processes(record["temp_dir"]) == []
    assert not record_file.exists() and ray_engine.find_local(jobs_dir) is None
