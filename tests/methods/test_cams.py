"""Grad-CAM element-wise, KPCA-CAM, Deep Feature Factorization and eigen smoothing on given
arrays, with the expected maps worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from camlens.methods import GradCAMElementWise, HiResCAM, SiteData


def one_sample(*channels: list[list[float]]) -> np.ndarray:
    """``(1, h, w, C)`` from C spatial ``(h, w)`` grids."""
    return np.stack([np.asarray(ch, dtype=np.float32) for ch in channels], axis=-1)[None]


def test_gradcamelementwise_exact() -> None:
    A = one_sample([[1, 2], [3, 0]], [[2, 1], [1, 4]])
    G = one_sample([[1, -1], [-1, 5]], [[-1, 1], [0.5, -0.5]])
    # products, channel 0: [[1, -2], [-3, 0]]; channel 1: [[-2, 1], [0.5, -2]]
    # relu then sum: [[1 + 0, 0 + 1], [0 + 0.5, 0 + 0]]
    out = GradCAMElementWise()(SiteData(A, G))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[[1.0, 1.0], [0.5, 0.0]]])
    # HiResCAM sums the signed products: [[-1, -1], [-2.5, -2]] -> all zero
    np.testing.assert_array_equal(HiResCAM()(SiteData(A, G)), np.zeros((1, 2, 2)))


def test_gradcamelementwise_batch_is_per_sample() -> None:
    rng = np.random.default_rng(0)
    A, G = rng.standard_normal((2, 3, 3, 4)), rng.standard_normal((2, 3, 3, 4))
    both = GradCAMElementWise()(SiteData(A, G))
    for n in range(2):
        np.testing.assert_array_equal(both[n], GradCAMElementWise()(SiteData(A[n : n + 1], G[n : n + 1]))[0])


def test_gradcamelementwise_needs_gradients() -> None:
    with pytest.raises(ValueError, match="needs gradients"):
        GradCAMElementWise()(SiteData(np.ones((1, 2, 2, 1))))
