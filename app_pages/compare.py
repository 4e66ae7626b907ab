"""Compare two runs: the same images through two models, image by image. A verdict that only
says "better" when the evidence does, the 2×2 agreement table, per-class differences and the
X-rays one model gets right and the other wrong."""

import pandas as pd
import streamlit as st

from app_pages import _common as common
from app_pages._common import md
from xrcompare.charts import per_class_difference_figure
from xrcompare.compare import (
    DISCORDANT_SHOWN,
    NotComparable,
    comparable,
    compare_runs,
    default_pair,
    shared_scopes,
)
from xrcompare.evaluate import (
    ALPHA,
    SMALL_COMPARISON,
    format_interval_points,
    format_p,
    format_points,
)
from xrcompare.runs import TEST_SCOPE, RunError, scope_text

runs = common.require_runs()
st.title("Compare two runs: is one really better?")
st.markdown(
    "Two runs scored on **the same images** can be compared image by image: where both are "
    "right or both wrong the images say nothing about which is better; only the images "
    "**one gets right and the other wrong** do. A difference of a point or two on a few hundred "
    "images is often noise, so the verdict below names a winner only when the evidence does.")
labels, _ = common.labels_and_colors(runs)
if len(runs) < 2:
    st.info("Pick at least two runs under **Runs to compare** in the sidebar.",
            icon=":material/arrow_back:")
    st.stop()


@st.cache_resource(max_entries=16, show_spinner="Comparing…")
def cached_comparison(_run_a, _run_b, key: tuple, scope: str, names: tuple):
    """The comparison of two runs (keyed on their ids and modification times), or the
    refusal sentence; never mutated, so shared without copying."""
    try:
        return compare_runs(_run_a, _run_b, scope, names=dict(names))
    except NotComparable as error:
        return str(error)


def run_name(run_id: str) -> str:
    run = by_id[run_id]
    marks = []  # a leaky run's title already says "2020 protocol (leaky)"
    if run.is_cross_validation:
        marks.append(f"{run.folds}-fold CV")
    accuracy = run.test_metrics["accuracy"]
    text = f"{labels[run_id]} · test {accuracy:.3f}"
    return text + (f" [{', '.join(marks)}]" if marks else "")


by_id = {run.run_id: run for run in runs}
ids = list(by_id)
pair = default_pair(runs)
for key, default in (("compare_a", pair[0].run_id), ("compare_b", pair[1].run_id)):
    if st.session_state.get(key) not in by_id:
        st.session_state[key] = default
left, right = st.columns(2)
with left:
    chosen_a = st.selectbox("Run A", ids, key="compare_a", format_func=run_name,
                            help="Opens on the best ImageNet run (test accuracy) that is "
                                 "neither a control nor leaky.")
with right:
    chosen_b = st.selectbox("Run B", ids, key="compare_b", format_func=run_name,
                            help="Opens on the next best such run tested on the same images. "
                                 "Controls and leaky runs can be picked too.")
run_a, run_b = by_id[chosen_a], by_id[chosen_b]

scopes = shared_scopes(run_a, run_b) or [TEST_SCOPE]
usable = [scope for scope in scopes if comparable(run_a, run_b, scope, names=labels) is None]
if st.session_state.get("compare_scope") not in scopes:
    st.session_state["compare_scope"] = usable[0] if usable else scopes[0]
scope = st.radio("Images", scopes, key="compare_scope", horizontal=True,
                 format_func=lambda s: ("test split" if s == TEST_SCOPE
                                        else scope_text(s) + " folder"),
                 help="The test split both runs were scored on, or a held-out folder both "
                      "were scored on.")

comparison = cached_comparison(
    run_a, run_b, (run_a.run_id, run_a.modified, str(run_a.path), run_b.run_id, run_b.modified,
                   str(run_b.path)), scope, tuple(sorted(labels.items())))
if isinstance(comparison, str):
    st.warning(f"{md(comparison)}.", icon=":material/compare_arrows:")
    others = [s for s in usable if s != scope]
    if others:
        st.caption("These two runs can be compared on: "
                   + ", ".join(md(scope_text(s)) + " images" for s in others) + ".")
    st.stop()

stats = comparison.stats
if comparison.better:  # the verdict names the runs: shown as plain text
    st.success(md(comparison.verdict), icon=":material/check_circle:")
else:
    st.info(md(comparison.verdict), icon=":material/balance:")

columns = st.columns(4)
columns[0].metric("Accuracy A", f"{stats['accuracy_a']:.3f}",
                  help=md(labels[run_a.run_id]))
columns[1].metric("Accuracy B", f"{stats['accuracy_b']:.3f}",
                  help=md(labels[run_b.run_id]))
columns[2].metric("A − B (points)", format_points(stats["difference"]),
                  help="Accuracy of A minus accuracy of B, in percentage points.")
columns[2].caption(f"95% CI {format_interval_points(stats['difference_95ci'])}")
columns[3].metric("McNemar exact p", format_p(stats["mcnemar_p"]),
                  help="Two-sided binomial test on the images exactly one run gets right: "
                       "under 'neither is better' each is a coin flip.")
if stats["positives"]:
    st.markdown(
        f"**{md(stats['pos_label'])} sensitivity** (of the {stats['positives']} "
        f"{md(stats['pos_label'])} images, the share each run finds): A "
        f"{stats['sensitivity_a']:.3f}, B {stats['sensitivity_b']:.3f}, difference "
        f"{format_points(stats['sensitivity_difference'])} points (95% CI "
        f"{format_interval_points(stats['sensitivity_difference_95ci'])}).")
