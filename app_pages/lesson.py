"""The guided lesson "Why 98% is a warning sign": six steps, each asking the student to
guess before the runs' own figure is revealed. A teacher steps through it on a projector."""

import streamlit as st

from app_pages import _common as common
from app_pages import _engine
from app_pages._common import md
from xrcompare import lesson, predictor
from xrcompare.charts import accuracy_figure, mask_examples, probability_bars
from xrcompare.imaging import ImageError, read_gray

STEP_KEY = "lesson_step"
REVEALED_KEY = "lesson_revealed"

runs = common.require_runs()
st.title(f"{lesson.TITLE}: a lesson in six steps")
everything = common.all_runs()
main = lesson.lesson_main(everything)
if main is None:
    st.info("The lesson needs a sound, single-split CNN run (a main run) in the runs folder.",
            icon=":material/school:")
    st.stop()
photo_path = lesson.photo_sample(predictor.list_samples())


@st.cache_resource(show_spinner="The main run looks at the photo…", max_entries=2)
def photo_probabilities(_run, key: tuple, path: str):
    try:
        return lesson.photo_prediction(_run, path, _engine.engine()), None
    except Exception as error:  # a missing backbone: the step says why, the lesson goes on
        return None, f"{type(error).__name__}: {str(error)[:200]}"


probabilities, problem = (photo_probabilities(main, (main.run_id, main.modified),
                                              str(photo_path))
                          if photo_path is not None else (None, "no photo sample shipped"))
steps = lesson.lesson_steps(everything, probabilities)
state = st.session_state
state.setdefault(STEP_KEY, 0)
state.setdefault(REVEALED_KEY, set())
number = min(max(0, int(state[STEP_KEY])), len(steps) - 1)
step = steps[number]

st.caption(f"About *{md(main.title)}* and its controls, from the runs folder. Guess first, "
           "then reveal. Use the buttons to step forward and back.")
st.progress((number + 1) / len(steps), text=f"Step {number + 1} of {len(steps)}")


def go(offset: int) -> None:
    state[STEP_KEY] = min(max(0, number + offset), len(steps) - 1)


def reveal() -> None:
    state[REVEALED_KEY] = {*state[REVEALED_KEY], step.key}


st.subheader(step.title)
if step.missing and not (step.key == "photo" and photo_path is not None):
    st.info(step.missing, icon=":material/info:")
else:
    st.markdown(step.question)
    if step.picture == "mask":
        try:
            gray = read_gray(next(sample.path for sample in predictor.list_samples()
                                  if sample.label == "covid"))
            pictures = mask_examples(gray, 224)
            left, right, _ = st.columns([1, 1, 2])
            left.image(pictures["box"], caption="what the main run sees", width="stretch")
            right.image(pictures["lungs-out"], caption="lungs blacked out", width="stretch")
        except (StopIteration, ImageError):
            pass
    if step.picture == "photo" and photo_path is not None:
        left, _ = st.columns([1, 2])
        left.image(read_gray(photo_path), caption="not an X-ray", width="stretch")
    if step.guess == "percent":
        guess = st.slider("Your guess (accuracy, %)", 0, 100, 70, 1, key=f"guess_{step.key}")
    else:
        guess = st.radio("Your guess", step.choices, index=None, key=f"guess_{step.key}",
                         horizontal=True)
    revealed = step.key in state[REVEALED_KEY]
    if not revealed:
        st.button("Reveal", type="primary", icon=":material/visibility:", on_click=reveal,
                  key=f"reveal_{step.key}")
    elif step.missing:
        st.info(f"{step.missing} ({md(problem or 'no reason given')})", icon=":material/info:")
    else:
        feedback = lesson.guess_feedback(step, guess)
        st.success((feedback + " " if feedback else "") + step.reveal,
                   icon=":material/lightbulb:")
        if step.bars:
            common.plot(accuracy_figure(step.bars, step.chance,
                                        height=120 + 55 * len(step.bars)),
                        key=f"lesson_chart_{step.key}")
        if step.key == "photo" and probabilities:
            common.plot(probability_bars(probabilities, f"{main.title} on the photo"),
                        key="lesson_chart_photo")

back, forward, _ = st.columns([1, 1, 4])
back.button("Back", icon=":material/arrow_back:", on_click=go, args=(-1,),
            disabled=number == 0, key="lesson_back", width="stretch")
forward.button("Next", icon=":material/arrow_forward:", on_click=go, args=(1,),
               disabled=number == len(steps) - 1, key="lesson_next", width="stretch")
if number == len(steps) - 1 and step.key in state[REVEALED_KEY]:
    st.markdown("**What to take away.** A high test score on this data says that the test "
                "images resemble the training images, not that the model can read an X-ray. "
                "The *Shortcut lab* page has every control with its interval and the "
                "references.")
    st.page_link(common.page_spec("Shortcut lab").path, label="Open the Shortcut lab",
                 icon=":material/science:")
