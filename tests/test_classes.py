"""Any class set: a made-up two-class folder (``tb`` / ``healthy``) and a four-class one, each
trained as a tiny run on real X-rays, read back, printed by the CLI and shown by every page;
and the bad inputs of a class set, each refused with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import DATA, FIXTURES
from test_app_pages import PAGES, copy_run, open_page, smallest_run, start
from test_training import SIZE, cli

from xrcompare import cli as xrcli
from xrcompare.classes import choose_positive, default_positive
from xrcompare.data import scan_dataset
from xrcompare.runs import load_run

TINY = FIXTURES / "tiny_cxr"
CXR3 = DATA / "cxr3"
TINY_NAMES = {path.name for path in TINY.rglob("*.jpg")}
#: Pages beyond the ones test_app_pages walks: they too must take any class set.
MORE_PAGES = [("app_pages/predict.py", "Predict"), ("app_pages/evaluate_folder.py", "Evaluate"),
              ("app_pages/glossary.py", "Glossary")]


def copy_images(sources: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True)
    for source in sources:
        shutil.copy(source, folder / source.name)


def cxr3_images(pattern: str, count: int, sub: str = "pneumonia") -> list[Path]:
    """Real cxr3 images (never the fixture's) whose name holds ``pattern``."""
    found = [path for path in sorted((CXR3 / sub).glob("*.jpg"))
             if pattern in path.name and path.name not in TINY_NAMES]
    return found[:count]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    two = root / "tb_vs_healthy"  # covid images play tb, normal ones healthy
    copy_images(sorted((TINY / "covid").glob("*.jpg")), two / "tb")
    copy_images(sorted((TINY / "normal").glob("*.jpg")), two / "healthy")
    held = root / "healthy_elsewhere"  # a held-out folder with one of the two classes
    copy_images(cxr3_images("IM-", 4, "normal"), held / "HEALTHY")
    four = root / "four"
    copy_images(sorted((TINY / "covid").glob("*.jpg")), four / "covid")
    copy_images(sorted((TINY / "normal").glob("*.jpg")), four / "normal")
    copy_images(cxr3_images("_bacteria_", 5), four / "bacterial")
    copy_images(cxr3_images("_virus_", 5), four / "viral")
    return {"two": two, "held": held, "four": four, "root": root}


@pytest.fixture(scope="module")
def runs_dir(folders, feature_cache):
    runs = folders["root"] / "runs"
    common = ["--backbone", "resnet50", "--image-size", SIZE, "--epochs", 2, "--batch-size", 4,
              "--val-fraction", 0.3, "--test-fraction", 0.25, "--engine", "keras",
              "--runs-dir", runs]
    cli("train", "--data", folders["two"], "--heldout", folders["held"], "--positive", "tb",
        "--name", "tb", *common)
    cli("train", "--data", folders["four"], "--name", "four", *common)
    return runs


def test_the_positive_class_defaults_to_covid_else_the_first_class():
    assert default_positive(["covid", "normal", "pneumonia"]) == "covid"
    assert default_positive(["tb", "healthy"]) == "healthy"
    assert choose_positive("TB", ["healthy", "tb"]) == "tb"
    with pytest.raises(ValueError, match="--positive flu is not a class"):
        choose_positive("flu", ["healthy", "tb"])


def test_any_folder_names_are_classes(folders):
    dataset = scan_dataset(folders["two"])
    assert dataset.classes == ["healthy", "tb"]
    assert dataset.class_counts() == {"healthy": 5, "tb": 5}
    assert scan_dataset(folders["held"]).class_counts() == {"healthy": 4}
    assert scan_dataset(folders["four"]).classes == ["bacterial", "covid", "normal", "viral"]


def test_a_two_class_run_records_its_classes_and_positive(runs_dir):
    run = load_run(runs_dir / "tb")
    info = json.loads((run.path / "run.json").read_text())
    assert info["classes"] == ["healthy", "tb"] and info["positive"] == "tb"
    assert run.labels == ["healthy", "tb"] and run.positive == "tb"
    test = run.test_metrics
    assert test["labels"] == ["healthy", "tb"]
    assert test["covid_vs_rest"]["positive"] == "tb"
    assert "tb" in test["covid_vs_rest"]["rule"]
    assert {"prob_healthy", "prob_tb"} <= set(run.predictions.columns)
    held = run.metrics_for("healthy_elsewhere")
    assert held["n"] == 4 and held["classes_present"] == ["healthy"]
    table = run.heldout_table("healthy_elsewhere")  # no tb images: what it called them
    assert set(table) == {"healthy"} and set(table["healthy"]["predicted_pct"]) == {"healthy",
                                                                                   "tb"}
    assert "non_covid_pct" not in table["healthy"]  # the blog's figure is about covid


def test_a_four_class_run_defaults_to_covid(runs_dir):
    run = load_run(runs_dir / "four")
    assert run.labels == ["bacterial", "covid", "normal", "viral"] and run.positive == "covid"
    assert len(run.test_metrics["confusion_matrix"]) == 4


def test_the_cli_evaluates_lists_and_describes_other_classes(runs_dir, folders):
    evaluated = cli("evaluate", runs_dir / "tb", folders["held"]).stdout
    assert "on " + str(folders["held"]) in evaluated
    assert "tb no images in this folder" in " ".join(evaluated.split())
    assert "kept out of" not in evaluated and "non-" in evaluated  # non-TB share, not covid
    listing = json.loads(cli("runs", "--runs-dir", runs_dir, "--json").stdout)
    rows = {row["run_id"]: row for row in listing["runs"]}
    assert rows["tb"]["positive"] == "tb" and rows["tb"]["classes"] == "healthy / tb"
    assert rows["four"]["positive"] == "covid"
    assert rows["tb"]["sensitivity"] == load_run(runs_dir / "tb").test_metrics[
        "covid_vs_rest"]["sensitivity"]
    card = cli("card", runs_dir / "tb").stdout
    assert "- tb sensitivity" in card


def test_every_page_renders_runs_of_other_classes(runs_dir, monkeypatch, tmp_path):
    """The two made-up runs beside a shipped three-class run: every page renders, and pages
    that set runs side by side say the class sets differ."""
    mixed = tmp_path / "mixed"
    shutil.copytree(runs_dir, mixed, ignore=shutil.ignore_patterns(".*"))
    copy_run(smallest_run(), mixed)
    app = start(monkeypatch, mixed)
    for page, title in [*PAGES, *MORE_PAGES]:
        open_page(app, page)
        assert app.title[0].value.startswith(title), page
        if page in ("app_pages/overview.py", "app_pages/per_class.py",
                    "app_pages/confusion.py", "app_pages/tradeoffs.py"):
            assert any("different sets of classes" in item.value for item in app.info), page
        if page == "app_pages/overview.py":
            board = app.dataframe[0].value.set_index("run_id")
            assert board.loc["tb", "positive"] == "tb"
    # Only the two made-up runs: the trade-off page starts on the first run's positive class.
    alone = tmp_path / "alone"
    shutil.copytree(runs_dir / "tb", alone / "tb")
    app = start(monkeypatch, alone)
    open_page(app, "app_pages/tradeoffs.py")
    assert app.selectbox(key="tradeoff_positive").value == "tb"
    for page, _ in [*PAGES, *MORE_PAGES]:
        open_page(app, page)


def error_of(capsys, *argv) -> str:
    assert xrcli.main(list(map(str, argv))) != 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_bad_class_sets_are_one_line_each(folders, tmp_path, capsys):
    base = ["train", "--backbone", "resnet50", "--image-size", SIZE, "--runs-dir",
            tmp_path / "runs"]
    one = tmp_path / "one_class"
    copy_images(sorted((TINY / "normal").glob("*.jpg")), one / "healthy")
    assert "images of only one class" in error_of(capsys, *base, "--data", one)
    assert "from only 5 patient(s); this patient-wise split needs at least 6" in error_of(
        capsys, *base, "--data", folders["two"], "--folds", 6)
    unseen = tmp_path / "unseen"
    copy_images(cxr3_images("_virus_", 2), unseen / "viral")
    assert "has class viral, which the run never saw" in error_of(
        capsys, *base, "--data", folders["two"], "--heldout", unseen)
    assert "--positive covid is not a class of this dataset (its classes: healthy, tb)" in \
        error_of(capsys, *base, "--data", folders["two"], "--positive", "covid")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_evaluating_a_folder_with_an_unseen_class_is_one_line(runs_dir, folders, capsys):
    line = error_of(capsys, "evaluate", runs_dir / "tb", folders["four"])
    assert "which the run never saw (its classes: healthy, tb)" in line


def test_positive_is_a_checked_training_setting(folders, tmp_path):
    from xrcompare.config import TrainConfig, settings

    spec = dict((item.name, spec) for item, spec in settings())["positive"]
    assert spec.flag == "--positive"
    config = TrainConfig(data=folders["two"], backbones=["resnet50"], positive="two words")
    with pytest.raises(ValueError, match="--positive must be a class name"):
        config.validate()
    assert TrainConfig.from_json({**config.to_json(), "positive": "tb"}).positive == "tb"
