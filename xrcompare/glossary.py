"""The words the dashboard uses, each explained once in plain language.

The *Glossary* page lists them all; pages and the training form show single entries as help
text (:func:`explain`), so a term reads the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from xrcompare.evaluate import POSITIVE_CLASS
from xrcompare.train import HEADS


@dataclass(frozen=True)
class Term:
    key: str
    term: str
    text: str
    section: str


_POSITIVE = POSITIVE_CLASS

#: Every term, in reading order within its section.
TERMS = (
    Term("frozen_base", "Frozen base",
         "An ImageNet CNN (VGG16, ResNet50, Xception) whose convolutional layers are kept "
         "fixed. Each X-ray goes through it once; its output, a small map of features, is "
         "cached on disk. Nothing in the base is trained here.", "Models"),
    Term("head", "Head",
         "The small classifier trained on top of the frozen base's features: the only part "
         "that learns from the X-rays. It trains in seconds because the base runs once per "
         "image, not once per epoch.", "Models"),
    Term("blog_head", "Blog head",
         f"The 2020 blog's head: {HEADS['blog']}.", "Models"),
    Term("gap_head", "GAP head",
         f"Global-average-pooling head: {HEADS['gap']}. Far fewer weights than the blog head, "
         "so less room to memorise the training images.", "Models"),
    Term("random_init", "Random-init control",
         "The same network with random weights instead of ImageNet's. It is a control, not a "
         "model: whatever it scores was learned without any pretrained visual features, "
         "which is what a shortcut (age, hospital, burned-in text) allows.", "Models"),
    Term("augmented_views", "Augmented views",
         "Extra, slightly changed copies of each training image (a small rotation, zoom, "
         "shift and contrast change; never a mirror image, which would put the heart on the "
         "wrong side). Their features are extracted once and cached, like the originals.",
         "Models"),
    Term("squash_pad", "Squash or pad",
         "How an X-ray becomes the square input of the base: squash stretches it to a square; "
         "pad keeps its aspect ratio and fills the rest with black. A model sees the same "
         "choice at test time or meets a domain shift.", "Models"),
    Term("patient_split", "Patient-wise split",
         "Train, validation and test images are divided by patient: every image of a patient "
         "lands on one side only. Splitting images at random lets the model recognise a "
         "patient it has already seen, which inflates the test score.", "Data and splits"),
    Term("validation", "Validation split and kept epoch",
         "A part of the training patients held back to choose the epoch whose head is kept. "
         "The test split is never used for that choice, so its score stays an honest "
         "estimate.", "Data and splits"),
    Term("cross_validation", "Cross-validation",
         "The patients are divided into k folds; each fold is the test split once while the "
         "others train. The spread of the k scores shows how much a number moves when other "
         "patients land in the test split.", "Data and splits"),
    Term("heldout", "Held-out folder",
         "A labelled folder never used for training or for choosing anything, predicted once "
         "at the end (here the Kaggle/Kermany test split: children's X-rays from the same "
         "hospital as the normal and pneumonia training images, and no COVID images). Its "
         "patients are checked against the training data's.", "Data and splits"),
    Term("protocol_2020", "2020 protocol (leaky)",
         "The 2020 blog's choices, repeated on purpose: images split at random (one patient on "
         "both sides), the epoch chosen on the test split, inputs scaled to 0..1 unlike the "
         "base's ImageNet training. Its test figures are optimistic.", "Data and splits"),
    Term("accuracy", "Accuracy",
         "The share of images whose predicted class is right. With unequal classes it can "
         "look good while one class is mostly wrong.", "Scores"),
    Term("positive", "Positive class",
         f"The class a run's sensitivity, specificity and thresholds are about ({_POSITIVE} "
         "unless the run chose another with --positive, e.g. tb in a tb / healthy folder); "
         "every other class counts as negative. The terms below say it for "
         f"{_POSITIVE}.", "Scores"),
    Term("sensitivity", "Sensitivity (recall)",
         f"Of the images that truly are {_POSITIVE}, the share the model called {_POSITIVE}. "
         "A missed case is a false negative.", "Scores"),
    Term("specificity", "Specificity",
         f"Of the images that are not {_POSITIVE}, the share the model did not call "
         f"{_POSITIVE}. A wrong call is a false positive (a false alarm).", "Scores"),
    Term("ppv", "PPV (precision)",
         f"Positive predictive value: of the images the model called {_POSITIVE}, the share "
         "that truly are. It depends on how common the class is in the images scored.",
         "Scores"),
    Term("npv", "NPV",
         f"Negative predictive value: of the images the model did not call {_POSITIVE}, the "
         f"share that truly are not {_POSITIVE}.", "Scores"),
    Term("macro_f1", "Macro-F1",
         "F1 balances precision and recall of one class; macro-F1 is its mean over the "
         "classes present, each class counting the same.", "Scores"),
    Term("bootstrap", "95% interval (patient bootstrap)",
         "Draw the test patients again with replacement (1,000 times), score each draw and "
         "keep the middle 95% of the scores. Whole patients are drawn, so several X-rays of "
         "one patient count as one piece of evidence. Overlapping intervals mean the data "
         "cannot tell two runs apart.", "Comparing runs"),
    Term("mcnemar", "McNemar's exact test",
         "Compares two runs on the same images using only the images exactly one of them "
         "gets right. If neither run were better, each such image would be a coin flip; the "
         "p-value says how surprising the observed split is.", "Comparing runs"),
    Term("threshold", "Threshold",
         f"The probability of {_POSITIVE} above which an image is called {_POSITIVE}. "
         "Lowering it finds more cases (sensitivity up) and raises more false alarms "
         "(specificity down).", "Comparing runs"),
)

_BY_KEY = {term.key: term for term in TERMS}


def explain(key: str) -> str:
    """One term's explanation (``"Term: text"``), for help text beside the word."""
    term = _BY_KEY[key]
    return f"**{term.term}**: {term.text}"


def sections() -> dict[str, list[Term]]:
    """The terms grouped by section, in order."""
    grouped: dict[str, list[Term]] = {}
    for term in TERMS:
        grouped.setdefault(term.section, []).append(term)
    return grouped
