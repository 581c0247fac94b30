"""``Explanation.fused``: the call sites of each input fused into one map per image."""

from __future__ import annotations

import numpy as np
import pytest

import camlens
from camlens.explanation import Explanation, Site, fuse_maps

A = np.array([[[0.0, 2.0]]])  # (1, 1, 2)
B = np.array([[[1.0], [3.0]]])  # (1, 2, 1)


def _explanation(raws, inputs):
    sites = [Site(f"l{k}", 0, i, None) for k, i in enumerate(inputs)]
    return Explanation(maps=[np.zeros((1, 4, 4), np.float32) for _ in raws], raw_maps=raws, sites=sites,
                       method="gradcam", target="t", scores=np.zeros(1), class_indices=None, reason="given",
                       details=[{"k": k} for k in range(len(raws))])


def test_hand_computed():
    # A -> [0, 1] -> 2x2 [[0, 1], [0, 1]]; B -> [[0], [1]] -> [[0, 0], [1, 1]]
    np.testing.assert_array_equal(fuse_maps([A, B], "max")[0], [[0, 1], [1, 1]])
    np.testing.assert_array_equal(fuse_maps([A, B], "mean")[0], [[0, 0.5], [0.5, 1]])


def test_one_site_per_input_and_labels():
    exp = _explanation([A, B, A * 3], [0, 0, 1])
    fused = exp.fused(how="mean")
    assert [s.label for s in fused.sites] == ["l0+l1", "l2"]
    assert [s.input_index for s in fused.sites] == [0, 1]
    np.testing.assert_array_equal(fused.raw_maps[0][0], [[0, 0.5], [0.5, 1]])
    assert fused.raw_maps[1] is exp.raw_maps[2] and fused.details[1] == {"k": 2}
    assert fused.details[0] == {"fused": ["l0", "l1"], "how": "mean"}
    assert fused.maps[0].shape == (1, 4, 4) and fused.maps[0].max() == 1.0
    assert fused.reason == "given; fused by mean per input"
    assert len(exp.sites) == 3  # the explanation fused is left as it was


def test_unknown_combination():
    with pytest.raises(ValueError, match="'max', 'mean'; got 'sum'"):
        _explanation([A, B], [0, 0]).fused(how="sum")


def test_through_explain_on_a_batch():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="a")(inp)
    y = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="b")(y)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(y)))
    x = np.random.default_rng(0).random((3, 12, 12, 3), dtype=np.float32)
    exp = camlens.explain(model, x, method="gradcam", layer=["a", "b"], target=[0, 1, 2])
    fused = exp.fused()
    assert fused.map.shape == (3, 12, 12) and fused.raw_maps[0].shape == (3, 12, 12)
    np.testing.assert_allclose(fused.raw_maps[0], fuse_maps(exp.raw_maps), atol=0)
    one = camlens.explain(model, x[1:2], method="gradcam", layer=["a", "b"], target=1).fused()
    np.testing.assert_allclose(one.map[0], fused.map[1], atol=1e-5)
