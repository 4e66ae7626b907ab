"""Train ResNet50's head (a) on cached features and (b) the 2020 blog's way, with the frozen
base inside every epoch, on the same data, split and epochs. Prints wall times and, as its
last line, ``speedup: X`` (b over a).

    XRCOMPARE_WEIGHTS_DIR=../shared/weights python benchmarks/train_speed.py \
        --data ../shared/data/seed001_0402 --epochs 25 --batch-size 8

(a) starts from an empty feature cache, so it includes extracting every image once.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/seed001_0402"))
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    dataset = scan_dataset(args.data)
    splits = split_by_patient(dataset, seed=args.seed)
    paths = {name: [dataset.records[i].path for i in idx] for name, idx in splits.items()
             if name != "test"}
    labels = {name: np.array([CLASSES.index(dataset.records[i].label) for i in idx])
              for name, idx in splits.items() if name != "test"}
    backbone = get_backbone(args.backbone)
    print(f"data {args.data}: {len(paths['train'])} train + {len(paths['val'])} val images, "
          f"{args.backbone} {args.image_size}px, {args.epochs} epochs, batch {args.batch_size}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Keras {keras.__version__} ({keras.backend.backend()})")

    # (a) cached features: extract once (empty cache), then fit the head on the arrays.
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        extractor = FeatureExtractor(FeatureSpec(backbone.name, args.image_size),
                                     cache_dir=Path(cache))
        features = {name: extractor.extract(items).features for name, items in paths.items()}
        extracted = time.perf_counter()
        head = build_head("blog", features["train"].shape[1:])
        fit_head(head, features["train"], labels["train"], features["val"], labels["val"],
                 epochs=args.epochs, batch_size=args.batch_size, learning_rate=1e-3,
                 seed=args.seed)
        cached_seconds = time.perf_counter() - started
    head_seconds = cached_seconds - (extracted - started)
    print(f"(a) cached features: {cached_seconds:.1f} s "
          f"(extraction {extracted - started:.1f} s, head {head_seconds:.1f} s)")

    # (b) the blog's way: images in memory, the frozen base runs in every epoch.
    started = time.perf_counter()
    images = {name: backbone.preprocess(np.stack([load_model_input(p, args.image_size)
                                                  for p in items]))
              for name, items in paths.items()}
    keras.utils.set_random_seed(args.seed)
    base = build_base(backbone.name, args.image_size)
    head = build_head("blog", tuple(base.output.shape[1:]))
    model = attach_head(base, head)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(images["train"], labels["train"], validation_data=(images["val"], labels["val"]),
              epochs=args.epochs, batch_size=args.batch_size, verbose=0)
    blog_seconds = time.perf_counter() - started
    print(f"(b) frozen base in the epoch loop: {blog_seconds:.1f} s")
    print(f"speedup: {blog_seconds / cached_seconds:.1f}")


if __name__ == "__main__":
    main()
