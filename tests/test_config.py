"""The training configuration is declared once (xrcompare.config.TrainConfig): the CLI's
flags, the sidebar form's widgets and a job's config.json are all derived from it."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import DATA, FIXTURES, REPO

from xrcompare.cli import build_parser
from xrcompare.config import (
    FORM_FIELDS,
    TrainConfig,
    check_name,
    config_from_arguments,
    default_of,
    form_param,
    settings,
    sidebar_config,
)
from xrcompare.imaging import RESIZE_MODES
from xrcompare.runs import list_runs
from xrcompare.train import HEADS

TINY = FIXTURES / "tiny_cxr"
SHIPPED = REPO / "trained"


def train_parser() -> argparse.ArgumentParser:
    commands = next(action for action in build_parser()._actions
                    if isinstance(action, argparse._SubParsersAction))
    return commands.choices["train"]


def test_every_setting_is_a_flag_with_the_declared_choices_and_default_in_its_help():
    options = {action.dest: action for action in train_parser()._actions}
    for item, spec in settings():
        action = options[item.name]
        assert spec.flag in action.option_strings
        assert action.default is argparse.SUPPRESS  # so flags can override --config
        if spec.choices is not None:
            assert tuple(action.choices) == tuple(spec.choices)
        default = default_of(item)
        if default not in (None, [], False):
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert f"default {shown}" in action.help, item.name
    assert options["resize_mode"].choices == RESIZE_MODES
    assert tuple(options["head"].choices) == tuple(HEADS)
    # the CLI module repeats none of the choices or defaults
    source = (REPO / "xrcompare" / "cli.py").read_text(encoding="utf-8")
    for literal in ('("squash", "pad")', '("blog", "gap")', '("imagenet", "random")',
                    "default=25", "default=8", "default=1e-3"):
        assert literal not in source


def test_flags_give_a_config_equal_to_the_dataclass_defaults():
    args = train_parser().parse_args(["--data", str(TINY), "--backbone", "resnet50"])
    config = config_from_arguments(args)
    assert config == TrainConfig(data=TINY, backbones=["resnet50"])
    args = train_parser().parse_args(["--data", str(TINY), "--backbone", "resnet50",
                                      "--backbone", "vgg16", "--resize", "pad", "--balanced",
                                      "--heldout", "a", "--heldout", "b", "--epochs", "3"])
    config = config_from_arguments(args)
    assert (config.backbones, config.resize_mode, config.balanced, config.epochs) == (
        ["resnet50", "vgg16"], "pad", True, 3)
    assert config.heldout == [Path("a"), Path("b")]
    with pytest.raises(ValueError, match="give --data and --backbone"):
        config_from_arguments(train_parser().parse_args([]))


def test_a_config_file_round_trips_and_flags_override_it(tmp_path):
    config = TrainConfig(data=TINY, backbones=["resnet50"], heldout=[Path("held")],
                         image_size=64, epochs=7, runs_dir=tmp_path / "runs", head="gap")
    path = config.write(tmp_path / "config.json")
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["data"] == str(TINY) and payload["heldout"] == ["held"]  # plain JSON
    assert TrainConfig.read(path) == config
    args = train_parser().parse_args(["--config", str(path), "--epochs", "2"])
    merged = config_from_arguments(args, args.config)
    assert merged.epochs == 2 and merged.head == "gap" and merged.image_size == 64


@pytest.mark.parametrize(("payload", "message"), [
    ({"data": "x", "backbones": ["resnet50"], "epoch": 3}, "unknown training setting"),
    ({"data": "x", "backbones": "resnet50"}, "must be a list of text"),
    ({"backbones": ["resnet50"]}, "lacks --data"),
    ([1, 2], "is a JSON object"),
])
def test_a_bad_config_file_is_refused_in_one_line(tmp_path, payload, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        TrainConfig.read(path)
    assert "\n" not in str(error.value)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read the training configuration"):
        TrainConfig.read(path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"epochs": 0}, "epochs must be an integer from 1 to 500, got 0"),
    ({"epochs": 2.5}, "epochs must be an integer from 1 to 500"),
    ({"learning_rate": 2.0}, "learning rate must be between 1e-06 and 1, got 2.0"),
    ({"val_fraction": 0.6}, "validation fraction must be between 0.05 and 0.45"),
    ({"resize_mode": "crop"}, "resize mode must be one of squash, pad, got 'crop'"),
    ({"weights": "imagenet21k"}, "weights must be one of imagenet, random"),
    ({"backbones": []}, "give at least one backbone"),
    ({"image_size": 64, "backbones": ["xception"]}, "Xception needs an image size between 71"),
    ({"balanced": "yes"}, "balanced must be true or false"),
])
def test_validation_reads_the_declared_ranges_and_choices(changes, message):
    config = TrainConfig(data=TINY, backbones=["resnet50"])
    for key, value in changes.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.validate()


def test_the_form_offers_what_the_config_declares():
    assert FORM_FIELDS == ("epochs", "batch_size", "learning_rate", "image_size", "seed",
                           "positive", "weights", "augment_views", "fine_tune", "name")
    declared = {item.name: (spec, default_of(item)) for item, spec in settings()}
    for name in FORM_FIELDS:
        param = form_param(name)
        spec, default = declared[name]
        assert (param["label"], param["default"]) == (spec.label, default)
        assert (param["low"], param["high"]) == (spec.range or (None, None))
        if param["options"] is not None:
            assert default in param["options"]
            low, high = spec.range or (float("-inf"), float("inf"))
            assert all(value is None or isinstance(value, str) or low <= value <= high
                       for value in param["options"])
    with pytest.raises(ValueError, match="not a form setting"):
        form_param("runs_dir")
    assert [item.name for item in fields(TrainConfig)][:2] == ["data", "backbones"]


@pytest.mark.parametrize("name", ["resnet50-mine", "a", "Run_2.v1", "x" * 80])
def test_a_run_name_is_a_plain_folder_name(name):
    config = TrainConfig(data=TINY, backbones=["resnet50"], name=name)
    config.validate()
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["my run", "../up", "a/b", "-dash-first", ".hidden", "x" * 81,
                                  "naïve", ""])
def test_a_run_name_that_is_not_a_plain_folder_name_is_refused(name):
    with pytest.raises(ValueError, match="a run name uses letters, digits"):
        TrainConfig(data=TINY, backbones=["resnet50"], name=name).validate()


def config_of(run) -> TrainConfig:
    """A configuration with every setting the run recorded (what a student would type)."""
    recipe = run.recipe
    chosen = {key: recipe[key] for key in ("image_size", "weights", "head", "epochs",
                                           "batch_size", "learning_rate", "seed",
                                           "augment_views", "balanced", "patience", "folds",
                                           "split", "preprocess", "select_on", "mask")}
    for key in ("augment", "monitor", "val_fraction", "test_fraction", "fine_tune",
                "fine_tune_epochs", "fine_tune_learning_rate"):
        if recipe[key] is not None:
            chosen[key] = recipe[key]
    return TrainConfig(data=DATA / run.data_name, backbones=[run.backbone],
                       resize_mode=recipe["resize_mode"], **chosen)


def test_settings_repeating_a_shipped_run_find_that_run_and_only_it():
    """Run.recipe (from run.json) and TrainConfig.recipe (before training) agree on every
    shipped run, and no two shipped runs are the same experiment."""
    runs = list_runs(SHIPPED).runs
    assert runs
    for run in (run for run in runs if run.is_cnn):  # the statistics baseline has no backbone
        found = config_of(run).repeated_runs(runs, run.data_images)
        assert [(backbone, other.run_id) for backbone, other in found] == [
            (run.backbone, run.run_id)], run.run_id
        # another number of images in a folder of that name is other data
        assert not config_of(run).repeated_runs(runs, (run.data_images or 0) + 1)


def test_the_forms_default_settings_repeat_the_shipped_blog_data_run():
    runs = list_runs(SHIPPED).runs
    config = sidebar_config("seed001_0402", ["resnet50"], "kaggle_test", data_root=DATA)
    found = config.repeated_runs(runs, 305)
    assert [run.run_id for _, run in found] == ["resnet50-seed001-blog"]
    for change in ({"epochs": 24}, {"seed": 7}, {"weights": "random"}, {"image_size": 192},
                   {"augment_views": 2}, {"learning_rate": 3e-4}):
        other = sidebar_config("seed001_0402", ["resnet50"], "kaggle_test", data_root=DATA,
                               **change)
        assert not other.repeated_runs(runs, 305), change
    # several backbones: each is checked
    both = sidebar_config("seed001_0402", ["vgg16", "resnet50"], data_root=DATA)
    assert [(backbone, run.run_id) for backbone, run in both.repeated_runs(runs, 305)] == [
        ("resnet50", "resnet50-seed001-blog")]
