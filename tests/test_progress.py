"""Training progress: the event file, the summary a page shows and the time left, from one
cost model that knows each backbone's real input size."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from xrcompare import progress
from xrcompare.progress import (
    area_factor,
    phase_costs,
    progress_file_writer,
    read_progress,
    summarize_progress,
    time_left,
)


def test_progress_summary_phases_fraction_and_curve():
    plan = {"images": 100, "epochs": 4, "backbones": ["resnet50", "vgg16"]}
    tag = {"backbones": 2, "time": 6.0}
    events = [{"phase": "scan", "what": "data", "time": 5.0},
              {"phase": "load_backbone", "backbone": "resnet50", "backbone_index": 1, **tag}]
    summary = summarize_progress(events, plan=plan, started=0.0, now=10.0)
    assert summary["phase_text"].startswith("loading the ImageNet base (backbone 1 of 2")
    fractions = []
    for done, when in ((0, 10.0), (50, 12.0), (100, 14.0)):
        events.append({"phase": "extract", "what": "dataset", "done": done, "total": 100,
                       "cached": 0, "backbone": "resnet50", "backbone_index": 1, **tag,
                       "time": when})
        fractions.append(summarize_progress(events, plan=plan, started=0.0,
                                            now=20.0)["fraction"])
    assert fractions == sorted(fractions) and fractions[-1] < 0.5
    for epoch, when in ((1, 20.0), (2, 22.0)):
        events.append({"phase": "train", "epoch": epoch, "epochs": 4, "fold": 1, "folds": 1,
                       "metrics": {"loss": 1.0 / epoch, "val_accuracy": 0.5},
                       "backbone": "resnet50", "backbone_index": 1, **tag, "time": when})
    summary = summarize_progress(events, plan=plan, started=0.0, now=22.0)
    assert summary["phase_text"] == "training epoch 2 of 4 (backbone 1 of 2: resnet50)"
    assert fractions[-1] < summary["fraction"] < 0.5
    # measured: 0.04 s per image, 2 s per epoch. Left: 2 epochs (4 s) + evaluate/write (2 s)
    # + the second backbone: load 3 s + 100 images 4 s + 4 epochs 8 s + 2 s
    assert summary["eta_seconds"] == pytest.approx(6.0 + 17.0)
    later = summarize_progress(events, plan=plan, started=0.0, now=25.0)
    assert later["eta_seconds"] == pytest.approx(20.0)
    assert [row["loss"] for row in summary["curve"]] == [1.0, 0.5]
    events.append({"phase": "written", "run": "r1", "backbone": "resnet50",
                   "backbone_index": 1, **tag})
    summary = summarize_progress(events, plan=plan, started=0.0, now=40.0)
    assert summary["fraction"] == pytest.approx(0.5) and summary["runs"] == ["r1"]
    failed = summarize_progress(events, plan=plan, state="failed", started=0.0,
                                finished=41.0, now=99.0)
    assert failed["eta_seconds"] is None and failed["elapsed"] == 41.0
    assert failed["phase_text"].startswith("failed during: run written")


def test_a_later_xception_at_its_own_299_px_costs_its_input_area():
    """The second backbone's extraction is estimated at its real size, not at 224 px."""
    plan = {"images": 100, "epochs": 4, "backbones": ["resnet50", "xception"],
            "image_sizes": {"resnet50": 224, "xception": 299}}
    assert area_factor(plan, "xception") == pytest.approx((299 / 224) ** 2)
    assert area_factor({}, "xception") == pytest.approx((299 / 224) ** 2)  # the registry's
    tag = {"backbones": 2, "backbone": "resnet50", "backbone_index": 1}
    events = [{"phase": "extract", "what": "dataset", "done": done, "total": 100,
               "cached": 0, "time": when, **tag} for done, when in ((0, 10.0), (100, 14.0))]
    events.append({"phase": "written", "run": "r1", "time": 20.0, **tag})
    # measured 0.04 s per 224-px image: Xception's 100 images take 4 × (299/224)² s
    left = time_left(events, plan, now=20.0)
    xception = phase_costs(plan, "xception", per_image_224=0.04)
    assert xception["extract"] == pytest.approx(4.0 * (299 / 224) ** 2)
    assert left == pytest.approx(sum(xception.values()))
    same_size = {**plan, "image_sizes": {"resnet50": 224, "xception": 224}}
    assert left - time_left(events, same_size, now=20.0) == pytest.approx(
        4.0 * ((299 / 224) ** 2 - 1))


def test_augmented_views_cost_the_training_images_only_in_both_estimates():
    plan = {"images": 1000, "augment_views": 4, "epochs": 10, "backbones": ["resnet50"],
            "val_fraction": 0.15, "test_fraction": 0.2}
    costs = phase_costs(plan, "resnet50")
    share = 0.8 * 0.85  # what the fractions leave for training
    assert costs["extract"] == pytest.approx(1000 * (1 + 4 * share) * 0.05)
    # cross-validation: every image trains some fold, so all get views
    folds = phase_costs({**plan, "folds": 5}, "resnet50")
    assert folds["extract"] == pytest.approx(1000 * 5 * 0.05)
    assert folds["train"] == pytest.approx(5 * costs["train"])
    # the fraction and the time left read the same model: before any measurement, the time
    # left after loading the base is the whole model minus the loading
    events = [{"phase": "load_backbone", "backbone": "resnet50", "backbone_index": 1,
               "backbones": 1, "time": 100.0}]
    assert time_left(events, plan, now=100.0) == pytest.approx(sum(costs.values()))
    events.append({"phase": "extract", "what": "dataset", "done": 500, "total": 1000,
                   "cached": 0, "backbone": "resnet50", "backbone_index": 1, "backbones": 1,
                   "time": 100.0})
    summary = summarize_progress(events, plan=plan, started=100.0, now=100.0)
    done = costs["load"] + 0.5 * costs["extract"]
    assert summary["fraction"] == pytest.approx(done / sum(costs.values()))


def test_the_progress_file_round_trips_and_skips_a_torn_line(tmp_path):
    write = progress_file_writer(tmp_path / "job" / progress.PROGRESS_FILE)
    write({"phase": "scan", "what": "data"})
    write({"phase": "written", "run": "trained/x"})
    with (tmp_path / "job" / progress.PROGRESS_FILE).open("a", encoding="utf-8") as handle:
        handle.write('{"phase": "done", "ru')  # a line still being written
    events = read_progress(tmp_path / "job")
    assert [event["phase"] for event in events] == ["scan", "written"]
    assert all(isinstance(event["time"], float) for event in events)
    assert progress.written_runs(events) == ["trained/x"] and not progress.finished(events)
    assert read_progress(tmp_path / "job" / progress.PROGRESS_FILE) == events
    assert read_progress(tmp_path / "nowhere") == []


def test_the_cli_reports_progress_without_the_app_job_runner(tmp_path):
    """`python -m xrcompare train` writes progress through xrcompare.progress and never
    imports the app's job runner."""
    code = ("import sys; from xrcompare import cli; cli.build_parser(); "
            "from xrcompare.progress import progress_file_writer; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('xrcompare'))))")
    result = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "xrcompare.jobs" not in json.loads(result.stdout)
    source = (REPO / "xrcompare" / "cli.py").read_text(encoding="utf-8")
    assert "xrcompare.jobs" not in source and "from xrcompare import jobs" not in source
