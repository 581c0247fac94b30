"""Localization metrics for maps of images with an annotated object (a box or a mask); they
read only the maps, not the model.

- Pointing game (Zhang, Bargal, Lin, Brandt, Shen & Sclaroff, "Top-down Neural Attention by
  Excitation Backprop", IJCV 2018): a hit when the map's maximum lies on the object or within
  ``tolerance`` pixels of it (15 in the paper); accuracy = hits / images.
- Energy-based pointing game (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for
  Convolutional Neural Networks", CVPR-W 2020): the share of the map's energy inside the object,
  ``sum_{i in object} L_i / sum_i L_i``.

Objects: ``(N, H, W)`` boolean masks, or pixel boxes ``(x0, y0, x1, y1)`` covering
``mask[y0:y1, x0:x1]`` (``x1``, ``y1`` exclusive), one per image ``(N, 4)`` or a list with one
box or ``(K, 4)`` boxes per image (several boxes of the class: their union).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._common import MetricResult, as_objects, check_maps

__all__ = ["PointingResult", "pointing_game", "energy_pointing_game"]


@dataclass(repr=False)  # MetricResult's summary, not the arrays
class PointingResult(MetricResult):
    """Pointing game per image: ``per_image`` 1.0 for a hit, 0.0 for a miss; ``value`` the
    accuracy. ``points`` ``(N, 2)`` the maximum's ``(row, column)``, ``distance`` ``(N,)`` its
    Euclidean distance in pixels to the nearest object pixel (0 on the object)."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    distance: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tolerance: float = 15.0

    @property
    def hits(self) -> np.ndarray:
        return self.per_image > 0


def _maps_and_objects(maps: Any, objects: Any, site: int) -> tuple[np.ndarray, np.ndarray]:
    from ..explanation import Explanation

    if isinstance(maps, Explanation):
        if not -len(maps.maps) <= site < len(maps.maps):
            raise ValueError(f"site={site} is out of range: the explanation has {len(maps.maps)} site(s)")
        maps = maps.maps[site]
    m = check_maps(maps, None)
    obj = as_objects(objects, m.shape)  # type: ignore[arg-type]
    empty = np.flatnonzero(~obj.reshape(len(obj), -1).any(axis=1))
    if empty.size:
        raise ValueError(f"the object of image {int(empty[0])} is empty; every image needs an object")
    return m, obj


def pointing_game(maps: Any, objects: Any, *, tolerance: float = 15, site: int = 0) -> PointingResult:
    """Pointing game (Zhang et al. 2018): is each map's maximum on the object, or within
    ``tolerance`` pixels of it (Euclidean distance to the nearest object pixel)?

    Args:
        maps: ``(N, H, W)`` maps (or an Explanation, whose ``maps[site]`` are used).
        objects: masks or boxes, see :mod:`camlens.metrics.localization`.
        tolerance: pixels; 15 as in the paper, 0 for the maximum to lie on the object itself.

    When several pixels share the maximum, the first in row-major order counts (``np.argmax``).

    Example::

        camlens.metrics.pointing_game(exp, [(40, 30, 120, 90)]).value   # accuracy
    """
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be 0 or more pixels; got {tolerance!r}")
    m, obj = _maps_and_objects(maps, objects, site)
    n, h, w = m.shape
    flat = m.reshape(n, -1).argmax(axis=1)
    points = np.stack([flat // w, flat % w], axis=1)
    distance = np.empty(n)
    for i in range(n):
        ys, xs = np.nonzero(obj[i])
        distance[i] = np.sqrt(((ys - points[i, 0]) ** 2 + (xs - points[i, 1]) ** 2).min())
    hits = (distance <= tolerance).astype(np.float64)
    return PointingResult("pointing_game", hits, True, "", points=points, distance=distance,
                          tolerance=float(tolerance))


def energy_pointing_game(maps: Any, objects: Any, *, site: int = 0) -> MetricResult:
    """Energy-based pointing game (Score-CAM paper, Wang et al. 2020): for each image the
    share of the map's energy on the object, ``sum_{i in object} L_i / sum_i L_i``, in [0, 1];
    ``value`` is the mean. Maps must be non-negative (camlens maps lie in [0, 1]); an all-zero
    map has no energy and scores 0. Arguments as for :func:`pointing_game`."""
    m, obj = _maps_and_objects(maps, objects, site)
    if m.min() < 0:
        raise ValueError(
            f"maps must be non-negative for an energy share (minimum {m.min():.4g}); take "
            "np.abs(maps) or normalise them to [0, 1]"
        )
    total = m.reshape(len(m), -1).sum(axis=1)
    inside = (m * obj).reshape(len(m), -1).sum(axis=1)
    share = np.divide(inside, total, out=np.zeros_like(inside), where=total > 0)
    return MetricResult("energy_pointing_game", share, True, "")
