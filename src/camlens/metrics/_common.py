"""What every metric that reruns the model shares: reading the images, maps and target, and
scoring batches of modified images in one stated score space (the rules are in the
:mod:`camlens.metrics` docs)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .._args import batches, whole_number
from ..adapters.base import ModelAdapter
from ..adapters import adapt
from ..explanation import SPACE_WORDS, Explanation, few_values, is_probability
from ..targets import ClassScore, Logit, Target, as_target

__all__ = ["BATCH_SIZE", "SCORE_SPACES", "MetricResult", "Problem", "setup", "check_maps", "as_objects"]

SCORE_SPACES = ("probability", "logit", "raw")

#: modified images per model call by default: a convnet's activations of each image are held
#: while it runs (EfficientNet-Lite0 at 224 x 224: about 23 MB each at the peak), so 16 keep a
#: metric's run near 0.4 GB above the framework, 32 would take twice that for no speed gained
#: on a CPU
BATCH_SIZE = 16


def score_label(description: str) -> str:
    """A metric's score description that starts with its space's name: a probability's and a
    logit's already do; a raw target's value gets ``"raw model output: "`` in front."""
    first = description.split(" ", 1)[0]
    return description if first in ("probability", "logit") else f"{SPACE_WORDS['raw']}: {description}"


@dataclass
class MetricResult:
    """What every metric returns: one number per image and their mean.

    Attributes:
        metric: the metric's name.
        per_image: ``(N,)`` the metric for each image.
        higher_is_better: which way is better.
        score: the model score the metric read (empty for metrics that do not run the model).
    """

    metric: str
    per_image: np.ndarray
    higher_is_better: bool
    score: str = ""

    @property
    def value(self) -> float:
        """The mean over the images (NaN entries, e.g. constant maps, left out)."""
        finite = self.per_image[np.isfinite(self.per_image)]
        return float(finite.mean()) if finite.size else float("nan")

    def __float__(self) -> float:
        return self.value

    @property
    def space(self) -> str:
        """The score space the metric read: ``"probability"``, ``"logit"``, ``"raw"``, or ``""``
        for a metric that does not run the model (the pointing games)."""
        if not self.score:
            return ""
        first = self.score.split(" ", 1)[0]
        return first if first in ("probability", "logit") else "raw"

    def __repr__(self) -> str:
        """What was measured and the mean, not the arrays (``.per_image`` and the subclasses'
        fields hold them)."""
        way = "higher" if self.higher_is_better else "lower"
        n = len(self.per_image)
        lines = [
            f"{type(self).__name__} {self.metric}: mean {self.value:.4g} over {n} image"
            f"{'' if n == 1 else 's'} ({way} is better)",
            f"  per image: {few_values(self.per_image)}",
        ]
        if self.score:
            lines.append(f"  score:     {score_label(self.score)}")
        return "\n".join(lines)

    __str__ = __repr__


def check_steps(steps: Any, name: str = "steps") -> int:
    return whole_number(name, steps)


def check_batch_size(batch_size: Any) -> int:
    return whole_number("batch_size", batch_size)


def check_maps(maps: Any, shape: tuple[int, int, int] | None, what: str = "images") -> np.ndarray:
    """``(N, H, W)`` float64 maps; ``shape`` = the images' ``(N, H, W)`` when known."""
    m = np.asarray(maps.map if isinstance(maps, Explanation) else maps, dtype=np.float64)
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim == 2 and (shape is None or shape[0] == 1):
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), one map per image; got shape {m.shape}")
    if shape is not None and m.shape != tuple(shape):
        fix = ""
        if m.shape[0] == shape[0]:
            fix = (f" Resize them to the images first: camlens.viz.resize_bilinear(maps, "
                   f"({shape[1]}, {shape[2]})) (Explanation.maps already are).")
        raise ValueError(
            f"maps have shape {m.shape} but the {what} are {tuple(shape)} (N, H, W): give one map "
            f"per image, at the image's size.{fix}"
        )
    if not np.isfinite(m).all():
        raise ValueError(f"maps hold {int((~np.isfinite(m)).sum())} NaN or infinite values")
    return m


