"""The README's command-line example is the real output of the real commands on the shipped
runs (scripts/cli_examples.py), and must match them."""

from __future__ import annotations

from conftest import REPO
from test_results_table import load_script

TRAINED = REPO / "trained"
README = REPO / "README.md"


def test_readme_cli_example_matches_fresh_output():
    """predict and compare are rerun; evaluate is the CLI's rendering of the run's recorded
    held-out metrics (a fresh evaluate gives the same lines: --write checks that)."""
    script = load_script("cli_examples")
    problem = script.check(README, TRAINED)
    assert problem is None, problem


def test_the_example_shows_the_recorded_command_without_shipping_flags():
    script = load_script("cli_examples")
    lines = script.train_text(TRAINED)
    command = lines[lines.index("```bash") + 1]
    assert command.startswith("python -m xrcompare train --data ../shared/data/seed001_0402 ")
    assert "--backbone resnet50" in command and "--heldout ../shared/data/kaggle_test" in command
    assert not any(flag in command for flag in script.SHIPPING_FLAGS)
    block = README.read_text(encoding="utf-8")
    example = block[block.index(script.START):block.index(script.END)]
    assert "$ python -m xrcompare predict trained/resnet50-cxr3 " \
           "samples/pneumonia_kermany_person1049_virus_1746.jpg" in example
