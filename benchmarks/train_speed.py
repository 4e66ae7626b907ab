"""Train each backbone's head (a) on cached features and (b) the 2020 blog's way, with the
frozen base inside every epoch, on the same data, split and epochs: VGG16, ResNet50 and
Xception by default. Prints wall times per backbone and, as its last lines, one
``speedup_<backbone>: X`` per backbone (b over a).

    python benchmarks/train_speed.py --data ../shared/data/seed001_0402 --epochs 25 \
        --batch-size 8

(a) starts from an empty feature cache, so it includes extracting every image once. Weights
come from the app's weights folders (``.weights/`` and ``../shared/weights`` by default, or
``XRCOMPARE_WEIGHTS_DIR``); run ``python scripts/setup_weights.py`` first for Xception.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from xrcompare import CLASSES  # noqa: E402
from xrcompare.backbones import build_base, get_backbone  # noqa: E402
from xrcompare.data import scan_dataset, split_by_patient  # noqa: E402
from xrcompare.features import FeatureExtractor, FeatureSpec  # noqa: E402
from xrcompare.imaging import load_model_input  # noqa: E402
from xrcompare.train import attach_head, build_head, fit_head  # noqa: E402

DEFAULT_BACKBONES = ("vgg16", "resnet50", "xception")


def time_cached(backbone, paths, labels, args) -> tuple[float, float]:
    """(a) extract once into an empty cache, then fit the head on the arrays: (total s,
    extraction s)."""
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        extractor = FeatureExtractor(FeatureSpec(backbone.name, args.image_size),
                                     cache_dir=Path(cache))
        features = {name: extractor.extract(items).features for name, items in paths.items()}
        extracted = time.perf_counter()
        head = build_head(args.head, features["train"].shape[1:])
        fit_head(head, features["train"], labels["train"], features["val"], labels["val"],
                 epochs=args.epochs, batch_size=args.batch_size, learning_rate=1e-3,
                 seed=args.seed)
        return time.perf_counter() - started, extracted - started


def time_base_in_loop(backbone, paths, labels, args) -> float:
    """(b) the blog's way: images in memory, the frozen base runs in every epoch."""
    started = time.perf_counter()
    images = {name: backbone.preprocess(np.stack([load_model_input(p, args.image_size)
                                                  for p in items]))
              for name, items in paths.items()}
    keras.utils.set_random_seed(args.seed)
    base = build_base(backbone.name, args.image_size)
    head = build_head(args.head, tuple(base.output.shape[1:]))
    model = attach_head(base, head)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(images["train"], labels["train"], validation_data=(images["val"], labels["val"]),
              epochs=args.epochs, batch_size=args.batch_size, verbose=0)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/seed001_0402"))
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES))
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--head", choices=("blog", "gap"), default="blog")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    args = parser.parse_args()
    backbones = [get_backbone(name) for name in args.backbones]
    for backbone in backbones:
        backbone.check_size(args.image_size)

    dataset = scan_dataset(args.data)
    splits = split_by_patient(dataset, val_fraction=args.val_fraction,
                              test_fraction=args.test_fraction, seed=args.seed)
    paths = {name: [dataset.records[i].path for i in idx] for name, idx in splits.items()
             if name != "test"}
    labels = {name: np.array([CLASSES.index(dataset.records[i].label) for i in idx])
              for name, idx in splits.items() if name != "test"}
    print(f"data {args.data}: {len(paths['train'])} train + {len(paths['val'])} val images, "
          f"{args.image_size}px, head {args.head}, {args.epochs} epochs, batch "
          f"{args.batch_size}; {platform.processor() or platform.machine()}, {os.cpu_count()} "
          f"cores, Keras {keras.__version__} ({keras.backend.backend()})", flush=True)

    speedups = {}
    for backbone in backbones:
        cached, extraction = time_cached(backbone, paths, labels, args)
        print(f"{backbone.name} (a) cached features: {cached:.1f} s (extraction "
              f"{extraction:.1f} s, head {cached - extraction:.1f} s)", flush=True)
        in_loop = time_base_in_loop(backbone, paths, labels, args)
        print(f"{backbone.name} (b) frozen base in the epoch loop: {in_loop:.1f} s", flush=True)
        speedups[backbone.name] = in_loop / cached
        keras.backend.clear_session()  # one backbone's graphs at a time
    for name, speedup in speedups.items():
        print(f"speedup_{name}: {speedup:.1f}")


if __name__ == "__main__":
    main()
