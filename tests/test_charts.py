"""The dashboard's pure logic: threshold tables, figures and per-run tables (xrcompare.charts)
and the data-folder helpers of xrcompare.summary, on small known cases and on the shipped
runs in trained/."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from conftest import DATA, REPO

from xrcompare import CLASSES, charts
from xrcompare.backbones import REGISTRY
from xrcompare.evaluate import binary_operating_point, evaluate_predictions
from xrcompare.runs import Run, RunError, heldout_names, list_runs, load_run
from xrcompare.summary import (
    class_sources,
    extract_throughput,
    image_origin,
    leaderboard,
    sample_files,
    sample_heldout_files,
)

# --------------------------------------------------------------------------- helpers


def make_run(run_id: str, labels: list[str], probabilities, *, heldout=None,
             weights: str = "imagenet", display_name: str | None = None,
             history: pd.DataFrame | None = None) -> Run:
    """A Run built in memory from predictions, with metrics computed by xrcompare.evaluate."""
    probabilities = np.asarray(probabilities, dtype=float)
    rows = [{"path": f"{label}/img{i}.jpg", "split": "test", "label": label,
             "patient_id": f"p{i}", **{f"prob_{c}": probabilities[i, k]
                                       for k, c in enumerate(CLASSES)}}
            for i, label in enumerate(labels)]
    metrics = {"test": evaluate_predictions(labels, probabilities, repeats=50), "heldout": {}}
    info = {"backbone": "resnet50", "backbone_display": "ResNet50", "weights": weights,
            "display_name": display_name or run_id, "classes": list(CLASSES),
            "image_size": 224, "resize_mode": "squash", "best_epoch": 2, "epochs_run": 3,
            "data": {"name": "toy", "class_folders": {c: c for c in CLASSES}},
            "split": {"summary": {"test": {"images": len(labels), "patients": len(labels),
                                           "class_counts": pd.Series(labels).value_counts()
                                           .to_dict()}},
                      "files": {"test": [row["path"] for row in rows]}},
            "heldout": []}
    if heldout is not None:
        name, held_labels, held_probabilities = heldout
        held_probabilities = np.asarray(held_probabilities, dtype=float)
        rows += [{"path": f"{label.upper()}/h{i}.jpg", "split": f"heldout:{name}",
                  "label": label, "patient_id": f"h{i}",
                  **{f"prob_{c}": held_probabilities[i, k] for k, c in enumerate(CLASSES)}}
                 for i, label in enumerate(held_labels)]
        metrics["heldout"][name] = evaluate_predictions(held_labels, held_probabilities,
                                                        repeats=50)
        info["heldout"].append({"name": name, "folder": f"/nonexistent/{name}"})
    history = history if history is not None else pd.DataFrame(
        {"epoch": [1, 2, 3], "loss": [1.0, 0.5, 0.4], "accuracy": [0.5, 0.8, 0.9],
         "val_loss": [1.1, 0.6, 0.7], "val_accuracy": [0.4, 0.7, 0.65]})
    return Run(Path(f"/nonexistent/{run_id}"), info, metrics, history, pd.DataFrame(rows))


def one_hot_probabilities(predicted: list[str], confidence: float = 0.8) -> np.ndarray:
    rest = (1 - confidence) / 2
    return np.array([[confidence if c == p else rest for c in CLASSES] for p in predicted])


@pytest.fixture(scope="module")
def shipped_runs() -> list[Run]:
    listing = list_runs(REPO / "trained")
    assert listing.runs, "the shipped runs in trained/ are expected (at least one)"
    assert not listing.problems, listing.problems
    return listing.runs


# --------------------------------------------------------------------------- thresholds


def test_threshold_tables_follow_the_controls():
    labels = ["covid"] * 4 + ["normal"] * 3 + ["pneumonia"] * 3
    probabilities = np.array([
        [0.95, 0.03, 0.02], [0.7, 0.2, 0.1], [0.45, 0.5, 0.05], [0.2, 0.1, 0.7],
        [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.05, 0.9, 0.05],
        [0.3, 0.1, 0.6], [0.02, 0.08, 0.9], [0.1, 0.1, 0.8]])
    run = make_run("toy", labels, probabilities)
    low = charts.threshold_tables([run], "covid", 0.25, 0.95, 10)
    high = charts.threshold_tables([run], "covid", 0.9, 0.95, 10)
    assert low["at_threshold"]["sensitivity"].iloc[0] == pytest.approx(0.75)
    assert high["at_threshold"]["sensitivity"].iloc[0] == pytest.approx(0.25)
    assert (low["at_threshold"]["fp"].iloc[0], high["at_threshold"]["fp"].iloc[0]) == (2, 0)
    target = low["target"].iloc[0]
    assert target["threshold"] == pytest.approx(0.2)
    assert (target["sensitivity"], target["fp"]) == (1.0, 2)  # 0.6 and 0.3 pass 0.2
    cheap = low["cheapest"].iloc[0]
    assert cheap["cost"] == 10 * cheap["fn"] + cheap["fp"]
    assert cheap["rule"].startswith("call covid when p ≥")


def test_threshold_tables_skip_runs_without_positives():
    run = make_run("no-covid", ["normal", "pneumonia"],
                   one_hot_probabilities(["normal", "pneumonia"]))
    tables = charts.threshold_tables([run], "covid", 0.5, 0.95, 10)
    assert tables["skipped"] == ["no-covid"]
    assert tables["at_threshold"].empty


def test_undefined_rates_become_blank_not_none():
    labels = ["covid", "normal"]
    run = make_run("toy", labels, one_hot_probabilities(["normal", "normal"], 0.9))
    tables = charts.threshold_tables([run], "covid", 0.99, 0.95, 1)
    assert np.isnan(tables["at_threshold"]["ppv"].iloc[0])  # nothing called covid
    assert tables["at_threshold"]["ppv"].dtype == float


# --------------------------------------------------------------------------- figures


def test_curves_and_operating_points_on_roc_and_pr():
    labels = ["covid", "covid", "normal", "pneumonia"]
    run = make_run("toy", labels, one_hot_probabilities(["covid", "normal", "normal",
                                                         "pneumonia"]))
    curves = charts.curves_for_runs([run], "covid")
    points = charts.threshold_tables([run], "covid", 0.5, 0.95, 10)["at_threshold"]
    roc = charts.roc_figure(curves, points, {"toy": "#123456"})
    names = [trace.name for trace in roc.data]
    assert any(name.startswith("toy (AUC ") for name in names)
    marker = [trace for trace in roc.data if trace.mode == "markers"][0]
    assert marker.x[0] == pytest.approx(1 - points["specificity"].iloc[0])
    assert marker.y[0] == pytest.approx(points["sensitivity"].iloc[0])
    pr = charts.precision_recall_figure(curves, points)
    assert any(trace.name.startswith("toy (AP ") for trace in pr.data)
    assert tuple(charts.roc_figure(curves, points, zoom=True).layout.xaxis.range) == (-0.005, 0.3)
    assert charts.precision_recall_figure(curves, points, zoom=True).layout.yaxis.range[0] == 0.7
    cost = charts.cost_figure([run], "covid", 5)
    assert cost.layout.yaxis.range[1] > 0


def test_confusion_figure_outlines_covid_errors_and_normalises_rows():
    metrics = {"labels": list(CLASSES), "confusion_matrix": [[8, 1, 1], [2, 7, 1], [0, 0, 10]]}
    counts = charts.confusion_figure(metrics, title="a very long run title that must wrap "
                                                   "onto two lines")
    assert len(counts.layout.shapes) == 3  # FN → normal, FN → pneumonia, FP from normal
    assert "<br>" in counts.layout.title.text
    shares = charts.confusion_figure(metrics, normalise=True)
    assert np.allclose(np.asarray(shares.data[0].z).sum(axis=1), 1.0)
    errors = charts.covid_errors(metrics)
    assert (errors["fn"], errors["fp"], errors["positives"], errors["negatives"]) == \
        (2, 2, 10, 20)
    assert errors["fn_to"] == {"normal": 1, "pneumonia": 1}


def test_confusion_of_a_heldout_folder_drops_the_empty_covid_row():
    metrics = {"labels": list(CLASSES), "confusion_matrix": [[0, 0, 0], [5, 20, 3], [2, 1, 30]]}
    figure = charts.confusion_figure(metrics)
    assert list(figure.data[0].y) == ["normal", "pneumonia"]
    errors = charts.covid_errors(metrics)
    assert errors["fn"] is None and errors["fp"] == 7


def test_per_class_figure_has_interval_error_bars(shipped_runs):
    table = charts.per_class_frame(shipped_runs)
    assert set(table["class"]) == {label for run in shipped_runs for label in run.labels}
    assert set(CLASSES) <= set(table["class"])  # the three-class runs, besides derived ones
    assert len(table) == sum(len(run.labels) for run in shipped_runs)
    figure = charts.per_class_figure(table, "recall")
    assert len(figure.data) == len(shipped_runs)
    assert all(trace.error_y.array is not None for trace in figure.data)
    with pytest.raises(ValueError):
        charts.per_class_figure(table, "accuracy")


def test_training_curves_mark_the_kept_epoch():
    run = make_run("toy", ["covid"], one_hot_probabilities(["covid"]))
    figure = charts.training_curves_figure(run.history, 2, "toy")
    assert len(figure.data) == 4
    assert {trace.name for trace in figure.data} == {"training", "validation"}
    assert any(shape.x0 == 2 for shape in figure.layout.shapes)
    without_val = charts.training_curves_figure(run.history[["epoch", "loss", "accuracy"]])
    assert len(without_val.data) == 2


def test_training_curves_of_a_run_that_chose_its_epoch_on_test():
    history = pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.5], "accuracy": [0.5, 0.8],
                            "test_loss": [1.1, 0.9], "test_accuracy": [0.4, 0.6]})
    figure = charts.training_curves_figure(history, 2, "leaky")
    assert {trace.name for trace in figure.data} == {"training", "test (picked the epoch)"}


def test_the_blog_reference_sits_right_after_its_vgg16_reproductions():
    held_labels = ["normal", "pneumonia"]
    held = ("kaggle_test", held_labels, one_hot_probabilities(held_labels))
    runs = [make_run(name, ["covid"], one_hot_probabilities(["covid"]), heldout=held)
            for name in ("main", "vgg16-blog", "other")]
    runs[1].info.update(backbone="vgg16", data={"name": "seed001_0402"})
    shares = charts.heldout_shares(runs, "kaggle_test")
    assert list(dict.fromkeys(shares["run"])) == ["main", "vgg16-blog",
                                                  charts.BLOG_REFERENCE_NAME, "other"]
    runs[1].info.update(backbone="resnet50")  # no reproduction: the reference goes last
    shares = charts.heldout_shares(runs, "kaggle_test")
    assert list(dict.fromkeys(shares["run"]))[-1] == charts.BLOG_REFERENCE_NAME


def test_heldout_shares_add_the_blog_reference():
    held_labels = ["normal"] * 4 + ["pneumonia"] * 4
    predicted = ["normal", "covid", "normal", "pneumonia", "pneumonia", "pneumonia", "covid",
                 "normal"]
    run = make_run("toy", ["covid", "normal"], one_hot_probabilities(["covid", "normal"]),
                   heldout=("kaggle_test", held_labels, one_hot_probabilities(predicted)))
    shares = charts.heldout_shares([run], "kaggle_test", reference=True)
    totals = shares.groupby(["run", "true_class"])["percent"].sum()
    assert np.allclose(totals, 100)
    reference = shares[shares["reference"]].set_index(["true_class", "predicted"])["percent"]
    assert reference[("normal", "normal")] == 68 and reference[("normal", "covid")] == 16
    assert reference[("normal", "pneumonia")] == 16
    assert reference[("pneumonia", "pneumonia")] == 85
    assert reference[("pneumonia", "covid")] == pytest.approx(3)
    ours = shares[~shares["reference"]].set_index(["true_class", "predicted"])["percent"]
    assert ours[("normal", "covid")] == 25 and ours[("pneumonia", "covid")] == 25
    summary = charts.heldout_summary(shares).set_index("run")
    assert summary.loc["toy", "normal_non_covid_pct"] == 75
    assert summary.loc[charts.BLOG_REFERENCE_NAME, "pneumonia_non_covid_pct"] == 97
    figure = charts.heldout_figure(shares, "kaggle_test")
    assert len(figure.data) == 2 * len(CLASSES)
    assert charts.called_as(run.metrics["heldout"]["kaggle_test"], "pneumonia") == (1, 4)
    counts = charts.called_as_by_run([run], "kaggle_test", "pneumonia", labels={"toy": "Toy"})
    assert counts.to_dict("records") == [{"run": "Toy", "resize_mode": run.info["resize_mode"],
                                          "called": 1, "total": 4}]
    assert charts.called_as_by_run([run], "elsewhere").empty
    assert charts.heldout_shares([run], "elsewhere").empty


def test_worst_mistakes_are_wrong_and_most_confident_first():
    labels = ["normal", "normal", "normal", "pneumonia"]
    probabilities = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1],
                              [0.2, 0.7, 0.1]])
    run = make_run("toy", labels, probabilities)
    mistakes = charts.worst_mistakes(run, "test", count=5)
    assert list(mistakes["confidence"]) == [0.9, 0.7, 0.6]
    assert (mistakes["predicted"] != mistakes["label"]).all()
    called = charts.worst_mistakes(run, "test", called="covid")
    assert list(called["predicted"]) == ["covid", "covid"]


def test_run_labels_disambiguate_repeated_titles():
    first = make_run("a", ["covid"], one_hot_probabilities(["covid"]), display_name="Same")
    second = make_run("b", ["covid"], one_hot_probabilities(["covid"]), display_name="Same")
    control = make_run("c", ["covid"], one_hot_probabilities(["covid"]), weights="random",
                       display_name="ResNet50 · toy")
    labels = charts.run_labels([first, second, control])
    assert labels == {"a": "Same (a)", "b": "Same (b)",
                      "c": "ResNet50 · toy [random-init control]"}
    colors = charts.run_colors(list(labels.values()))
    assert len(set(colors.values())) == 3


def test_wrap_title_and_thumbnail():
    assert charts.wrap_title("short") == "short"
    assert charts.wrap_title("one two three four", width=8) == "one two<br>three<br>four"
    image = np.zeros((400, 200), dtype=np.uint8)
    assert charts.thumbnail(image, 100).shape == (100, 50)
    assert charts.thumbnail(image, 800).shape == (400, 200)  # never enlarged
    with pytest.raises(ValueError):
        charts.thumbnail(image, 2)


def test_split_counts_add_up_to_the_split_summary(shipped_runs):
    for run in shipped_runs:
        counts = charts.split_counts(run)
        summary = run.info["split"]["summary"]
        for split, entry in summary.items():
            assert counts[counts["split"] == split]["images"].sum() == entry["images"]
        figure = charts.split_counts_figure(counts)
        assert isinstance(figure, go.Figure) and figure.data


# --------------------------------------------------------------------------- shipped runs


def test_every_figure_builds_for_every_shipped_run(shipped_runs):
    labels = charts.run_labels(shipped_runs)
    colors = charts.run_colors(list(labels.values()))
    tables = charts.threshold_tables(shipped_runs, "covid", 0.5, 0.95, 10, labels)
    assert len(tables["target"]) == len(shipped_runs)
    assert (tables["target"]["sensitivity"] >= 0.95).all()
    curves = charts.curves_for_runs(shipped_runs, "covid", labels)
    assert set(curves) == set(labels.values())
    charts.roc_figure(curves, tables["at_threshold"], colors)
    charts.precision_recall_figure(curves, tables["at_threshold"], colors)
    charts.cost_figure(shipped_runs, "covid", 10, labels, colors)
    for run in shipped_runs:
        charts.confusion_figure(run.metrics["test"], title=labels[run.run_id])
        charts.training_curves_figure(run.history, run.info.get("best_epoch"))
        assert run.split_predictions("test")["label"].nunique() == len(run.labels)
    for name in heldout_names(shipped_runs):
        shares = charts.heldout_shares(shipped_runs, name, labels)
        # the blog reported kaggle_test itself, not a derived copy of it
        assert (charts.BLOG_REFERENCE_NAME in set(shares["run"])) == (name == "kaggle_test")
        charts.heldout_figure(shares, name)


def test_sensitivity_table_answers_the_classroom_question(shipped_runs):
    """'What threshold gives COVID sensitivity ≥ 0.95 for each run, and what does it cost in
    false positives': checked against a brute-force search over every threshold."""
    table = charts.threshold_tables(shipped_runs, "covid", 0.5, 0.95, 10)["target"]
    for run, row in zip(shipped_runs, table.itertuples(), strict=True):
        positive, score = charts.binary_scores(run, "covid")
        point = binary_operating_point(positive, score, row.threshold)
        assert point["sensitivity"] == pytest.approx(row.sensitivity) and point["fp"] == row.fp
        fewest = min(binary_operating_point(positive, score, t)["fp"] for t in np.unique(score)
                     if binary_operating_point(positive, score, t)["sensitivity"] >= 0.95)
        assert row.fp == fewest


