"""ROAD: noisy linear imputation by hand and against a direct sparse solve; ROAD curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from camlens import metrics
from metric_toys import counting, mean_model

W_DIRECT, W_DIAG = 1 / 6, 1 / 12


def test_one_removed_pixel_is_the_weighted_mean_of_its_neighbours():
    x = np.arange(9, dtype=float).reshape(3, 3, 1) ** 2
    removed = np.zeros((3, 3), bool)
    removed[1, 1] = True
    got = metrics.noisy_linear_imputation(x, removed, noise=0)
    direct = x[0, 1] + x[1, 0] + x[1, 2] + x[2, 1]  # 1 + 9 + 25 + 49 = 84
    diagonal = x[0, 0] + x[0, 2] + x[2, 0] + x[2, 2]  # 0 + 4 + 36 + 64 = 104
    assert got[1, 1, 0] == pytest.approx(84 / 6 + 104 / 12)  # the weights sum to 1 inside
    np.testing.assert_array_equal(got[~removed], x[~removed])
    # a corner has 2 direct neighbours and 1 diagonal one: weights renormalised by 5/12
    removed = np.zeros((3, 3), bool)
    removed[0, 0] = True
    got = metrics.noisy_linear_imputation(x, removed, noise=0)
    assert got[0, 0, 0] == pytest.approx((W_DIRECT * (1 + 9) + W_DIAG * 16) / (5 / 12))


def test_neighbouring_removed_pixels_are_solved_together():
    # one row [0, u, v, 3]: u = (0 + v) / 2 and v = (u + 3) / 2, so u = 1 and v = 2
    x = np.array([[0.0, 7.0, 7.0, 3.0]])
    removed = np.array([[False, True, True, False]])
    np.testing.assert_allclose(metrics.noisy_linear_imputation(x, removed, noise=0), [[0, 1, 2, 3]], atol=1e-9)


def test_matches_a_direct_sparse_solve():
    sparse = pytest.importorskip("scipy.sparse")
    linalg = pytest.importorskip("scipy.sparse.linalg")
    rng = np.random.default_rng(3)
    x = rng.random((12, 15, 2))
    masks = np.stack([rng.random((12, 15)) < 0.8, np.pad(np.ones((8, 9), bool), ((2, 2), (3, 3)))])
    got = metrics.noisy_linear_imputation(x, masks, noise=0, tol=1e-12)
    for k, mask in enumerate(masks):
        unknown = np.argwhere(mask)
        index = {tuple(p): i for i, p in enumerate(unknown)}
        a = sparse.lil_matrix((len(unknown), len(unknown)))
        b = np.zeros((len(unknown), 2))
        for i, (r, c) in enumerate(unknown):
            for dr, dc in [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]:
                rr, cc = r + dr, c + dc
                if 0 <= rr < 12 and 0 <= cc < 15:
                    w = W_DIRECT if 0 in (dr, dc) else W_DIAG
                    a[i, i] += w
                    if mask[rr, cc]:
                        a[i, index[(rr, cc)]] -= w
                    else:
                        b[i] += w * x[rr, cc]
        want = x.copy()
        want[mask] = linalg.spsolve(a.tocsc(), b)
        np.testing.assert_allclose(got[k], want, atol=1e-9)


def test_noise_only_on_removed_pixels_and_seeded():
    rng = np.random.default_rng(0)
    x = rng.random((16, 16, 3))
    removed = rng.random((16, 16)) < 0.5
    clean = metrics.noisy_linear_imputation(x, removed, noise=0)
    a = metrics.noisy_linear_imputation(x, removed, noise=0.1, seed=1)
    b = metrics.noisy_linear_imputation(x, removed, noise=0.1, seed=1)
    c = metrics.noisy_linear_imputation(x, removed, noise=0.1, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(a[~removed], x[~removed])
    assert 0.08 < (a - clean)[removed].std() < 0.12


def test_imputation_errors():
    with pytest.raises(ValueError, match="every pixel is removed"):
        metrics.noisy_linear_imputation(np.ones((2, 2, 1)), np.ones((2, 2), bool))
    with pytest.raises(ValueError, match=r"\(M, H, W\)"):
        metrics.noisy_linear_imputation(np.ones((2, 2, 1)), np.ones((3, 3), bool))


def test_road_curves_by_hand():
    # a 1x4 image [0, 6, 3, 3] (mean 3) and map [0.1, 0.9, 0.5, 0.2]; the logit is the mean.
    # MoRF removes pixel 1, then 1 and 2: [0, 1.5, 3, 3] (1.875), [0, 1, 2, 3] (1.5).
    # LeRF removes pixel 0, then 0 and 3: [6, 6, 3, 3] (4.5) both times.
    x = np.array([0.0, 6.0, 3.0, 3.0], "float32").reshape(1, 1, 4, 1)
    m = np.array([[[0.1, 0.9, 0.5, 0.2]]])
    res = metrics.road(mean_model((1, 4)), x, m, target=0, percentages=(0.25, 0.5), noise=0,
                       score="logit")
    np.testing.assert_allclose(res.morf, [[1.875, 1.5]], rtol=1e-6)
    np.testing.assert_allclose(res.lerf, [[4.5, 4.5]], rtol=1e-6)
    np.testing.assert_allclose(res.clean, [3.0], rtol=1e-6)
    # combined: mean over p of (LeRF - MoRF) / 2 = mean(1.3125, 1.5)
    np.testing.assert_allclose(res.combined, [1.40625], rtol=1e-6)
    assert res.metric == "road" and res.higher_is_better and res.value == pytest.approx(1.40625)
    morf = metrics.road(mean_model((1, 4)), x, m, target=0, percentages=(0.25, 0.5), noise=0,
                        score="logit", order="morf")
    assert morf.lerf is None and morf.combined is None and not morf.higher_is_better
    assert morf.value == pytest.approx((1.875 + 1.5) / 2, rel=1e-6)


def test_road_model_calls():
    adapter = counting(mean_model((4, 4)))
    x = np.random.default_rng(0).random((2, 4, 4, 1)).astype("float32")
    metrics.road(adapter, x, x[..., 0], percentages=(0.2, 0.4, 0.6), batch_size=3)
    assert len(adapter.calls) == 2 * math.ceil((3 * 2 + 1) / 3)


def test_road_errors():
    x = np.ones((1, 2, 2, 1), "float32")
    with pytest.raises(ValueError, match=r"percentages must be fractions in \[0, 1\)"):
        metrics.road(mean_model(), x, np.ones((1, 2, 2)), percentages=(0.5, 1.0))
    with pytest.raises(ValueError, match="order must be"):
        metrics.road(mean_model(), x, np.ones((1, 2, 2)), order="up")
