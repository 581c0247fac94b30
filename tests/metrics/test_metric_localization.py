"""Pointing game (with tolerance) and energy-based pointing game on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest

from camlens import metrics


def _peak(h, w, r, c):
    m = np.zeros((h, w))
    m[r, c] = 1.0
    return m


def test_pointing_game_tolerance_is_euclidean_pixels():
    maps = np.stack([_peak(20, 20, 10, 0), _peak(20, 20, 0, 0), _peak(20, 20, 5, 17)])
    boxes = [(15, 0, 20, 20), (4, 3, 5, 4), (15, 0, 20, 20)]  # (x0, y0, x1, y1), x1/y1 exclusive
    res = metrics.pointing_game(maps, boxes, tolerance=15)
    # distances: 15 columns to x=15; 5 = sqrt(3^2 + 4^2) to pixel (3, 4); 0 inside the box
    np.testing.assert_allclose(res.distance, [15.0, 5.0, 0.0])
    np.testing.assert_array_equal(res.per_image, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(res.points, [[10, 0], [0, 0], [5, 17]])
    strict = metrics.pointing_game(maps, boxes, tolerance=4.99)
    np.testing.assert_array_equal(strict.hits, [False, False, True])
    assert strict.value == pytest.approx(1 / 3)
    assert metrics.pointing_game(maps, boxes, tolerance=0).value == pytest.approx(1 / 3)


def test_ties_take_the_first_maximum_and_masks_and_box_lists_work():
    flat = np.ones((1, 6, 6))  # every pixel is the maximum: (0, 0) counts
    mask = np.zeros((1, 6, 6), bool)
    mask[0, 5, 5] = True
    res = metrics.pointing_game(flat, mask, tolerance=7.1)  # hypot(5, 5) = 7.07
    assert res.points.tolist() == [[0, 0]] and res.distance[0] == pytest.approx(np.hypot(5, 5))
    assert res.hits.tolist() == [True]
    # two boxes for one image: the union counts
    two = metrics.pointing_game(_peak(6, 6, 5, 0)[None], [[(4, 4, 6, 6), (0, 5, 1, 6)]], tolerance=0)
    assert two.hits.tolist() == [True]


def test_energy_pointing_game_is_the_share_inside():
    maps = np.array([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    res = metrics.energy_pointing_game(maps, [(0, 0, 2, 1), (0, 0, 1, 1)])  # top row; one pixel
    np.testing.assert_allclose(res.per_image, [3 / 10, 0.0])  # an empty map has no energy: 0
    assert res.value == pytest.approx(0.15)
    masks = np.array([[[False, True], [False, True]], [[True, True], [True, True]]])
    np.testing.assert_allclose(metrics.energy_pointing_game(maps, masks).per_image, [6 / 10, 0.0])


def test_localization_errors():
    m = np.ones((1, 10, 10))
    with pytest.raises(ValueError, match="tolerance must be 0 or more pixels; got -1"):
        metrics.pointing_game(m, [(0, 0, 2, 2)], tolerance=-1)
    with pytest.raises(ValueError, match=r"\(0, 0, 11, 2\) of image 0 is empty or outside the 10x10 image"):
        metrics.pointing_game(m, [(0, 0, 11, 2)])
    with pytest.raises(ValueError, match="empty or outside"):
        metrics.pointing_game(m, [(3, 3, 3, 5)])
    with pytest.raises(ValueError, match="2 boxes or masks given for 1 maps"):
        metrics.pointing_game(m, [(0, 0, 2, 2), (0, 0, 1, 1)])
    with pytest.raises(ValueError, match="whole pixel"):
        metrics.pointing_game(m, [(0.5, 0, 2, 2)])
    with pytest.raises(ValueError, match="the object of image 0 is empty"):
        metrics.pointing_game(m, np.zeros((1, 10, 10), bool))
    with pytest.raises(ValueError, match="non-negative"):
        metrics.energy_pointing_game(-m, [(0, 0, 2, 2)])