# --------------------------------------------------------------------------- data folders


def with_data(run: Run, **record) -> Run:
    """A copy of ``run`` (in memory) whose training-data record is ``record``."""
    return Run(run.path, {**run.info, "data": record}, run.metrics, run.history,
               run.predictions, run.modified)


def test_data_folder_tries_absolute_then_relative_inside_the_data_root(tmp_path, shipped_runs):
    run = shipped_runs[0]
    folder = tmp_path / "data"
    folder.mkdir()
    assert with_data(run, folder_absolute=str(folder)).data_folder(data_root=tmp_path) == folder
    # "../shared/data" relative to the repository (its real path: ../shared may be a link)
    relative = os.path.relpath(DATA, REPO)
    moved = with_data(run, folder_absolute="/nowhere/x", folder=f"{relative}/cxr3")
    assert moved.data_folder(data_root=DATA).resolve() == (DATA / "cxr3").resolve()
    gone = with_data(run, folder_absolute="/nowhere/x", folder="../nowhere")
    assert gone.data_folder(data_root=tmp_path) is None
    assert with_data(run).data_folder(data_root=tmp_path) is None


def test_shipped_runs_find_their_data_and_manifest(shipped_runs):
    for run in shipped_runs:
        if run.info["data"]["folder"].startswith(".derived/"):
            # a derived dataset's links (make_trained.py writes them beside the repository's
            # files, outside the data root): absent on a fresh clone, refused where present
            try:
                assert run.data_folder() is None
            except RunError as error:
                assert "outside the data root" in str(error)
            continue
        folder = run.data_folder()
        assert folder is not None and folder.name == run.info["data"]["name"]
        manifest = run.manifest_path()
        assert manifest is not None and manifest.name == "manifest.csv"
        samples = sample_files(run, per_class=3)
        assert set(samples) == set(CLASSES)
        for paths in samples.values():
            assert len(paths) == 3 and all(run.image_path(path).is_file() for path in paths)
        for entry in run.info["heldout"]:
            assert run.data_folder(entry["name"]) is not None
            for paths in sample_heldout_files(run, entry["name"], per_class=2).values():
                assert all(run.image_path(path, entry["name"]).is_file() for path in paths)


