"""Command line: ``python -m xrcompare {train,evaluate,predict,compare,runs,backbones,explain,
shortcuts,calibration,subgroups,card,errors}``.

Bad arguments or input end with a non-zero exit and one readable line, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_USAGE = 2
#: How long the CLI's one-line error may get.
ERROR_LIMIT = 500


def _progress_printer(stream=sys.stderr):
    """A terminal progress bar fed by the training progress hook."""
    state = {"last": 0.0, "line": ""}
    interactive = stream.isatty()

    def show(text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - state["last"] < (0.1 if interactive else 5.0):
            return
        state["last"] = now
        if interactive:
            stream.write("\r\033[K" + text[:150])
        else:
            stream.write(text + "\n")
        stream.flush()

    def bar(done: int, total: int, width: int = 28) -> str:
        filled = int(width * done / total) if total else width
        return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"

    def hook(event: dict) -> None:
        prefix = ""
        if event.get("backbones"):
            prefix = f"{event['backbone']} ({event['backbone_index']}/{event['backbones']}) "
        phase = event.get("phase")
        if phase == "extract":
            show(f"{prefix}features {event.get('what', '')} {bar(event['done'], event['total'])}"
                 f" ({event.get('cached', 0)} cached)", force=event["done"] == event["total"])
        elif phase == "train":
            metrics = event.get("metrics", {})
            fold = f" fold {event['fold']}/{event['folds']}" if event.get("folds", 1) > 1 else ""
            held = "test" if event.get("selected_on") == "test" else "val"
            show(f"{prefix}training{fold} {bar(event['epoch'], event['epochs'])} "
                 f"loss {metrics.get('loss', float('nan')):.3f} "
                 f"{held}_acc {metrics.get('val_accuracy', float('nan')):.3f}",
                 force=event["epoch"] == event["epochs"])
        elif phase == "fine_tune":
            metrics = event.get("metrics", {})
            held = "test" if event.get("selected_on") == "test" else "val"
            show(f"{prefix}fine-tuning the last block {bar(event['epoch'], event['epochs'])} "
                 f"loss {metrics.get('loss', float('nan')):.3f} "
                 f"{held}_acc {metrics.get('val_accuracy', float('nan')):.3f}",
                 force=event["epoch"] == event["epochs"])
        elif phase == "warning":
            if interactive:
                stream.write("\n")
            stream.write(f"warning: {event.get('what', '')}\n")
            stream.flush()
        elif phase in ("scan", "load_backbone", "evaluate", "heldout", "write"):
            show(f"{prefix}{phase.replace('_', ' ')} {event.get('what', '')}", force=True)
        elif phase == "written" and interactive:
            stream.write("\n")

    return hook


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 1, got {value}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from xrcompare.config import add_train_arguments

    parser = argparse.ArgumentParser(
        prog="python -m xrcompare",
        description="Train and compare classifier heads on frozen ImageNet CNN bases for "
                    "chest X-rays. A teaching tool, never a diagnostic one.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train one run per backbone",
        description="Train one run per backbone. Every setting, its default and its range "
                    "come from xrcompare.config.TrainConfig; --config FILE reads them from a "
                    "JSON file (flags given as well override it).")
    train.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help="a training configuration as JSON (TrainConfig.to_json); "
                            "--data and --backbone are then optional")
    add_train_arguments(train)
    train.add_argument("--progress-file", type=Path, default=None,
                       help="append progress events as JSON lines (used by the app)")

    evaluate = commands.add_parser("evaluate", help="evaluate a run on a labelled folder")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("data_dir", type=Path)
    evaluate.add_argument("--json", action="store_true")

    predict = commands.add_parser(
        "predict", help="class probabilities for one image, several, or a folder's",
        description="One image: its class probabilities as bars. Several images or a folder "
                    "(its .png/.jpg/.jpeg/.dcm files, recursively): one line per image, and "
                    "with --csv a CSV table; an unreadable file gets its reason in its row.")
    predict.add_argument("run_dir", type=Path)
    predict.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                         help="an image file or a folder of images")
    predict.add_argument("--csv", type=Path, default=None, metavar="OUT",
                         help="write the table (image, run, predicted, confidence, one column "
                              "per class, note) to this CSV file")
    predict.add_argument("--json", action="store_true")

    compare = commands.add_parser(
        "compare", help="two runs on the same images: McNemar, paired bootstrap, verdict",
        description="Compare two runs image by image on the same images (their test split or a "
                    "held-out folder both were scored on). Runs are folders or run ids in the "
                    "runs folder.")
    compare.add_argument("run_a", help="run folder or run id")
    compare.add_argument("run_b", help="run folder or run id")
    compare.add_argument("--on", dest="scope", default="test", metavar="SCOPE",
                         help="test (default) or heldout:NAME, e.g. heldout:kaggle_test")
    compare.add_argument("--runs-dir", type=Path, default=None,
                         help="where run ids are looked up (default: trained/)")
    compare.add_argument("--repeats", type=_positive_int, default=2000,
                         help="bootstrap resamples (default 2000, at least 100)")
    compare.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    compare.add_argument("--json", action="store_true")

    runs = commands.add_parser("runs", help="list runs with headline metrics")
    runs.add_argument("--runs-dir", type=Path, default=None)
    runs.add_argument("--json", action="store_true")

    commands.add_parser("backbones", help="the backbone registry and where weights come from")

    dataset = commands.add_parser("dataset", help="derived datasets: the same images under "
                                                  "another class scheme, as links")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True)
    derive = dataset_commands.add_parser(
        "derive", help="a folder of links to SOURCE's images under another class scheme",
        description="Write OUT (new or empty) with one folder per class of the scheme, holding "
                    "symbolic links to SOURCE's images (copies only where links fail), and a "
                    "manifest.csv carrying every image's patient id over. covid-vs-rest: "
                    "covid / non-covid; four-class: covid / bacterial / viral / normal "
                    "(pneumonia split by the manifest's notes or the Kermany file names).")
    derive.add_argument("source", type=Path, metavar="SOURCE",
                        help="a covid / normal / pneumonia dataset folder (e.g. cxr3)")
    derive.add_argument("--scheme", required=True, choices=("covid-vs-rest", "four-class"))
    derive.add_argument("out", type=Path, metavar="OUT", help="the new dataset folder")

    shortcuts = commands.add_parser(
        "shortcuts", help="the shortcut lab: each main run against its controls",
        description="Per backbone, the main run against its controls (random-init base, "
                    "lungs blacked out, lungs only, image statistics) on the test split and "
                    "every held-out folder: accuracy with 95% intervals, the paired "
                    "difference (McNemar, paired patient bootstrap) and a verdict per control.")
    shortcuts.add_argument("--runs-dir", type=Path, default=None,
                           help="the runs folder (default: trained/)")
    shortcuts.add_argument("--repeats", type=_positive_int, default=2000,
                           help="bootstrap resamples of each comparison (default 2000)")
    shortcuts.add_argument("--json", action="store_true")

    calibration = commands.add_parser(
        "calibration", help="expected calibration error, before and after temperature scaling",
        description="ECE of top-label confidence (15 equal-width bins) on the test split and "
                    "each held-out folder, and after temperature scaling fitted on the run's "
                    "validation split (never on test).")
    calibration.add_argument("run", help="run folder or run id")
    calibration.add_argument("--runs-dir", type=Path, default=None)
    calibration.add_argument("--json", action="store_true")

    subgroups = commands.add_parser(
        "subgroups", help="scores per X-ray view or per source, with counts and intervals",
        description="The run's scores sliced by the dataset manifest's view (PA, AP, AP "
                    "supine) or source repository, with images, patients and 95% patient-"
                    "bootstrap intervals; groups under 20 images are flagged.")
    subgroups.add_argument("run", help="run folder or run id")
    subgroups.add_argument("--by", choices=("view", "source"), default="view")
    subgroups.add_argument("--on", dest="scope", default="test", metavar="SCOPE",
                           help="test (default) or heldout:NAME")
    subgroups.add_argument("--runs-dir", type=Path, default=None)
    subgroups.add_argument("--json", action="store_true")

    card = commands.add_parser(
        "card", help="the run's model card as Markdown",
        description="Print the run's model card (intended use, data, split, metrics with "
                    "intervals, calibration, controls, subgroups, caveats) as Markdown, the "
                    "same as the app's Model card page. Controls are looked for among the "
                    "runs of the run's own folder (or --runs-dir).")
    card.add_argument("run", help="run folder or run id")
    card.add_argument("--runs-dir", type=Path, default=None,
                      help="where its controls are looked for (default: the run's folder)")

    errors = commands.add_parser(
        "errors", help="the images behind a confusion-matrix cell, most confident first",
        description="A run's confusion matrix on its test split or a held-out folder, then "
                    "the images of one cell (--true and --predicted) or its mistakes, most "
                    "confident first, with each image's recorded probabilities and file.")
    errors.add_argument("run", help="run folder or run id")
    errors.add_argument("--on", dest="scope", default="test", metavar="SCOPE",
                        help="test (default) or heldout:NAME, e.g. heldout:kaggle_test")
    errors.add_argument("--true", dest="true_class", default=None, metavar="CLASS",
                        help="only images of this true class")
    errors.add_argument("--predicted", dest="predicted_class", default=None, metavar="CLASS",
                        help="only images called this class (with --true: that one cell, "
                             "the diagonal included; otherwise mistakes only)")
    errors.add_argument("--limit", type=_positive_int, default=20,
                        help="images listed (default 20)")
    errors.add_argument("--offset", type=int, default=0, help="skip this many first")
    errors.add_argument("--runs-dir", type=Path, default=None)
    errors.add_argument("--json", action="store_true")

    neighbours = commands.add_parser(
        "neighbours", help="an image's nearest training images and out-of-distribution check",
        description="The k nearest images of the run's training split to IMAGE in the frozen "
                    "base's pooled feature space (cosine), and whether IMAGE is out of "
                    "distribution (farther from the training images than 99%% of the "
                    "validation split). --build makes the run's neighbours.npz from the "
                    "feature cache (its training data must be here).")
    neighbours.add_argument("run", help="run folder or run id")
    neighbours.add_argument("image", type=Path, nargs="?", default=None)
    neighbours.add_argument("--build", action="store_true",
                            help="build and save the run's neighbour index")
    neighbours.add_argument("--k", type=_positive_int, default=None,
                            help="neighbours listed (default 5)")
    neighbours.add_argument("--runs-dir", type=Path, default=None)
    neighbours.add_argument("--json", action="store_true")

    explain = commands.add_parser("explain", help="saliency map for one image")
    explain.add_argument("run_dir", type=Path)
    explain.add_argument("image", type=Path)
    explain.add_argument("--method", default="gradcam")
    explain.add_argument("--target", default=None, help="class to explain (default: predicted)")
    explain.add_argument("--out", type=Path, required=True, help="PNG file to write")
    explain.add_argument("--alpha", type=_float, default=0.45)
    return parser


# --------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from xrcompare.config import config_from_arguments
    from xrcompare.experiment import train_runs

    config = config_from_arguments(args, args.config)  # validated once, by train_runs
    printer = _progress_printer()
    hook = printer
    if args.progress_file:
        from xrcompare.progress import progress_file_writer

        writer = progress_file_writer(args.progress_file)
        # the app removes a half-written run folder of this process (.tmp-<run>-<pid>)
        # when the job is stopped
        writer({"phase": "process", "pid": os.getpid()})

        def hook(event):
            printer(event)
            writer(event)

    folders = train_runs(config, progress=hook)
    for folder in folders:
        print(folder)
    return 0


def _load(run_dir: Path):
    from xrcompare.runs import load_run

    return load_run(run_dir)


def cmd_evaluate(args) -> int:
    from xrcompare.inference import evaluate_folder
    from xrcompare.report import evaluation_lines  # the app's Evaluate page shows the same

    run = _load(args.run_dir)
    metrics, skipped = evaluate_folder(run, args.data_dir)
    if args.json:
        print(json.dumps({"run": run.run_id, "data": str(args.data_dir), **metrics,
                          "skipped": [{"path": p, "reason": r} for p, r in skipped]}))
        return 0
    print("\n".join(evaluation_lines(run.title, str(args.data_dir), metrics, skipped,
                                     run.data_name)))
    return 0


def cmd_predict(args) -> int:
    from xrcompare.inference import predict_file

    run = _load(args.run_dir)
    if len(args.paths) > 1 or args.paths[0].is_dir() or args.csv is not None:
        return predict_many(run, args)
    result = predict_file(run, args.paths[0])
    if args.json:
        print(json.dumps(result))
        return 0
    for label, probability in result["probabilities"].items():
        print(f"{label:>10}  {probability:6.3f}  {'#' * round(probability * 30)}".rstrip())
    print(f"predicted: {result['predicted']}  (teaching model, not a diagnosis)")
    if result["out_of_distribution"]:
        print(f"out of distribution: distance {result['distance']:.1f} to the training images "
              f"> {result['threshold']:.1f} (99% of validation images are closer): unlike "
              "what this model was trained on")
    if result["feature_engine"]["note"]:
        print(f"features: {result['feature_engine']['note']}")
    for warning in result.get("warnings", []):
        print(f"warning: {warning}")
    return 0


def predict_many(run, args) -> int:
    """``predict`` on several images or folders: one line (or JSON record) per image, and a
    CSV table with ``--csv``."""
    from xrcompare.batch import collect, predict_batch, table_lines

    if args.csv is not None and (args.csv.is_dir() or args.csv.suffix.lower() != ".csv"):
        raise ValueError(f"--csv must name a .csv file, got {str(args.csv)!r}")
    items = collect(args.paths)
    result = predict_batch([run], items)
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_bytes(result.csv_bytes())
    if args.json:
        table = result.table.astype(object)
        print(json.dumps({"run": run.run_id, "images": result.images,
                          "unreadable": result.unreadable,
                          "rows": table.where(table.notna(), None).to_dict(orient="records")},
                         allow_nan=False))
        return 0
    print("\n".join(table_lines(result)))
    print(f"{result.images} image{'s' if result.images != 1 else ''}"
          + (f", {result.unreadable} could not be read" if result.unreadable else "")
          + f"; {result.seconds:.1f} s (teaching model, not a diagnosis)"
          + (f"; table written to {args.csv}" if args.csv is not None else ""))
    return 0


def _find_run(text: str, runs_dir: Path | None):
    """A run from a folder path, or from a run id inside the runs folder (never outside it)."""
    from xrcompare import paths
    from xrcompare.runs import RunError, load_run

    folder = Path(text).expanduser()
    if folder.is_dir():
        return load_run(folder)
    runs_dir = runs_dir or paths.runs_dir()
    if "/" not in text and "\\" not in text and text not in ("", ".", ".."):
        candidate = runs_dir / text
        if candidate.is_dir():
            return load_run(candidate)
    raise RunError(f"{text} is neither a run folder nor a run id in {runs_dir}")


def cmd_compare(args) -> int:
    from xrcompare.compare import NotComparable, compare_runs
    from xrcompare.evaluate import format_interval_points, format_points, p_phrase
    from xrcompare.runs import scope_text

    run_a, run_b = _find_run(args.run_a, args.runs_dir), _find_run(args.run_b, args.runs_dir)
    try:
        comparison = compare_runs(run_a, run_b, args.scope, repeats=args.repeats,
                                  seed=args.seed)
    except NotComparable as error:  # the whole sentence: it says what differs
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    stats = comparison.stats
    if args.json:
        print(json.dumps(comparison.to_json()))
        return 0

    def score(value):
        return "–" if value is None else f"{value:.3f}"

    print(f"A {run_a.run_id}  ({run_a.title})")
    print(f"B {run_b.run_id}  ({run_b.title})")
    print(f"on {scope_text(comparison.scope)}: {stats['n']} images, {stats['patients']} "
          f"{'patients' if stats['unit'] == 'patient' else 'images as units'}")
    print(f"{'':<22}{'A':>8}{'B':>8}{'A − B (points)':>16}  95% CI (points)")
    print(f"{'accuracy':<22}{score(stats['accuracy_a']):>8}{score(stats['accuracy_b']):>8}"
          f"{format_points(stats['difference']):>16}  "
          f"{format_interval_points(stats['difference_95ci'])}")
    if stats["pos_label"] is not None and stats["positives"]:
        print(f"{stats['pos_label'] + ' sensitivity':<22}{score(stats['sensitivity_a']):>8}"
              f"{score(stats['sensitivity_b']):>8}"
              f"{format_points(stats['sensitivity_difference']):>16}  "
              f"{format_interval_points(stats['sensitivity_difference_95ci'])}")
    print(f"both right {stats['both_right']}, A only {stats['a_right_b_wrong']}, "
          f"B only {stats['a_wrong_b_right']}, both wrong {stats['both_wrong']}; "
          f"McNemar exact {p_phrase(stats['mcnemar_p'])}")
    print(stats["verdict"])
    return 0


def cmd_runs(args) -> int:
    from xrcompare.runs import list_runs
    from xrcompare.summary import leaderboard

    listing = list_runs(args.runs_dir)
    table = leaderboard(listing.runs)
    if args.json:
        # Missing values (no held-out folder, an undefined score) are JSON null, never NaN.
        records = table.astype(object).where(table.notna(), None).to_dict(orient="records")
        print(json.dumps({"runs": records,
                          "problems": [{"folder": f, "reason": r} for f, r in listing.problems]},
                         default=str, allow_nan=False))
        return 0
    if table.empty:
        print("no runs yet: train one with python -m xrcompare train --data DIR --backbone NAME")
    else:
        columns = ["run", "backbone", "data", "classes", "accuracy", "macro_f1", "positive",
                   "sensitivity", "specificity"]
        print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for folder, reason in listing.problems:
        print(f"skipped {folder}: {reason}")
    return 0


def cmd_backbones(args) -> int:
    from xrcompare.backbones import REGISTRY, weights_search, weights_status
    from xrcompare.paths import WEIGHTS_DIR_VARIABLE

    folders, explicit = weights_search()
    where = ", ".join(map(str, folders)) or "none"
    print(f"weights folders searched: {where} "
          + (f"(from {WEIGHTS_DIR_VARIABLE})" if explicit
             else f"({WEIGHTS_DIR_VARIABLE} not set: the defaults that exist, then Keras's "
                  "download)"))
    for name, backbone in REGISTRY.items():
        status = weights_status(name)
        mark = {"download": "net", "missing": "-- "}.get(status.source, "ok ")
        print(f"{mark}{name:<12} {backbone.default_size:>4}px  last conv "
              f"{backbone.last_conv_layer:<22} {status.detail}")
    return 0


def cmd_explain(args) -> int:
    from xrcompare.inference import explain_file

    run = _load(args.run_dir)
    result = explain_file(run, args.image, method=args.method, target=args.target,
                          out=args.out, alpha=args.alpha)
    print(f"{result['method']} for class {result['target']} "
          f"(predicted {result['predicted']}) → {args.out}")
    return 0


def cmd_shortcuts(args) -> int:
    from xrcompare.runs import list_runs
    from xrcompare.shortcuts import lab_json, lab_lines, shortcut_lab

    listing = list_runs(args.runs_dir)
    labs = shortcut_lab(listing.runs, repeats=args.repeats)
    if args.json:
        print(json.dumps(lab_json(labs), allow_nan=False))
        return 0
    print("\n".join(lab_lines(labs)))
    for folder, reason in listing.problems:
        print(f"skipped {folder}: {reason}")
    return 0


def cmd_calibration(args) -> int:
    from xrcompare.calibration import calibration_table

    run = _find_run(args.run, args.runs_dir)
    table = calibration_table([run])
    if args.json:
        records = table.drop(columns=["run"]).astype(object)
        print(json.dumps({"run": run.run_id, "bins": 15, "scopes": records.where(
            records.notna(), None).to_dict(orient="records")}, allow_nan=False))
        return 0
    print(f"{run.title}: expected calibration error (top-label confidence, 15 equal-width "
          "bins)")
    for row in table.itertuples():
        after = ("" if row.ece_after is None or row.ece_after != row.ece_after
                 else f", {row.ece_after:.3f} after temperature scaling (T = "
                      f"{row.temperature:.2f})")
        print(f"{row.scope:>24}: {row.images} images, ECE {row.ece:.3f}{after}")
    if not table.empty:
        print(f"temperature: {table['note'].iloc[0]}")
    return 0


def cmd_subgroups(args) -> int:
    from xrcompare.subgroups import subgroup_lines, subgroup_table

    run = _find_run(args.run, args.runs_dir)
    table = subgroup_table(run, args.scope, args.by)
    if args.json:
        records = table.astype(object).where(table.notna(), None)
        print(json.dumps({"run": run.run_id, "scope": args.scope, "by": args.by,
                          "groups": records.to_dict(orient="records")}, allow_nan=False))
        return 0
    print(f"{run.title} on {args.scope}, by {args.by}:")
    print("\n".join(subgroup_lines(table, args.by, run.positive)))
    return 0


def cmd_card(args) -> int:
    from xrcompare.card import model_card
    from xrcompare.runs import list_runs

    run = _find_run(args.run, args.runs_dir)
    runs = list_runs(args.runs_dir or run.path.parent).runs
    print(model_card(run, runs), end="")
    return 0


def cmd_errors(args) -> int:
    from xrcompare.errors_gallery import cell_images, cells_lines, confusion_cells, images_lines

    run = _find_run(args.run, args.runs_dir)
    cells = confusion_cells(run, args.scope)
    selection = cell_images(run, args.scope, args.true_class, args.predicted_class,
                            limit=args.limit, offset=args.offset)
    if args.json:
        print(json.dumps({**selection.to_json(),
                          "cells": cells.to_dict(orient="records")}, allow_nan=False))
        return 0
    print("\n".join(cells_lines(run, selection.scope, cells)))
    print("\n".join(images_lines(selection)))
    return 0


def cmd_dataset(args) -> int:
    from xrcompare.derive import derive_dataset

    summary = derive_dataset(args.source, args.scheme, args.out)
    counts = ", ".join(f"{label} {count}" for label, count in summary["classes"].items())
    print(f"wrote {summary['out']} ({args.scheme}): {counts}; {summary['links']} links, "
          f"{summary['copies']} copies; patient ids in {summary['manifest']}")
    if summary["left_out"]:
        print(f"left out {len(summary['left_out'])} image(s) the scheme cannot place: "
              + ", ".join(summary["left_out"][:5]))
    print(f"train on it: python -m xrcompare train --data {summary['out']} --backbone NAME")
    return 0


def cmd_neighbours(args) -> int:
    from xrcompare.engine import Engine
    from xrcompare.inference import load_image_file
    from xrcompare.neighbours import build_index, neighbours_of, save_index

    run = _find_run(args.run, args.runs_dir)
    if args.image is None and not args.build:
        raise ValueError("give an IMAGE, or --build to make the run's neighbour index")
    if args.build:
        index = build_index(run)
        saved = save_index(index, run.path)
        print(f"{saved}: {len(index.paths)} training images, {index.vectors.shape[1]} "
              f"components, out of distribution above {index.threshold:.2f} "
              f"({index.quantile:.0%} of the {run.split_summary.get('val', {}).get('images', '?')}"
              " validation images are closer)")
    if args.image is None:
        return 0
    image = load_image_file(args.image)
    result = neighbours_of(run, image.gray, Engine(), args.k)
    if args.json:
        print(json.dumps({"run": run.run_id, "image": str(args.image), **result}))
        return 0
    if result["neighbours_note"]:
        raise ValueError(result["neighbours_note"])
    verdict = ("OUT OF DISTRIBUTION: unlike the training images" if result["out_of_distribution"]
               else "in distribution")
    print(f"distance {result['distance']:.2f} (threshold {result['threshold']:.2f}): {verdict}")
    for rank, item in enumerate(result["nearest"], 1):
        print(f"{rank:>2}. {item['similarity']:.3f}  {item['label']:<10} {item['path']}")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "neighbours": cmd_neighbours,
            "compare": cmd_compare, "runs": cmd_runs, "backbones": cmd_backbones,
            "explain": cmd_explain, "shortcuts": cmd_shortcuts, "calibration": cmd_calibration,
            "subgroups": cmd_subgroups, "card": cmd_card, "errors": cmd_errors,
            "dataset": cmd_dataset}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from xrcompare.backbones import WeightsUnavailable
    from xrcompare.errors import one_line
    from xrcompare.imaging import ImageError
    from xrcompare.runs import RunError

    try:
        return COMMANDS[args.command](args)
    except (ValueError, WeightsUnavailable, ImageError, RunError, OSError) as error:
        print(f"error: {one_line(error, ERROR_LIMIT)}", file=sys.stderr)
        return EXIT_USAGE if not isinstance(error, WeightsUnavailable) else 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an environment problem: still one line, exit 1
        print(f"error: unexpected {type(error).__name__}: {one_line(error, ERROR_LIMIT)} "
              "(please report it)", file=sys.stderr)
        return 1
