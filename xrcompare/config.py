"""The training configuration: every setting declared once, with its default, choices or
range, help text and command-line flag.

:class:`TrainConfig` is the single source. Everything else is derived from its declarations:

- :meth:`TrainConfig.validate` checks every range and choice (one readable line per problem);
- :func:`add_train_arguments` builds the ``train`` sub-command's flags (defaults and choices
  in the help come from here; the CLI never repeats them);
- :data:`FORM_FIELDS` and :func:`form_param` give the sidebar form its widgets (label, bounds,
  default, offered values);
- :meth:`TrainConfig.to_json` / :meth:`TrainConfig.from_json` carry a configuration across a
  process boundary (the sidebar's job writes ``config.json``, the training process reads it).

A new setting is one declaration in :class:`TrainConfig` (``setting(...)``): it is then on the
command line, in ``config.json``, validated, and (with a ``label``) offered by the form.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path

from xrcompare.backbones import FINE_TUNE_CHOICES, RANDOM_WEIGHTS, WEIGHT_KINDS, get_backbone
from xrcompare.classes import class_name
from xrcompare.imagestats import CNN_KIND, MODEL_KINDS, STATISTICS_KIND
from xrcompare.imaging import MASK_MODES, NO_MASK, RESIZE_MODES
from xrcompare.inference_engine import ENGINE_CHOICES
from xrcompare.protocol import CHOICE_TEXT, PROTOCOL_CHOICES, PROTOCOL_DEFAULTS
from xrcompare.ray_extract import EXTRACT_ON_CHOICES
from xrcompare.train import HEADS

#: Kinds of values a setting holds, and how each is written to JSON and read back.
KINDS = ("int", "float", "str", "bool", "path", "paths", "names")
#: The metadata key under which a field's :class:`Setting` is stored.
SETTING = "setting"


@dataclass(frozen=True)
class Setting:
    """How one :class:`TrainConfig` field is described, checked and offered."""

    kind: str
    help: str
    flag: str | None = None  # the CLI flag; None: not on the command line
    choices: tuple | None = None
    range: tuple[float, float] | None = None  # inclusive bounds of a number
    words: str | None = None  # the setting in error messages (default: the field name)
    label: str | None = None  # the sidebar form's label (None: not in the form)
    options: tuple | None = None  # values the form offers (a select instead of a number box)
    group: str | None = None  # a CLI argument group ("protocol")
    required: bool = False  # must be given (on the command line or in config.json)
    #: (setting, value): not required when that setting has that value (``backbones`` is
    #: not needed by the image-statistics baseline).
    required_unless: tuple[str, object] | None = None

    def is_required(self, values: dict) -> bool:
        """Whether the setting must be given, with the other settings' ``values`` (JSON)."""
        if not self.required:
            return False
        if self.required_unless is None:
            return True
        name, value = self.required_unless
        return values.get(name) != value

    def describe_default(self, default) -> str:
        """" (1–500, default 25)": the range and the default, as the help shows them."""
        parts = []
        if self.range is not None and self.range[1] < 10**6:
            low, high = self.range
            parts.append(f"{low}–{high}" if self.kind == "int" else f"{low:g}–{high:g}")
        if default is not None and default != []:
            parts.append(f"default {default:g}" if isinstance(default, float)
                         else f"default {default}")
        return f" ({', '.join(parts)})" if parts else ""


