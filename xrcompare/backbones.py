"""The backbone registry: one place answers every per-backbone question.

Per backbone: the ``keras.applications`` builder, default input size, ``preprocess_input``,
the last convolutional layer (for Grad-CAM), where its ImageNet weights come from and, for
``--fine-tune last-block``, the last block's trained layers (the cut point is the input of the
first of them: the activations cached there).
Nothing else in the package switches on backbone names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrcompare.errors import one_line
from xrcompare.paths import (
    DEFAULT_WEIGHTS_DIRS,
    WEIGHTS_DIR_VARIABLE,
    weights_dirs_from_environment,
)
from xrcompare.protocol import PROTOCOL_CHOICES

#: The weights of a random-init control base (a control, never a fallback).
RANDOM_WEIGHTS = "random"
WEIGHT_KINDS = ("imagenet", RANDOM_WEIGHTS)
#: How model inputs (RGB 0..255) are scaled before the base: see :meth:`Backbone.preprocess`.
PREPROCESS_MODES = PROTOCOL_CHOICES["preprocess"]


#: ``--fine-tune`` choices: none (the frozen base) or the last block after the head.
FINE_TUNE_CHOICES = ("none", "last-block")

#: How each ``keras.applications`` module scales its inputs (``preprocess_input``'s mode):
#: ``caffe`` (RGB → BGR, ImageNet means subtracted), ``tf`` (to -1..1), ``torch`` (0..1, then
#: ImageNet means and standard deviations). Done here in NumPy, bit for bit as Keras does it
#: (tested), so the image-to-tensor path never imports Keras (nor TensorFlow).
PREPROCESS_STYLES = {"vgg16": "caffe", "vgg19": "caffe", "resnet50": "caffe", "resnet": "caffe",
                     "resnet_v2": "tf", "xception": "tf", "mobilenet_v2": "tf",
                     "densenet": "torch"}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)


def imagenet_preprocess(batch: np.ndarray, style: str, *, copy: bool = True) -> np.ndarray:
    """``keras.applications``' ``preprocess_input`` of ``style`` (see
    :data:`PREPROCESS_STYLES`) on ``batch`` (RGB 0..255, channels last): the same float32
    operations as Keras's, so the result is identical (tested). On a float32 copy, or, with
    ``copy=False`` and a float32 ``batch``, in place (the caller's own array; the extraction
    pipeline's batch, saving a pass over it)."""
    x = np.array(batch, dtype=np.float32, copy=True) if copy \
        else np.asarray(batch, dtype=np.float32)
    if style == "tf":
        x /= np.float32(127.5)
        x -= np.float32(1.0)
        return x
    if style == "torch":
        x /= np.float32(255.0)
        x -= np.array(TORCH_MEAN_RGB, dtype=np.float32)
        x /= np.array(TORCH_STD_RGB, dtype=np.float32)
        return x
    if style != "caffe":
        raise ValueError(f"unknown preprocessing style {style!r}")
    # RGB → BGR, then each channel less its mean, one channel at a time (one strided pass per
    # channel: 4× faster than flipping the array first, the same float32 operations)
    red = x[..., 0].copy()
    np.subtract(x[..., 2], np.float32(CAFFE_MEAN_BGR[0]), out=x[..., 0])
    np.subtract(x[..., 1], np.float32(CAFFE_MEAN_BGR[1]), out=x[..., 1])
    np.subtract(red, np.float32(CAFFE_MEAN_BGR[2]), out=x[..., 2])
    return x


#: A layer's weight shapes, in the order Keras lists them (kernel, bias; a separable
#: convolution's depthwise then pointwise kernel).
Shapes = tuple[tuple[int, ...], ...]


class WeightsUnavailable(RuntimeError):
    """ImageNet weights for a backbone could be found neither locally nor by download."""


@dataclass(frozen=True)
class Backbone:
    name: str
    display_name: str
    builder: str  # attribute of keras.applications
    module: str  # keras.applications sub-module holding preprocess_input
    default_size: int
    min_size: int
    last_conv_layer: str
    keras_notop_file: str  # file name Keras's own download caches under ~/.keras/models
    #: Parameters of the frozen base (``include_top=False``, all weights counted); the same at
    #: every input size, since the base is convolutional only.
    base_params: int
    #: Channels of the base's output feature map (what a head on it takes).
    feature_channels: int
    #: The last block's layers that ``--fine-tune last-block`` trains, in graph order, each
    #: with its weight shapes (what a fine-tuned run stores and is checked against). The cut
    #: is the input of the first: the base runs up to there once per image (cached), and only
    #: the layers from there to the base's output run while fine-tuning. Batch-norm layers in
    #: the block are not listed: they keep their ImageNet statistics, in inference mode.
    #: Empty: no cut registered for this backbone.
    fine_tune_layers: tuple[tuple[str, Shapes], ...] = ()
    #: What the base does after :attr:`last_conv_layer`: 0, nothing (the layer is the base's
    #: output); 2, a 2 × 2 max pool of stride 2 (VGG's ``block5_pool``). The Predict page's
    #: first results, drawn before Keras is loaded, apply it in NumPy
    #: (:func:`xrcompare.engine.numpy_tail`); a test checks it against the Keras base.
    pool_after_last_conv: int = 0

    @property
    def fine_tune_names(self) -> tuple[str, ...]:
        """The names of :attr:`fine_tune_layers` (empty: no cut registered)."""
        return tuple(name for name, _ in self.fine_tune_layers)

    @property
    def fine_tune_shapes(self) -> dict[str, Shapes]:
        return dict(self.fine_tune_layers)

    @property
    def fine_tune_params(self) -> int:
        """Parameters the last-block fine-tuning trains (0: no cut registered)."""
        return sum(int(np.prod(shape)) for _, shapes in self.fine_tune_layers
                   for shape in shapes)

    @property
    def fine_tune_cut(self) -> str | None:
        """The first trained layer: its input is the cut point (None: no cut registered)."""
        return self.fine_tune_layers[0][0] if self.fine_tune_layers else None

    def check_fine_tune(self, mode: str) -> None:
        """ValueError (one line) when ``--fine-tune mode`` cannot run on this backbone."""
        if mode not in FINE_TUNE_CHOICES:
            raise ValueError(f"fine-tune must be one of {', '.join(FINE_TUNE_CHOICES)}, "
                             f"got {mode!r}")
        if mode != "none" and not self.fine_tune_layers:
            able = ", ".join(b.name for b in REGISTRY.values() if b.fine_tune_layers)
            raise ValueError(f"{self.display_name} has no fine-tune cut registered: "
                             f"--fine-tune {mode} works with {able}")

    def builder_function(self):
        import keras

        return getattr(keras.applications, self.builder)

    def preprocess(self, batch: np.ndarray, mode: str = "backbone", *,
                   copy: bool = True) -> np.ndarray:
        """A batch of model inputs (RGB 0..255) as the base is fed, on a float32 copy (in
        place with ``copy=False``: a float32 batch the caller owns).

        ``mode="backbone"``: the backbone's own ``preprocess_input``, in NumPy
        (:func:`imagenet_preprocess`). ``mode="scale01"``: ``x / 255`` in 0..1, as the 2020
        blog fed its VGG16, a mismatch with how the ImageNet weights were trained (kept only
        to reproduce it).
        """
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}, "
                             f"got {mode!r}")
        if mode == "scale01":
            if copy:
                return np.asarray(batch, dtype=np.float32) / np.float32(255.0)
            batch /= np.float32(255.0)
            return batch
        return imagenet_preprocess(batch, PREPROCESS_STYLES[self.module], copy=copy)

    def model_inputs(self, squares: np.ndarray, mode: str = "backbone") -> np.ndarray:
        """8-bit gray squares (N, S, S) (:func:`xrcompare.imaging.to_model_square`) → the
        base's input batch (N, S, S, 3): each gray value in the three channels, then
        :meth:`preprocess` (in place on that new array)."""
        from xrcompare.imaging import gray_to_rgb

        return self.preprocess(gray_to_rgb(squares), mode, copy=False)

    def gray_affine(self, mode: str = "backbone") -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset), one per input channel, such that :meth:`preprocess` of a gray
        image ``g`` (the same value in the three channels) is ``g * scale + offset`` per
        channel: what an inference engine computes in its own graph from 8-bit squares
        (:class:`xrcompare.inference_engine.OpenVINOEngine`). Derived from
        :meth:`preprocess` itself, so the two cannot drift apart; a preprocessing that is
        not affine raises ``ValueError``."""
        levels = np.arange(256, dtype=np.float32)
        outputs = self.preprocess(np.repeat(levels[:, None], 3, axis=1), mode)  # (256, 3)
        offset = outputs[0]
        scale = (outputs[255] - offset) / np.float32(255.0)
        if not np.allclose(levels[:, None] * scale + offset, outputs, rtol=1e-5, atol=1e-4):
            raise ValueError(f"{self.display_name}'s {mode} preprocessing is not affine in "
                             "the gray level")
        return scale.astype(np.float32), offset.astype(np.float32)

    def check_size(self, size: int) -> int:
        if not isinstance(size, int) or isinstance(size, bool):
            raise ValueError(f"image size must be an integer, got {size!r}")
        if not self.min_size <= size <= 1024:
            raise ValueError(f"{self.display_name} needs an image size between "
                             f"{self.min_size} and 1024 px, got {size}")
        return size


#: The last blocks fine-tuned by ``--fine-tune last-block`` (see Backbone.fine_tune_layers).
#: VGG16: block5_conv3 (2.4 M parameters), fed by block5_conv2's output (14 × 14 × 512 at
#: 224 px), then block5_pool. ResNet50: conv5_block3's three convolutions (4.5 M), fed by
#: conv5_block2_out (7 × 7 × 2048); its batch norms stay frozen. Xception: block14's two
#: separable convolutions (4.7 M), fed by block 13's residual sum (10 × 10 × 1024 at 299 px).
VGG16_LAST_BLOCK = (("block5_conv3", ((3, 3, 512, 512), (512,))),)
RESNET50_LAST_BLOCK = (("conv5_block3_1_conv", ((1, 1, 2048, 512), (512,))),
                       ("conv5_block3_2_conv", ((3, 3, 512, 512), (512,))),
                       ("conv5_block3_3_conv", ((1, 1, 512, 2048), (2048,))))
XCEPTION_LAST_BLOCK = (("block14_sepconv1", ((3, 3, 1024, 1), (1, 1, 1024, 1536))),
                       ("block14_sepconv2", ((3, 3, 1536, 1), (1, 1, 1536, 2048))))

REGISTRY: dict[str, Backbone] = {b.name: b for b in (
    Backbone("vgg16", "VGG16", "VGG16", "vgg16", 224, 32, "block5_conv3",
             "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", 14_714_688, 512,
             VGG16_LAST_BLOCK, pool_after_last_conv=2),
    Backbone("vgg19", "VGG19", "VGG19", "vgg19", 224, 32, "block5_conv4",
             "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", 20_024_384, 512,
             pool_after_last_conv=2),
    Backbone("resnet50", "ResNet50", "ResNet50", "resnet50", 224, 32, "conv5_block3_out",
             "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", 23_587_712, 2048,
             RESNET50_LAST_BLOCK),
    Backbone("resnet101", "ResNet101", "ResNet101", "resnet", 224, 32, "conv5_block3_out",
             "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5", 42_658_176, 2048),
    Backbone("resnet152", "ResNet152", "ResNet152", "resnet", 224, 32, "conv5_block3_out",
             "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5", 58_370_944, 2048),
    Backbone("resnet50v2", "ResNet50V2", "ResNet50V2", "resnet_v2", 224, 32, "post_relu",
             "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", 23_564_800, 2048),
    Backbone("xception", "Xception", "Xception", "xception", 299, 71, "block14_sepconv2_act",
             "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", 20_861_480, 2048,
             XCEPTION_LAST_BLOCK),
    Backbone("densenet121", "DenseNet121", "DenseNet121", "densenet", 224, 32, "relu",
             "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", 7_037_504, 1024),
    Backbone("mobilenetv2", "MobileNetV2", "MobileNetV2", "mobilenet_v2", 224, 32, "out_relu",
             "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", 2_257_984,
             1280),
)}


def get_backbone(name: str) -> Backbone:
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if key not in REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[key]


def weights_file_name(name: str) -> str:
    return f"{get_backbone(name).name}_imagenet_notop.weights.h5"


def weights_search() -> tuple[list[Path], bool]:
    """(the folders searched for weight files, in order; whether the variable chose them).

    ``XRCOMPARE_WEIGHTS_DIR`` may name several folders separated by ``os.pathsep``; set, it
    is the promised source. Unset, the default folders that exist are searched and Keras's
    own download is the fallback.
    """
    chosen = weights_dirs_from_environment()
    if chosen is not None:
        return chosen, True
    return [folder for folder in DEFAULT_WEIGHTS_DIRS if folder.is_dir()], False


def weights_dirs() -> list[Path]:
    return weights_search()[0]


def local_weights_file(name: str) -> Path | None:
    """The first searched folder's ``<backbone>_imagenet_notop.weights.h5``, or None."""
    file_name = weights_file_name(name)
    return next((folder / file_name for folder in weights_dirs()
                 if (folder / file_name).is_file()), None)


