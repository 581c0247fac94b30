"""ROAD: noisy linear imputation by hand and against a direct sparse solve; ROAD curves."""

from __future__ import annotations

import importlib
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


def direct(x, mask):
    """The imputation by a direct sparse solve (scipy's ``spsolve``), the system built pixel by
    pixel from the definition: the slow, plain reference."""
    sparse = pytest.importorskip("scipy.sparse")
    linalg = pytest.importorskip("scipy.sparse.linalg")
    h, w, c = x.shape
    unknown = np.argwhere(mask)
    index = {tuple(p): i for i, p in enumerate(unknown)}
    a = sparse.lil_matrix((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), c))
    for i, (r, col) in enumerate(unknown):
        for dr, dc in [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]:
            rr, cc = r + dr, col + dc
            if 0 <= rr < h and 0 <= cc < w:
                weight = W_DIRECT if 0 in (dr, dc) else W_DIAG
                a[i, i] += weight
                if mask[rr, cc]:
                    a[i, index[(rr, cc)]] -= weight
                else:
                    b[i] += weight * x[rr, cc]
    want = x.copy()
    want[mask] = linalg.spsolve(a.tocsc(), b).reshape(len(unknown), c)
    return want


def smooth_masks(h, w, seed=0):
    """ROAD's 9 MoRF then 9 LeRF masks (nested within each order) for a smooth random map,
    like an upsampled CAM: unknowns in blobs, at the edges and away from them."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((4, 4))
    rows = np.interp(np.linspace(0, 3, h), np.arange(4), np.arange(4))
    cols = np.interp(np.linspace(0, 3, w), np.arange(4), np.arange(4))
    r0, c0 = np.floor(rows).astype(int).clip(0, 2), np.floor(cols).astype(int).clip(0, 2)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None]
    m = (coarse[r0][:, c0] * (1 - fr) * (1 - fc) + coarse[r0 + 1][:, c0] * fr * (1 - fc)
         + coarse[r0][:, c0 + 1] * (1 - fr) * fc + coarse[r0 + 1][:, c0 + 1] * fr * fc)
    order = np.argsort(-m.ravel(), kind="stable")
    ranks = np.empty(h * w, int)
    ranks[order] = np.arange(h * w)
    ranks = ranks.reshape(h, w)
    counts = np.floor(np.arange(1, 10) / 10 * h * w + 0.5)
    return np.concatenate([ranks[None] < counts[:, None, None], (h * w - 1 - ranks)[None] < counts[:, None, None]])


def test_matches_a_direct_sparse_solve():
    rng = np.random.default_rng(3)
    x = rng.random((12, 15, 2))
    masks = np.stack([rng.random((12, 15)) < 0.8, np.pad(np.ones((8, 9), bool), ((2, 2), (3, 3)))])
    got = metrics.noisy_linear_imputation(x, masks, noise=0, tol=1e-12)
    for k, mask in enumerate(masks):
        np.testing.assert_allclose(got[k], direct(x, mask), atol=1e-9)


def test_matches_a_direct_sparse_solve_on_every_kind_of_mask():
    # odd sizes; a blob inside (its bounding box is solved alone), one on the bottom-right edges,
    # scattered pixels (no coarse grid), a single pixel, a mask nested in the one before (the
    # solve starts from that solution), grids of many levels and ones small enough to invert
    rng = np.random.default_rng(4)
    x = rng.random((37, 53, 3))
    yy, xx = np.mgrid[:37, :53]
    inside = (yy - 15) ** 2 + (xx - 20) ** 2 < 80
    edge = (yy - 37) ** 2 / 2 + (xx - 53) ** 2 < 300
    single = np.zeros((37, 53), bool)
    single[0, 52] = True
    masks = np.stack([inside, edge, rng.random((37, 53)) < 0.3, single, inside | edge, inside | edge | (xx < 9)])
    got = metrics.noisy_linear_imputation(x, masks, noise=0, tol=1e-12)
    for k, mask in enumerate(masks):
        np.testing.assert_allclose(got[k], direct(x, mask), atol=1e-9, err_msg=f"mask {k}")


def test_default_tolerance_is_within_1e_5_of_the_exact_solution():
    """The bound the default ``tol=1e-6`` (a relative residual) keeps on ROAD's 18 masks of a
    smooth map: every imputed pixel within 1e-5 of the direct solve, for values in [0, 1]
    (the solver up to 2026-12-05 and the one after both stay within 4e-6 on a 224 px photo)."""
    rng = np.random.default_rng(5)
    x = rng.random((40, 56, 3))
    masks = smooth_masks(40, 56)
    got = metrics.noisy_linear_imputation(x, masks, noise=0)
    for k, mask in enumerate(masks):
        np.testing.assert_allclose(got[k], direct(x, mask), atol=1e-5, rtol=0, err_msg=f"mask {k}")


def test_solves_the_bounding_box_only_and_warm_starts_nested_masks(monkeypatch):
    road_module = importlib.import_module("camlens.metrics.road")
    solve = road_module._conjugate_gradient
    calls = []

    def recording(grid, b, v, tol, max_iter):
        calls.append((grid.u.shape[1:], bool(v.any())))
        return solve(grid, b, v, tol, max_iter)

    monkeypatch.setattr(road_module, "_conjugate_gradient", recording)
    x = np.random.default_rng(6).random((64, 64, 3))
    small = np.zeros((64, 64), bool)
    small[10:21, 30:37] = True  # 11 x 7: grids of even height, ending in a known column
    larger = small.copy()
    larger[10:25, 30:40] = True
    other = np.zeros((64, 64), bool)
    other[50:, :5] = True
    metrics.noisy_linear_imputation(x, np.stack([small, larger, other]), noise=0)
    assert calls == [((12, 8), False), ((16, 12), True), ((14, 6), False)]


def test_imputation_does_not_converge_in_too_few_iterations():
    x = np.random.default_rng(7).random((40, 40, 1))
    with pytest.raises(RuntimeError, match="did not converge in 1 iterations"):
        metrics.noisy_linear_imputation(x, np.ones((40, 40), bool) & (np.arange(40) > 0), tol=1e-14, max_iter=1)


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