def setting(default=MISSING, *, kind: str, help: str, default_factory=MISSING,
            **options) -> Field:
    """A :class:`TrainConfig` field with its :class:`Setting`."""
    if kind not in KINDS:
        raise ValueError(f"unknown setting kind {kind!r}")
    metadata = {SETTING: Setting(kind=kind, help=help, **options)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _protocol_help(key: str, lead: str) -> str:
    return (f"{lead}: " + "; ".join(f"{choice} = {CHOICE_TEXT[(key, choice)]}"
                                    for choice in PROTOCOL_CHOICES[key]))


#: The learning rates and input sizes the sidebar form offers (None: each backbone's own).
FORM_LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
FORM_IMAGE_SIZES = (None, 64, 96, 128, 160, 192, 224, 256, 299, 320, 384, 448, 512)


@dataclass
class TrainConfig:
    """One training job: a dataset, one or more backbones, and how to train on them."""

    data: Path = setting(kind="path", flag="--data", required=True, words="the dataset folder",
                         help="dataset folder with one sub-folder per class (two or more)")
    backbones: list[str] = setting(kind="names", flag="--backbone", required=True,
                                   required_unless=("model", STATISTICS_KIND),
                                   default_factory=list, words="backbone",
                                   help="backbone name (repeat for several), see `backbones`")
    epochs: int = setting(25, kind="int", flag="--epochs", range=(1, 500), label="Epochs",
                          help="epochs of the head on cached features")
    batch_size: int = setting(8, kind="int", flag="--batch-size", range=(1, 4096),
                              label="Batch size", help="images per training step")
    learning_rate: float = setting(1e-3, kind="float", flag="--learning-rate",
                                   range=(1e-6, 1.0), label="Learning rate",
                                   options=FORM_LEARNING_RATES, help="Adam's learning rate")
    image_size: int | None = setting(None, kind="int", flag="--image-size",
                                     label="Input size", options=FORM_IMAGE_SIZES,
                                     help="input size in px, default the backbone's own "
                                          "(each backbone's range: see `backbones`)")
    seed: int = setting(42, kind="int", flag="--seed", range=(0, 2**31 - 1), label="Seed",
                        help="seed of the split, the head and a random-init base")
    heldout: list[Path] = setting(kind="paths", flag="--heldout", default_factory=list,
                                  help="labelled folder never used in training (e.g. "
                                       "kaggle_test); repeat for several")
    positive: str | None = setting(None, kind="str", flag="--positive", words="positive class",
                                   label="Positive class",
                                   help="the class that sensitivity, specificity and "
                                        "thresholds call positive (the rest negative); "
                                        "default covid when it is a class, else the first "
                                        "class in sorted order")
    runs_dir: Path | None = setting(None, kind="path", flag="--runs-dir",
                                    help="where the run folder goes (default: trained/ or "
                                         "$XRCOMPARE_RUNS_DIR)")
    folds: int | None = setting(None, kind="int", flag="--folds", range=(2, 20),
                                help="grouped stratified k-fold cross-validation")
    resize_mode: str = setting("squash", kind="str", flag="--resize", choices=RESIZE_MODES,
                               words="resize mode",
                               help="squash to a square, or pad keeping the aspect ratio")
    head: str = setting("blog", kind="str", flag="--head", choices=tuple(HEADS),
                        help="; ".join(f"{name} = {text}" for name, text in HEADS.items()))
    weights: str = setting("imagenet", kind="str", flag="--weights", choices=WEIGHT_KINDS,
                           label="Random-init control", options=WEIGHT_KINDS,
                           help="'random' trains a random-init control base")
    mask: str = setting(NO_MASK, kind="str", flag="--mask", choices=MASK_MODES,
                        help="a masked-input control: lungs-out blacks out the central box "
                             "over the lung fields (x 0.12-0.88, y 0.10-0.90 of the square "
                             "input), lungs-only keeps only that box")
    model: str = setting(CNN_KIND, kind="str", flag="--model", choices=MODEL_KINDS,
                         help=f"{CNN_KIND} = a head on a frozen CNN base (--backbone); "
                              f"{STATISTICS_KIND} = a control: logistic regression on image "
                              "statistics (size, brightness, borders), no CNN, no --backbone")
    augment_views: int = setting(0, kind="int", flag="--augment-views", range=(0, 16),
                                 words="augmentation views", label="Augmented views",
                                 help="augmented views per training image, extracted once")
    fine_tune: str = setting(
        "none", kind="str", flag="--fine-tune", choices=FINE_TUNE_CHOICES, words="fine-tune",
        label="Fine-tune", options=FINE_TUNE_CHOICES,
        help="last-block: after the head has trained on the frozen base, train the backbone's "
             "last convolutional block with it (VGG16 block5_conv3, ResNet50 conv5_block3, "
             "Xception block14's separable convolutions; batch norms stay frozen) on "
             "activations cached at the cut before that block, on the training split's "
             "original images (no augmented views); none: the frozen base only")
    fine_tune_epochs: int = setting(10, kind="int", flag="--fine-tune-epochs", range=(1, 200),
                                    words="fine-tune epochs",
                                    help="epochs of the last block and head (--fine-tune)")
    fine_tune_learning_rate: float = setting(
        1e-5, kind="float", flag="--fine-tune-learning-rate", range=(1e-7, 1e-2),
        words="fine-tune learning rate",
        help="Adam's learning rate for the last block and head (--fine-tune): small, so the "
             "ImageNet weights move a little")
    balanced: bool = setting(False, kind="bool", flag="--balanced",
                             help="class-balanced loss weights")
    val_fraction: float = setting(0.15, kind="float", flag="--val-fraction",
                                  range=(0.05, 0.45), words="validation fraction",
                                  help="share of patients in the validation split")
    test_fraction: float = setting(0.2, kind="float", flag="--test-fraction",
                                   range=(0.05, 0.45), words="test fraction",
                                   help="share of patients in the test split")
    patience: int | None = setting(None, kind="int", flag="--patience", range=(1, 500),
                                   help="early stopping on the validation split")
    monitor: str = setting("val_loss", kind="str", flag="--monitor",
                           choices=("val_loss", "val_accuracy"),
                           help="what picks the kept epoch on the validation split (with "
                                "--select-on test: always accuracy on the test split)")
    name: str | None = setting(None, kind="str", flag="--name", label="Run name",
                               help="run id (one backbone) or tag: letters, digits, '.', '_' "
                                    "and '-', up to 80 characters")
    display_name: str | None = setting(None, kind="str", flag="--display-name",
                                       help="the run's name in the app")
    description: str | None = setting(None, kind="str", flag="--description",
                                      help="what the run is for, in a sentence or two")
    order: int | None = setting(None, kind="int", flag="--order", range=(-10**6, 10**6),
                                help="sort position in listings")
    extract_batch_size: int = setting(32, kind="int", flag="--extract-batch-size",
                                      range=(1, 4096), words="extract batch size",
                                      help="images per batch through the frozen base")
    engine: str | None = setting(None, kind="str", flag="--engine", choices=ENGINE_CHOICES,
                                 help="the frozen base's forward pass: auto (OpenVINO when "
                                      "installed, else Keras), openvino or keras (the float32 "
                                      "reference); default: $XRCOMPARE_ENGINE, else auto")
    extract_on: str = setting(
        "auto", kind="str", flag="--extract-on", choices=EXTRACT_ON_CHOICES,
        words="extract-on",
        help="where the frozen base runs over the images the feature cache lacks: local = "
             "this process; ray = Ray Data workers, each running the --engine engine (a "
             "local Ray is started and stopped when $RAY_ADDRESS names no cluster); auto = "
             "ray inside a Ray cluster's job, else local. Not an --engine choice: --engine "
             "names the inference engine, Ray only spreads that engine over workers")
    ray_workers: int | None = setting(
        None, kind="int", flag="--ray-workers", range=(1, 1024), words="Ray workers",
        help="Ray Data workers for --extract-on ray, each holding the frozen base (default: "
             "one per free GPU of the cluster, else one per two free CPUs; locally one per "
             "two cores)")
    # The protocol (xrcompare.protocol): the sound defaults, or the 2020 blog's flaws on purpose.
    split: str = setting(PROTOCOL_DEFAULTS["split"], kind="str", flag="--split",
                         choices=PROTOCOL_CHOICES["split"], group="protocol",
                         help=_protocol_help("split", "how images are divided"))
    preprocess: str = setting(PROTOCOL_DEFAULTS["preprocess"], kind="str", flag="--preprocess",
                              choices=PROTOCOL_CHOICES["preprocess"], group="protocol",
                              help=_protocol_help("preprocess", "input scaling before the base"))
    select_on: str = setting(PROTOCOL_DEFAULTS["select_on"], kind="str", flag="--select-on",
                             choices=PROTOCOL_CHOICES["select_on"], group="protocol",
                             words="select-on",
                             help=_protocol_help("select_on", "the split that picks the kept "
                                                              "epoch"))
    augment: str = setting(PROTOCOL_DEFAULTS["augment"], kind="str", flag="--augment",
                           choices=PROTOCOL_CHOICES["augment"], group="protocol",
                           help=_protocol_help("augment", "the recipe of --augment-views"))

    # ----------------------------------------------------------------- derived facts

    @property
    def protocol(self) -> dict[str, str]:
        return {key: getattr(self, key) for key in PROTOCOL_CHOICES}

    @property
    def is_random_control(self) -> bool:
        return self.weights == RANDOM_WEIGHTS

    @property
    def is_statistics(self) -> bool:
        """The image-statistics baseline (no CNN): a control, not a model."""
        return self.model == STATISTICS_KIND

    @property
    def is_control(self) -> bool:
        """A control run: random-init base, masked inputs or the statistics baseline."""
        return self.is_random_control or self.mask != NO_MASK or self.is_statistics

    def image_size_for(self, backbone: str) -> int:
        """The input size a backbone trains at: the chosen one, else its own default."""
        return self.image_size or get_backbone(backbone).default_size

    def recipe(self, backbone: str, data_images: int | None = None) -> dict:
        """What a run of ``backbone`` made with this configuration learns from, in the terms
        of :attr:`xrcompare.runs.Run.recipe` (``data_images``: the dataset's image count when
        known), so :func:`xrcompare.runs.recipes_match` can tell a repeat."""
        from xrcompare.runs import normalise_recipe

        name = get_backbone(backbone).name
        views = self.augment_views or 0
        on_val = self.select_on == "val"
        return normalise_recipe({
            "data": Path(self.data).name, "data_images": data_images, "backbone": name,
            "weights": self.weights, "image_size": self.image_size_for(name),
            "resize_mode": self.resize_mode, "head": self.head, "epochs": self.epochs,
            "batch_size": self.batch_size, "learning_rate": self.learning_rate,
            "seed": self.seed, "augment_views": views,
            "augment": self.augment if views else None, "balanced": self.balanced,
            "patience": self.patience, "monitor": self.monitor if on_val else None,
            "val_fraction": self.val_fraction if on_val else None,
            "test_fraction": None if self.folds else self.test_fraction,
            "folds": self.folds, "split": self.split, "preprocess": self.preprocess,
            "select_on": self.select_on, "mask": self.mask,
            **self.fine_tune_recipe})

    @property
    def is_fine_tuned(self) -> bool:
        return self.fine_tune != "none"

    @property
    def fine_tune_recipe(self) -> dict:
        """The fine-tuning part of :meth:`recipe` (Nones for a frozen-base run)."""
        if not self.is_fine_tuned:
            return {"fine_tune": "none", "fine_tune_epochs": None,
                    "fine_tune_learning_rate": None}
        return {"fine_tune": self.fine_tune, "fine_tune_epochs": self.fine_tune_epochs,
                "fine_tune_learning_rate": self.fine_tune_learning_rate}

    def repeated_runs(self, runs, data_images: int | None = None) -> list[tuple[str, object]]:
        """(backbone, run) for every run in ``runs`` that this configuration would repeat:
        the same data, backbone and every setting that shapes what the head learns."""
        from xrcompare.runs import recipes_match

        found = []
        for backbone in self.backbones:
            mine = self.recipe(backbone, data_images)
            found += [(get_backbone(backbone).name, run) for run in runs
                      if recipes_match(mine, run.recipe)]
        return found

    @property
    def runs_folder(self) -> Path:
        """Where the run folders go (``runs_dir``, else the default runs folder)."""
        from xrcompare import paths

        return Path(self.runs_dir) if self.runs_dir else paths.runs_dir()

    # ----------------------------------------------------------------- checking

    def validate(self) -> None:
        """Raise ValueError with one readable line for any out-of-range or unknown setting."""
        values = self.to_json()
        for item, spec in settings():
            value = getattr(self, item.name)
            words = spec.words or item.name.replace("_", " ")
            if value is None and item.default is None:
                continue
            if spec.is_required(values) and value in (None, "", []):
                raise ValueError(f"give at least one {words}" if spec.kind in ("paths", "names")
                                 else f"give {words} ({spec.flag})")
            _check_kind(spec, value, words)
            if spec.range is not None:
                _check_range(spec, value, words)
            if spec.choices is not None and value not in spec.choices:
                raise ValueError(f"{words} must be one of {', '.join(map(str, spec.choices))}, "
                                 f"got {value!r}")
        for backbone in self.backbones:
            found = get_backbone(backbone)
            if self.image_size is not None:
                found.check_size(self.image_size)
        if self.augment != PROTOCOL_DEFAULTS["augment"] and not self.augment_views:
            raise ValueError(f"augment {self.augment} needs augmented views: add "
                             "--augment-views 1 or more")
        if self.name is not None:
            check_name(self.name)
        if self.positive is not None and class_name(self.positive) is None:
            raise ValueError(f"--positive must be a class name (letters, digits, '_' and "
                             f"'-'), got {self.positive!r}")
        if self.folds is not None and (self.split != "patients" or self.select_on != "val"):
            raise ValueError("cross-validation (--folds) keeps the sound protocol: use it with "
                             "--split patients and --select-on val")
        if self.ray_workers is not None and self.extract_on == "local":
            raise ValueError("--ray-workers sizes the Ray workers of --extract-on ray: leave "
                             "it out with --extract-on local")
        if self.is_statistics:
            self._check_statistics()
        if self.is_fine_tuned:
            self._check_fine_tune()

    #: Settings that only mean something for a CNN run (the statistics baseline refuses them
    #: when they are not at their default).
    CNN_ONLY = ("backbones", "image_size", "resize_mode", "head", "weights", "mask",
                "augment_views", "balanced", "patience", "folds", "preprocess", "augment",
                "fine_tune")

    def _check_fine_tune(self) -> None:
        """``--fine-tune`` on a setting it cannot serve: one readable line."""
        flag = f"--fine-tune {self.fine_tune}"
        if self.is_random_control:
            raise ValueError(f"{flag} trains an ImageNet backbone's last block; a random-init "
                             "control's base is random on purpose: leave out --fine-tune or "
                             "--weights random")
        if self.folds:
            raise ValueError(f"{flag} runs on one train/validation/test split: leave out "
                             "--folds")
        for backbone in self.backbones:
            get_backbone(backbone).check_fine_tune(self.fine_tune)

    def _check_statistics(self) -> None:
        defaults = {item.name: default_of(item) for item, _ in settings()}
        for name in self.CNN_ONLY:
            if getattr(self, name) != defaults[name]:
                flag = dict((item.name, spec) for item, spec in settings())[name].flag
                raise ValueError(f"{flag} does not apply to --model {STATISTICS_KIND} (a "
                                 "logistic regression on image statistics, no CNN): leave "
                                 "it out")
        if self.select_on != "val":
            raise ValueError(f"--model {STATISTICS_KIND} has no epochs to choose: leave out "
                             "--select-on test")

    # ----------------------------------------------------------------- JSON

    def to_json(self) -> dict:
        """Plain JSON values (paths as strings), readable back by :meth:`from_json`."""
        return {item.name: _to_json_value(spec, getattr(self, item.name))
                for item, spec in settings()}

    @classmethod
    def from_json(cls, payload: dict) -> TrainConfig:
        """A configuration from :meth:`to_json`'s values (unknown or mistyped settings are
        refused with one line; ranges are left to :meth:`validate`)."""
        if not isinstance(payload, dict):
            raise ValueError("a training configuration is a JSON object")
        known = dict(settings())
        by_name = {item.name: (item, spec) for item, spec in known.items()}
        unknown = sorted(set(payload) - set(by_name))
        if unknown:
            raise ValueError(f"unknown training setting(s) {', '.join(map(repr, unknown))}")
        values = {}
        for name, value in payload.items():
            item, spec = by_name[name]
            values[name] = _from_json_value(spec, value, name)
        missing = [spec.flag or name for name, (item, spec) in by_name.items()
                   if spec.is_required(payload) and name not in values]
        if missing:
            raise ValueError(f"the training configuration lacks {', '.join(missing)}")
        return cls(**values)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: str | Path) -> TrainConfig:
        """A configuration from a JSON file; ValueError (one line) when it cannot be used."""
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            from xrcompare.errors import one_line

            raise ValueError(f"cannot read the training configuration {path}: "
                             f"{one_line(error, 160)}") from None
        return cls.from_json(payload)