def test_class_sources_show_where_each_class_comes_from():
    manifest = pd.read_csv(DATA / "manifest.csv")
    table = class_sources(manifest, "seed001_0402").set_index("class")
    assert table.loc["covid", "origin"].startswith("Cohen")
    assert table.loc["normal", "origin"].startswith("Kermany")
    assert table["images"].sum() == 305
    assert "AP" in table.loc["normal", "views"]
    with pytest.raises(ValueError, match="lacks columns"):
        class_sources(manifest[["path", "label"]], "seed001_0402")
    assert image_origin("somewhere/else") == "somewhere/else"


def test_a_run_moved_to_another_machine_still_finds_its_folder(tmp_path, shipped_runs):
    """folder_absolute from another machine is skipped; the relative folder is used."""
    run = shipped_runs[0]
    copy = tmp_path / run.run_id
    shutil.copytree(run.path, copy)
    info = json.loads((copy / "run.json").read_text())
    info["data"]["folder_absolute"] = "/elsewhere/data/" + info["data"]["name"]
    (copy / "run.json").write_text(json.dumps(info))
    assert load_run(copy).data_folder() is not None


# --------------------------------------------------------------------------- leaderboard


def test_leaderboard_adds_base_parameters_run_size_and_measured_throughput(shipped_runs,
                                                                           tmp_path):
    runs = shipped_runs
    measured = tmp_path / "extract_throughput.json"
    measured.write_text(json.dumps({
        "machine": "test box", "measured": "2026-12-02",
        "backbones": {"ResNet50": {"pipeline_images_per_s": 37.5, "image_size": 224,
                                   "batch_size": 32},
                      "vgg16": {"pipeline_images_per_s": "fast"}}}), encoding="utf-8")
    throughput = extract_throughput(measured)
    assert throughput["machine"] == "test box"
    assert set(throughput["backbones"]) == {"resnet50"}  # the malformed entry is dropped
    table = leaderboard(runs, throughput).set_index("run_id")
    for run in runs:
        row = table.loc[run.run_id]
        assert row["run_size_bytes"] == sum(p.stat().st_size for p in run.path.rglob("*")
                                            if p.is_file())
        if not run.is_cnn:  # the image-statistics baseline has no base
            assert pd.isna(row["base_params"]) and pd.isna(row["extract_images_per_s"])
            continue
        assert row["base_params"] == REGISTRY[run.backbone].base_params
        if run.backbone == "resnet50" and run.info["image_size"] == 224:
            assert row["extract_images_per_s"] == 37.5
        else:  # another backbone, or measured at another input size: not this run's figure
            assert pd.isna(row["extract_images_per_s"])
    assert table.loc["resnet50-cxr3-288px", "image_size"] == 288
    missing = leaderboard(runs, extract_throughput(tmp_path / "absent.json"))
    assert missing["extract_images_per_s"].isna().all()
    (tmp_path / "bad.json").write_text("[1, 2", encoding="utf-8")
    assert extract_throughput(tmp_path / "bad.json")["backbones"] == {}


