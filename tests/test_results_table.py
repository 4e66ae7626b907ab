"""The README's results block is generated from the shipped runs and must match them."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest
from conftest import REPO

from xrcompare.runs import list_runs

TRAINED = REPO / "trained"
README = REPO / "README.md"
LEAKY = "**[2020 protocol (leaky)]**"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results_table():
    return load_script("results_table")


@pytest.fixture(scope="module")
def planned_ids() -> list[str]:
    """The run ids scripts/make_trained.py ships, in dashboard order."""
    return [plan.name for plan in load_script("make_trained").shipped_runs()]


def test_readme_results_block_matches_the_shipped_runs(results_table):
    problem = results_table.check(README, TRAINED)
    assert problem is None, problem


def test_the_plan_names_the_three_backbones_and_both_blog_reproductions(planned_ids):
    assert planned_ids[:3] == ["resnet50-cxr3", "vgg16-cxr3", "xception-cxr3"]
    assert {"xception-cxr3-299px", "vgg16-seed001-blog2020", "vgg16-seed001-sound",
            "resnet50-seed001-blog", "resnet50-cxr3-random-control", "resnet50-cxr3-cv5",
            "resnet50-cxr3-padded", "resnet50-cxr3-288px"} <= set(planned_ids)
    assert len(set(planned_ids)) == len(planned_ids)


def test_every_planned_run_is_shipped_in_plan_order(planned_ids):
    listing = list_runs(TRAINED)
    assert listing.problems == []
    ids = [run.run_id for run in listing.runs]
    assert ids == planned_ids, "run python scripts/make_trained.py to regenerate trained/"
    for run in listing.runs:
        # the shared data, or a derived folder of links into it (make_trained's .derived/)
        assert run.info["data"]["folder"].startswith(("../shared/data/", ".derived/")), \
            run.run_id
        # kaggle_test itself, or kaggle_test derived under the run's class scheme
        assert any(name.startswith("kaggle_test") for name in run.metrics["heldout"]), \
            run.run_id


def test_trained_folder_stays_small():
    total = sum(path.stat().st_size for path in TRAINED.rglob("*") if path.is_file())
    assert total < 20 * 1024 * 1024, f"trained/ holds {total / 2**20:.1f} MB"


def test_block_names_every_run_and_is_stable(results_table):
    block = results_table.render(TRAINED)
    assert block == results_table.render(TRAINED)
    listing = list_runs(TRAINED)
    for run in listing.runs:
        assert f"`{run.run_id}`" in block
        assert (f"`{run.run_id}` is marked {LEAKY}" in block) == run.is_leaky
    assert "2020 blog, VGG16 (reported)" in block
    assert "mean ± sd over 5 patient-wise folds" in block


def test_leaky_runs_are_marked_and_the_blog_sits_beside_its_reproductions(results_table,
                                                                          tmp_path):
    """A throwaway runs folder: a sound run on cxr3, then the VGG16 blog reproductions (the
    shipped seed001 run's files relabelled), then another run."""
    def copy(source, run_id, order, **changes):
        folder = tmp_path / run_id
        shutil.copytree(TRAINED / source, folder)
        info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        info.update(order=order, **changes)
        (folder / "run.json").write_text(json.dumps(info), encoding="utf-8")

    copy("resnet50-cxr3", "main", 1, protocol={})
    copy("vgg16-seed001-blog2020", "vgg16-blog2020", 2)
    copy("vgg16-seed001-sound", "vgg16-sound", 3)
    copy("resnet50-cxr3-padded", "padded", 4, protocol={})
    block = results_table.render(tmp_path)
    lines = block.splitlines()
    tables = [index for index, line in enumerate(lines) if line.startswith("| Run |")]
    test_rows = [line.split(" | ")[0] for line in lines[tables[0] + 2:] if line.startswith("|")]
    heldout_rows = [line.split(" | ")[0] for line in lines[tables[1] + 2:]
                    if line.startswith("|")]
    reported16, reported19 = (f"| 2020 blog, {model} (reported) {LEAKY}"
                              for model in ("VGG16", "VGG19"))
    assert test_rows[:6] == ["| `main`", f"| `vgg16-blog2020` {LEAKY}", "| `vgg16-sound`",
                             reported16, reported19, "| `padded`"]
    assert heldout_rows == ["| `main`", f"| `vgg16-blog2020` {LEAKY}", "| `vgg16-sound`",
                            reported16, "| `padded`"]
    row = next(line for line in lines if line.startswith(f"| `vgg16-blog2020` {LEAKY} | VGG16"))
    assert "x/255 inputs" in row and "(blog rotation)" in row and "random image split" in row
    assert row.endswith(" on test |")
    note = next(line for line in lines if line.startswith("- `vgg16-blog2020` is marked"))
    assert "images of one patient can sit in train and test" in note
    assert "the epoch was chosen on the test split" in note and "0..1" in note
    assert not any(line.startswith("- `vgg16-sound` is marked") for line in lines)


def test_check_reports_a_changed_number_in_one_line(results_table, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(results_table.replace_block("# xrcompare\n", results_table.render(TRAINED)),
                      encoding="utf-8")
    assert results_table.main(["--check", "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith("| `resnet50-cxr3` |")
                and "| 256 |" in line)
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
