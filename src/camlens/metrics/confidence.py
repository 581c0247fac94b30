"""Average Drop % and Increase in Confidence % (Chattopadhay, Sarkar, Howlader &
Balasubramanian, "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep
Convolutional Networks", WACV 2018, section 5.1).

The explanation map of image ``i`` keeps the image where the map is high:
``E_i = L_i * x_i`` (the map, in [0, 1], times the image, pixel by pixel; with a ``baseline``
``b`` it is ``L_i * x_i + (1 - L_i) * b``). With ``Y_i`` the score of the class on the image
and ``O_i`` on ``E_i``:

- Average Drop % ``= 100 / N * sum_i max(0, Y_i - O_i) / Y_i`` (lower is better);
- Increase in Confidence % ``= 100 / N * sum_i 1[Y_i < O_i]`` (higher is better).

Both are relative to the score, so the score space matters: the paper reads the class's
probability, the default here (``score="probability"``); the logit or a raw score can be
negative, which makes the relative drop meaningless, and is refused. Cost: two model calls per
``batch_size`` images (the images, then their explanation maps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._common import BATCH_SIZE, MetricResult, Problem, setup
from .curves import _fill

__all__ = ["ConfidenceResult", "average_drop", "increase_in_confidence"]


@dataclass(repr=False)  # MetricResult's summary, not the arrays
class ConfidenceResult(MetricResult):
    """Average Drop % or Increase in Confidence %.

    Attributes (beyond :class:`~camlens.metrics.MetricResult`'s): ``full`` ``(N,)`` the scores
    ``Y_i`` on the images and ``masked`` ``(N,)`` the scores ``O_i`` on the explanation maps.
    ``per_image`` is ``100 * max(0, Y_i - O_i) / Y_i`` (Average Drop) or ``100 * 1[Y_i < O_i]``
    (Increase in Confidence); ``value`` their mean, the paper's number.
    """

    full: np.ndarray = field(default_factory=lambda: np.zeros(0))
    masked: np.ndarray = field(default_factory=lambda: np.zeros(0))


def confidence_scores(prob: Problem, baseline: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(Y, O)``: the scores on the images and on ``map * image + (1 - map) * baseline``."""
    m = prob.maps
    if m.min() < 0 or m.max() > 1:
        raise ValueError(
            f"maps must lie in [0, 1] to scale the image (got {m.min():.4g} to {m.max():.4g}); "
            "normalise them, e.g. camlens.viz.normalize(maps) (Explanation.maps already are)"
        )
    prob.resolve_classes()
    x = prob.images
    n = x.shape[0]
    full, masked = np.empty(n), np.empty(n)
    bs = prob.batch_size
    for s in range(0, n, bs):
        rows = np.arange(s, min(n, s + bs))
        inputs = [a[rows] for a in prob.arrays]
        full[rows] = prob.run(inputs, rows, clean=np.ones(len(rows), bool))
        keep = m[rows][..., None].astype(np.float32)
        inputs[prob.which] = keep * x[rows] + (1.0 - keep) * _fill(baseline, x[0], "baseline")
        masked[rows] = prob.run(inputs, rows)
    return full, masked


def _result(metric: str, full: np.ndarray, masked: np.ndarray, score: str, space: str) -> ConfidenceResult:
    if metric == "increase_in_confidence":
        return ConfidenceResult(metric, 100.0 * (full < masked), True, score, full=full, masked=masked)
    if (full < 0).any():
        i = int(np.flatnonzero(full < 0)[0])
        raise ValueError(
            f"Average Drop divides by the score, which is {full[i]:.4g} (negative) for image {i} "
            f"with score={space!r}; use score='probability'"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.where(full > 0, np.maximum(0.0, full - masked) / full, 0.0)
    return ConfidenceResult(metric, 100.0 * drop, False, score, full=full, masked=masked)


def _confidence(metric: str, model: Any, images: Any, maps: Any, target: Any, **kw: Any) -> ConfidenceResult:
    baseline = kw.pop("baseline")
    prob = setup(model, images, maps, target, **kw)
    full, masked = confidence_scores(prob, baseline)
    return _result(metric, full, masked, prob.describe(), prob.space)


def average_drop(
    model: Any,
    images: Any,
    maps: Any = None,
    target: Any = None,
    *,
    baseline: Any = 0.0,
    batch_size: int = BATCH_SIZE,
    score: str = "probability",
    output: int | str | None = None,
    site: int = 0,
    input_index: int | None = None,
) -> ConfidenceResult:
    """Average Drop % (Grad-CAM++ paper): ``100 / N * sum_i max(0, Y_i - O_i) / Y_i``, where
    ``O_i`` is the score on ``map * image`` (see :mod:`camlens.metrics.confidence`); lower is
    better. ``maps`` must lie in [0, 1]; ``baseline`` is what a zero of the map leaves (0 by
    default, in the model's input units). An image whose score ``Y_i`` is 0 counts as no drop.
    The other arguments are those of :func:`camlens.metrics.deletion`."""
    return _confidence("average_drop", model, images, maps, target, baseline=baseline,
                       batch_size=batch_size, score=score, output=output, site=site,
                       input_index=input_index)


def increase_in_confidence(
    model: Any,
    images: Any,
    maps: Any = None,
    target: Any = None,
    *,
    baseline: Any = 0.0,
    batch_size: int = BATCH_SIZE,
    score: str = "probability",
    output: int | str | None = None,
    site: int = 0,
    input_index: int | None = None,
) -> ConfidenceResult:
    """Increase in Confidence % (Grad-CAM++ paper): ``100 / N * sum_i 1[Y_i < O_i]``, the share
    of images whose score rises when only the explained region is kept; higher is better.
    Arguments as for :func:`average_drop`."""
    return _confidence("increase_in_confidence", model, images, maps, target, baseline=baseline,
                       batch_size=batch_size, score=score, output=output, site=site,
                       input_index=input_index)
