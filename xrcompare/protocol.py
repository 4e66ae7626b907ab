"""Training protocols: the sound defaults, and the 2020 blog's flaws as explicit choices.

A run records its protocol in run.json (``protocol``: split, preprocess, select_on, augment).
Any choice that lets the test split shape the model, or feeds the base inputs unlike its
ImageNet training, makes the run a "2020 protocol (leaky)" run, labelled as such wherever it
appears. Runs without ``protocol`` (older ones) read as the sound defaults.

No heavy imports here: the CLI, the run reader and the pages all use it.
"""

from __future__ import annotations

#: The choices per protocol field, the first of each being the sound default.
PROTOCOL_CHOICES: dict[str, tuple[str, ...]] = {
    "split": ("patients", "images"),
    "preprocess": ("backbone", "scale01"),
    "select_on": ("val", "test"),
    "augment": ("mild", "blog", "debias"),
}
PROTOCOL_DEFAULTS: dict[str, str] = {key: choices[0] for key, choices in PROTOCOL_CHOICES.items()}

#: One plain sentence per choice that makes a run leaky.
LEAKY_CHOICES: dict[tuple[str, str], str] = {
    ("split", "images"): "images of one patient can sit in train and test",
    ("select_on", "test"): "the epoch was chosen on the test split",
    ("preprocess", "scale01"): "inputs scaled to 0..1 instead of the backbone's own "
                               "preprocessing (a mismatch with its ImageNet training)",
}
LEAKY_LABEL = "2020 protocol (leaky)"
SOUND_LABEL = "sound"

#: What each choice means, for help texts and run descriptions.
CHOICE_TEXT: dict[tuple[str, str], str] = {
    ("split", "patients"): "stratified split grouped by patient (no patient on both sides)",
    ("split", "images"): "stratified random split of images, patients ignored",
    ("preprocess", "backbone"): "the backbone's own preprocess_input",
    ("preprocess", "scale01"): "x/255 (0..1) fed to the base",
    ("select_on", "val"): "epoch kept on the validation split",
    ("select_on", "test"): "epoch kept on the test split (no validation split)",
    ("augment", "mild"): "small rotation, zoom, shift, contrast; no flips",
    ("augment", "blog"): "rotation only, uniform within ±15°, border replicated",
    ("augment", "debias"): "debiasing: random JPEG re-compression (quality 30–70), "
                           "brightness and contrast, as nCoV-NET's loader",
}


def check_protocol(protocol: dict) -> dict[str, str]:
    """``protocol`` with missing fields filled by the defaults; ValueError (one line) for an
    unknown field value. Unknown extra keys are ignored."""
    if not isinstance(protocol, dict):
        raise ValueError("protocol must be an object")
    checked = {}
    for key, choices in PROTOCOL_CHOICES.items():
        value = protocol.get(key, PROTOCOL_DEFAULTS[key])
        if value not in choices:
            raise ValueError(f"protocol {key} must be one of {', '.join(choices)}, "
                             f"got {value!r}")
        checked[key] = value
    return checked


def leaky_reasons(protocol: dict) -> list[str]:
    """The plain sentences saying why a protocol is leaky (empty when it is sound)."""
    checked = check_protocol(protocol)
    return [reason for (key, value), reason in LEAKY_CHOICES.items() if checked[key] == value]


def protocol_label(protocol: dict) -> str:
    return LEAKY_LABEL if leaky_reasons(protocol) else SOUND_LABEL
