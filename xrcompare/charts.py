"""Plotly figures and the small tables behind them, built from run data.

Pure functions: they take :class:`xrcompare.runs.Run` objects (or tables made from them) and
return pandas frames or plotly figures. The Streamlit pages only lay these out.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from xrcompare import CLASSES
from xrcompare.evaluate import (
    BLOG_2020_REPORTED,
    cheapest_point,
    one_vs_rest_curves,
    point_at,
    threshold_for_sensitivity,
    threshold_sweep,
)
from xrcompare.runs import TEST_SCOPE, Run, normalise_scope, scope_name
from xrcompare.summary import per_class_table

#: One colour per class, used wherever a class is a colour.
CLASS_COLORS = {"covid": "#c0392b", "normal": "#2e86c1", "pneumonia": "#d4a017"}
#: Colours of other classes (any dataset's), given in sorted order of their names.
OTHER_CLASS_COLORS = ("#16a085", "#8e44ad", "#d35400", "#7f8c8d", "#2c3e50", "#27ae60")


def class_colors(labels: Sequence[str]) -> dict[str, str]:
    """A colour per class: the three classes keep theirs, others take the next free one."""
    colors = {label: CLASS_COLORS[label] for label in labels if label in CLASS_COLORS}
    others = sorted(label for label in set(labels) if label not in CLASS_COLORS)
    for number, label in enumerate(others):
        colors[label] = OTHER_CLASS_COLORS[number % len(OTHER_CLASS_COLORS)]
    return colors

#: Colour-blind-friendly run colours (Okabe–Ito order, then plotly's Safe palette).
RUN_PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
               "#000000", *px.colors.qualitative.Safe]

#: The name of the 2020 blog's reported Kaggle-test figures (:data:`BLOG_2020_REPORTED`).
BLOG_REFERENCE_NAME = f"2020 blog, {BLOG_2020_REPORTED['kaggle_test']['model']}, as reported"

_LAYOUT = {"template": "plotly_white", "font": {"size": 14},
           "margin": {"l": 10, "r": 10, "t": 60, "b": 10}}


#: Pixels per legend row and around a legend below a chart (see :func:`legend_below`).
LEGEND_ROW_PX = 30
LEGEND_GAP_PX = 70
#: How much presenter mode enlarges fonts and charts (:func:`for_projector`).
PRESENTER_SCALE = 1.35


def legend_entries(figure: go.Figure) -> list[str]:
    """The names the legend shows (one per legend group)."""
    names, groups = [], set()
    for trace in figure.data:
        if trace.showlegend is False or not trace.name:
            continue
        group = trace.legendgroup or trace.name
        if group not in groups:
            groups.add(group)
            names.append(str(trace.name))
    return names


def legend_rows(names: Sequence[str], width_px: int, font_px: float = 14) -> int:
    """How many rows a horizontal legend of ``names`` needs in ``width_px`` (a generous
    estimate: a symbol and gap per entry, 0.6 em per character)."""
    rows, used = 1, 0.0
    for name in names:
        needed = 50 + 0.6 * font_px * len(name)
        if used and used + needed > width_px:
            rows, used = rows + 1, 0.0
        used += needed
    return rows if names else 0


def legend_below(figure: go.Figure, plot_height: int, width_px: int = 900) -> go.Figure:
    """Put the legend under the chart, below the x-axis title (never across it): anchored
    to the figure's bottom edge, with the bottom margin and the height grown by its rows.
    ``width_px`` is the narrowest width the chart is expected at (a narrower chart wraps
    more rows)."""
    rows = legend_rows(legend_entries(figure), width_px)
    bottom = LEGEND_GAP_PX + LEGEND_ROW_PX * rows
    top = figure.layout.margin.t if figure.layout.margin.t is not None else 60
    figure.update_layout(
        legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom",
                "x": 0, "xanchor": "left"},
        margin={"b": bottom}, height=plot_height + top + bottom)
    return figure


def for_projector(figure: go.Figure, scale: float = PRESENTER_SCALE) -> go.Figure:
    """A copy of ``figure`` for a projector: every font, the margins and the height scaled
    by ``scale`` (presenter mode). The data is untouched."""
    figure = go.Figure(figure)
    layout = figure.layout

    def bigger(size, default=None):
        size = size if size is not None else default
        return None if size is None else round(size * scale)

    figure.update_layout(font_size=bigger(layout.font.size, 14))
    if layout.title.font.size is not None:
        figure.update_layout(title_font_size=bigger(layout.title.font.size))
    if layout.legend.font.size is not None:
        figure.update_layout(legend_font_size=bigger(layout.legend.font.size))
    for annotation in layout.annotations:
        if annotation.font.size is not None:
            annotation.font.size = bigger(annotation.font.size)
    for trace in figure.data:
        font = getattr(trace, "textfont", None)
        if font is not None and font.size is not None:
            trace.textfont.size = bigger(font.size)
    margin = layout.margin
    figure.update_layout(margin={side: bigger(getattr(margin, side))
                                 for side in ("t", "b", "l", "r")
                                 if getattr(margin, side) is not None},
                         height=bigger(layout.height, 450))
    return figure


# --------------------------------------------------------------------------- run names, colours


def run_labels(runs: Sequence[Run]) -> dict[str, str]:
    """Run id → the name shown for it: its title, plus the run id where titles collide."""
    titles = [run.title for run in runs]
    return {run.run_id: (run.title if titles.count(run.title) == 1
                         else f"{run.title} ({run.run_id})") for run in runs}


def run_colors(labels: Sequence[str]) -> dict[str, str]:
    """A stable colour per run label, in the order given."""
    return {label: RUN_PALETTE[index % len(RUN_PALETTE)] for index, label in enumerate(labels)}


def _label(run: Run, labels: dict[str, str] | None) -> str:
    return (labels or {}).get(run.run_id, run.title)


def wrap_title(text: str, width: int = 38) -> str:
    """Break a long chart title onto lines of about ``width`` characters (plotly ``<br>``)."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "<br>".join(lines)


