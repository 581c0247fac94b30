"""What to explain: a scalar score per sample, computed from the model's outputs.

A target turns the model's outputs into one score per sample, ``(N,)``; the methods explain that
score. Targets run inside the framework's gradient computation, so they use the array functions
``xp`` the adapter hands them (``keras.ops`` for Keras models) instead of numpy.

Which output: every target takes ``output=`` (an index or a name) for models with several
outputs; the default is the first output.

Why ``Logit`` matters: a softmax output saturates. When the model is sure (p close to 1), the
gradient of the probability almost vanishes and gradient maps fade to noise, and a probability
also grows by lowering the other classes. The logit (the score before the softmax) has neither
problem, which is why the Grad-CAM paper uses it. ``Logit`` asks the adapter to skip the final
softmax (or sigmoid) activation of the output layer for the explanation.

Any callable ``fn(output) -> (N,)`` is a target too, given the selected output tensor.

Targets that a short text names (``logit:281``, what ``camlens explain --target`` takes) are
registered with :func:`register_target`; a new one is one file with a decorated class.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from .registry import Registry

__all__ = [
    "Target",
    "ClassScore",
    "Logit",
    "ContrastScore",
    "RegressionScore",
    "Similarity",
    "SegmentationRegion",
    "Detection",
    "box_iou",
    "FunctionTarget",
    "as_target",
    "scores_of",
    "register_target",
    "parse_target",
    "text_targets",
]


class Target:
    """Base class. Subclasses implement :meth:`score` and :meth:`describe`."""

    #: whether the adapter should remove the final softmax/sigmoid of the output
    wants_logits: bool = False
    #: the attributes ``score`` reads besides ``output``, for targets whose score a compiled
    #: program may hold: the program is keyed on their values. Declared per class (a subclass
    #: with state of its own is not compiled until it declares its own).
    trace_fields: ClassVar[tuple[str, ...] | None] = None
    #: how ``--target`` writes it: ``NAME`` or ``NAME:ARG`` (set by :func:`register_target`)
    text_form: ClassVar[str] = ""
    #: whether the scores mean anything: a target that only lets the model run (feature maps
    #: need activations, no score) is not checked for one score per sample
    explains: ClassVar[bool] = True

    def __init__(self, output: int | str | None = None) -> None:
        self.output = output

    def output_indices(self, names: Sequence[str]) -> list[int]:
        """Indices of the model outputs this target reads."""
        return [_output_index(self.output, names)]

    def select(self, outputs: Sequence[Any], names: Sequence[str]) -> Any:
        return outputs[_output_index(self.output, names)]

    def score(self, outputs: Sequence[Any], names: Sequence[str], xp: Any) -> Any:
        """``(N,)`` scores from the list of model outputs (framework tensors)."""
        raise NotImplementedError

    def class_indices(self, outputs: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray | None:
        """The class explained for each sample, for class targets; else ``None``."""
        return None

    def samples(self, outputs: Sequence[Any], names: Sequence[str]) -> int | None:
        """How many samples the outputs are for, where their first axis does not say it (a
        detector's one dict per image); ``None``: the first output's first axis."""
        return None

    def describe(self) -> str:
        raise NotImplementedError

    def for_sample(self, n: int, class_indices: np.ndarray | None) -> "Target":
        """The target of sample ``n`` alone, for methods that rerun the model on modified
        copies of one sample (a top-class target keeps the class it explained)."""
        return self

    def for_samples(self, part: slice) -> "Target":
        """The target of the samples ``part`` of the batch, for a batch run in parts: what a
        target holds per sample (a list of classes, a mask or reference per sample) is cut to
        them; the caller's target stays as it was."""
        return self

    def _cut(self, attr: str, part: slice, per_sample: bool) -> "Target":
        if not per_sample:
            return self
        cut = copy.copy(self)
        setattr(cut, attr, getattr(self, attr)[part])
        return cut

    @classmethod
    def from_text(cls, arg: str) -> "Target":
        """The target that ``NAME:ARG`` names (``arg`` may be empty): an integer argument by
        default; override for others."""
        return cls(int(arg)) if arg else cls()

    def _suffix(self) -> str:
        return "" if self.output is None else f" of output {self.output!r}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


def scores_of(
    target: Target, outputs: Sequence[Any], names: Sequence[str], xp: Any, batch: int | None = None
) -> Any:
    """``target.score(...)``, checked: one score per sample, ``(N,)`` (or ``(N, 1)``) for a batch
    of ``N``. A score of another shape (one number for the whole batch, a map per sample) would
    otherwise be summed or spread over the samples with no error. ``batch``: the number of
    input samples, where the adapter knows it: an output the target reads whose first axis is
    not the batch (a detector's boxes of all images) is refused before it is read as classes.
    Adapters call this, not ``score`` directly."""
    if not target.explains:
        return target.score(outputs, names, xp)
    n = target.samples(outputs, names)
    if n is None and batch is not None:
        for i in target.output_indices(names):
            shape = _static_shape(outputs[i])
            if not shape or (shape[0] is not None and shape[0] != batch):
                raise ValueError(
                    f"output {names[i]!r} has shape {shape}, whose first axis is not the batch of "
                    f"{batch} input(s): {target.describe()} would read it as one row per "
                    "sample. Pick an output with one row per sample (output=...), or a target "
                    "that reads this one: camlens.targets.Detection for a detector's per-image "
                    "boxes, or a callable"
                )
        n = batch
    scores = target.score(outputs, names, xp)
    shape = _static_shape(scores)
    if n is None:
        first = _static_shape(outputs[0])[:1] if outputs else ()
        n = first[0] if first else None
    ok = len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)
    if ok and n is not None and shape[0] is not None:
        ok = shape[0] == n
    if not ok:
        raise ValueError(
            f"the target ({target.describe()}) gives scores of shape {shape} for a batch of "
            f"{n if n is not None else 'N'} samples; a target gives one score per sample, shape "
            "(N,): reduce over every axis but the first (out[:, k], out.sum(axis=(1, 2))), not "
            "over the batch"
        )
    return scores


