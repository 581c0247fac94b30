"""Average Drop % and Increase in Confidence % (Grad-CAM++ paper) on hand numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from camlens import metrics
from metric_toys import IMAGE, counting, mean_model, sigmoid

# image 1: [[4, 3], [2, 1]], map [[1, 0], [0.5, 0]] -> E = [[4, 0], [1, 0]], mean 1.25
# image 2: all -1, map 0.5 everywhere -> E all -0.5
X = np.concatenate([IMAGE, -np.ones_like(IMAGE)])
MAPS = np.array([[[1.0, 0.0], [0.5, 0.0]], [[0.5, 0.5], [0.5, 0.5]]])


def test_average_drop_and_increase_by_hand():
    # class 0 for both: Y = sigmoid(2 m), m the mean; O the same on E
    y = sigmoid([5.0, -2.0])
    o = sigmoid([2.5, -1.0])
    drop = metrics.average_drop(mean_model(), X, MAPS, target=0)
    np.testing.assert_allclose(drop.full, y, rtol=1e-6)
    np.testing.assert_allclose(drop.masked, o, rtol=1e-6)
    # image 1 drops by (Y - O) / Y; image 2 rises (counts 0 in the drop, 1 in the increase)
    np.testing.assert_allclose(drop.per_image, [100 * (y[0] - o[0]) / y[0], 0.0], rtol=1e-6)
    assert drop.value == pytest.approx(50 * (y[0] - o[0]) / y[0], rel=1e-6)
    assert drop.value == pytest.approx(3.48157, abs=1e-5)  # 50 * (0.993307 - 0.924142) / 0.993307
    assert not drop.higher_is_better and "probability" in drop.score
    inc = metrics.increase_in_confidence(mean_model(softmax=True), X, MAPS, target=0)
    np.testing.assert_array_equal(inc.per_image, [0.0, 100.0])
    assert inc.value == 50.0 and inc.higher_is_better


def test_top_class_and_baseline():
    # top classes: 0 for image 1, 1 for image 2 (p_1 = sigmoid(-2 m)); baseline 1 fills the rest:
    # E = map * x + (1 - map) * 1 -> image 1 [[4, 1], [1.5, 1]] mean 1.875, image 2 all 0
    res = metrics.average_drop(mean_model(), X, MAPS, baseline=1.0)
    np.testing.assert_allclose(res.full, sigmoid([5.0, 2.0]), rtol=1e-6)
    np.testing.assert_allclose(res.masked, sigmoid([3.75, 0.0]), rtol=1e-6)


def test_two_model_calls_per_batch():
    adapter = counting(mean_model())
    x = np.concatenate([X] * 3)  # 6 images
    metrics.average_drop(adapter, x, np.concatenate([MAPS] * 3), batch_size=4)
    assert len(adapter.calls) == 2 * math.ceil(6 / 4)


def test_logit_space_drop_is_refused_when_negative():
    with pytest.raises(ValueError, match="negative.*score='probability'"):
        metrics.average_drop(mean_model(), X, MAPS, target=0, score="logit")
    # increase in confidence needs no division
    inc = metrics.increase_in_confidence(mean_model(), X, MAPS, target=0, score="logit")
    np.testing.assert_array_equal(inc.per_image, [0.0, 100.0])


def test_maps_must_lie_in_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\].*normalise"):
        metrics.average_drop(mean_model(), X, MAPS * 2)
