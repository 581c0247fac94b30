"""Grad-CAM element-wise, KPCA-CAM, Deep Feature Factorization and eigen smoothing on given
arrays, with the expected maps worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from camlens.methods import (KPCACAM, AblationCAM, EigenCAM, GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM,
                             SiteData, XGradCAM)


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


def test_kpcacam_exact_two_positions() -> None:
    # one channel, positions [3, 1]: centred [1, -1]; gamma = 1/C = 1, coef0 = 1
    # K = tanh(<x, y> + 1) = [[tanh 2, tanh 0], [tanh 0, tanh 2]]; centred: (tanh 2 / 2) [[1, -1], [-1, 1]]
    # top eigenvalue tanh 2, v = [1, -1] / sqrt 2: coordinates sqrt(tanh 2 / 2) [1, -1], the
    # position of the larger activation positive
    out = KPCACAM()(SiteData(np.array([[[[3.0], [1.0]]]])))
    np.testing.assert_allclose(out, [[[np.sqrt(np.tanh(2.0) / 2.0), 0.0]]], rtol=1e-6)
    # rbf: K = [[1, e^-4], [e^-4, 1]] (|x - y|^2 = 4): eigenvalue 1 - e^-4
    out = KPCACAM(kernel="rbf")(SiteData(np.array([[[[1.0], [3.0]]]])))
    np.testing.assert_allclose(out, [[[0.0, np.sqrt((1 - np.exp(-4.0)) / 2.0)]]], rtol=1e-6)


def test_kpcacam_linear_kernel_is_eigencam() -> None:
    A = np.random.default_rng(1).random((2, 4, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(KPCACAM(kernel="linear")(SiteData(A)), EigenCAM()(SiteData(A)), atol=1e-5)


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly", "cosine"])
def test_kpcacam_is_scikit_learn_kernel_pca_up_to_sign(kernel: str) -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    A = np.random.default_rng(2).random((1, 5, 4, 7))
    flat = A[0].reshape(20, 7)
    centred = flat - flat.mean(axis=0)
    ref = decomposition.KernelPCA(n_components=1, kernel=kernel, gamma=0.3 if kernel != "cosine" else None,
                                  eigen_solver="dense").fit_transform(centred)[:, 0]
    proj = KPCACAM(kernel=kernel, gamma=0.3)(SiteData(A))[0].ravel()
    pos, neg = np.maximum(ref, 0), np.maximum(-ref, 0)
    best = min(np.abs(proj - pos).max(), np.abs(proj - neg).max())
    assert best < 1e-6


def test_kpcacam_constant_and_bad_settings() -> None:
    np.testing.assert_array_equal(KPCACAM()(SiteData(np.full((1, 3, 3, 2), 4.0))), np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="kernel must be one of"):
        KPCACAM(kernel="laplace")
    with pytest.raises(ValueError, match="gamma must be a positive number"):
        KPCACAM(gamma=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        KPCACAM()(SiteData(np.full((1, 2, 2, 1), np.nan)))


def test_eigen_smooth_exact() -> None:
    A = one_sample([[3, 1], [1, 1]], [[0, 9], [9, 9]])
    G = one_sample([[1, 1], [1, 1]], [[0, 0], [0, 0]])
    # w = (1, 0): the weighted activations are channel 0 alone, [[3, 1], [1, 1]]; centred
    # [1.5, -.5, -.5, -.5], its own principal direction (one channel)
    np.testing.assert_array_equal(GradCAM()(SiteData(A, G)), [[[3.0, 1.0], [1.0, 1.0]]])
    np.testing.assert_allclose(GradCAM(eigen_smooth=True)(SiteData(A, G)), [[[1.5, 0.0], [0.0, 0.0]]], atol=1e-6)
    # element-wise: relu(G A) is channel 0 as well
    np.testing.assert_allclose(GradCAMElementWise(eigen_smooth=True)(SiteData(A, G)), [[[1.5, 0.0], [0.0, 0.0]]],
                               atol=1e-6)


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus, XGradCAM])
def test_eigen_smooth_is_eigencam_of_the_weighted_activations(cls: type) -> None:
    rng = np.random.default_rng(3)
    A, G = rng.random((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    w = cls().weights(A.astype(np.float32), G.astype(np.float32), SiteData(A, G))
    expected = EigenCAM()(SiteData(A * w[:, None, None, :]))
    np.testing.assert_allclose(cls(eigen_smooth=True)(SiteData(A, G)), expected, atol=1e-5)
    assert not np.allclose(cls()(SiteData(A, G)), expected, atol=1e-3)


def test_eigen_smooth_reaches_ablationcam_and_is_checked() -> None:
    assert AblationCAM(eigen_smooth=True).eigen_smooth
    with pytest.raises(TypeError, match="eigen_smooth must be True or False"):
        GradCAM(eigen_smooth="yes")