# --------------------------------------------------------------------------- per class


def per_class_frame(runs: Sequence[Run], scope: str = TEST_SCOPE,
                    labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Long table of per-class precision, recall, F1 (with 95% intervals) and support."""
    frames = []
    for run in runs:
        table = per_class_table([run], scope)
        if not table.empty:
            table["run"] = _label(run, labels)
            frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["run", "class", "precision", "recall", "f1", "support"])
    return pd.concat(frames, ignore_index=True)


def per_class_figure(table: pd.DataFrame, metric: str,
                     colors: dict[str, str] | None = None) -> go.Figure:
    """Grouped bars (class × run) of one metric with its 95% interval as error bars."""
    if metric not in ("precision", "recall", "f1"):
        raise ValueError(f"metric must be precision, recall or f1, got {metric!r}")
    table = table[table["support"] > 0] if metric == "recall" else table
    frame = table.copy()
    low, high = frame.get(f"{metric}_low"), frame.get(f"{metric}_high")
    frame["error_plus"] = (pd.to_numeric(high, errors="coerce") - frame[metric]).clip(lower=0)
    frame["error_minus"] = (frame[metric] - pd.to_numeric(low, errors="coerce")).clip(lower=0)
    names = {"precision": "Precision", "recall": "Recall (sensitivity)", "f1": "F1"}
    figure = px.bar(frame, x="class", y=metric, color="run", barmode="group",
                    error_y="error_plus", error_y_minus="error_minus",
                    color_discrete_map=colors or {},
                    category_orders={"class": sorted(set(frame["class"]))},
                    hover_data={"support": True, f"{metric}_low": ":.2f",
                                f"{metric}_high": ":.2f", "error_plus": False,
                                "error_minus": False},
                    labels={metric: names[metric], "class": "true class", "run": "run"})
    figure.update_layout(**_LAYOUT, yaxis_range=[0, 1.05], legend_title_text="",
                         title=f"{names[metric]} per class, with 95% patient-bootstrap intervals")
    return legend_below(figure, 380)


# --------------------------------------------------------------------------- confusion


def covid_errors(metrics: dict, positive: str = "covid") -> dict:
    """False negatives and false positives of ``positive`` from a confusion matrix.

    ``fn`` is None when the scope holds no positive images (a held-out folder without covid).
    """
    labels = list(metrics["labels"])
    matrix = np.asarray(metrics["confusion_matrix"], dtype=int)
    k = labels.index(positive)
    positives = int(matrix[k].sum())
    fn_to = {labels[j]: int(matrix[k, j]) for j in range(len(labels)) if j != k}
    fp_from = {labels[i]: int(matrix[i, k]) for i in range(len(labels)) if i != k}
    return {"positive": positive, "positives": positives,
            "negatives": int(matrix.sum()) - positives,
            "fn": sum(fn_to.values()) if positives else None, "fn_to": fn_to,
            "fp": sum(fp_from.values()), "fp_from": fp_from}


def confusion_figure(metrics: dict, *, normalise: bool = False, title: str = "",
                     positive: str = "covid") -> go.Figure:
    """Heatmap of a confusion matrix (rows true, columns predicted), counts or row shares.

    Rows without images (covid in a held-out folder) are left out. Cells holding ``positive``
    false negatives (red) and false positives (orange) are outlined.
    """
    labels = list(metrics["labels"])
    matrix = np.asarray(metrics["confusion_matrix"], dtype=float)
    rows = [i for i in range(len(labels)) if matrix[i].sum() > 0]
    shown = matrix[rows]
    if normalise:
        shown = shown / shown.sum(axis=1, keepdims=True)
    row_labels = [labels[i] for i in rows]
    figure = px.imshow(shown, x=labels, y=row_labels, color_continuous_scale="Blues",
                       text_auto=".0%" if normalise else True, aspect="auto",
                       zmin=0, zmax=1 if normalise else None,
                       labels={"x": "predicted", "y": "true", "color": "share" if normalise
                               else "images"})
    figure.update_traces(textfont_size=16)
    if positive in labels:
        k = labels.index(positive)
        for y, i in enumerate(rows):
            for j in range(len(labels)):
                missed = i == k and j != k
                false_alarm = j == k and i != k
                if (missed or false_alarm) and matrix[i, j] > 0:
                    figure.add_shape(type="rect", x0=j - 0.48, x1=j + 0.48, y0=y - 0.48,
                                     y1=y + 0.48, line={"color": "#c0392b" if missed
                                                        else "#e67e22", "width": 3})
    figure.update_layout(**{**_LAYOUT, "margin": {"l": 10, "r": 10, "t": 60, "b": 10}},
                         title=wrap_title(title), coloraxis_showscale=False, height=340)
    figure.update_xaxes(side="bottom")
    return figure


# --------------------------------------------------------------------------- training curves


def training_curves_figure(history: pd.DataFrame, best_epoch: int | None = None,
                           title: str = "") -> go.Figure:
    """Loss and accuracy per epoch, training (solid) vs validation (dashed), kept epoch marked.

    Runs of the 2020 protocol that chose their epoch on the test split have ``test_*``
    columns instead of ``val_*``; those are drawn as "test (picked the epoch)".
    """
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"),
                           horizontal_spacing=0.1)
    epochs = history["epoch"] if "epoch" in history else pd.Series(range(1, len(history) + 1))
    for col, metric in ((1, "loss"), (2, "accuracy")):
        for prefix, name, dash, color in (("", "training", "solid", "#0072B2"),
                                          ("val_", "validation", "dash", "#D55E00"),
                                          ("test_", "test (picked the epoch)", "dot",
                                           "#CC79A7")):
            column = f"{prefix}{metric}"
            if column not in history:
                continue
            figure.add_trace(go.Scatter(x=epochs, y=history[column], mode="lines+markers",
                                        name=name, legendgroup=name, showlegend=col == 1,
                                        line={"dash": dash, "color": color},
                                        marker={"size": 5}), row=1, col=col)
    if best_epoch:
        for col in (1, 2):
            figure.add_vline(x=best_epoch, line={"color": "#2c3e50", "dash": "dot"},
                             row=1, col=col)
        figure.add_annotation(x=best_epoch, y=0.03, yref="y2 domain", xref="x2",
                              text=f"kept: epoch {best_epoch}", showarrow=False,
                              xanchor="right", xshift=-4, yanchor="bottom",
                              font={"size": 12}, bgcolor="rgba(255,255,255,0.8)")
    figure.update_xaxes(title_text="epoch")
    figure.update_yaxes(rangemode="tozero", row=1, col=1)
    figure.update_yaxes(range=[0, 1.02], row=1, col=2)
    figure.update_layout(**_LAYOUT, title=title)
    return legend_below(figure, 280)


# --------------------------------------------------------------------------- thresholds


def binary_scores(run: Run, positive: str = "covid",
                  scope: str = TEST_SCOPE) -> tuple[np.ndarray, np.ndarray]:
    """(is positive, probability of ``positive``) for the run's images of ``scope``; both
    empty for a run that does not predict ``positive`` (a run of other classes)."""
    if positive not in run.labels:
        return np.zeros(0, dtype=bool), np.zeros(0)
    frame = run.predictions_for(scope)
    column = run.prediction_column(positive)
    return (frame["label"].to_numpy() == positive), frame[column].to_numpy(dtype=float)


def threshold_tables(runs: Sequence[Run], positive: str, threshold: float, target: float,
                     miss_cost: float, labels: dict[str, str] | None = None) -> dict:
    """The three trade-off tables of the recall page, one row per run.

    ``at_threshold``: counts and rates at the chosen threshold; ``target``: the threshold
    reaching ``target`` sensitivity with the fewest false positives, and how many;
    ``cheapest``: the threshold with the lowest total cost when a miss costs ``miss_cost``
    false alarms. Runs whose test split lacks positives or negatives are listed in ``skipped``.
    """
    at, reach, cheap, skipped = [], [], [], []
    for run in runs:
        name = _label(run, labels)
        is_positive, score = binary_scores(run, positive)
        if is_positive.all() or not is_positive.any():
            skipped.append(name)
            continue
        sweep = threshold_sweep(is_positive, score)
        point = point_at(sweep, threshold)
        at.append({"run": name, "threshold": threshold,
                   "sensitivity": point["sensitivity"], "specificity": point["specificity"],
                   "ppv": point["ppv"], "npv": point["npv"], "fn": point["fn"],
                   "fp": point["fp"], "tp": point["tp"], "tn": point["tn"],
                   "positives": point["tp"] + point["fn"],
                   "negatives": point["tn"] + point["fp"]})
        best = threshold_for_sensitivity(sweep, target)
        reach.append({"run": name, "threshold": best["threshold"],
                      "sensitivity": best["sensitivity"], "specificity": best["specificity"],
                      "fp": best["fp"], "fn": best["fn"], "ppv": best["ppv"],
                      "negatives": best["tn"] + best["fp"]})
        cheapest = cheapest_point(sweep, miss_cost)
        finite = np.isfinite(cheapest["threshold"])
        cheap.append({"run": name,
                      "threshold": cheapest["threshold"] if finite else None,
                      "rule": (f"call {positive} when p ≥ {cheapest['threshold']:.3f}" if finite
                               else f"never call {positive}"),
                      "fn": cheapest["fn"], "fp": cheapest["fp"], "cost": cheapest["cost"],
                      "sensitivity": cheapest["sensitivity"],
                      "specificity": cheapest["specificity"]})
    return {"at_threshold": _numeric(pd.DataFrame(at)), "target": _numeric(pd.DataFrame(reach)),
            "cheapest": _numeric(pd.DataFrame(cheap)), "skipped": skipped}


def _numeric(frame: pd.DataFrame) -> pd.DataFrame:
    """Undefined rates (None) become NaN so tables show a blank, not the word None."""
    for column in ("threshold", "sensitivity", "specificity", "ppv", "npv", "cost"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def curves_for_runs(runs: Sequence[Run], positive: str,
                    labels: dict[str, str] | None = None) -> dict[str, dict]:
    """Run label → ROC and precision-recall curves of ``positive`` vs rest on the test split."""
    curves = {}
    for run in runs:
        frame = run.predictions_for(TEST_SCOPE)
        if frame.empty or positive not in run.labels:
            continue
        result = one_vs_rest_curves(frame["label"].tolist(),
                                    frame[run.probability_columns()].to_numpy(dtype=float),
                                    positive, run.labels)
        if result is not None:
            curves[_label(run, labels)] = result
    return curves


def roc_figure(curves: dict[str, dict], points: pd.DataFrame | None = None,
               colors: dict[str, str] | None = None, positive: str = "covid",
               zoom: bool = False) -> go.Figure:
    """ROC curves (AUC in the legend) with each run's operating point at the chosen threshold;
    ``zoom`` shows only the top-left corner, where good models differ."""
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                                line={"color": "#aaaaaa", "dash": "dot"}, hoverinfo="skip"))
    for name, curve in curves.items():
        color = (colors or {}).get(name)
        figure.add_trace(go.Scatter(
            x=curve["fpr"], y=curve["tpr"], mode="lines", line={"color": color, "width": 2},
            name=f"{name} (AUC {curve['roc_auc']:.3f})", legendgroup=name,
            customdata=np.clip(curve["roc_thresholds"], 0, 1),
            hovertemplate="threshold %{customdata:.3f}<br>1 − specificity %{x:.3f}"
                          "<br>sensitivity %{y:.3f}<extra></extra>"))
        row = _row(points, name)
        if row is not None and row["specificity"] is not None:
            figure.add_trace(go.Scatter(
                x=[1 - row["specificity"]], y=[row["sensitivity"]], mode="markers",
                marker={"size": 14, "color": color, "symbol": "circle",
                        "line": {"color": "black", "width": 2}},
                name=f"{name} at {row['threshold']:.2f}", legendgroup=name, showlegend=False,
                hovertemplate=f"threshold {row['threshold']:.2f}<br>sensitivity %{{y:.3f}}"
                              f"<br>specificity {row['specificity']:.3f}<extra></extra>"))
    figure.update_layout(**_LAYOUT, title=f"ROC: {positive} vs rest (dot = chosen threshold)",
                         xaxis_title="1 − specificity (false-positive rate)",
                         yaxis_title="sensitivity (recall)")
    figure.update_layout(title=wrap_title(figure.layout.title.text, 44))
    legend_below(figure, 340, width_px=420)
    figure.update_xaxes(range=[-0.005, 0.3] if zoom else [-0.02, 1.02])
    figure.update_yaxes(range=[0.7, 1.005] if zoom else [-0.02, 1.02])
    return figure


def precision_recall_figure(curves: dict[str, dict], points: pd.DataFrame | None = None,
                            colors: dict[str, str] | None = None,
                            positive: str = "covid", zoom: bool = False) -> go.Figure:
    """Precision-recall curves (AP in the legend) with each run's operating point; ``zoom``
    shows only the top-right corner."""
    figure = go.Figure()
    for name, curve in curves.items():
        color = (colors or {}).get(name)
        thresholds = np.append(curve["pr_thresholds"], np.nan)
        figure.add_trace(go.Scatter(
            x=curve["recall"], y=curve["precision"], mode="lines",
            line={"color": color, "width": 2, "shape": "hv"},
            name=f"{name} (AP {curve['average_precision']:.3f})", legendgroup=name,
            customdata=thresholds,
            hovertemplate="threshold %{customdata:.3f}<br>recall %{x:.3f}"
                          "<br>precision %{y:.3f}<extra></extra>"))
        row = _row(points, name)
        if row is not None and row["ppv"] is not None:
            figure.add_trace(go.Scatter(
                x=[row["sensitivity"]], y=[row["ppv"]], mode="markers",
                marker={"size": 14, "color": color, "line": {"color": "black", "width": 2}},
                name=f"{name} at {row['threshold']:.2f}", legendgroup=name, showlegend=False,
                hovertemplate=f"threshold {row['threshold']:.2f}<br>recall %{{x:.3f}}"
                              "<br>precision %{y:.3f}<extra></extra>"))
    figure.update_layout(**_LAYOUT,
                         title=f"Precision-recall: {positive} vs rest (dot = chosen threshold)",
                         xaxis_title="recall (sensitivity)", yaxis_title="precision (PPV)")
    figure.update_layout(title=wrap_title(figure.layout.title.text, 44))
    legend_below(figure, 340, width_px=420)
    figure.update_xaxes(range=[0.7, 1.005] if zoom else [-0.02, 1.02])
    figure.update_yaxes(range=[0.7, 1.005] if zoom else [-0.02, 1.02])
    return figure


def cost_figure(runs: Sequence[Run], positive: str, miss_cost: float,
                labels: dict[str, str] | None = None,
                colors: dict[str, str] | None = None) -> go.Figure:
    """Total cost ``miss_cost × FN + FP`` against the threshold, cheapest point marked."""
    figure = go.Figure()
    trivial, cheapest = [], []  # the better trivial rule (call all / none), the best threshold
    for run in runs:
        name = _label(run, labels)
        is_positive, score = binary_scores(run, positive)
        if is_positive.all() or not is_positive.any():
            continue
        sweep = threshold_sweep(is_positive, score)
        trivial.append(min(int((~is_positive).sum()), miss_cost * int(is_positive.sum())))
        finite = sweep[np.isfinite(sweep["threshold"])]
        cost = miss_cost * finite["fn"] + finite["fp"]
        color = (colors or {}).get(name)
        figure.add_trace(go.Scatter(
            x=finite["threshold"], y=cost, mode="lines", line={"color": color, "shape": "hv"},
            name=name, legendgroup=name, customdata=np.stack([finite["fn"], finite["fp"]], 1),
            hovertemplate="threshold %{x:.3f}<br>cost %{y:.0f} = "
                          f"{miss_cost:g}×%{{customdata[0]}} missed + "
                          "%{customdata[1]} false alarms<extra></extra>"))
        best = cheapest_point(sweep, miss_cost)
        cheapest.append(best["cost"])
        if np.isfinite(best["threshold"]):
            figure.add_trace(go.Scatter(
                x=[best["threshold"]], y=[best["cost"]], mode="markers", showlegend=False,
                legendgroup=name, marker={"size": 13, "color": color, "symbol": "star",
                                          "line": {"color": "black", "width": 1}},
                hovertemplate=f"cheapest: threshold {best['threshold']:.3f}, cost "
                              f"{best['cost']:.0f}<extra></extra>"))
    figure.update_layout(**_LAYOUT, height=380,
                         title=f"Cost of a threshold: {miss_cost:g} × missed {positive} + "
                               "false alarms (★ = cheapest)",
                         xaxis_title=f"threshold on p({positive})", yaxis_title="cost")
    legend_below(figure, 300)
    figure.update_xaxes(range=[0, 1])
    if trivial:  # show the region around the cheapest thresholds; far costlier ones go off top
        top = max(4 * max(cheapest), 0.15 * max(trivial), 10)
        figure.update_yaxes(range=[0, min(top, 1.1 * max(trivial))])
    return figure


def _row(points: pd.DataFrame | None, name: str) -> dict | None:
    if points is None or points.empty:
        return None
    rows = points[points["run"] == name]
    if rows.empty:
        return None
    row = rows.iloc[0].to_dict()
    return {key: (None if isinstance(value, float) and np.isnan(value) else value)
            for key, value in row.items()}


# --------------------------------------------------------------------------- held-out folders


def heldout_shares(runs: Sequence[Run], heldout: str, labels: dict[str, str] | None = None,
                   reference: bool = True) -> pd.DataFrame:
    """Long table: for each run and true class of a held-out folder, the share (%) of images
    predicted as each class, with ``non_covid_pct``; the blog's reported figures added as a
    reference row when ``reference`` is true and the folder is the one the blog reported on
    (``kaggle_test``, not a copy derived under another class scheme)."""
    rows = []
    reference_at = None  # the blog's row goes right after the runs reproducing it
    for run in runs:
        table = run.heldout_table(heldout)
        if not table:
            continue
        for true_class, entry in table.items():
            for predicted, share in entry["predicted_pct"].items():
                rows.append({"run": _label(run, labels), "true_class": true_class,
                             "predicted": predicted, "percent": share, "n": entry["n"],
                             "non_covid_pct": entry.get("non_covid_pct"),
                             "reference": False})
        if (run.data_name == BLOG_2020_REPORTED["data"]
                and run.backbone == BLOG_2020_REPORTED["kaggle_test"]["model"].lower()):
            reference_at = len(rows)
    if reference and rows and scope_name(normalise_scope(heldout)) == "kaggle_test":
        tail = rows[reference_at:] if reference_at is not None else []
        rows = rows[:reference_at] if reference_at is not None else rows
        present = {row["true_class"] for row in rows + tail}
        for true_class, reported in BLOG_2020_REPORTED["kaggle_test"]["per_class"].items():
            if true_class not in present:
                continue
            covid = 100.0 - reported["non_covid_pct"]
            other = [c for c in CLASSES if c not in ("covid", true_class)][0]
            shares = {"covid": covid, true_class: reported["called_right_pct"],
                      other: 100.0 - covid - reported["called_right_pct"]}
            for predicted in CLASSES:
                rows.append({"run": BLOG_REFERENCE_NAME, "true_class": true_class,
                             "predicted": predicted, "percent": shares[predicted], "n": np.nan,
                             "non_covid_pct": reported["non_covid_pct"], "reference": True})
        rows += tail
    return pd.DataFrame(rows, columns=["run", "true_class", "predicted", "percent", "n",
                                       "non_covid_pct", "reference"])


def called_as(metrics: dict, true_class: str, predicted: str = "covid") -> tuple[int, int]:
    """(images of ``true_class`` predicted ``predicted``, images of ``true_class``) from a
    confusion matrix; (0, 0) when the class is absent."""
    labels = list(metrics["labels"])
    if true_class not in labels or predicted not in labels:
        return 0, 0
    row = np.asarray(metrics["confusion_matrix"], dtype=int)[labels.index(true_class)]
    return int(row[labels.index(predicted)]), int(row.sum())


def called_as_by_run(runs: Sequence[Run], heldout: str, true_class: str = "pneumonia",
                     predicted: str = "covid",
                     labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Per run evaluated on ``heldout``: its resize mode ("no CNN" for the statistics
    baseline) and how many of the folder's true ``true_class`` images it called ``predicted``
    (runs without such images are left out)."""
    rows = []
    for run in runs:
        metrics = run.metrics_for(heldout)
        if not metrics:
            continue
        called, total = called_as(metrics, true_class, predicted)
        if total:
            rows.append({"run": _label(run, labels),
                         "resize_mode": run.resize_mode or "no CNN",
                         "called": called, "total": total})
    return pd.DataFrame(rows, columns=["run", "resize_mode", "called", "total"])


def heldout_summary(shares: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per run, per true class the share kept correct and non-COVID."""
    rows = []
    for name, group in shares.groupby("run", sort=False):
        row = {"run": name}
        for true_class, part in group.groupby("true_class", sort=False):
            by_predicted = dict(zip(part["predicted"], part["percent"], strict=True))
            row[f"{true_class}_images"] = part["n"].iloc[0]
            row[f"{true_class}_called_{true_class}_pct"] = by_predicted.get(true_class)
            row[f"{true_class}_called_covid_pct"] = by_predicted.get("covid")
            row[f"{true_class}_non_covid_pct"] = part["non_covid_pct"].iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def heldout_figure(shares: pd.DataFrame, heldout: str = "") -> go.Figure:
    """Stacked horizontal bars: what each run called the NORMAL and the PNEUMONIA images."""
    true_classes = sorted(set(shares["true_class"]))
    predicted_classes = sorted(set(shares["predicted"]))
    colors = class_colors(predicted_classes)
    figure = make_subplots(rows=1, cols=len(true_classes) or 1, shared_yaxes=True,
                           horizontal_spacing=0.04,
                           subplot_titles=[f"true {c.upper()} images" for c in true_classes])
    order = list(dict.fromkeys(shares["run"]))
    for col, true_class in enumerate(true_classes, start=1):
        part = shares[shares["true_class"] == true_class]
        for predicted in predicted_classes:
            cells = part[part["predicted"] == predicted].set_index("run").reindex(order)
            reference = cells["reference"].fillna(False).astype(bool).to_numpy()
            figure.add_trace(go.Bar(
                y=order, x=cells["percent"], orientation="h", name=f"called {predicted}",
                legendgroup=predicted, showlegend=col == 1,
                marker={"color": colors[predicted],
                        "pattern": {"shape": ["/" if r else "" for r in reference],
                                    "fgcolor": "white", "solidity": 0.3}},
                text=[f"{v:.0f}%" if pd.notna(v) and v >= 6 else "" for v in cells["percent"]],
                textposition="inside", insidetextanchor="middle",
                hovertemplate="%{y}<br>" + f"called {predicted}: " + "%{x:.1f}%<extra></extra>"),
                row=1, col=col)
    figure.update_layout(**_LAYOUT, barmode="stack",
                         height=140 + 48 * max(1, len(order)),
                         title=f"What each run called the held-out {heldout} images "
                               "(hatched = the blog's reported figures)".replace("  ", " "),
                         legend={"orientation": "h", "y": -0.15, "traceorder": "normal"})
    figure.update_xaxes(range=[0, 100], ticksuffix="%")
    figure.update_yaxes(autorange="reversed")
    return figure


def worst_mistakes(run: Run, scope: str, count: int = 8, called: str | None = None) -> pd.DataFrame:
    """The most confident wrong predictions in a scope (test or a held-out folder).

    ``called`` restricts to images predicted as that class (e.g. children called "covid").
    Sorted by the probability of the (wrong) predicted class, highest first.
    """
    frame = run.predictions_for(scope).copy()
    if frame.empty:
        return frame
    columns = run.probability_columns()
    probabilities = frame[columns].to_numpy(dtype=float)
    frame["predicted"] = [run.labels[j] for j in probabilities.argmax(axis=1)]
    frame["confidence"] = probabilities.max(axis=1)
    wrong = frame[frame["predicted"] != frame["label"]]
    if called:
        wrong = wrong[wrong["predicted"] == called]
    return wrong.sort_values("confidence", ascending=False).head(count).reset_index(drop=True)


# --------------------------------------------------------------------------- two runs


#: How each per-class metric is named on the comparison chart.
METRIC_NAMES = {"precision": "Precision", "recall": "Recall (sensitivity)", "f1": "F1"}
METRIC_COLORS = {"precision": "#0072B2", "recall": "#D55E00", "f1": "#009E73"}


def per_class_difference_figure(per_class: pd.DataFrame, name_a: str = "A",
                                name_b: str = "B") -> go.Figure:
    """Grouped bars: per class, precision / recall / F1 of run a minus run b, in points.

    ``per_class`` is :func:`xrcompare.evaluate.per_class_differences`' long table; undefined
    scores (a class with no image in this scope) are left out. Bars above zero favour run a.
    """
    frame = per_class.dropna(subset=["difference"]).copy()
    frame["points"] = frame["difference"] * 100
    frame["metric_name"] = frame["metric"].map(METRIC_NAMES)
    classes = list(dict.fromkeys(per_class["class"]))
    figure = go.Figure()
    for metric, name in METRIC_NAMES.items():
        rows = frame[frame["metric"] == metric]
        figure.add_trace(go.Bar(
            x=rows["class"], y=rows["points"], name=name, marker_color=METRIC_COLORS[metric],
            customdata=np.stack([rows["a"], rows["b"], rows["support"]], axis=1)
            if len(rows) else None,
            hovertemplate=(f"%{{x}} · {name}<br>{name_a}: %{{customdata[0]:.3f}}<br>"
                           f"{name_b}: %{{customdata[1]:.3f}}<br>difference: %{{y:+.1f}} points"
                           "<br>images of this class: %{customdata[2]}<extra></extra>")))
    figure.add_hline(y=0, line={"color": "#2c3e50", "width": 1})
    largest = float(frame["points"].abs().max()) if len(frame) else 0.0
    reach = max(5.0, largest * 1.15)
    figure.update_layout(**_LAYOUT, barmode="group", height=380,
                         title=wrap_title(f"Per class: {name_a} minus {name_b} "
                                          "(percentage points; above 0 favours the first)", 70),
                         legend_title_text="")
    figure.update_xaxes(title_text="true class", categoryorder="array", categoryarray=classes)
    figure.update_yaxes(title_text="difference (points)", range=[-reach, reach],
                        zeroline=False)
    return legend_below(figure, 300, width_px=500)


# --------------------------------------------------------------------------- dataset


def split_counts(run: Run) -> pd.DataFrame:
    """Images per split and class (long), from run.json's split summary."""
    rows = []
    for split, entry in run.split_summary.items():
        for label, count in (entry.get("class_counts") or {}).items():
            rows.append({"split": split, "class": label, "images": int(count),
                         "patients": entry.get("patients")})
    return pd.DataFrame(rows, columns=["split", "class", "images", "patients"])


def split_counts_figure(counts: pd.DataFrame, title: str = "") -> go.Figure:
    """Stacked bars: images per class, coloured by split."""
    figure = px.bar(counts, x="class", y="images", color="split", text="images",
                    category_orders={"class": sorted(set(counts["class"])),
                                     "split": ["train", "val", "test"]},
                    color_discrete_map={"train": "#0072B2", "val": "#E69F00",
                                        "test": "#009E73"})
    figure.update_layout(**_LAYOUT, barmode="stack", title=title, height=360,
                         legend_title_text="split")
    return figure


def class_counts_figure(counts: dict[str, int], title: str = "") -> go.Figure:
    """Bars of images per class."""
    frame = pd.DataFrame({"class": list(counts), "images": list(counts.values())})
    figure = px.bar(frame, x="class", y="images", color="class", text="images",
                    color_discrete_map=class_colors(list(counts)))
    figure.update_layout(**_LAYOUT, title=title, height=320, showlegend=False)
    return figure


def thumbnail(gray: np.ndarray, size: int = 200) -> np.ndarray:
    """Shrink an image so its longer side is ``size`` pixels (never enlarged)."""
    if size < 8:
        raise ValueError("thumbnail size must be at least 8 pixels")
    height, width = gray.shape[:2]
    scale = size / max(height, width)
    if scale >= 1:
        return gray
    return cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------- masks


#: The colour the mask's box is outlined in (RGB).
BOX_COLOR = (220, 38, 38)


def mask_examples(gray: np.ndarray, size: int = 224) -> dict[str, np.ndarray]:
    """One image as the masked-input controls see it (RGB uint8, ``size`` px, squashed):
    ``"box"`` the model input with the lung box outlined, ``"lungs-out"`` and
    ``"lungs-only"`` the masked inputs (the box outlined too), all through
    :func:`xrcompare.imaging.to_model_input`, the path training and prediction use."""
    from xrcompare.imaging import mask_box, to_model_input

    top, left, bottom, right = mask_box(size)
    pictures = {}
    for name, mask in (("box", "none"), ("lungs-out", "lungs-out"),
                       ("lungs-only", "lungs-only")):
        picture = np.ascontiguousarray(to_model_input(gray, size, "squash", mask)
                                       .astype(np.uint8))
        cv2.rectangle(picture, (left, top), (right - 1, bottom - 1), BOX_COLOR,
                      max(1, size // 112))
        pictures[name] = picture
    return pictures


# --------------------------------------------------------------------------- calibration


def reliability_figure(curves: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]],
                       colors: dict[str, str] | None = None, title: str = "") -> go.Figure:
    """Reliability diagram: per run, accuracy against mean confidence in each confidence bin
    (marker area ~ images in the bin), before (solid) and after temperature scaling
    (dashed); the diagonal is perfect calibration. ``curves``: name → (before, after) frames
    of :func:`xrcompare.calibration.reliability_frame`."""
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                                line={"color": "#7f8c8d", "dash": "dot"}, hoverinfo="skip"))
    palette = colors or {}
    for number, (name, (before, after)) in enumerate(curves.items()):
        color = palette.get(name, RUN_PALETTE[number % len(RUN_PALETTE)])
        for frame, suffix, dash in ((before, "", "solid"),
                                    (after, " · temperature-scaled", "dash")):
            if frame is None or frame.empty:
                continue
            sizes = 6 + 18 * np.sqrt(frame["count"] / max(1, frame["count"].max()))
            figure.add_trace(go.Scatter(
                x=frame["confidence"], y=frame["accuracy"], mode="lines+markers",
                name=f"{name}{suffix}", line={"color": color, "dash": dash},
                marker={"size": sizes, "color": color, "opacity": 0.75},
                customdata=frame[["count", "low", "high"]].to_numpy(),
                hovertemplate="confidence %{customdata[1]:.2f}–%{customdata[2]:.2f}: "
                              "%{customdata[0]} images<br>mean confidence %{x:.3f}<br>"
                              "accuracy %{y:.3f}<extra>" + f"{name}{suffix}" + "</extra>"))
    figure.update_layout(**_LAYOUT, title=title or "Reliability: is 90% confident right 90% "
                                                   "of the time?", height=440,
                         xaxis={"title": "mean confidence in the bin (top-label probability)",
                                "range": [0, 1.02]},
                         yaxis={"title": "share right in the bin", "range": [0, 1.02]},
                         legend={"orientation": "h", "y": -0.22})
    return figure