def searched_text(name: str) -> str:
    """Where this backbone's weights file was looked for, as part of a sentence."""
    file_name = weights_file_name(name)
    folders, explicit = weights_search()
    if explicit:
        return (f"{file_name} is in none of {', '.join(map(str, folders))} "
                f"({WEIGHTS_DIR_VARIABLE})")
    if folders:
        return (f"{file_name} is in none of the default folders {', '.join(map(str, folders))}"
                f" ({WEIGHTS_DIR_VARIABLE} is not set)")
    return (f"{WEIGHTS_DIR_VARIABLE} is not set and none of the default folders "
            f"{', '.join(map(str, DEFAULT_WEIGHTS_DIRS))} exists to hold {file_name}")


def keras_cache_file(name: str) -> Path:
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return keras_home / "models" / get_backbone(name).keras_notop_file


@dataclass(frozen=True)
class WeightsStatus:
    backbone: str
    available: bool  # usable without a network
    source: str  # "file", "keras-cache", "download" or "missing"
    detail: str  # one plain sentence for the UI


def weights_status(name: str) -> WeightsStatus:
    """Where ImageNet weights for ``name`` would come from, without loading anything.

    First the searched folders (see :func:`weights_search`), then Keras's cache
    (``~/.keras/models``). With ``XRCOMPARE_WEIGHTS_DIR`` set, a file in none of them means
    unavailable (offline machines); unset, Keras downloads it on first use.
    """
    backbone = get_backbone(name)
    local = local_weights_file(backbone.name)
    if local is not None:
        return WeightsStatus(backbone.name, True, "file", f"ImageNet weights from {local}")
    if keras_cache_file(backbone.name).is_file():
        return WeightsStatus(backbone.name, True, "keras-cache",
                             f"ImageNet weights from Keras's cache {keras_cache_file(name)}")
    if not weights_search()[1]:
        return WeightsStatus(backbone.name, True, "download",
                             f"Keras downloads the {backbone.display_name} ImageNet weights "
                             f"on first use (needs internet): {searched_text(backbone.name)}")
    return WeightsStatus(backbone.name, False, "missing",
                         f"no ImageNet weights for {backbone.display_name}: "
                         f"{searched_text(backbone.name)}")


