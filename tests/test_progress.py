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
    # no near-duplicate search (an image split), so the first backbone loads like the second
    plan = {"images": 100, "epochs": 4, "backbones": ["resnet50", "vgg16"], "split": "images"}
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
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]
    for epoch, when in ((1, 20.0), (2, 22.0)):
        events.append({"phase": "train", "epoch": epoch, "epochs": 4, "fold": 1, "folds": 1,
                       "metrics": {"loss": 1.0 / epoch, "val_accuracy": 0.5},
                       "backbone": "resnet50", "backbone_index": 1, **tag, "time": when})
    summary = summarize_progress(events, plan=plan, started=0.0, now=22.0)
    assert summary["phase_text"] == "training epoch 2 of 4 (backbone 1 of 2: resnet50)"
    assert fractions[-1] < summary["fraction"]
    # measured: 0.04 s per image, 2 s per epoch. Left: 2 epochs (4 s) + evaluate/write (2 s)
    # + the second backbone at this job's speed: load 3 s + 100 images 4 s + 4 epochs at the
    # default rate (0.4 s) + 2 s
    assert summary["eta_seconds"] == pytest.approx(6.0 + 3.0 + 4.0 + 0.4 + 2.0)
    assert summary["eta_text"] == "about 15 s left (estimate)"
    later = summarize_progress(events, plan=plan, started=0.0, now=25.0)
    assert later["eta_seconds"] == pytest.approx(15.4 - 3.0)  # 3 s into the last 2 epochs
    assert [row["loss"] for row in summary["curve"]] == [1.0, 0.5]
    events.append({"phase": "written", "run": "r1", "backbone": "resnet50",
                   "backbone_index": 1, **tag})
    summary = summarize_progress(events, plan=plan, started=0.0, now=40.0)
    start = sum(progress.start_costs(plan).values())
    first, second = (sum(phase_costs(plan, name).values()) for name in ("resnet50", "vgg16"))
    assert summary["fraction"] == pytest.approx((start + first) / (start + first + second))
    assert summary["fraction"] > fractions[-1]
    assert summary["runs"] == ["r1"]
    failed = summarize_progress(events, plan=plan, state="failed", started=0.0,
                                finished=41.0, now=99.0)
    assert failed["eta_seconds"] is None and failed["elapsed"] == 41.0
    assert failed["eta_text"] == ""
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
    first = phase_costs(plan, "resnet50", first=True)  # + the near-duplicate search
    assert first["load"] == pytest.approx(costs["load"] + 1000 * 0.005)
    events = [{"phase": "load_backbone", "backbone": "resnet50", "backbone_index": 1,
               "backbones": 1, "time": 100.0}]
    assert time_left(events, plan, now=100.0) == pytest.approx(sum(first.values()))
    events.append({"phase": "extract", "what": "dataset", "done": 500, "total": 1000,
                   "cached": 0, "backbone": "resnet50", "backbone_index": 1, "backbones": 1,
                   "time": 100.0})
    summary = summarize_progress(events, plan=plan, started=100.0, now=100.0)
    start = sum(progress.start_costs(plan).values())
    done = start + first["load"] + 0.5 * first["extract"]
    assert summary["fraction"] == pytest.approx(done / (start + sum(first.values())))


def test_images_already_in_the_feature_cache_cost_a_cache_read():
    plan = {"images": 200, "heldout_images": 100, "epochs": 5, "backbones": ["resnet50"],
            "cached": {"resnet50": {"dataset": 150, "heldout": 100}}}
    costs = phase_costs(plan, "resnet50")
    assert costs["extract"] == pytest.approx(50 * 0.05 + 150 * 0.002)
    assert costs["heldout"] == pytest.approx(100 * 0.002)