# --------------------------------------------------------------------------- what runs recorded


def test_held_out_patient_overlap_and_the_padding_contrast_come_from_the_runs(shipped_runs):
    """Run answers both questions the pages quote: the blog-data run shares 12 Kermany
    patients (13 images) with kaggle_test, cxr3 runs none; and the padded run's count of
    Kaggle pneumonia images called covid sits beside its squashed twin's."""
    from xrcompare.summary import resize_contrast

    by_id = {run.run_id: run for run in shipped_runs}
    blog = by_id["resnet50-seed001-blog"]
    overlap = blog.patient_overlap("kaggle_test")
    assert (overlap["patients"], overlap["images"]) == (12, 13)
    assert blog.patient_overlap("heldout:kaggle_test") == overlap
    assert by_id["resnet50-cxr3"].patient_overlap("kaggle_test")["images"] == 0
    assert blog.metrics_for("kaggle_test") is blog.metrics["heldout"]["kaggle_test"]
    assert blog.metrics_for("test") is blog.test_metrics
    assert blog.metrics_for("heldout:elsewhere") is None
    pairs = resize_contrast(shipped_runs)
    padded = next(pair for pair in pairs if pair["padded"].run_id == "resnet50-cxr3-padded")
    assert padded["squashed"].run_id == "resnet50-cxr3"
    for key, run in (("padded_called", padded["padded"]), ("squashed_called",
                                                             padded["squashed"])):
        assert (padded[key], padded["total"]) == charts.called_as(
            run.metrics_for("kaggle_test"), "pneumonia")
