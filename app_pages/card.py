"""Model card: one run described for a reader who was not there (intended use, data, split,
metrics with intervals, calibration, controls, subgroups, caveats), downloadable as Markdown;
``python -m xrcompare card RUN_DIR`` prints the same."""

import streamlit as st

from app_pages import _common as common
from xrcompare.card import card_filename, model_card

runs = common.require_runs()
st.title("Model card")
labels, _ = common.labels_and_colors(runs)
chosen = st.selectbox("Run", [run.run_id for run in runs], format_func=labels.get,
                      key="card_run", help="Controls are looked for among every run in the "
                                           "runs folder.")
run = next(run for run in runs if run.run_id == chosen)
everything = common.all_runs()


@st.cache_data(show_spinner="Writing the model card…", max_entries=16)
def cached_card(_run, _runs, key: tuple) -> str:
    return model_card(_run, _runs)


text = cached_card(run, everything, (run.run_id, run.modified,
                                     tuple(sorted((r.run_id, r.modified) for r in everything))))
st.download_button("Download as Markdown", text.encode("utf-8"), file_name=card_filename(run),
                   mime="text/markdown", icon=":material/download:")
st.caption(f"The same text: `python -m xrcompare card {common.runs_dir().name}/{run.run_id}`")
with st.container(border=True):
    st.markdown(text)
