"""Training jobs: the same start/status/cancel calls the sidebar makes, on real images, real
ResNet50 weights and real subprocesses."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from xrcompare import jobs, progress
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


def start(folders: dict, **overrides) -> jobs.JobStatus:
    """The sidebar's path: form values → TrainConfig → a job."""
    return jobs.start_job(tiny_config(folders, **overrides), jobs_dir=folders["jobs_dir"])


def wait_for(job_id: str, jobs_dir: Path, until, timeout: float = 240) -> jobs.JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.job_status(job_id, jobs_dir)
        if until(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} stuck: {status.state}, {status.progress['phase_text']}"
                         f"\n{chr(10).join(status.log_tail)}")


def tmp_folders(runs_dir: Path) -> list[str]:
    return [p.name for p in runs_dir.glob(".tmp-*")] if runs_dir.is_dir() else []


def supervisor_exited(job_id: str) -> None:
    """Wait for this test's supervisor to exit: it frees the lock just after its last write."""
    child = jobs._CHILDREN.get(job_id)
    if child is not None:
        child.wait(timeout=20)


def signal_masks(pid: int) -> dict[str, int]:
    """The ignored (SigIgn) and caught (SigCgt) signal masks of a live process."""
    rows = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {row.split(":")[0]: int(row.split(":")[1], 16) for row in rows
            if row.startswith(("SigIgn", "SigCgt"))}


# --------------------------------------------------------------------------- real jobs


@pytest.mark.slow
def test_tiny_job_reaches_done_and_its_run_is_listed(folders):
    status = start(folders)
    assert status.active and status.plan["images"] == 3 * PER_CLASS
    # the child trains exactly the configuration the app checked, read from config.json
    assert TrainConfig.read(status.folder / "config.json") == tiny_config(folders)
    assert status.config == tiny_config(folders).to_json()
    final = wait_for(status.job_id, folders["jobs_dir"], lambda s: not s.active)
    assert final.state == "done", (final.error, final.log_tail)
    supervisor_exited(status.job_id)
    # the training process reported its phases through the job's progress file
    events = read_progress(final.folder)
    assert any(e["phase"] == "extract" and e["what"] == "dataset" and e["done"] == e["total"]
               for e in events)
    assert [e["epoch"] for e in events if e["phase"] == "train"] == [1, 2]
    assert events[-1]["phase"] == "done"
    assert final.progress["fraction"] == 1.0
    assert [row["epoch"] for row in final.progress["curve"]] == [1, 2]
    assert {"loss", "val_loss", "accuracy"} <= set(final.progress["curve"][-1])
    listing = list_runs(folders["runs_dir"])
    assert [str(run.path) for run in listing.runs] == final.runs
    assert listing.runs[0].info["image_size"] == SIZE
    assert tmp_folders(folders["runs_dir"]) == []
    assert not (folders["jobs_dir"] / "lock").exists()
    # a job's run ("order": null) lists beside shipped runs that have an order
    assert listing.runs[0].info["order"] is None
    shipped = folders["runs_dir"] / "shipped"
    shutil.copytree(listing.runs[0].path, shipped)
    info = json.loads((shipped / "run.json").read_text())
    (shipped / "run.json").write_text(json.dumps({**info, "order": 1}))
    assert [run.run_id for run in list_runs(folders["runs_dir"]).runs][0] == "shipped"
    # after an "app restart" the outcome is read back from disk
    assert jobs.current_job(folders["jobs_dir"]).state == "done"
    # what this job measured is kept for the next one's estimate
    rates = progress.load_rates(folders["jobs_dir"] / progress.RATES_FILE)
    measured = rates["backbones"]["resnet50"]
    assert measured["load_s"] and measured["sizes"][str(SIZE)]["epoch_s_per_row"]
    assert rates["startup_s"][0] > 0
    # the next job's plan carries those rates and knows its images are in the feature cache,
    # so its first estimate is near what the first job took
    again = preflight(tiny_config(folders, name="again"))
    assert again["cached"]["resnet50"]["dataset"] == again["images"]
    again["rates"] = progress.plan_rates(rates, again)
    assert again["rates"]["backbones"]["resnet50"]["load_s"] == pytest.approx(
        measured["load_s"][0])
    estimate = progress.time_left([], again, now=0.0, started=0.0)
    assert 0.3 * final.elapsed < estimate < 3 * final.elapsed, (estimate, final.elapsed)


@pytest.mark.slow
def test_second_start_is_refused_and_cancel_leaves_no_run(folders):
    status = start(folders, epochs=500, batch_size=2)
    wait_for(status.job_id, folders["jobs_dir"],
             lambda s: s.progress["curve"] or not s.active)
    with pytest.raises(jobs.JobRunning) as refused:
        start(folders)
    assert refused.value.job.job_id == status.job_id
    assert "already running" in str(refused.value)
    # the supervisor catches SIGTERM (to outlive the cancel); the training process does not
    launch = jobs._read_json(status.folder / "launch.json")
    state = jobs._read_json(status.folder / "state.json")
    term = 1 << (signal.SIGTERM - 1)
    assert signal_masks(launch["pid"])["SigCgt"] & term
    assert not signal_masks(state["cli_pid"])["SigIgn"] & term
    # the page's cancel returns at once; the supervisor records the outcome
    asked = time.monotonic()
    cancelling = jobs.request_cancel(status.job_id, folders["jobs_dir"])
    assert time.monotonic() - asked < 2.0
    assert cancelling.cancel_requested
    final = wait_for(status.job_id, folders["jobs_dir"], lambda s: not s.active, timeout=30)
    supervisor_exited(status.job_id)
    assert final.state == "cancelled", (final.error, final.log_tail)
    assert list_runs(folders["runs_dir"]).runs == []
    assert tmp_folders(folders["runs_dir"]) == []
    assert not (folders["jobs_dir"] / "lock").exists()
    state = jobs._read_json(final.folder / "state.json")
    assert jobs.process_identity(state["cli_pid"]) is None  # the training process is gone


