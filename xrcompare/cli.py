"""Command line: ``python -m xrcompare {train,evaluate,predict,runs,backbones,explain}``.

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
            show(f"{prefix}training{fold} {bar(event['epoch'], event['epochs'])} "
                 f"loss {metrics.get('loss', float('nan')):.3f} "
                 f"val_acc {metrics.get('val_accuracy', float('nan')):.3f}",
                 force=event["epoch"] == event["epochs"])
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
    parser = argparse.ArgumentParser(
        prog="python -m xrcompare",
        description="Train and compare classifier heads on frozen ImageNet CNN bases for "
                    "chest X-rays. A teaching tool, never a diagnostic one.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one run per backbone")
    train.add_argument("--data", required=True, type=Path,
                       help="dataset folder with covid/ normal/ pneumonia/ sub-folders")
    train.add_argument("--backbone", action="append", required=True, dest="backbones",
                       help="backbone name (repeat for several), see `backbones`")
    train.add_argument("--epochs", type=_positive_int, default=25)
    train.add_argument("--batch-size", type=_positive_int, default=8)
    train.add_argument("--learning-rate", type=_float, default=1e-3)
    train.add_argument("--image-size", type=_positive_int, default=None,
                       help="input size in px (default: the backbone's own)")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--heldout", action="append", type=Path, default=[],
                       help="labelled folder never used in training (e.g. kaggle_test)")
    train.add_argument("--runs-dir", type=Path, default=None, help="default: trained/")
    train.add_argument("--folds", type=int, default=None,
                       help="grouped stratified k-fold cross-validation")
    train.add_argument("--resize", dest="resize_mode", choices=("squash", "pad"),
                       default="squash", help="squash to a square (default) or pad keeping "
                                              "the aspect ratio")
    train.add_argument("--head", choices=("blog", "gap"), default="blog")
    train.add_argument("--weights", choices=("imagenet", "random"), default="imagenet",
                       help="'random' trains a random-init control base")
    train.add_argument("--augment-views", type=int, default=0,
                       help="augmented views per training image, extracted once")
    train.add_argument("--balanced", action="store_true", help="class-balanced loss weights")
    train.add_argument("--val-fraction", type=_float, default=0.15)
    train.add_argument("--test-fraction", type=_float, default=0.2)
    train.add_argument("--patience", type=int, default=None,
                       help="early stopping on the validation split")
    train.add_argument("--monitor", choices=("val_loss", "val_accuracy"), default="val_loss")
    train.add_argument("--name", default=None, help="run id (one backbone) or tag")
    train.add_argument("--display-name", default=None)
    train.add_argument("--description", default=None)
    train.add_argument("--order", type=int, default=None, help="sort position in listings")
    train.add_argument("--extract-batch-size", type=_positive_int, default=32)
    train.add_argument("--engine", choices=("auto", "openvino", "keras"), default=None,
                       help="the frozen base's forward pass: OpenVINO where installed (auto), "
                            "or the Keras float32 reference (default: $XRCOMPARE_ENGINE, "
                            "else auto)")
    train.add_argument("--progress-file", type=Path, default=None,
                       help="append progress events as JSON lines (used by the app)")

    evaluate = commands.add_parser("evaluate", help="evaluate a run on a labelled folder")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("data_dir", type=Path)
    evaluate.add_argument("--json", action="store_true")

    predict = commands.add_parser("predict", help="class probabilities for one image")
    predict.add_argument("run_dir", type=Path)
    predict.add_argument("image", type=Path)
    predict.add_argument("--json", action="store_true")

    runs = commands.add_parser("runs", help="list runs with headline metrics")
    runs.add_argument("--runs-dir", type=Path, default=None)
    runs.add_argument("--json", action="store_true")

    commands.add_parser("backbones", help="the backbone registry and where weights come from")

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
    from xrcompare.experiment import TrainConfig, train_runs

    config = TrainConfig(
        data=args.data, backbones=args.backbones, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, image_size=args.image_size, seed=args.seed,
        heldout=args.heldout, runs_dir=args.runs_dir, folds=args.folds,
        resize_mode=args.resize_mode, head=args.head, weights=args.weights,
        augment_views=args.augment_views, balanced=args.balanced,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        patience=args.patience, monitor=args.monitor, name=args.name,
        display_name=args.display_name, description=args.description, order=args.order,
        extract_batch_size=args.extract_batch_size, engine=args.engine)
    config.validate()
    printer = _progress_printer()
    hook = printer
    if args.progress_file:
        from xrcompare.jobs import progress_file_writer

        writer = progress_file_writer(args.progress_file)

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

    run = _load(args.run_dir)
    metrics, skipped = evaluate_folder(run, args.data_dir)
    if args.json:
        print(json.dumps({"run": run.run_id, "data": str(args.data_dir), **metrics,
                          "skipped": [{"path": p, "reason": r} for p, r in skipped]}))
        return 0
    labels = metrics["labels"]
    print(f"{run.title} on {args.data_dir} ({metrics['n']} images)")
    engine = metrics.get("feature_engine") or {}
    if engine.get("note"):
        print(f"features: {engine['note']} (scores may differ slightly from the run's own)")
    print(f"accuracy {metrics['accuracy']:.3f}   macro-F1 {metrics['macro_f1']:.3f}")
    print("confusion matrix (rows true, columns predicted):")
    print("            " + "".join(f"{label:>11}" for label in labels))
    for label, row in zip(labels, metrics["confusion_matrix"], strict=True):
        print(f"{label:>11} " + "".join(f"{value:>11}" for value in row))
    print(f"{'class':>11} {'precision':>10} {'recall':>8} {'f1':>6} {'support':>8}")
    for label in labels:
        scores = metrics["per_class"][label]
        print(f"{label:>11} {scores['precision']:>10.3f} {scores['recall']:>8.3f} "
              f"{scores['f1']:>6.3f} {scores['support']:>8}")
    for true_label, entry in metrics.get("heldout_table", {}).items():
        shares = ", ".join(f"{k} {v:.1f}%" for k, v in entry["predicted_pct"].items())
        print(f"true {true_label}: predicted {shares}; non-COVID {entry['non_covid_pct']:.1f}%")
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): "
              + "; ".join(f"{p} ({r})" for p, r in skipped[:5]))
    return 0


def cmd_predict(args) -> int:
    from xrcompare.inference import predict_file

    run = _load(args.run_dir)
    result = predict_file(run, args.image)
    if args.json:
        print(json.dumps(result))
        return 0
    for label, probability in result["probabilities"].items():
        print(f"{label:>10}  {probability:6.3f}  {'#' * round(probability * 30)}")
    print(f"predicted: {result['predicted']}  (teaching model, not a diagnosis)")
    if result["feature_engine"]["note"]:
        print(f"features: {result['feature_engine']['note']}")
    for warning in result.get("warnings", []):
        print(f"warning: {warning}")
    return 0


def cmd_runs(args) -> int:
    from xrcompare.runs import list_runs
    from xrcompare.summary import leaderboard

    listing = list_runs(args.runs_dir)
    table = leaderboard(listing.runs)
    if args.json:
        print(json.dumps({"runs": table.to_dict(orient="records"),
                          "problems": [{"folder": f, "reason": r} for f, r in listing.problems]},
                         default=str))
        return 0
    if table.empty:
        print("no runs yet: train one with python -m xrcompare train --data DIR --backbone NAME")
    else:
        columns = ["run", "backbone", "data", "accuracy", "macro_f1", "covid_sensitivity",
                   "covid_specificity"]
        print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for folder, reason in listing.problems:
        print(f"skipped {folder}: {reason}")
    return 0


def cmd_backbones(args) -> int:
    from xrcompare.backbones import REGISTRY, weights_status

    for name, backbone in REGISTRY.items():
        status = weights_status(name)
        mark = "ok " if status.available else "-- "
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


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "runs": cmd_runs, "backbones": cmd_backbones, "explain": cmd_explain}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from xrcompare.backbones import WeightsUnavailable, first_line
    from xrcompare.imaging import ImageError
    from xrcompare.runs import RunError

    try:
        return COMMANDS[args.command](args)
    except (ValueError, WeightsUnavailable, ImageError, RunError, OSError) as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return EXIT_USAGE if not isinstance(error, WeightsUnavailable) else 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an environment problem: still one line, exit 1
        print(f"error: unexpected {type(error).__name__}: {first_line(error)} "
              "(please report it)", file=sys.stderr)
        return 1