def build_base(name: str, image_size: int | None = None, weights: str = "imagenet",
               *, seed: int = 0):
    """The frozen convolutional base (``include_top=False``) as a ``keras.Model``.

    ``weights="random"`` builds a random-init control (seeded); it is never a fallback.
    """
    import keras

    backbone = get_backbone(name)
    size = backbone.check_size(image_size or backbone.default_size)
    if weights not in WEIGHT_KINDS:
        raise ValueError(f"weights must be one of {WEIGHT_KINDS}, got {weights!r}")
    builder = backbone.builder_function()
    shape = (size, size, 3)
    if weights == RANDOM_WEIGHTS:
        keras.utils.set_random_seed(seed)
        base = builder(include_top=False, weights=None, input_shape=shape)
    else:
        local = local_weights_file(backbone.name)
        if local is not None:
            base = builder(include_top=False, weights=None, input_shape=shape)
            try:
                base.load_weights(local)
            except Exception as error:  # a wrong or corrupt file: say which
                raise WeightsUnavailable(
                    f"cannot load {local} into {backbone.display_name}: "
                    f"{one_line(error)}") from None
        else:
            if weights_search()[1] and not keras_cache_file(backbone.name).is_file():
                # The variable is the promised source (offline machines): no download.
                raise WeightsUnavailable(weights_status(backbone.name).detail)
            try:
                base = builder(include_top=False, weights="imagenet", input_shape=shape)
            except Exception as error:
                reason = one_line(error, 160)
                raise WeightsUnavailable(
                    f"no ImageNet weights for {backbone.display_name}: "
                    f"{searched_text(backbone.name)}, and Keras's download failed "
                    f"({reason})") from None
    base.trainable = False
    return base



def cut_model(base, first_layer: str):
    """``base`` from its input to the cut point: the input of ``first_layer`` (the first
    layer that ``--fine-tune last-block`` trains), sharing the base's layers."""
    import keras

    return keras.Model(base.input, base.get_layer(first_layer).input,
                       name=f"{base.name}_to_{first_layer}_input")


def build_block(base, backbone_name: str):
    """The part of ``base`` after the cut (:attr:`Backbone.fine_tune_cut`): cut activations
    → the base's output, sharing the base's layers. The registry's
    :attr:`Backbone.fine_tune_layers` are made trainable; every other layer (batch norms
    included) stays frozen, so batch norm runs in inference mode."""
    import keras

    backbone = get_backbone(backbone_name)
    backbone.check_fine_tune("last-block")
    cut = base.get_layer(backbone.fine_tune_cut).input
    block = keras.Model(cut, base.output, name=f"{base.name}_last_block")
    trained = set(backbone.fine_tune_names)
    for layer in block.layers:
        layer.trainable = layer.name in trained
    return block
