"""The README's results block is generated from the shipped runs and must match them."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO

from xrcompare.runs import list_runs

TRAINED = REPO / "trained"
README = REPO / "README.md"
SHIPPED_RUNS = ("resnet50-cxr3", "resnet50-seed001-blog", "resnet50-cxr3-random-control",
                "resnet50-cxr3-cv5", "resnet50-cxr3-padded")


@pytest.fixture(scope="module")
def results_table():
    spec = importlib.util.spec_from_file_location("results_table",
                                                  REPO / "scripts" / "results_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_results_block_matches_the_shipped_runs(results_table):
    problem = results_table.check(README, TRAINED)
    assert problem is None, problem


def test_every_shipped_run_loads_and_is_listed():
    listing = list_runs(TRAINED)
    assert listing.problems == []
    ids = [run.run_id for run in listing.runs]
    assert set(SHIPPED_RUNS) <= set(ids)
    assert ids[:len(SHIPPED_RUNS)] == list(SHIPPED_RUNS)  # --order puts them first, in order
    for run in listing.runs:
        assert run.info["data"]["folder"].startswith("../shared/data/"), run.run_id
        assert "kaggle_test" in run.metrics["heldout"], run.run_id


def test_trained_folder_stays_small():
    total = sum(path.stat().st_size for path in TRAINED.rglob("*") if path.is_file())
    assert total < 20 * 1024 * 1024, f"trained/ holds {total / 2**20:.1f} MB"


def test_block_names_every_run_and_is_stable(results_table):
    block = results_table.render(TRAINED)
    assert block == results_table.render(TRAINED)
    for run_id in SHIPPED_RUNS:
        assert f"`{run_id}`" in block
    assert "2020 blog, VGG16 (reported)" in block
    assert "mean ± sd over 5 patient-wise folds" in block


def test_check_reports_a_changed_number_in_one_line(results_table, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(results_table.replace_block("# xrcompare\n", results_table.render(TRAINED)),
                      encoding="utf-8")
    assert results_table.main(["--check", "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith("| `resnet50-cxr3` |"))
    readme.write_text(text.replace(line, line.replace("| 256 |", "| 255 |")), encoding="utf-8")
    capsys.readouterr()
    assert results_table.main(["--check", "--readme", str(readme)]) == 1
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert "differs" in message and "2 changed lines" in message


def test_write_adds_a_results_section_once_and_keeps_the_rest(results_table, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# xrcompare\n\nIntro the lead wrote.\n", encoding="utf-8")
    assert results_table.main(["--write", "--readme", str(readme)]) == 0
    assert results_table.main(["--write", "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# xrcompare\n\nIntro the lead wrote.\n")
    assert text.count("## Results") == 1 and text.count(results_table.START) == 1
    assert results_table.check(readme, TRAINED) is None