def _image_input(arrays: Sequence[np.ndarray], input_index: int | None) -> int:
    images = [i for i, a in enumerate(arrays) if a.ndim == 4]
    if input_index is not None:
        if input_index not in images:
            raise ValueError(
                f"input_index={input_index} is not an image input; the model's image inputs are "
                f"{images}"
            )
        return int(input_index)
    if len(images) != 1:
        raise ValueError(
            f"the model has {len(images)} image inputs ({images}); say which one the maps belong "
            "to with input_index=, or pass an Explanation"
        )
    return images[0]


@dataclass
class Problem:
    """A metric's inputs, read once: the model inputs, which of them the maps belong to, the
    maps, and how to score modified copies."""

    adapter: ModelAdapter
    arrays: list[np.ndarray]
    which: int
    maps: np.ndarray  # (N, H, W)
    target: Target
    space: str
    batch_size: int
    classes: np.ndarray | None  # (N,) for class targets
    known: np.ndarray | None  # (N,) whether classes[n] is known yet
    out_index: int = 0
    names: list[str] = field(default_factory=list)
    rule: str | None = None  # probability: "output", "softmax" or "sigmoid"
    batches: int = 0  # model calls so far

    @property
    def images(self) -> np.ndarray:
        return self.arrays[self.which]

    def describe(self) -> str:
        which = "" if self.target.output is None else f" of output {self.target.output!r}"
        if self.space == "raw":
            if isinstance(self.target, ClassScore) and self.target.index is None:
                return f"{'logit' if self.target.wants_logits else 'model output'} of the explained class{which}"
            return self.target.describe()
        if self.space == "logit":
            return f"logit of the explained class{which}"
        how = {"output": "the model's output, already a probability",
               "softmax": "softmax of the model's output",
               "sigmoid": "sigmoid of the model's output"}.get(self.rule or "", "not computed yet")
        return f"probability of the explained class{which} ({how})"

    # ------------------------------------------------------------------ scoring
    def run(self, inputs: list[np.ndarray], rows: np.ndarray, clean: np.ndarray | None = None) -> np.ndarray:
        """Scores of one model call on ``inputs`` (at most ``batch_size`` rows); row ``r`` is a
        copy of image ``rows[r]``. ``clean[r]`` marks rows holding the unmodified image, whose
        top class settles the class of an image not known yet."""
        rows = np.asarray(rows, dtype=np.int64)
        self.batches += 1
        if self.space == "probability":
            y = np.asarray(self.adapter.forward(inputs)[self.out_index], dtype=np.float64)
            if y.ndim != 2:
                raise ValueError(
                    f"score='probability' reads a class from an output of shape (batch, classes); "
                    f"the output has shape {y.shape}. Use score='raw' with a target."
                )
            self._settle_classes(y, rows, clean)
            p = self._probabilities(y)
            cls = self._classes_for(rows, y.shape[1])
            return p[np.arange(len(rows)), cls]
        if self.classes is None:  # a non-class target, raw
            return np.asarray(self.adapter.score(inputs, self.target), dtype=np.float64)
        pinned = copy.copy(self.target)
        pinned.index = [int(c) for c in self.classes[rows]]  # type: ignore[attr-defined]
        return np.asarray(self.adapter.score(inputs, pinned), dtype=np.float64)

    def _settle_classes(self, y: np.ndarray, rows: np.ndarray, clean: np.ndarray | None) -> None:
        assert self.classes is not None and self.known is not None
        if clean is None or self.known[rows].all():
            return
        for r in np.flatnonzero(clean):
            if not self.known[rows[r]]:
                self.classes[rows[r]] = int(np.argmax(y[r]))
                self.known[rows[r]] = True

    def _classes_for(self, rows: np.ndarray, k: int) -> np.ndarray:
        assert self.classes is not None and self.known is not None
        if not self.known[rows].all():  # a bug in the caller's order, not a user error
            raise RuntimeError("internal error: an image was scored before its unmodified copy")
        cls = self.classes[rows]
        bad = cls[(cls < -k) | (cls >= k)]
        if bad.size:
            raise ValueError(f"class index {int(bad[0])} is out of range: the output has {k} classes (0..{k - 1})")
        return cls % k

    def _probabilities(self, y: np.ndarray) -> np.ndarray:
        if self.rule is None:
            self.rule = "output" if is_probability(y) else "sigmoid" if y.shape[1] == 1 else "softmax"
        if self.rule == "sigmoid":
            return 1.0 / (1.0 + np.exp(-y))
        if self.rule == "softmax":
            e = np.exp(y - y.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return y

    def resolve_classes(self) -> None:
        """For the logit and raw spaces: find the top class of every image not known yet, with one
        forward pass over the unmodified images (the probability space does it on the way)."""
        if self.space == "probability" or self.known is None or self.known.all():
            return
        todo = np.flatnonzero(~self.known)
        for part in batches(len(todo), self.batch_size):
            rows = todo[part]
            self.batches += 1
            outs = self.adapter.forward([a[rows] for a in self.arrays])
            self.classes[rows] = ClassScore(output=self.target.output).class_indices(outs, self.names)  # type: ignore[index]
        self.known[:] = True


def setup(
    model: Any,
    images: Any,
    maps: Any,
    target: Any,
    *,
    score: str,
    batch_size: int,
    output: int | str | None = None,
    site: int = 0,
    input_index: int | None = None,
) -> Problem:
    """Read a metric's arguments: ``images`` is the model input(s) or an Explanation (then its
    inputs, its maps at ``site`` unless ``maps`` is given, and its classes are used)."""
    if score not in SCORE_SPACES:
        raise ValueError(f"score must be one of {', '.join(SCORE_SPACES)}; got {score!r}")
    batch_size = check_batch_size(batch_size)
    adapter = adapt(model)
    explained: np.ndarray | None = None
    if isinstance(images, Explanation):
        exp = images
        if not exp.inputs:
            raise ValueError("this Explanation holds no inputs; pass the images and maps instead")
        if not -len(exp.maps) <= site < len(exp.maps):
            raise ValueError(f"site={site} is out of range: the explanation has {len(exp.maps)} site(s)")
        arrays = adapter.prepare(exp.inputs if len(exp.inputs) > 1 else exp.inputs[0])
        which = exp.sites[site].input_index
        if maps is None:
            maps = exp.maps[site]
        explained = exp.class_indices
        if target is None and explained is None:
            if exp.target_spec is None:
                raise ValueError(
                    f"the explanation is of a non-class target ({exp.target}) and does not hold "
                    "it; pass the same target= again, with score='raw'"
                )
            if score != "raw":
                raise ValueError(
                    f"the explanation is of a non-class target ({exp.target}), which has no "
                    f"class probability or logit; use score='raw' (got score={score!r})"
                )
            target = exp.target_spec
    else:
        if maps is None:
            raise ValueError("give the maps: metric(model, images, maps), or pass an Explanation")
        arrays = adapter.prepare(images)
        which = _image_input(arrays, input_index)
    m = check_maps(maps, tuple(arrays[which].shape[:3]))
    tgt = as_target(target, output)
    n = arrays[0].shape[0]
    graph = adapter.graph()
    out_index = tgt.output_indices(graph.output_names)[0]
    classes = known = None
    if isinstance(tgt, ClassScore):
        if tgt.index is None:
            classes = np.zeros(n, np.int64) if explained is None else np.asarray(explained, np.int64).copy()
            known = np.full(n, explained is not None)
        else:
            idx = np.atleast_1d(np.asarray(tgt.index, dtype=np.int64))
            if idx.size not in (1, n):
                raise ValueError(f"{idx.size} class indices given for {n} images")
            classes = np.broadcast_to(idx, (n,)).copy()
            known = np.ones(n, bool)
        if score == "logit" and not isinstance(tgt, Logit):
            tgt = Logit(output=tgt.output)
    elif score != "raw":
        raise ValueError(
            f"score={score!r} reads a class, but the target is {tgt.describe()!r}; use score='raw' "
            "to measure that target's own value"
        )
    prob = Problem(adapter, arrays, which, m, tgt, score, batch_size, classes, known, out_index,
                   list(graph.output_names))
    return prob


def as_objects(objects: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """Boolean ``(N, H, W)`` object masks from masks or pixel boxes.

    Boxes are ``(x0, y0, x1, y1)`` in pixels, covering columns ``x0 .. x1 - 1`` and rows
    ``y0 .. y1 - 1`` (as ``mask[y0:y1, x0:x1]``): one box per image ``(N, 4)``, or a list with,
    per image, one box ``(4,)`` or several ``(K, 4)`` (their union is the object).
    """
    n, h, w = shape
    try:
        a = np.asarray(objects)
    except ValueError:  # ragged: a different number of boxes per image
        a = None
    if a is not None and a.dtype != object and a.shape == (n, h, w):
        return np.stack([_as_mask(m, i) for i, m in enumerate(a)])
    if a is not None and a.dtype != object and a.ndim in (2, 3) and a.shape[-1] == 4:
        per_image: list[Any] = list(a)
    else:
        per_image = list(objects)
    if len(per_image) != n:
        raise ValueError(f"{len(per_image)} boxes or masks given for {n} maps; give one entry per image")
    out = np.zeros((n, h, w), bool)
    for i, item in enumerate(per_image):
        a = np.asarray(item)
        if a.shape == (h, w):
            out[i] = _as_mask(a, i)
            continue
        boxes = a.reshape(-1, 4) if a.ndim in (1, 2) and a.shape[-1] == 4 else None
        if boxes is None or boxes.shape[0] == 0:
            raise ValueError(
                f"object {i} has shape {a.shape}: give a box (x0, y0, x1, y1), boxes (K, 4) or an "
                f"({h}, {w}) mask"
            )
        for box in boxes:
            x0, y0, x1, y1 = _box(box, i, h, w)
            out[i, y0:y1, x0:x1] = True
    return out


def _as_mask(a: np.ndarray, i: int) -> np.ndarray:
    if a.dtype == bool:
        return a
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"the object mask of image {i} must be boolean or 0/1")
    return a.astype(bool)


def _box(box: np.ndarray, i: int, h: int, w: int) -> tuple[int, int, int, int]:
    vals = [float(v) for v in box]
    if any(not math.isfinite(v) or v != int(v) for v in vals):
        raise ValueError(f"box {tuple(box.tolist())} of image {i}: give whole pixel coordinates (x0, y0, x1, y1)")
    x0, y0, x1, y1 = (int(v) for v in vals)
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(
            f"box (x0, y0, x1, y1) = {(x0, y0, x1, y1)} of image {i} is empty or outside the "
            f"{w}x{h} image: need 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} (x1, y1 exclusive)"
        )
    return x0, y0, x1, y1


def stable_ranks(m: np.ndarray, descending: bool = True) -> np.ndarray:
    """Each pixel's place ``(H, W)`` in the order pixels are removed or inserted: by the map's
    value (highest first when ``descending``), ties in row-major order (a stable sort)."""
    flat = m.ravel()
    order = np.argsort(-flat if descending else flat, kind="stable")
    ranks = np.empty(flat.size, np.int64)
    ranks[order] = np.arange(flat.size)
    return ranks.reshape(m.shape)