@pytest.mark.slow
def test_failing_job_reports_the_cli_error_line(folders):
    status = start(folders, dataset="unreadable")
    final = wait_for(status.job_id, folders["jobs_dir"], lambda s: not s.active)
    supervisor_exited(status.job_id)
    assert final.state == "failed"
    assert "could be read" in final.error and "\n" not in final.error
    assert any(line.startswith("error: ") for line in final.log_tail)
    assert final.exit_code == 2
    assert not (folders["jobs_dir"] / "lock").exists()


@pytest.mark.slow
def test_dead_job_is_detected_as_stale_and_frees_the_lock(folders):
    status = start(folders, epochs=500, batch_size=2)
    running = wait_for(status.job_id, folders["jobs_dir"],
                       lambda s: s.progress["phase_text"] != "starting Python and Keras")
    state = jobs._read_json(running.folder / "state.json")
    # a half-written run of that training process, as a crash during writing would leave
    leftover = folders["runs_dir"] / f".tmp-somerun-{state['cli_pid']}"
    leftover.mkdir(parents=True)
    launch = jobs._read_json(running.folder / "launch.json")
    os.killpg(launch["pid"], signal.SIGKILL)  # like kill -9 or a machine losing power
    final = wait_for(status.job_id, folders["jobs_dir"], lambda s: not s.active, timeout=20)
    assert final.state == "stale"
    assert "without recording an outcome" in final.error
    assert not leftover.exists()
    assert not (folders["jobs_dir"] / "lock").exists()


@pytest.mark.slow
def test_early_cancel_leaves_a_consistent_state(folders):
    """Cancels while the supervisor starts, just before and after it starts the training
    process: always "cancelled", no process left, no run, no half-written run, lock free."""
    for delay in (0.0, 0.05, 0.2, 0.5, 1.0, 2.0):
        status = start(folders, epochs=500, batch_size=2)
        time.sleep(delay)
        final = jobs.cancel_job(status.job_id, folders["jobs_dir"])
        supervisor_exited(status.job_id)
        assert final.state == "cancelled", (delay, final.state, final.error, final.log_tail)
        launch = jobs._read_json(final.folder / "launch.json")
        state = jobs._read_json(final.folder / "state.json")
        assert jobs.process_identity(launch["pid"]) is None
        assert jobs.process_identity(state.get("cli_pid")) is None
        assert list_runs(folders["runs_dir"]).runs == []
        assert tmp_folders(folders["runs_dir"]) == []
        assert not (folders["jobs_dir"] / "lock").exists(), delay


def test_job_folder_failure_surfaces_and_frees_the_lock(folders, monkeypatch):
    # the job folder cannot be made (a file is in the way): that error, not a second one
    monkeypatch.setattr(jobs, "_new_job_id", lambda: "20000101-000000-blocked")
    folders["jobs_dir"].mkdir(parents=True)
    (folders["jobs_dir"] / "20000101-000000-blocked").write_text("in the way")
    with pytest.raises(FileExistsError):
        start(folders)
    assert not (folders["jobs_dir"] / "lock").exists()
    assert jobs.current_job(folders["jobs_dir"]) is None


def test_supervisor_records_a_training_process_that_cannot_start(tmp_path):
    jobs_dir = tmp_path / "jobs"
    folder = jobs_dir / "20000101-000000-nostart"
    folder.mkdir(parents=True)
    jobs._write_json(folder / "job.json", {
        "job_id": folder.name, "created": time.time(), "request": {},
        "plan": {"runs_dir": str(tmp_path / "runs")},
        "argv": [str(tmp_path / "no-such-program"), "train"]})
    assert jobs._try_lock(jobs_dir, folder.name)
    done = subprocess.run([sys.executable, "-m", "xrcompare.jobs", "supervise", str(folder)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    status = jobs.job_status(folder.name, jobs_dir)
    assert status.state == "failed"
    assert status.error.startswith("could not start the training process:")
    assert "no-such-program" in status.error
    assert not (jobs_dir / "lock").exists()


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
    assert not (folders["jobs_dir"] / "lock").exists()
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


def test_process_identity_tells_live_from_dead():
    assert jobs.process_identity(os.getpid()) is not None
    assert jobs.process_identity(os.getpid()) == jobs.process_identity(os.getpid())
    assert jobs.process_identity(2**22 + 12345) is None


def test_failure_reason_prefers_the_cli_error_line():
    tail = ["resnet50 (1/1) load backbone", "error: class 'covid' has images from only 2 "
            "patient(s)", "more"]
    assert jobs.failure_reason(tail, 2).startswith("class 'covid'")
    traceback = ["Traceback (most recent call last):", "  File x", "RuntimeError: boom"]
    assert jobs.failure_reason(traceback, 1) == "RuntimeError: boom"
    assert "signal 9" in jobs.failure_reason([], -9)
