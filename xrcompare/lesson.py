"""The guided lesson "Why 98% is a warning sign": six short steps, each a question the
student answers before the figure is revealed, every figure taken from the runs themselves
(never typed in), so the lesson stays true when the runs are regenerated.

1. the main run's test accuracy;
2. its held-out Kaggle accuracy (and how many healthy children it calls covid);
3. the random-init control;
4. the lungs-out control, still classifying;
5. the image-statistics baseline;
6. a photo that is not an X-ray, called something with confidence anyway.

Computing only (no Streamlit): :func:`lesson_steps` returns what each step shows; the page
lays it out, and step 6's prediction is made by :func:`photo_prediction` through the Predict
page's own functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xrcompare.escaping import escape_markdown as md
from xrcompare.evaluate import POSITIVE_CLASS
from xrcompare.imagestats import STATISTICS_KIND
from xrcompare.runs import TEST_SCOPE, Run, heldout_scope
from xrcompare.shortcuts import ROW_NAMES, chance_level, controls_of, main_runs

TITLE = "Why 98% is a warning sign"
#: The label samples.csv gives a picture that is not an X-ray.
PHOTO_LABEL = "photo"
#: The held-out folder step 2 prefers (the main run's first held-out folder otherwise).
PREFERRED_HELDOUT = "kaggle_test"


@dataclass
class Step:
    """One step: a question, the student's guess (a number or a choice), the reveal."""

    key: str
    title: str
    question: str  # Markdown (outside text in it is escaped), as are reveal and missing
    guess: str  # "percent" (a slider) or "choice"
    choices: tuple[str, ...] = ()
    reveal: str = ""  # Markdown, shown after "Reveal"
    bars: list[dict] = field(default_factory=list)  # accuracy_figure rows
    chance: float | None = None
    picture: str | None = None  # "mask" (a masked example) or "photo"
    truth: float | str | None = None  # the right answer to the guess
    missing: str | None = None  # why the step cannot be shown (a run is missing)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _interval(metrics: dict) -> str:
    low, high = (metrics.get("intervals") or {}).get("accuracy") or (None, None)
    return "" if low is None else f" (95% interval {low:.1%}–{high:.1%})"


def _bar(name: str, kind: str, metrics: dict | None) -> dict:
    metrics = metrics or {}
    low, high = (metrics.get("intervals") or {}).get("accuracy") or (None, None)
    return {"name": name, "kind": kind, "accuracy": metrics.get("accuracy"), "low": low,
            "high": high}


def lesson_main(runs: Sequence[Run]) -> Run | None:
    """The run the lesson is about: the first backbone's main run in dashboard order
    (:func:`xrcompare.shortcuts.main_runs`)."""
    mains = main_runs(runs)
    return mains[0] if mains else None


def heldout_of(run: Run) -> str | None:
    names = run.heldout_names
    if not names:
        return None
    return PREFERRED_HELDOUT if PREFERRED_HELDOUT in names else names[0]