# --------------------------------------------------------------------------- shortcut lab


#: Row colours of the lab and the lesson: the main run, then each control.
LAB_COLORS = {"main": "#0072B2", "random-init": "#E69F00", "lungs-out": "#D55E00",
              "lungs-only": "#CC79A7", "image-statistics": "#009E73"}


def accuracy_figure(rows: Sequence[dict], chance: float | None = None, title: str = "",
                    height: int = 320) -> go.Figure:
    """Horizontal bars of accuracy with 95% intervals, one per row (``name``, ``accuracy``,
    ``low``, ``high``, optional ``kind`` for its colour), and the chance level as a dotted
    line: the lab's and the lesson's one picture of "how well, and how sure"."""
    rows = [row for row in rows if row.get("accuracy") is not None]
    figure = go.Figure()
    for row in rows:
        low, high = row.get("low"), row.get("high")
        error = None
        if low is not None and high is not None:
            error = {"type": "data", "symmetric": False,
                     "array": [max(0.0, high - row["accuracy"])],
                     "arrayminus": [max(0.0, row["accuracy"] - low)], "thickness": 2}
        figure.add_trace(go.Bar(
            x=[row["accuracy"]], y=[row["name"]], orientation="h", error_x=error,
            marker={"color": LAB_COLORS.get(row.get("kind", ""), "#7f8c8d")},
            text=[f"{row['accuracy']:.1%}"], textposition="inside", insidetextanchor="start",
            showlegend=False, hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    if chance is not None:
        figure.add_vline(x=chance, line={"color": "#2c3e50", "dash": "dot"},
                         annotation_text=f"chance {chance:.0%}", annotation_position="top")
    figure.update_layout(**_LAYOUT, title=title, height=height, bargap=0.35,
                         xaxis={"title": "accuracy (95% patient-bootstrap interval)",
                                "range": [0, 1.02], "tickformat": ".0%"},
                         yaxis={"autorange": "reversed"})
    return figure


def lab_figure(lab, scope: str, labels: dict[str, str] | None = None) -> go.Figure:
    """One backbone's lab on one scope (:class:`xrcompare.shortcuts.BackboneLab`): the main
    run and each trained control, accuracy with its interval, chance marked."""
    from xrcompare.runs import scope_text

    rows, chance = [], None
    for row in lab.rows:
        result = row.results.get(scope)
        if row.run is None or result is None or result.accuracy is None:
            continue
        chance = result.chance if chance is None else chance
        low, high = result.interval
        rows.append({"name": row.name, "kind": row.kind, "accuracy": result.accuracy,
                     "low": low, "high": high})
    return accuracy_figure(rows, chance, f"{lab.main.backbone_display}: {scope_text(scope)}",
                           height=120 + 48 * max(1, len(rows)))


def probability_bars(probabilities: dict[str, float], title: str = "") -> go.Figure:
    """Bars of one image's class probabilities (class colours)."""
    labels = list(probabilities)
    figure = go.Figure(go.Bar(
        x=[probabilities[label] for label in labels], y=labels, orientation="h",
        marker={"color": [CLASS_COLORS.get(label, "#7f8c8d") for label in labels]},
        text=[f"{probabilities[label]:.1%}" for label in labels], textposition="auto",
        hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    figure.update_layout(**_LAYOUT, title=title, height=90 + 50 * len(labels),
                         xaxis={"range": [0, 1.02], "tickformat": ".0%",
                                "title": "probability"}, yaxis={"autorange": "reversed"})
    return figure