def test_the_estimate_is_honest_from_the_first_second_and_never_says_zero():
    """Before any event the start-up counts; a step slower than expected keeps the later
    steps in the estimate; once the runs are written the page says "finishing…"."""
    plan = {"images": 100, "epochs": 10, "backbones": ["resnet50"], "heldout_images": 0}
    whole = (sum(progress.start_costs(plan).values())
             + sum(phase_costs(plan, "resnet50", first=True).values()))
    assert time_left([], plan, now=100.0, started=100.0) == pytest.approx(whole)
    assert time_left([], plan, now=103.0, started=100.0) == pytest.approx(whole - 3.0)
    assert time_left([], plan, now=100.0) is None  # no start known: no guess
    # loading the base takes far longer than its 3 s: the estimate keeps what comes after
    events = [{"phase": "load_backbone", "backbone": "resnet50", "backbone_index": 1,
               "backbones": 1, "time": 10.0}]
    costs = phase_costs(plan, "resnet50", first=True)
    after_load = sum(costs.values()) - costs["load"]
    assert time_left(events, plan, now=60.0) == pytest.approx(after_load)
    events.append({"phase": "written", "run": "r", "backbone": "resnet50",
                   "backbone_index": 1, "backbones": 1, "time": 20.0})
    summary = summarize_progress(events, plan=plan, started=0.0, now=21.0)
    assert summary["eta_seconds"] is None and summary["finishing"]
    assert summary["eta_text"] == "finishing…" and "0 s" not in summary["eta_text"]
    assert progress.eta_text(3.2) == "a few seconds left"
    assert progress.eta_text(75) == "about 1 min 15 s left (estimate)"


def test_rates_measured_by_a_job_are_the_next_jobs_priors(tmp_path):
    """A finished job's events → rates.json → the next plan's rates → its estimate."""
    plan = {"images": 100, "epochs": 3, "backbones": ["resnet50"], "split": "patients",
            "image_sizes": {"resnet50": 224}}
    tag = {"backbone": "resnet50", "backbone_index": 1, "backbones": 1}
    events = [{"phase": "scan", "what": "data", "time": 12.0},
              {"phase": "load_backbone", **tag, "time": 12.5},
              {"phase": "scan", "what": "looking for near-duplicate images", "time": 16.5},
              {"phase": "scan", "what": "0 near-duplicate pairs", "time": 17.5},
              *({"phase": "extract", "what": "dataset", "done": done, "total": 100,
                 "cached": 0, **tag, "time": when} for done, when in ((0, 17.5), (100, 27.5))),
              *({"phase": "train", "epoch": epoch, "epochs": 3, "fold": 1, "folds": 1, **tag,
                 "time": 27.5 + 2 * epoch} for epoch in (1, 2, 3)),
              {"phase": "written", "run": "r", **tag, "time": 35.0},
              {"phase": "done", "runs": ["r"], "time": 35.0}]
    measured = progress.measure_job(events, plan, started=2.0)
    assert measured["startup_s"] == pytest.approx(10.0)
    assert measured["scan_s_per_image"] == pytest.approx(0.005)
    assert measured["near_dup_s_per_image"] == pytest.approx(0.01)
    assert measured["backbones"]["resnet50"] == pytest.approx(
        {"size": 224, "load_s": 4.0, "per_image": 0.1, "epoch_s_per_row": 0.02})
    path = tmp_path / progress.RATES_FILE
    for _ in range(progress.RATES_KEPT + 2):
        progress.update_rates(path, measured)
    rates = progress.load_rates(path)
    assert len(rates["startup_s"]) == progress.RATES_KEPT
    # the next job: the same backbone at 299 px, 200 images
    later = {"images": 200, "epochs": 3, "backbones": ["resnet50"], "split": "patients",
             "image_sizes": {"resnet50": 299}}
    later["rates"] = progress.plan_rates(rates, later)
    assert later["rates"]["backbones"]["resnet50"]["per_image"] == pytest.approx(
        0.1 * (299 / 224) ** 2)
    expected = (10.0 + 200 * 0.005) + (4.0 + 200 * 0.01) + 200 * 0.1 * (299 / 224) ** 2 \
        + 3 * 0.02 * 200 + 1.0 + 0.0 + 1.0
    assert time_left([], later, now=50.0, started=50.0) == pytest.approx(expected)
    # a bad rates file is no rates at all
    path.write_text("{not json")
    assert progress.load_rates(path) == {}
    assert progress.plan_rates({}, later) == {"backbones": {}}


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
