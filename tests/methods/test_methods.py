"""Values of every CAM method on tiny arrays, with the expected maps worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from camlens.methods import (
    CAM,
    CAMMethod,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    SiteData,
    XGradCAM,
)

GRADIENT_METHODS: list[type[CAMMethod]] = [
    GradCAM,
    GradCAMPlusPlus,
    XGradCAM,
    HiResCAM,
    LayerCAM,
    EigenGradCAM,
]
ALL_METHODS: list[type[CAMMethod]] = [*GRADIENT_METHODS, CAM, EigenCAM]


def one_sample(*channels: list[list[float]]) -> np.ndarray:
    """``(1, h, w, C)`` from C spatial ``(h, w)`` grids, so tests read channel by channel."""
    return np.stack([np.asarray(ch, dtype=np.float32) for ch in channels], axis=-1)[None]


def site_for(cls: type[CAMMethod], acts: np.ndarray, grads: np.ndarray) -> SiteData:
    """Inputs a method accepts; CAM's head weights are taken from the gradients' first row."""
    head = grads[:, 0, 0, :] if cls.needs_head_weights else None
    return SiteData(acts, grads if cls.needs_gradients else None, head)


# --- exact values ---------------------------------------------------------------------------


def test_cam_exact_keeps_negative_values() -> None:
    A = one_sample([[1, 2], [3, 4]], [[0, 1], [-1, 2]])
    W = np.array([[0.5, -2.0]])
    # 0.5*[[1,2],[3,4]] = [[.5,1],[1.5,2]];  -2*[[0,1],[-1,2]] = [[0,-2],[2,-4]];  summed:
    expected = [[[0.5, -1.0], [3.5, -2.0]]]
    out = CAM()(SiteData(A, head_weights=W))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_gradcam_exact() -> None:
    A = one_sample([[1, 0], [0, 1]], [[2, 2], [0, 0]])
    G = one_sample([[1, 3], [0, 0]], [[-1, -1], [-1, 1]])
    # w0 = (1+3+0+0)/4 = 1,  w1 = (-1-1-1+1)/4 = -0.5
    # 1*[[1,0],[0,1]] - 0.5*[[2,2],[0,0]] = [[0,-1],[0,1]]  -> relu
    expected = [[[0.0, 0.0], [0.0, 1.0]]]
    np.testing.assert_array_equal(GradCAM()(SiteData(A, G)), expected)


def test_gradcampp_exact() -> None:
    A = one_sample([[1, 0], [0, 1]], [[0, 1], [1, 1]])
    G = one_sample([[1, 1], [0, 0]], [[2, 0], [0, -1]])
    # channel 0: sum A = 2. G=1: alpha = 1/(2*1 + 2*1) = 1/4; G=0: alpha = 0.
    #   w0 = 1/4*1 + 1/4*1 = 0.5
    # channel 1: sum A = 3. G=2: alpha = 4/(2*4 + 3*8) = 1/8, alpha*relu(G) = 1/4;
    #   G=-1: alpha = 1/(2 - 3) = -1 but relu(G) = 0.  w1 = 0.25
    # 0.5*[[1,0],[0,1]] + 0.25*[[0,1],[1,1]] = [[0.5,0.25],[0.25,0.75]]
    expected = [[[0.5, 0.25], [0.25, 0.75]]]
    np.testing.assert_array_equal(GradCAMPlusPlus()(SiteData(A, G)), expected)


def test_gradcampp_zero_denominator_gives_zero_alpha_not_nan() -> None:
    A = one_sample([[1, 1], [0, 0]], [[1, 0], [0, 0]])
    G = one_sample([[-1, -1], [-1, -1]], [[1, 1], [1, 1]])
    # channel 0: sum A = 2, G = -1: denominator 2*1 + 2*(-1) = 0 everywhere -> alpha = 0
    # channel 1: sum A = 1, G = 1: alpha = 1/(2+1) = 1/3 at 4 positions, w1 = 4/3
    # map = 4/3 * [[1,0],[0,0]]
    out = GradCAMPlusPlus()(SiteData(A, G))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, [[[4 / 3, 0.0], [0.0, 0.0]]], rtol=1e-6)


def test_xgradcam_exact() -> None:
    A = one_sample([[1, 0], [0, 1]], [[0, 2], [2, 0]])
    G = one_sample([[4, 2], [0, 2]], [[1, -1], [3, 1]])
    # w0 = (1*4 + 1*2) / (1+1) = 3;  w1 = (2*(-1) + 2*3) / (2+2) = 1
    # 3*[[1,0],[0,1]] + 1*[[0,2],[2,0]] = [[3,2],[2,3]]
    expected = [[[3.0, 2.0], [2.0, 3.0]]]
    np.testing.assert_array_equal(XGradCAM()(SiteData(A, G)), expected)


def test_xgradcam_channel_summing_to_zero_gets_weight_zero() -> None:
    A = one_sample([[1, -1], [0, 0]], [[1, 1], [1, 1]])
    G = one_sample([[5, 5], [5, 5]], [[1, 1], [1, 1]])
    # channel 0 sums to 0 -> w0 = 0 (no division);  w1 = (1+1+1+1)/4 = 1 -> map = channel 1
    out = XGradCAM()(SiteData(A, G))
    np.testing.assert_array_equal(out, [[[1.0, 1.0], [1.0, 1.0]]])


def test_hirescam_exact() -> None:
    A = one_sample([[1, 2], [3, 4]], [[1, 1], [2, -1]])
    G = one_sample([[1, -1], [0.5, 2]], [[2, 1], [-1, 1]])
    # G0*A0 = [[1,-2],[1.5,8]];  G1*A1 = [[2,1],[-2,-1]];  sum = [[3,-1],[-0.5,7]] -> relu
    expected = [[[3.0, 0.0], [0.0, 7.0]]]
    np.testing.assert_array_equal(HiResCAM()(SiteData(A, G)), expected)


def test_layercam_exact() -> None:
    A = one_sample([[1, 2], [3, 4]], [[-4, 1], [1, -10]])
    G = one_sample([[1, -1], [0.5, 2]], [[1, 1], [-2, 1]])
    # relu(G0)*A0 = [[1,0],[1.5,8]];  relu(G1)*A1 = [[-4,1],[0,-10]]
    # sum = [[-3,1],[1.5,-2]] -> relu
    expected = [[[0.0, 1.0], [1.5, 0.0]]]
    np.testing.assert_array_equal(LayerCAM()(SiteData(A, G)), expected)


def test_eigencam_exact_sign_from_correlation() -> None:
    # c = [-3, 1, 1, 1] (row-major positions, mean 0); A0 = 2c + 10, A1 = c.
    A = one_sample([[4, 12], [12, 12]], [[-3, 1], [1, 1]])
    # Centred: rows c_k * (2, 1), rank 1, so v = ±(2, 1)/sqrt(5) and the projection is
    # ±sqrt(5) * c = ±[-6.708, 2.236, 2.236, 2.236].
    # Channel sum A0 + A1 = 3c + 10 correlates with +c, so the sign is +, even though the
    # largest-magnitude value (-6.708) then is negative.  relu -> [[0, √5], [√5, √5]]
    r5 = np.sqrt(5.0)
    expected = [[[0.0, r5], [r5, r5]]]
    np.testing.assert_allclose(EigenCAM()(SiteData(A)), expected, atol=1e-5)


def test_eigencam_exact_sign_tie_broken_by_largest_value() -> None:
    # Channel 1 = 2 - channel 0, so the channel sum is the constant 2: correlation 0.
    A = one_sample([[3, 1], [1, 1]], [[-1, 1], [1, 1]])
    # Centred: A0 - 1.5 = [1.5, -.5, -.5, -.5] = d, A1 - 0.5 = -d; v = ±(1, -1)/sqrt(2)
    # projection = ±sqrt(2) d; the largest magnitude, 1.5*sqrt(2) = 2.1213, is made positive.
    expected = [[[1.5 * np.sqrt(2.0), 0.0], [0.0, 0.0]]]
    np.testing.assert_allclose(EigenCAM()(SiteData(A)), expected, atol=1e-5)


def test_eigengradcam_exact() -> None:
    A = one_sample([[3, 1], [1, 1]], [[0, 9], [9, 9]])
    G = one_sample([[2, 2], [2, 2]], [[0, 0], [0, 0]])
    # M = G*A = ([[6,2],[2,2]], 0). Centred channel 0: 6 - 3 = 3, 2 - 3 = -1 -> [3,-1,-1,-1];
    # v = ±(1, 0); the channel sum correlates with +[3,-1,-1,-1]. relu -> [[3,0],[0,0]]
    expected = [[[3.0, 0.0], [0.0, 0.0]]]
    np.testing.assert_allclose(EigenGradCAM()(SiteData(A, G)), expected, atol=1e-5)


# --- properties shared by every method ------------------------------------------------------


@pytest.mark.parametrize("cls", GRADIENT_METHODS, ids=lambda c: c.name)
def test_zero_gradient_gives_zero_map(cls: type[CAMMethod]) -> None:
    rng = np.random.default_rng(0)
    A = rng.uniform(0.0, 2.0, size=(2, 3, 3, 4)).astype(np.float32)
    out = cls()(SiteData(A, np.zeros_like(A)))
    assert out.shape == (2, 3, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.zeros((2, 3, 3)))


def test_cam_zero_head_weights_give_zero_map() -> None:
    A = np.ones((1, 2, 2, 3), dtype=np.float32)
    out = CAM()(SiteData(A, head_weights=np.zeros((1, 3))))
    np.testing.assert_array_equal(out, np.zeros((1, 2, 2)))


@pytest.mark.parametrize("value", [0.0, 0.1, -7.3])
def test_eigencam_constant_activations_give_zero_map(value: float) -> None:
    # Nothing varies across positions: rank 0 after centring, no direction to project on.
    A = np.full((1, 3, 3, 4), value, dtype=np.float32)
    out = EigenCAM()(SiteData(A))
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out, np.zeros((1, 3, 3)))


@pytest.mark.parametrize("cls", ALL_METHODS, ids=lambda c: c.name)
def test_batch_samples_are_independent(cls: type[CAMMethod]) -> None:
    rng = np.random.default_rng(1)
    A = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    G = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    batch = cls()(site_for(cls, A, G))
    singles = np.concatenate([cls()(site_for(cls, A[i : i + 1], G[i : i + 1])) for i in (0, 1)])
    assert batch.shape == (2, 4, 3)
    np.testing.assert_allclose(batch, singles, rtol=1e-5, atol=1e-6)


# --- identities between methods -------------------------------------------------------------


def test_gradcam_on_gap_dense_head_is_relu_cam_over_z() -> None:
    # S = (1/Z) sum_ijc W[c] A[i,j,c] + b  =>  dS/dA = W/Z at every position.
    rng = np.random.default_rng(2)
    n, h, w, c = 2, 3, 4, 5
    A = rng.normal(size=(n, h, w, c)).astype(np.float32)
    W = rng.normal(size=(n, c)).astype(np.float32)
    G = np.broadcast_to(W[:, None, None, :] / (h * w), A.shape)
    cam = CAM()(SiteData(A, head_weights=W))
    assert (cam < 0).any()  # so the relu in the identity is exercised
    np.testing.assert_allclose(
        GradCAM()(SiteData(A, G)), np.maximum(cam, 0) / (h * w), rtol=1e-5, atol=1e-7
    )


def test_hirescam_equals_gradcam_for_spatially_constant_gradients() -> None:
    rng = np.random.default_rng(3)
    A = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    G = np.broadcast_to(rng.normal(size=(2, 1, 1, 4)), A.shape).astype(np.float32)
    np.testing.assert_allclose(
        HiResCAM()(SiteData(A, G)), GradCAM()(SiteData(A, G)), rtol=1e-5, atol=1e-6
    )


# --- CAM input errors -----------------------------------------------------------------------


def test_cam_without_head_weights_suggests_gradcam() -> None:
    with pytest.raises(ValueError, match="GlobalAveragePooling.*gradcam"):
        CAM()(SiteData(np.ones((1, 2, 2, 3))))


def test_cam_head_weights_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        CAM()(SiteData(np.ones((1, 2, 2, 3)), head_weights=np.ones((1, 4))))


# --- Eigen-CAM sign rule and input checks ---------------------------------------------------


def blob_activations() -> tuple[np.ndarray, np.ndarray]:
    """Faint noise everywhere, a bright 2x2 blob in the middle of a 6x6 grid; blob mask."""
    rng = np.random.default_rng(4)
    A = rng.uniform(0.0, 0.1, size=(1, 6, 6, 4))
    mask = np.zeros((6, 6), dtype=bool)
    mask[2:4, 2:4] = True
    A[0, mask] += np.array([3.0, 2.0, 4.0, 1.0])
    return A.astype(np.float32), mask


@pytest.mark.parametrize("flip", [False, True], ids=["svd-sign", "flipped-svd-sign"])
@pytest.mark.parametrize("cls", [EigenCAM, EigenGradCAM], ids=lambda c: c.name)
def test_eigen_map_is_positive_on_the_blob_whatever_the_svd_sign(
    cls: type[CAMMethod], flip: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    A, mask = blob_activations()
    site = SiteData(A, np.ones_like(A))
    reference = cls()(site)
    if flip:
        svd = np.linalg.svd

        def flipped(*args: object, **kwargs: object) -> tuple[np.ndarray, ...]:
            u, s, vt = svd(*args, **kwargs)
            return -u, s, -vt

        monkeypatch.setattr(np.linalg, "svd", flipped)
    out = cls()(site)[0]
    assert (out[mask] > 0).all()
    assert out[mask].min() > out[~mask].max()
    np.testing.assert_allclose(out, reference[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_eigencam_rejects_nan_and_inf(bad: float) -> None:
    A = np.ones((1, 2, 2, 2), dtype=np.float32)
    A[0, 1, 1, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        EigenCAM()(SiteData(A))
    with pytest.raises(ValueError, match="gradients contain NaN or inf"):
        EigenGradCAM()(SiteData(np.ones_like(A), A))
