"""Classifier heads and their fitting on cached features (plain Keras 3, any backend)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

HEADS = {
    "blog": "AveragePooling2D 4×4 → Flatten → Dense 64 relu → Dropout 0.5 → Dense softmax "
            "(the 2020 blog's head)",
    "gap": "GlobalAveragePooling2D → Dropout 0.3 → Dense softmax",
}

Progress = Callable[[dict], None]


def build_head(kind: str, feature_shape: tuple[int, ...], n_classes: int = 3):
    """The head as a functional model over the frozen base's feature map."""
    import keras
    from keras import layers

    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; choose from {', '.join(HEADS)}")
    if len(feature_shape) != 3:
        raise ValueError(f"expected a (height, width, channels) feature map, got {feature_shape}")
    inputs = keras.Input(shape=tuple(feature_shape), name="features")
    if kind == "blog":
        pool = (min(4, feature_shape[0]), min(4, feature_shape[1]))
        x = layers.AveragePooling2D(pool_size=pool, name="head_pool")(inputs)
        x = layers.Flatten(name="head_flatten")(x)
        x = layers.Dense(64, activation="relu", name="head_dense")(x)
        x = layers.Dropout(0.5, name="head_dropout")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="head_pool")(inputs)
        x = layers.Dropout(0.3, name="head_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="head_predictions")(x)
    return keras.Model(inputs, outputs, name=f"head_{kind}")


def head_probabilities(kind: str, arrays: dict[str, list[np.ndarray]],
                       features: np.ndarray) -> np.ndarray:
    """:func:`build_head`'s head in inference mode (dropout off), in NumPy: feature maps
    (n, h, w, c) → probabilities (n, classes), from the head's weights by layer name
    (:meth:`xrcompare.runs.Run.head_arrays`). For the Predict page's first results while
    Keras is still loading; tested equal to the Keras head for both kinds."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; choose from {', '.join(HEADS)}")
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected (n, height, width, channels) feature maps, got {x.shape}")
    count, height, width, channels = x.shape
    if kind == "blog":  # AveragePooling2D(min(4, side)), valid padding, then Flatten
        pool_h, pool_w = min(4, height), min(4, width)
        rows, columns = height // pool_h, width // pool_w
        x = x[:, :rows * pool_h, :columns * pool_w].reshape(
            count, rows, pool_h, columns, pool_w, channels).mean(axis=(2, 4))
        kernel, bias = arrays["head_dense"]
        x = np.maximum(x.reshape(count, -1) @ kernel + bias, np.float32(0.0))
    else:  # GlobalAveragePooling2D
        x = x.mean(axis=(1, 2))
    kernel, bias = arrays["head_predictions"]
    logits = x @ kernel + bias
    logits -= logits.max(axis=1, keepdims=True)
    exponentials = np.exp(logits)
    return (exponentials / exponentials.sum(axis=1, keepdims=True)).astype(np.float32)


def attach_head(base, head):
    """One flat functional graph ``base.input → head layers``: what Grad-CAM needs.

    The head's layers are applied directly to ``base.output`` (not nested as a model),
    sharing their weights with ``head``.
    """
    import keras

    x = base.output
    for layer in head.layers[1:]:
        x = layer(x)
    return keras.Model(base.input, x, name=f"{base.name}_with_{head.name}")


def fine_tune_model(block, head):
    """The backbone's last block then the head, on activations cached at the cut: what
    ``--fine-tune last-block`` trains (:func:`xrcompare.backbones.build_block` makes the
    block, its registered layers trainable). The block is called with ``training=False``, so
    its batch-norm layers stay in inference mode (their ImageNet statistics) while its
    convolutions learn; the head's dropout still follows training. Layers are shared with
    ``block`` and ``head``."""
    import keras

    inputs = keras.Input(shape=tuple(block.input.shape[1:]), name="cut_activations")
    outputs = head(block(inputs, training=False))
    return keras.Model(inputs, outputs, name=f"{block.name}_then_{head.name}")


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return {index: float(weight) for index, weight in enumerate(weights)}


def fit_head(head, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
             val_y: np.ndarray, *, epochs: int, batch_size: int, learning_rate: float,
             seed: int, balanced: bool = False, patience: int | None = None,
             monitor: str = "val_loss", progress: Progress | None = None) -> dict:
    """Fit ``head`` with Adam; keep the weights of the best epoch on the validation split.

    The test split is never seen here. Returns the history (one list per metric), the
    chosen epoch (1-based) and the fit time.
    """
    import keras

    if monitor not in ("val_loss", "val_accuracy"):
        raise ValueError("monitor must be val_loss or val_accuracy")
    keras.utils.set_random_seed(seed)
    n_classes = head.output_shape[-1]
    head.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                 loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    tracker = _BestEpoch(monitor, epochs, progress, patience)
    started = time.perf_counter()
    has_val = len(val_x) > 0
    head.fit(train_x, train_y, validation_data=(val_x, val_y) if has_val else None,
             epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0,
             class_weight=class_weights(train_y, n_classes) if balanced else None,
             callbacks=[tracker])
    if tracker.best_weights is not None:
        head.set_weights(tracker.best_weights)
    return {"history": tracker.history, "best_epoch": tracker.best_epoch,
            "monitor": monitor if has_val else "last epoch (no validation split)",
            "epochs_run": len(tracker.history.get("loss", [])),
            "seconds": time.perf_counter() - started}


def _make_best_epoch_callback():
    import keras

    class BestEpoch(keras.callbacks.Callback):
        def __init__(self, monitor, epochs, progress, patience):
            super().__init__()
            self.monitor, self.epochs, self.progress = monitor, epochs, progress
            self.patience = patience
            self.history: dict[str, list[float]] = {}
            self.best_value: float | None = None
            self.best_epoch = 0
            self.best_weights = None
            self.since_best = 0

        def on_epoch_end(self, epoch, logs=None):
            logs = {key: float(value) for key, value in (logs or {}).items()}
            for key, value in logs.items():
                self.history.setdefault(key, []).append(value)
            value = logs.get(self.monitor)
            if value is None:  # no validation split: keep the last epoch
                self.best_epoch, self.best_weights = epoch + 1, None
            else:
                better = (self.best_value is None or
                          (value < self.best_value if self.monitor == "val_loss"
                           else value > self.best_value))
                if better:
                    self.best_value, self.best_epoch = value, epoch + 1
                    self.best_weights = [w.copy() for w in self.model.get_weights()]
                    self.since_best = 0
                else:
                    self.since_best += 1
                    if self.patience is not None and self.since_best >= self.patience:
                        self.model.stop_training = True
            if self.progress is not None:
                self.progress({"phase": "train", "epoch": epoch + 1, "epochs": self.epochs,
                               "metrics": logs, "best_epoch": self.best_epoch})

    return BestEpoch


def _BestEpoch(monitor, epochs, progress, patience):  # noqa: N802 - builds a Keras callback
    return _make_best_epoch_callback()(monitor, epochs, progress, patience)


def save_head_weights(head, path) -> None:
    """Save the head's weights only (no optimizer state: a third of the size)."""
    import keras

    # from_config, not clone_model: Keras 3 clones the compile state, optimizer included.
    clean = keras.Model.from_config(head.get_config())
    clean.set_weights(head.get_weights())
    clean.save_weights(path)


def predict(head, features: np.ndarray, batch_size: int = 256) -> np.ndarray:
    if len(features) == 0:
        return np.zeros((0, head.output_shape[-1]), dtype=np.float32)
    return np.asarray(head.predict(features, batch_size=batch_size, verbose=0), dtype=np.float32)
