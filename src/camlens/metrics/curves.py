"""Deletion and insertion curves (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for
Explanation of Black-box Models", BMVC 2018).

Protocol, for an image of ``H x W`` pixels and ``steps`` steps:

- the pixels are ranked by the map, highest first, with a stable sort (``np.argsort(-map,
  kind="stable")``): equal values keep row-major order;
- step ``s`` (``s = 0 .. steps``) has the first ``min(s * k, H * W)`` ranked pixels changed, with
  ``k = ceil(H * W / steps)`` pixels per step (all channels of a pixel together), so step
  ``steps`` has every pixel changed;
- **deletion** sets the changed pixels to ``baseline`` (0 by default, in the model's input
  units); **insertion** starts from the image blurred by a Gaussian (RISE's reference code: 11
  taps, sigma 5; see :func:`gaussian_blur`) and copies the changed pixels back from the image;
- the curve is the score of the explained class (by default its probability, see
  :mod:`camlens.metrics`) at each step, on the axis ``x_s = s / steps`` in [0, 1], and
  the AUC is the trapezoid rule on that axis:
  ``AUC = (1 / steps) * (sum_s c_s - (c_0 + c_steps) / 2)``.

A lower deletion AUC (the score falls fast once the top pixels go) and a higher insertion AUC
are better. Cost: the ``steps + 1`` images of one curve are scored ``batch_size`` at a time, so
one image takes ``ceil((steps + 1) / batch_size)`` model calls; its unmodified image is among
them and gives its top class. (With ``score="logit"`` or ``"raw"`` and no class known, one more
pass over the unmodified images finds the top classes first.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..access import pinned
from ._common import BATCH_SIZE, MetricResult, check_steps, setup, stable_ranks

__all__ = ["CurveResult", "deletion", "insertion", "auc", "gaussian_blur"]


@dataclass(repr=False)  # MetricResult's summary, not the arrays
class CurveResult(MetricResult):
    """A deletion or insertion curve per image.

    Attributes (beyond :class:`~camlens.metrics.MetricResult`'s):
        x: ``(steps + 1,)`` the axis, ``s / steps``.
        curve: ``(N, steps + 1)`` the score at each step.
        auc: ``(N,)`` the trapezoid area under each curve (``per_image``).
        fraction: ``(steps + 1,)`` the fraction of pixels changed at each step,
            ``min(s * k, H * W) / (H * W)``.
        batches: how many model calls the curves took.
    """

    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    curve: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    fraction: np.ndarray = field(default_factory=lambda: np.zeros(0))
    batches: int = 0

    @property
    def auc(self) -> np.ndarray:
        return self.per_image


def auc(curve: Any, x: Any = None) -> np.ndarray:
    """Trapezoid area under ``curve`` (``(T,)`` or ``(N, T)``) over ``x`` (default: ``T`` points
    evenly spaced on [0, 1]): ``sum_t (x_{t+1} - x_t) (c_t + c_{t+1}) / 2``."""
    c = np.asarray(curve, dtype=np.float64)
    if c.ndim not in (1, 2) or c.shape[-1] < 2:
        raise ValueError(f"a curve needs at least 2 points, as (T,) or (N, T); got shape {c.shape}")
    t = c.shape[-1]
    xs = np.linspace(0.0, 1.0, t) if x is None else np.asarray(x, dtype=np.float64)
    if xs.shape != (t,):
        raise ValueError(f"x has shape {xs.shape}; the curve has {t} points")
    return np.sum(np.diff(xs) * (c[..., 1:] + c[..., :-1]) / 2.0, axis=-1)


def gaussian_blur(images: Any, sigma: float = 5.0, size: int = 11) -> np.ndarray:
    """Gaussian blur of ``(H, W)``, ``(H, W, C)`` or ``(N, H, W, C)`` images, as two 1-D passes
    (rows, then columns) of ``size`` taps ``g_i = exp(-i^2 / (2 sigma^2))``, ``|i| <= size // 2``,
    normalised to sum 1. Borders are mirrored without repeating the edge pixel (``np.pad``
    ``"reflect"``, ``scipy.ndimage`` ``"mirror"``), so a constant image stays constant; RISE's
    reference code pads with zeros instead, which darkens the border."""
    if not (isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size >= 1 and size % 2 == 1):
        raise ValueError(f"blur size must be an odd number of pixels, at least 1; got {size!r}")
    if not sigma > 0:
        raise ValueError(f"blur sigma must be positive; got {sigma!r}")
    a = np.asarray(images, dtype=np.float64)
    shape = a.shape
    if a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"images must be (H, W), (H, W, C) or (N, H, W, C); got shape {shape}")
    r = int(size) // 2
    taps = np.exp(-(np.arange(-r, r + 1) ** 2) / (2.0 * float(sigma) ** 2))
    taps /= taps.sum()
    for axis in (1, 2):
        n = a.shape[axis]
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        padded = np.pad(a, pad, mode="reflect") if n > 1 else np.pad(a, pad, mode="edge")
        out = np.zeros_like(a)
        for i, t in enumerate(taps):
            out += t * np.take(padded, np.arange(i, i + n), axis=axis)
        a = out
    return a.reshape(shape)


def _fill(value: Any, like: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float32)
    try:
        return np.broadcast_to(v, like.shape)
    except ValueError:
        raise ValueError(
            f"{name} of shape {v.shape} does not fit images of shape {like.shape} (H, W, C): give "
            "a number, one value per channel (C,), or a whole image"
        ) from None


def _curves(kind: str, model: Any, images: Any, maps: Any, target: Any, *, steps: int,
            batch_size: int, score: str, output: Any, site: int, input_index: Any,
            start: Any) -> CurveResult:
    steps = check_steps(steps)
    prob = setup(model, images, maps, target, score=score, batch_size=batch_size, output=output,
                 site=site, input_index=input_index)
    prob.resolve_classes()
    x = prob.images
    n_img, h, w = x.shape[:3]
    hw = h * w
    per_step = math.ceil(hw / steps)
    counts = np.minimum(np.arange(steps + 1) * per_step, hw)
    # the unmodified image is scored in the first batch: its top class pins the others'
    order = np.arange(steps + 1) if kind == "deletion" else np.arange(steps, -1, -1)
    clean_step = 0 if kind == "deletion" else steps
    curve = np.empty((n_img, steps + 1))
    bs = prob.batch_size
    for n in range(n_img):
        img = x[n]
        ranks = stable_ranks(prob.maps[n])
        other = start(img)  # what changed pixels become (deletion) or start as (insertion)
        for i in range(0, steps + 1, bs):
            idx = order[i : i + bs]
            changed = (ranks[None] < counts[idx][:, None, None])[..., None]
            batch = np.where(changed, other, img) if kind == "deletion" else np.where(changed, img, other)
            curve[n, idx] = prob.run(pinned(prob.arrays, n, prob.which, batch),
                                     np.full(len(idx), n), clean=idx == clean_step)
    xs = np.arange(steps + 1) / steps
    return CurveResult(kind, auc(curve, xs), kind == "insertion", prob.describe(), x=xs,
                       curve=curve, fraction=counts / hw, batches=prob.batches)


def deletion(
    model: Any,
    images: Any,
    maps: Any = None,
    target: Any = None,
    *,
    steps: int = 100,
    baseline: Any = 0.0,
    batch_size: int = BATCH_SIZE,
    score: str = "probability",
    output: int | str | None = None,
    site: int = 0,
    input_index: int | None = None,
) -> CurveResult:
    """Deletion curve and AUC (RISE, Petsiuk et al. 2018): remove the most important pixels
    first, ``ceil(H * W / steps)`` per step, setting them to ``baseline``; lower AUC is better.

    Args:
        model: a Keras 3 model or ``torch.nn.Module`` (or an adapter from
            ``camlens.explain.adapt``). It is not changed.
        images: the model input(s), as for :func:`camlens.explain`, or an
            :class:`~camlens.explanation.Explanation` (its inputs, maps and classes are used).
        maps: ``(N, H, W)`` maps at the image size (not needed with an Explanation).
        target: the class (an index, one per image, a ``ClassScore``/``Logit``) or, with
            ``score="raw"``, any target; ``None``: the explained class, else the top class.
        steps: number of steps; the curve has ``steps + 1`` points.
        baseline: what removed pixels become, in the model's input units: a number, one value
            per channel, or an ``(H, W, C)`` image (0 is black for 0..1 or 0..255 inputs, the
            mean colour for mean-normalised ones).
        batch_size: modified images per model call.
        score: ``"probability"`` (default), ``"logit"`` or ``"raw"``; see
            :mod:`camlens.metrics`.
        output: for models with several outputs, which one.
        site: with an Explanation of several call sites, which site's maps.
        input_index: for several image inputs (without an Explanation), which one the maps
            belong to.

    Example::

        exp = camlens.explain(model, images, "gradcam")
        res = camlens.metrics.deletion(model, exp, steps=50)
        res.auc, res.value, res.curve          # (N,), mean, (N, 51)
    """

    def start(img: np.ndarray) -> np.ndarray:
        return _fill(baseline, img, "baseline")

    return _curves("deletion", model, images, maps, target, steps=steps, batch_size=batch_size,
                   score=score, output=output, site=site, input_index=input_index, start=start)


def insertion(
    model: Any,
    images: Any,
    maps: Any = None,
    target: Any = None,
    *,
    steps: int = 100,
    blur_sigma: float = 5.0,
    blur_size: int = 11,
    baseline: Any = None,
    batch_size: int = BATCH_SIZE,
    score: str = "probability",
    output: int | str | None = None,
    site: int = 0,
    input_index: int | None = None,
) -> CurveResult:
    """Insertion curve and AUC (RISE, Petsiuk et al. 2018): start from the image blurred by a
    Gaussian (``blur_sigma``, ``blur_size`` taps; see :func:`gaussian_blur`) and put the most
    important pixels back first, ``ceil(H * W / steps)`` per step; higher AUC is better.

    ``baseline``: ``None`` (default) starts from the blurred image, as RISE does; a number, one
    value per channel or an ``(H, W, C)`` image starts from that instead. The other arguments
    are those of :func:`deletion`.
    """

    def start(img: np.ndarray) -> np.ndarray:
        if baseline is not None:
            return _fill(baseline, img, "baseline")
        return gaussian_blur(img, blur_sigma, blur_size).astype(np.float32)

    if baseline is None:
        gaussian_blur(np.zeros((1, 1)), blur_sigma, blur_size)  # bad settings fail before the model runs
    return _curves("insertion", model, images, maps, target, steps=steps, batch_size=batch_size,
                   score=score, output=output, site=site, input_index=input_index, start=start)