else:
    st.caption(f"No {md(stats['pos_label'] or 'positive')} image in this scope, so there is no "
               "sensitivity to compare.")
st.caption(f"{stats['n']} images from {stats['patients']} "
           + ("patients" if stats["unit"] == "patient" else "images (no shared patients)")
           + f"; intervals: {stats['bootstrap']} (seed {stats['seed']}), the same resample "
           "for both runs."
           + (f" Fewer than {SMALL_COMPARISON} images: only a large difference can show."
              if stats["n"] < SMALL_COMPARISON else ""))

left, right = st.columns([2, 3])
with left:
    st.subheader("Where they agree")
    common.table(comparison.agreement_table("A", "B"), "agreement", key="compare_agreement",
                 index=True)
    st.caption(f"Only the {stats['a_right_b_wrong']} + {stats['a_wrong_b_right']} images where "
               "exactly one run is right count for McNemar's test; the images both get right "
               "(or both wrong) cannot tell the runs apart.")
with right:
    st.subheader("Per class")
    common.plot(per_class_difference_figure(comparison.per_class, "A", "B"),
                key="compare_per_class_chart")
table = comparison.per_class.copy()
table["metric"] = table["metric"].map({"precision": "precision", "recall": "recall",
                                       "f1": "F1"})
table["difference"] = table["difference"] * 100
common.table(table, "compare-per-class", key="compare_per_class",
             height=common.table_height(len(table)),
             column_config={
                 "class": st.column_config.TextColumn("true class"),
                 "a": st.column_config.NumberColumn("A", format="%.3f"),
                 "b": st.column_config.NumberColumn("B", format="%.3f"),
                 "difference": st.column_config.NumberColumn("A − B (points)", format="%+.1f"),
                 "support": st.column_config.NumberColumn(
                     "images", help="Images of this class in the scope.")})

st.subheader("The images that decide it")
source, folder, refusal = None, None, None
for candidate in (run_a, run_b):  # the images, from inside the data root only
    try:
        folder = candidate.data_folder(comparison.scope)
    except RunError as error:
        refusal = refusal or error
        continue
    if folder is not None:
        source = candidate
        break
if folder is None and refusal is not None:
    st.warning(f"{md(refusal)}; only the tables are shown.", icon=":material/block:")
elif folder is None:
    record = run_a.scope_record(comparison.scope)
    st.warning(f"The images are not on this machine (the run recorded "
               f"{md(record.get('folder_absolute') or record.get('folder') or scope)}), so "
               "only the tables are shown.", icon=":material/folder_off:")
st.caption("Most confident mistake first. Each caption: the true class, then what A and B "
           "called it with the probability each gave its answer.")
for side, title in (("a", "A right, B wrong"), ("b", "A wrong, B right")):
    rows, total = comparison.discordant(side, DISCORDANT_SHOWN)
    st.markdown(f"**{title}: {total} image{'s' if total != 1 else ''}**")
    if total == 0:
        st.caption("None.")
        continue
    if folder is not None:
        items = []
        for row in rows.itertuples():
            path = source.image_path(str(row.path), comparison.scope)
            if path is None:  # a recorded path leading out of the folder: not shown
                continue
            items.append((path, f"true {md(row.label)}  \nA: {md(row.predicted_a)} "
                                f"{row.p_predicted_a:.2f} · B: {md(row.predicted_b)} "
                                f"{row.p_predicted_b:.2f}"))
        common.thumbnail_grid(items, columns=6, size=200)
    if total > len(rows):
        st.caption(f"… and {total - len(rows)} more, in the table below.")
with st.expander("All of these images as a table"):
    frames = []
    for side, title in (("a", "A right, B wrong"), ("b", "A wrong, B right")):
        rows, _ = comparison.discordant(side, None)
        frames.append(rows.assign(which=title))
    every = pd.concat(frames, ignore_index=True)
    common.table(every[["which", "path", "label", "predicted_a", "p_true_a", "predicted_b",
                        "p_true_b"]], "discordant-images", key="compare_discordant",
                 column_config={
                     "p_true_a": st.column_config.NumberColumn("A: p(true class)",
                                                               format="%.3f"),
                     "p_true_b": st.column_config.NumberColumn("B: p(true class)",
                                                               format="%.3f")})

with st.expander("How to read this"):
    st.markdown(f"""
- **Same images, paired.** Both runs must have scored exactly the same images (same files, same
  true labels); otherwise the page refuses, because a difference could come from the images.
  A cross-validated run's test rows cover the whole dataset, so it pairs with a single-split
  run only on a held-out folder.
- **McNemar's exact test** looks only at the images exactly one run gets right. If neither
  run were better, each of those would be a coin flip; p is how surprising the split is.
- **The 95% interval** of the accuracy difference comes from resampling *patients* with
  replacement ({stats['bootstrap']}), the same patients for both runs, so several X-rays of one
  patient count as one unit of evidence.
- **The verdict** names a better run only when the interval excludes 0 **and** p < {ALPHA}.
  "No evidence" is not "equal": with few discordant images a real difference can hide.
- Every number here inherits the data's shortcuts (see *Dataset*): two runs can differ in how
  well they exploit them.
""")