def _output_index(output: int | str | None, names: Sequence[str]) -> int:
    if output is None:
        return 0
    if isinstance(output, str):
        if output not in names:
            raise ValueError(f"no output named {output!r}; the model's outputs are {list(names)}")
        return list(names).index(output)
    if isinstance(output, (int, np.integer)) and not isinstance(output, bool):
        if not -len(names) <= output < len(names):
            raise ValueError(
                f"output index {output} is out of range: the model has {len(names)} output(s) "
                f"{list(names)}"
            )
        return int(output) % len(names)
    raise TypeError(f"output must be an index or a name; got {output!r}")


def _static_shape(t: Any) -> tuple:
    return tuple(getattr(t, "shape", ()))


class ClassScore(Target):
    """The model's output for a class: ``output[n, k]`` (a probability for softmax outputs).

    ``index``: one class for every sample, a sequence with one class per sample, or ``None``
    for each sample's top class.
    """

    def __init__(self, index: int | Sequence[int] | None = None, output: int | str | None = None) -> None:
        super().__init__(output)
        if index is not None and not isinstance(index, (int, np.integer)):
            index = [int(i) for i in index]
        elif isinstance(index, (bool, np.bool_)):
            raise TypeError("a class index must be an int, not a bool")
        self.index = index

    def _check(self, y: Any) -> int:
        shape = _static_shape(y)
        if len(shape) != 2:
            raise ValueError(
                f"{type(self).__name__} needs an output of shape (batch, classes); the output "
                f"has shape {shape}. Use RegressionScore, SegmentationRegion or a callable."
            )
        k = shape[-1]
        idx = [] if self.index is None else np.atleast_1d(self.index).tolist()
        for i in idx:
            if k is not None and not -k <= i < k:
                raise ValueError(
                    f"class index {i} is out of range: the output has {k} classes (0..{k - 1})"
                )
        if isinstance(self.index, list) and shape[0] is not None and len(self.index) != shape[0]:
            raise ValueError(
                f"{len(self.index)} class indices given for a batch of {shape[0]} samples"
            )
        return k

    def score(self, outputs: Sequence[Any], names: Sequence[str], xp: Any) -> Any:
        y = self.select(outputs, names)
        k = self._check(y)
        if self.index is None:
            idx = xp.argmax(y, axis=-1)
        elif isinstance(self.index, list):
            idx = xp.convert_to_tensor(np.asarray(self.index) % k, dtype="int32")
        else:
            return y[:, int(self.index) % k]
        return xp.take_along_axis(y, xp.expand_dims(xp.cast(idx, "int32"), -1), axis=-1)[:, 0]

    def for_sample(self, n: int, class_indices: np.ndarray | None) -> "Target":
        return self.pinned(None if class_indices is None else class_indices[n])

    def pinned(self, classes: Any) -> "ClassScore":
        """A copy of this target that scores the ``classes`` given: one class (an int) for
        every sample, or a sequence with one class per sample; ``None`` keeps this target's own
        index. A top-class target pinned to the classes it found keeps explaining them in runs
        on other inputs (modified copies, a reference)."""
        pin = copy.copy(self)
        if classes is not None:
            pin.index = int(classes) if np.ndim(classes) == 0 else [int(i) for i in classes]
        return pin

    def for_samples(self, part: slice) -> "Target":
        return self._cut("index", part, isinstance(self.index, list))

    def class_indices(self, outputs: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
        y = np.asarray(outputs[_output_index(self.output, names)])
        if self.index is None:
            return y.argmax(axis=-1)
        return np.broadcast_to(np.asarray(self.index) % y.shape[-1], (y.shape[0],)).copy()

    def describe(self) -> str:
        what = "top class" if self.index is None else f"class {self.index}"
        return f"score of the {what}{self._suffix()}"


class Logit(ClassScore):
    """Like :class:`ClassScore`, but on the logit: the output layer's final softmax or sigmoid is
    skipped for the explanation (see the module docs for why). On a model whose output already
    is a logit this is the same as ``ClassScore``."""

    wants_logits = True

    def describe(self) -> str:
        what = "top class" if self.index is None else f"class {self.index}"
        return f"logit of the {what}{self._suffix()}"


class ContrastScore(Logit):
    """A class's logit minus ``gamma`` times the mean logit of its ``references`` closest
    classes: ``z[n, c] - gamma * (1/T) sum_t z[n, d_t]`` (Finer-CAM's contrast score).

    ``d_1..d_T`` are, per sample, the ``T = min(references, K - 1)`` classes other than ``c``
    whose logits are nearest ``z[n, c]`` (smallest ``|z[n, k] - z[n, c]|``; ties go to the lower
    class index), chosen from the values of the run being explained, so no gradient flows
    through the choice. ``index`` as in :class:`ClassScore` (``None``: the top class). With
    ``keras.ops`` the choice is made in the graph (a stable sort); with other array functions
    from the outputs' values. Never compiled into a kept Keras program (it declares no
    ``trace_fields``).
    """

    def __init__(
        self,
        index: int | Sequence[int] | None = None,
        output: int | str | None = None,
        *,
        gamma: float = 0.6,
        references: int = 3,
    ) -> None:
        super().__init__(index, output)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating, np.integer)) \
                or not np.isfinite(gamma) or gamma < 0:
            raise ValueError(f"gamma must be a finite number >= 0 (0.6 in the paper); got {gamma!r}")
        if isinstance(references, bool) or not isinstance(references, (int, np.integer)) or references < 1:
            raise ValueError(f"references must be a positive integer (3 in the paper); got {references!r}")
        self.gamma = float(gamma)
        self.references = int(references)

    def reference_classes(self, logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """``(N, T)`` the compared classes of each sample, nearest first."""
        z = np.asarray(logits, dtype=np.float64)
        if z.shape[1] < 2:
            raise ValueError(
                f"a contrast needs at least 2 classes; the output has shape {z.shape}: use a plain "
                "class target (method='gradcam')"
            )
        rows = np.arange(len(z))
        dist = np.abs(z - z[rows, classes][:, None])
        dist[rows, classes] = np.inf
        return np.argsort(dist, axis=1, kind="stable")[:, : min(self.references, z.shape[1] - 1)]

    def score(self, outputs: Sequence[Any], names: Sequence[str], xp: Any) -> Any:
        y = self.select(outputs, names)
        k = self._check(y)
        if hasattr(xp, "argsort"):  # keras.ops: chosen in the graph (jax differentiates tracers)
            return self._score_in_graph(y, k, xp)
        values = _to_numpy(y)
        if self.index is None:
            classes = values.argmax(axis=-1)
        else:
            classes = np.broadcast_to(np.asarray(self.index) % k, (values.shape[0],))
        refs = self.reference_classes(values, classes)
        picked = xp.take_along_axis(y, xp.convert_to_tensor(np.concatenate([classes[:, None], refs], 1), "int32"),
                                    axis=-1)
        return picked[:, 0] - self.gamma * xp.sum(picked[:, 1:], axis=-1) / refs.shape[1]

    def _score_in_graph(self, y: Any, k: int, xp: Any) -> Any:
        """:meth:`score` in the framework's own operations, the same choice of classes."""
        if k is None or k < 2:
            raise ValueError(
                f"a contrast needs at least 2 classes; the output has {k}: use a plain class "
                "target (method='gradcam')"
            )
        if self.index is None:
            classes = xp.argmax(y, axis=-1)
        elif isinstance(self.index, list):
            classes = xp.convert_to_tensor(np.asarray(self.index) % k, dtype="int32")
        else:
            classes = xp.zeros_like(xp.argmax(y, axis=-1)) + int(self.index) % k
        classes = xp.expand_dims(xp.cast(classes, "int32"), -1)
        fixed = xp.stop_gradient(y)
        dist = xp.abs(fixed - xp.take_along_axis(fixed, classes, axis=-1))
        dist = xp.where(xp.one_hot(classes[:, 0], k) > 0, np.inf, dist)
        refs = xp.cast(xp.argsort(dist, axis=-1)[:, : min(self.references, k - 1)], "int32")
        target = xp.take_along_axis(y, classes, axis=-1)[:, 0]
        return target - self.gamma * xp.mean(xp.take_along_axis(y, refs, axis=-1), axis=-1)

    def describe(self) -> str:
        what = "top class" if self.index is None else f"class {self.index}"
        return (f"logit of the {what}{self._suffix()} - {self.gamma:g} x the mean logit of its "
                f"{self.references} closest classes")


class RegressionScore(Target):
    """One unit of a regression (or similarity-score) output: ``output[n, index]``.

    ``index`` may be a tuple for outputs with more axes; ``None`` uses the whole output, which
    must then have one value per sample (``(N,)`` or ``(N, 1)``).
    """

    trace_fields = ("index",)

    def __init__(self, index: int | tuple[int, ...] | None = 0, output: int | str | None = None) -> None:
        super().__init__(output)
        self.index = index

    def score(self, outputs: Sequence[Any], names: Sequence[str], xp: Any) -> Any:
        y = self.select(outputs, names)
        shape = _static_shape(y)
        if self.index is None:
            if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
                raise ValueError(
                    f"RegressionScore(None) needs one value per sample; the output has shape "
                    f"{shape}: give index=..."
                )
            return xp.reshape(y, (-1,))
        index = self.index if isinstance(self.index, tuple) else (self.index,)
        if len(index) != len(shape) - 1:
            raise ValueError(
                f"RegressionScore index {self.index!r} does not fit output shape {shape}: it needs "
                f"{len(shape) - 1} index value(s)"
            )
        for i, (ix, d) in enumerate(zip(index, shape[1:])):
            if d is not None and not -d <= ix < d:
                raise ValueError(
                    f"RegressionScore index {self.index!r} is out of range for output shape {shape}"
                )
        return y[(slice(None), *index)]

    def describe(self) -> str:
        return f"regression value {self.index!r}{self._suffix()}"


class Similarity(Target):
    """Cosine similarity between two embedding outputs, or between one output and a fixed
    ``reference`` embedding (one vector, or one per sample).

    ``Similarity(output=0, other=1)``: two outputs of one model (a siamese model that returns
    both embeddings). ``Similarity(reference=emb)``: how much each input looks like ``emb``.
    """

    trace_fields = ("other", "reference")

    def __init__(
        self,
        output: int | str | None = 0,
        other: int | str | None = None,
        reference: np.ndarray | None = None,
    ) -> None:
        super().__init__(output)
        if (other is None) == (reference is None):
            raise ValueError("Similarity needs exactly one of other=OUTPUT or reference=EMBEDDING")
        self.other = other
        self.reference = None if reference is None else np.asarray(reference, dtype=np.float32)

    def output_indices(self, names: Sequence[str]) -> list[int]:
        first = _output_index(self.output, names)
        if self.other is None:
            return [first]
        return [first, _output_index(self.other, names)]

    def score(self, outputs: Sequence[Any], names: Sequence[str], xp: Any) -> Any:
        a = self.select(outputs, names)
        a = xp.reshape(a, (_static_shape(a)[0] or -1, -1)) if len(_static_shape(a)) != 2 else a
        if self.other is not None:
            b = outputs[_output_index(self.other, names)]
            if len(_static_shape(b)) != 2:
                b = xp.reshape(b, (_static_shape(b)[0] or -1, -1))
        else:
            ref = self.reference.reshape(-1, self.reference.shape[-1])
            if ref.shape[-1] != _static_shape(a)[-1]:
                raise ValueError(
                    f"reference embedding has {ref.shape[-1]} values; the output has "
                    f"{_static_shape(a)[-1]}"
                )
            b = xp.convert_to_tensor(ref)
        eps = 1e-12
        dot = xp.sum(a * b, axis=-1)
        na = xp.sqrt(xp.sum(a * a, axis=-1) + eps)
        nb = xp.sqrt(xp.sum(b * b, axis=-1) + eps)
        return dot / (na * nb)

    def for_samples(self, part: slice) -> "Target":
        ref = self.reference
        return self._cut("reference", part, ref is not None and ref.ndim == 2 and len(ref) > 1)

    def describe(self) -> str:
        against = "a reference embedding" if self.other is None else f"output {self.other!r}"
        return f"cosine similarity of output {self.output!r} with {against}"


class SegmentationRegion(Target):
    """Sum of a segmentation output's class channel over a region: ``sum_ij mask * out[n, k, i, j]``.

    ``mask``: ``(H, W)`` (or ``(N, H, W)``) boolean or weight array in the output's resolution;
    ``None`` sums over the whole image. The output is ``(N, classes, H, W)`` for PyTorch modules
    (torchvision's segmenters; pick a dict output by name, ``output="out"``) and
    ``(N, H, W, classes)`` for Keras models, as each framework writes images;
    ``channels="first"`` or ``"last"`` says it for a model that does otherwise.
    """

    trace_fields = ("index", "mask", "channels")

    def __init__(
        self, index: int, mask: np.ndarray | None = None, output: int | str | None = None,
        channels: str | None = None,
    ) -> None:
        super().__init__(output)
        if channels not in (None, "first", "last"):
            raise ValueError(f"channels must be 'first', 'last' or None (the framework's way); got {channels!r}")
        self.index = int(index)
        self.mask = None if mask is None else np.asarray(mask, dtype=np.float32)
        self.channels = channels

    def _axis(self, xp: Any) -> int:
        if self.channels is not None:
            return 1 if self.channels == "first" else 3
        return 1 if getattr(xp, "images_channels_first", False) else 3

    def score(self, outputs: Sequence[Any], names: Sequence[str], xp: Any) -> Any:
        y = self.select(outputs, names)
        shape = _static_shape(y)
        axis = self._axis(xp)
        layout = "(N, classes, H, W)" if axis == 1 else "(N, H, W, classes)"
        if len(shape) != 4:
            raise ValueError(f"SegmentationRegion needs an output of shape {layout}; got {shape}")
        k = shape[axis]
        if k is not None and not -k <= self.index < k:
            raise ValueError(
                f"class index {self.index} is out of range for {k} classes (output {shape} read "
                f"as {layout}; channels='first' or 'last' says otherwise)"
            )
        channel = y[:, self.index] if axis == 1 else y[..., self.index]
        if self.mask is None:
            return xp.sum(channel, axis=(1, 2))
        size = tuple(shape[2:4]) if axis == 1 else tuple(shape[1:3])
        if self.mask.shape[-2:] != size:
            raise ValueError(
                f"mask shape {self.mask.shape} does not match the output's {size} (output "
                f"{shape} read as {layout}); give the mask at the output's resolution"
            )
        return xp.sum(channel * xp.convert_to_tensor(self.mask), axis=(1, 2))

    def for_samples(self, part: slice) -> "Target":
        return self._cut("mask", part, self.mask is not None and self.mask.ndim == 3)

    def describe(self) -> str:
        region = "whole image" if self.mask is None else f"region of {int((self.mask > 0).sum())} pixels"
        return f"class {self.index} over the {region}{self._suffix()}"


def _to_numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        return t.detach().cpu().float().numpy()
    return np.asarray(t, dtype=np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes ``(K, 4)`` and ``(M, 4)``, ``(x1, y1, x2, y2)``: ``(K, M)``."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class Detection(Target):
    """The score of one detected box, for detectors that return one dict per image with
    ``boxes`` ``(K, 4)`` (x1, y1, x2, y2, in input pixels), ``labels`` ``(K,)`` and ``scores``
    ``(K,)``: torchvision's Faster R-CNN, RetinaNet, FCOS, SSD in eval mode.

    Which box, in each image: ``index=k``, the k-th detection of the model's list (torchvision
    sorts by score, so 0 is the most confident), one int or one per sample; or ``box=(x1, y1,
    x2, y2)`` with ``label=c``: the detection of class ``c`` that overlaps that box most, at an
    IoU of at least ``iou`` (an error names the best one found otherwise). The score explained is
    the detection's class score; ``regression=True`` (with ``box``) adds its IoU with ``box``, so
    that the map shows what places the box as well as what classifies it (the box-score target
    of pytorch-grad-cam's Faster R-CNN tutorial, for one box). For one map per box of an image,
    pass the image once per box: ``explain(model, np.repeat(img, 3, 0), target=Detection(index=[0, 1, 2]))``.
    ``keys``: the dict keys, for detectors that name them otherwise.
    """

    def __init__(
        self,
        index: int | Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        label: int | None = None,
        iou: float = 0.5,
        regression: bool = False,
        keys: tuple[str, str, str] = ("boxes", "labels", "scores"),
    ) -> None:
        super().__init__(None)
        if (index is None) == (box is None):
            raise ValueError("Detection needs exactly one of index=K (the K-th detection) or box=(x1, y1, x2, y2)")
        if box is not None:
            box = [float(v) for v in box]
            if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
                raise ValueError(f"box must be (x1, y1, x2, y2) with x2 > x1 and y2 > y1; got {box!r}")
            if label is None:
                raise ValueError("Detection(box=...) needs label=CLASS: the class of the detection to match")
        if regression and box is None:
            raise ValueError("regression=True needs box=(x1, y1, x2, y2): the IoU is taken with that box")
        if index is not None and not isinstance(index, (int, np.integer)):
            index = [int(i) for i in index]
        self.index, self.box, self.label = index, box, label
        self.iou, self.regression, self.keys = float(iou), bool(regression), tuple(keys)

    def _images(self, outputs: Sequence[Any], names: Sequence[str]) -> list[tuple[Any, Any, Any]]:
        """Per image, the (boxes, labels, scores) tensors, from outputs named ``i.boxes``..."""
        found: dict[int, dict[str, Any]] = {}
        for name, value in zip(names, outputs):
            head, _, key = str(name).partition(".")
            if head.isdigit() and key in self.keys:
                found.setdefault(int(head), {})[key] = value
        if not found or any(len(v) != 3 for v in found.values()) or sorted(found) != list(range(len(found))):
            raise ValueError(
                f"Detection reads one dict per image with keys {list(self.keys)} (torchvision's "
                f"detectors); the model's outputs are {list(names)[:8]}{'...' if len(names) > 8 else ''}. "
                "Give keys=(boxes, labels, scores) as this model names them, or use a callable target"
            )
        return [(found[i][self.keys[0]], found[i][self.keys[1]], found[i][self.keys[2]]) for i in sorted(found)]

    def samples(self, outputs: Sequence[Any], names: Sequence[str]) -> int | None:
        return len(self._images(outputs, names))

    def _pick(self, n: int, boxes: np.ndarray, labels: np.ndarray) -> int:
        k = len(boxes)
        if self.box is None:
            idx = self.index if isinstance(self.index, (int, np.integer)) else self.index[n]
            if not -k <= idx < k:
                raise ValueError(
                    f"image {n} has {k} detection(s); there is no detection #{idx} (lower the "
                    "detector's score threshold, or ask for an earlier one)"
                )
            return int(idx) % k
        same = np.flatnonzero(labels.astype(np.int64) == int(self.label))
        if same.size == 0:
            raise ValueError(f"image {n} has no detection of class {self.label} (labels: {sorted(set(labels.astype(int).tolist()))})")
        overlaps = box_iou(boxes[same], np.asarray(self.box))[:, 0]
        best = int(np.argmax(overlaps))
        if overlaps[best] < self.iou:
            raise ValueError(
                f"image {n}: no detection of class {self.label} overlaps box {self.box} at IoU >= "
                f"{self.iou} (the best: {overlaps[best]:.3f}, box {boxes[same[best]].round(1).tolist()}); "
                "lower iou= or give the box as the detector found it"
            )
        return int(same[best])

    def score(self, outputs: Sequence[Any], names: Sequence[str], xp: Any) -> Any:
        images = self._images(outputs, names)
        if isinstance(self.index, list) and len(self.index) != len(images):
            raise ValueError(f"{len(self.index)} detection indices given for a batch of {len(images)} images")
        scores = []
        for n, (boxes, labels, conf) in enumerate(images):
            j = self._pick(n, _to_numpy(boxes), _to_numpy(labels))
            s = conf[j]
            if self.regression:
                ref = self.box
                b = boxes[j]
                w = xp.maximum(xp.minimum(b[2], ref[2]) - xp.maximum(b[0], ref[0]), 0.0)
                h = xp.maximum(xp.minimum(b[3], ref[3]) - xp.maximum(b[1], ref[1]), 0.0)
                inter = w * h
                union = (b[2] - b[0]) * (b[3] - b[1]) + (ref[2] - ref[0]) * (ref[3] - ref[1]) - inter
                s = s + inter / union
            scores.append(s)
        return xp.stack(scores, axis=0)

    def for_sample(self, n: int, class_indices: np.ndarray | None) -> "Target":
        if not isinstance(self.index, list):
            return self
        pinned = copy.copy(self)
        pinned.index = self.index[n]
        return pinned

    def for_samples(self, part: slice) -> "Target":
        return self._cut("index", part, isinstance(self.index, list))

    def boxes(self, outputs: Sequence[Any], names: Sequence[str]) -> list[np.ndarray]:
        """The box explained in each image, ``(4,)`` (x1, y1, x2, y2) in input pixels."""
        picked = []
        for n, (boxes, labels, _) in enumerate(self._images(outputs, names)):
            b = _to_numpy(boxes)
            picked.append(b[self._pick(n, b, _to_numpy(labels))].copy())
        return picked

    def describe(self) -> str:
        if self.box is None:
            return f"score of detection #{self.index}" + (" (the most confident)" if self.index == 0 else "")
        what = f"score of the class-{self.label} detection best matching box {self.box}"
        return what + (" plus its IoU with that box" if self.regression else "")


class FunctionTarget(Target):
    """A user function ``fn(output) -> (N,)`` over the selected output tensor."""

    def __init__(self, fn: Callable[[Any], Any], output: int | str | None = None) -> None:
        super().__init__(output)
        self.fn = fn

    def score(self, outputs: Sequence[Any], names: Sequence[str], xp: Any) -> Any:
        return self.fn(self.select(outputs, names))

    def describe(self) -> str:
        return f"{getattr(self.fn, '__name__', 'function')}(output){self._suffix()}"


def as_target(target: Any, output: int | str | None = None) -> Target:
    """Normalise what users pass as ``target``: ``None`` (top class), an int or list of ints
    (class indices), a :class:`Target`, or a callable."""
    if isinstance(target, Target):
        if output is not None and target.output is None:
            target = copy.copy(target)  # the caller's object stays as it was
            target.output = output
        return target
    if target is None or (isinstance(target, (int, np.integer)) and not isinstance(target, bool)):
        return ClassScore(target, output=output)
    if isinstance(target, (list, tuple, np.ndarray)) and all(
        isinstance(i, (int, np.integer)) for i in np.asarray(target).ravel().tolist()
    ):
        return ClassScore(list(np.asarray(target).ravel().tolist()), output=output)
    if callable(target):
        return FunctionTarget(target, output=output)
    raise TypeError(
        f"target must be None, a class index, a list of indices, a camlens.targets.Target or a "
        f"callable; got {type(target).__name__}"
    )


_TEXT_TARGETS: Registry[type[Target]] = Registry("target")


def register_target(name: str, form: str = "") -> Callable[[type[Target]], type[Target]]:
    """Class decorator: ``--target NAME[:ARG]`` (and :func:`parse_target`) makes this target
    with ``cls.from_text(ARG)``. ``form`` shows the argument in help texts ("logit[:CLASS]")."""

    def add(cls: type[Target]) -> type[Target]:
        cls.text_form = form or name
        return _TEXT_TARGETS.add(name, cls)

    return add


def text_targets() -> list[str]:
    """How every registered target is written, for help texts: ``top``, ``CLASS`` and each
    registered form."""
    return ["top", "CLASS", *(cls.text_form for cls in _TEXT_TARGETS.values())]


def parse_target(text: str) -> Any:
    """``top`` (or empty): ``None``, each sample's top class; an integer: that class; else
    ``NAME:ARG`` of a registered target. Raises ValueError naming the forms."""
    kind, _, arg = str(text).partition(":")
    kind = kind.strip()
    if kind.lower() in ("top", ""):
        return None
    if kind.lstrip("-").isdigit() and not arg:
        return int(kind)
    found = _TEXT_TARGETS.find(kind)
    if found is not None:
        try:
            return found[1].from_text(arg.strip())
        except (TypeError, ValueError):
            pass
    raise ValueError(f"bad target {text!r}: use {', '.join(text_targets())}")


register_target("class", "class:CLASS")(ClassScore)
register_target("logit", "logit[:CLASS]")(Logit)
register_target("regression", "regression:INDEX")(RegressionScore)
register_target("box", "box:INDEX")(Detection)