def lesson_steps(runs: Sequence[Run], photo_probabilities: dict[str, float] | None = None
                 ) -> list[Step]:
    """The six steps from ``runs`` (empty when no sound CNN run exists).
    ``photo_probabilities``: the main run's prediction for the photo (step 6), when made."""
    main = lesson_main(runs)
    if main is None:
        return []
    controls = controls_of(main, runs)
    test = main.test_metrics
    name = md(main.title)
    test_chance = chance_level(main, TEST_SCOPE)
    steps = []

    steps.append(Step(
        "test", "1 · A model that looks excellent",
        f"*{name}* learned to tell covid, normal and pneumonia chest X-rays apart from "
        f"{main.split_summary.get('train', {}).get('images', 'a few hundred')} training "
        f"images. On {test['n']} test images from patients it never saw, what accuracy do "
        "you expect?", "percent",
        reveal=(f"**{_pct(test['accuracy'])}**{_interval(test)} on the test split. "
                f"Guessing the commonest class would score {_pct(test_chance)}. A score like "
                "this is what papers in 2020 reported. Keep it in mind."),
        bars=[_bar("main run, test split", "main", test)], chance=test_chance,
        truth=test["accuracy"]))

    held = heldout_of(main)
    if held is None:
        steps.append(Step("heldout", "2 · The same model on other images", "", "choice",
                          missing="The main run was scored on no held-out folder."))
    else:
        metrics = main.metrics_for(held) or {}
        table = main.heldout_table(held)
        called = " and ".join(f"{_pct(entry['predicted_pct'].get(POSITIVE_CLASS, 0) / 100)} "
                              f"of its {md(label)} images" for label, entry in table.items())
        chance = chance_level(main, heldout_scope(held))
        drop = test["accuracy"] - metrics.get("accuracy", test["accuracy"])
        held_md = md(held)
        what = (f"{held_md} holds {metrics.get('n', '?')} normal and pneumonia X-rays of "
                "children from the same hospital as the training normals and pneumonias, none "
                "used in training." if held == PREFERRED_HELDOUT else
                f"{held_md} holds {metrics.get('n', '?')} labelled X-rays never used in "
                "training.")
        steps.append(Step(
            "heldout", "2 · The same model on other images",
            f"{what} Compared with the test split, its accuracy there will be …",
            "choice", ("higher", "about the same", "lower"),
            reveal=(f"**{_pct(metrics.get('accuracy'))}**{_interval(metrics)}, "
                    f"{abs(drop) * 100:.0f} points {'lower' if drop >= 0 else 'higher'} "
                    "than on the test split."
                    + (f" It has no {POSITIVE_CLASS} images, yet the model calls {called} "
                       f"{POSITIVE_CLASS}." if table else "")
                    + " The test split came from the same folders as the training images; "
                      "the held-out folder did not."),
            bars=[_bar("main run, test split", "main", test),
                  _bar(f"main run, {held}", "main", metrics)], chance=chance,
            truth="lower" if drop > 0.02 else ("higher" if drop < -0.02 else
                                               "about the same")))

    steps.append(_control_step(
        main, controls.get("random-init"), "random-init", "3 · A network that never learned "
        "to see",
        f"Now the same recipe on a {main.backbone_display} whose weights are random: it never "
        "saw a single image, only the small head on top was trained. Test accuracy?",
        ("A network that never learned to see still reaches {score}: most of what separates "
         "these classes needs no pretrained vision. Whatever it uses, it is not radiology.",
         "Here the random network is close to chance, {score}: this model does need its "
         "ImageNet features. The next steps ask which features."),
        test_chance))
    steps.append(_control_step(
        main, controls.get("lungs-out"), "lungs-out", "4 · Black out the lungs",
        "Now every image has the lung fields blacked out (picture), in training and testing. "
        "What accuracy is left?",
        ("With no lungs to look at it still scores {score}: the model reads what lies outside "
         "them (body shape, age, borders, burned-in text), as Maguolo & Nanni (2021) found.",
         "With the lungs blacked out it falls close to chance, {score}: here the lung fields "
         "carry what the model uses."),
        test_chance, picture="mask"))
    steps.append(_control_step(
        main, controls.get(STATISTICS_KIND), STATISTICS_KIND, "5 · No network at all",
        "Forget CNNs: nine numbers per image (its width, height, brightness, border and corner "
        "brightness, share of white pixels) into a logistic regression. Test accuracy?",
        ("Nine numbers that know nothing about anatomy score {score}: the classes differ in "
         "how their pictures were made, not only in what they show.",
         "Nine numbers that know nothing about anatomy stay close to chance, {score}: size and "
         "brightness alone do not separate these classes."), test_chance))

    labels = tuple(main.labels) + ("it refuses: not an X-ray",)
    step = Step("photo", "6 · A picture that is not an X-ray",
                "This is a photo of a cup of coffee, made grayscale. What does the main run "
                "say it is?", "choice", labels, picture="photo")
    if photo_probabilities:
        predicted = max(photo_probabilities, key=photo_probabilities.get)
        step.truth = predicted
        step.reveal = (f"**{md(predicted)}**, with probability "
                       f"{_pct(photo_probabilities[predicted])}."
                       " The model has no answer for \"none of these\": it must pick a class, "
                       "and its confidence says nothing about whether the picture is even a "
                       "chest X-ray. A 98% score on the test split never promised that.")
    else:
        step.missing = "The main run could not predict the photo here (see the reason above)."
    steps.append(step)
    return steps


#: A control "far above chance" for the lesson's wording: its interval's lower end at least
#: this far above the chance level.
ABOVE_CHANCE_MARGIN = 0.10


def _control_step(main: Run, control: Run | None, kind: str, title: str, question: str,
                  lessons: tuple[str, str], chance: float | None,
                  picture: str | None = None) -> Step:
    """A control's step; ``lessons``: the reveal when it scores far above chance, and when
    it does not."""
    step = Step(kind, title, question, "percent", picture=picture, chance=chance)
    if control is None:
        step.missing = (f"No {ROW_NAMES[kind]} control of {md(main.title)} is in the runs folder; "
                        "train it (see the Shortcut lab page) to show this step.")
        return step
    metrics = control.test_metrics
    score = f"**{_pct(metrics['accuracy'])}**{_interval(metrics)}"
    low = ((metrics.get("intervals") or {}).get("accuracy") or [None])[0]
    above = low is not None and chance is not None and low >= chance + ABOVE_CHANCE_MARGIN
    step.reveal = ((lessons[0] if above else lessons[1]).format(score=score)
                   + f" (The main run: {_pct(main.test_metrics['accuracy'])}; chance "
                     f"{_pct(chance)}.)")
    step.bars = [_bar("main run", "main", main.test_metrics),
                 _bar(ROW_NAMES[kind], kind, metrics)]
    step.truth = metrics["accuracy"]
    return step


def photo_sample(samples: Sequence) -> Path | None:
    """The shipped photo that is not an X-ray (samples.csv label ``photo``), if any."""
    return next((sample.path for sample in samples if sample.label == PHOTO_LABEL), None)


def photo_prediction(run: Run, path: str | Path, engine=None) -> dict[str, float]:
    """The run's class probabilities for an image file, as the Predict page computes them
    (``engine``: the page's :class:`xrcompare.engine.Engine`; a new one if None)."""
    from xrcompare import predictor
    from xrcompare.engine import Engine
    from xrcompare.inference import load_image_file

    image = load_image_file(path)
    prediction = predictor.predict_run(engine if engine is not None else Engine(), run,
                                       image.gray)
    if not prediction.ok:
        raise ValueError(prediction.problem)
    return prediction.probabilities


def guess_feedback(step: Step, guess) -> str:
    """One sentence comparing the student's guess with the truth."""
    if step.truth is None or guess is None:
        return ""
    if step.guess == "percent":
        difference = float(guess) / 100 - float(step.truth)
        if abs(difference) <= 0.05:
            return f"Your guess ({guess:.0f}%) was within 5 points."
        side = "too high" if difference > 0 else "too low"
        return f"Your guess ({guess:.0f}%) was {abs(difference) * 100:.0f} points {side}."
    return ("You guessed right." if guess == step.truth
            else f"You guessed *{guess}*; the answer is *{step.truth}*.")