#: What a run name may hold (it becomes a folder name).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


def check_name(name: str) -> str:
    """A run name as ``--name`` and the form take it: letters, digits, '.', '_' and '-' (not
    first), up to 80 characters; ValueError (one line) otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"a run name uses letters, digits, '.', '_' and '-' (not first), up "
                         f"to 80 characters; got {name!r}")
    return name


def settings() -> list[tuple[Field, Setting]]:
    """Every TrainConfig field with its :class:`Setting`, in declaration order."""
    return [(item, item.metadata[SETTING]) for item in fields(TrainConfig)]


def default_of(item: Field):
    if item.default is not MISSING:
        return item.default
    if item.default_factory is not MISSING:
        return item.default_factory()
    return None


def _check_kind(spec: Setting, value, words: str) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec.kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        low, high = spec.range or (None, None)
        bounds = f" from {low} to {high}" if spec.range else ""
        raise ValueError(f"{words} must be an integer{bounds}, got {value!r}")
    if spec.kind == "float" and not number:
        raise ValueError(f"{words} must be a number, got {value!r}")
    if spec.kind == "bool" and not isinstance(value, bool):
        raise ValueError(f"{words} must be true or false, got {value!r}")
    if spec.kind == "str" and not isinstance(value, str):
        raise ValueError(f"{words} must be text, got {value!r}")
    if spec.kind == "path" and not isinstance(value, (str, Path)):
        raise ValueError(f"{words} must be a folder path, got {value!r}")
    if spec.kind in ("paths", "names") and not (
            isinstance(value, (list, tuple)) and all(isinstance(v, (str, Path)) for v in value)):
        raise ValueError(f"{words} must be a list, got {value!r}")


def _check_range(spec: Setting, value, words: str) -> None:
    low, high = spec.range
    if low <= value <= high:
        return
    if spec.kind == "int":
        raise ValueError(f"{words} must be an integer from {low} to {high}, got {value!r}")
    raise ValueError(f"{words} must be between {low:g} and {high:g}, got {value!r}")


def _to_json_value(spec: Setting, value):
    if spec.kind == "path":
        return None if value is None else str(value)
    if spec.kind in ("paths", "names"):
        return [str(item) for item in value]
    return value


def _from_json_value(spec: Setting, value, name: str):
    if value is None:
        return None
    if spec.kind == "path":
        if not isinstance(value, str):
            raise ValueError(f"training setting {name!r} must be a path, got {value!r}")
        return Path(value)
    if spec.kind in ("paths", "names"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"training setting {name!r} must be a list of text, got {value!r}")
        return [Path(v) for v in value] if spec.kind == "paths" else list(value)
    return value


# --------------------------------------------------------------------------- command line


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _at_least(low: int) -> Callable[[str], int]:
    """A whole number of at least ``low``, checked as the flag is read."""
    def parse(text: str) -> int:
        value = _whole_number(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a number ≥ {low}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


ARGUMENT_TYPES: dict[str, Callable] = {"int": _whole_number, "float": _number, "str": str,
                                       "path": Path, "paths": Path, "names": str}
METAVARS = {"int": "N", "float": "X", "str": "TEXT", "path": "DIR", "paths": "DIR",
            "names": "NAME"}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` sub-command's flags, one per setting with a ``flag``.

    Every flag's default is ``argparse.SUPPRESS``: only the flags given appear in the parsed
    namespace, so they can override a ``--config`` file (see :func:`config_from_arguments`).
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for item, spec in settings():
        if spec.flag is None:
            continue
        target = parser
        if spec.group == "protocol":
            if "protocol" not in groups:
                groups["protocol"] = parser.add_argument_group(
                    "protocol", "The 2020 blog's flaws, on purpose, to reproduce it. Any of "
                                "--split images, --preprocess scale01, --select-on test labels "
                                "the run '2020 protocol (leaky)'.")
            target = groups["protocol"]
        default = default_of(item)
        help_text = spec.help + ("" if spec.kind == "bool" else spec.describe_default(default))
        options = {"dest": item.name, "default": argparse.SUPPRESS, "help": help_text}
        if spec.kind == "bool":
            target.add_argument(spec.flag, action="store_true", **options)
            continue
        if spec.kind in ("paths", "names"):
            options["action"] = "append"
        if spec.choices is not None:
            options["choices"] = spec.choices
        else:
            options["metavar"] = METAVARS[spec.kind]
        kind = ARGUMENT_TYPES[spec.kind]
        if spec.kind == "int" and spec.range is not None and spec.range[0] >= 1:
            kind = _at_least(int(spec.range[0]))  # a count: say so as the flag is read
        target.add_argument(spec.flag, type=kind, **options)


def config_from_arguments(arguments: argparse.Namespace,
                          config_file: str | Path | None = None) -> TrainConfig:
    """The configuration of ``config_file`` (JSON, see :meth:`TrainConfig.write`) with the
    settings given as flags on top; without a file, the flags and the defaults. Not yet
    validated (:func:`xrcompare.experiment.train_runs` does that once)."""
    values = TrainConfig.read(config_file).to_json() if config_file else {}
    for item, spec in settings():
        if hasattr(arguments, item.name):
            values[item.name] = _to_json_value(spec, getattr(arguments, item.name))
    missing = [spec.flag for item, spec in settings()
               if spec.is_required(values) and item.name not in values]
    if missing:
        raise ValueError(f"give {' and '.join(missing)} (or --config FILE)")
    return TrainConfig.from_json(values)


# --------------------------------------------------------------------------- the sidebar form


#: The settings the sidebar form offers, in its order.
FORM_FIELDS = tuple(item.name for item, spec in settings() if spec.label)


def form_param(name: str) -> dict:
    """What the sidebar form needs to draw the widget of setting ``name``: ``label``,
    ``help``, ``default``, ``low`` / ``high`` (a number box) or ``options`` (a select)."""
    item, spec = next((item, spec) for item, spec in settings() if item.name == name)
    if spec.label is None:
        raise ValueError(f"{name} is not a form setting")
    low, high = spec.range if spec.range else (None, None)
    options = spec.options
    if options is not None and spec.range is not None:
        options = tuple(value for value in options if value is None or low <= value <= high)
    return {"name": name, "label": spec.label, "help": spec.help, "default": default_of(item),
            "low": low, "high": high, "options": options, "kind": spec.kind}


def sidebar_config(dataset: str | Path, backbones: Sequence[str],
                   heldout: str | Path | None = None, *, data_root: str | Path | None = None,
                   runs_dir: str | Path | None = None, **chosen) -> TrainConfig:
    """The configuration of a sidebar request: the dataset (and optional held-out folder)
    as listed names or typed paths, kept inside the data root; the backbones; and any of
    :data:`FORM_FIELDS` (a value left at None takes the default).

    Raises :class:`xrcompare.data.DatasetError` for a folder outside the data root, and
    ValueError for an unknown setting. Not yet validated (the job's plan does that).
    """
    from xrcompare.data import DatasetError, resolve_data_folder

    unknown = sorted(set(chosen) - set(FORM_FIELDS))
    if unknown:
        raise ValueError(f"the form has no setting {', '.join(unknown)}")
    names = []
    for name in backbones:
        found = get_backbone(name).name
        if found not in names:
            names.append(found)
    data = resolve_data_folder(dataset, data_root)
    held = resolve_data_folder(heldout, data_root) if heldout not in (None, "") else None
    if held is not None and held == data:
        raise DatasetError("the held-out folder must differ from the training dataset")
    runs = Path(runs_dir).expanduser() if runs_dir else None
    config = TrainConfig(data=data, backbones=names, heldout=[held] if held else [],
                         **{key: value for key, value in chosen.items() if value is not None})
    config.runs_dir = (runs or config.runs_folder).resolve()
    return config
