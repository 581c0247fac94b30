"""LIME and KernelSHAP over superpixels: exact values on numpy "models"."""

from __future__ import annotations

import sys
from itertools import combinations
from math import factorial

import numpy as np
import pytest

import camlens
from camlens.adapters.arrays import FunctionModel
from camlens.methods import KernelShap, Lime, PixelData, get_method
from camlens.methods.surrogate import segment, shapley_fit, weighted_ridge

RNG = np.random.default_rng(11)
X = RNG.normal(size=(2, 4, 4, 3)).astype(np.float32)
C = np.array([2.0, -1.0, 0.5, 3.0])  # one coefficient per 2x2 grid cell


def cell_sums(b: np.ndarray) -> np.ndarray:
    """(B, 4): the sum of each 2x2 cell of the 4x4 images (all channels)."""
    return b.reshape(len(b), 2, 2, 2, 2, -1).sum(axis=(2, 4, 5)).reshape(len(b), 4)


def linear_model() -> FunctionModel:
    return FunctionModel(lambda x: (cell_sums(x) @ C)[:, None], input_shape=(4, 4, 3))


def test_registered_names_and_costs():
    assert type(get_method("lime")) is Lime and type(get_method("kernelshap")) is KernelShap
    assert type(get_method("Kernel-SHAP")) is KernelShap
    assert Lime.cost == KernelShap.cost == "256 model runs per image"
    assert Lime.signed and not Lime.needs_gradients


def test_grid_segments():
    labels = segment(np.zeros((1, 5, 4, 1)), "grid", grid=(2, 2))[0]
    assert labels.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    # more cells than pixels: one per pixel; a given mask renumbered without gaps
    assert segment(np.zeros((1, 2, 2, 1)), "grid", grid=8)[0].tolist() == [[0, 1], [2, 3]]
    assert segment(np.zeros((1, 1, 3, 1)), np.array([[7, 3, 7]]))[0].tolist() == [[1, 0, 1]]


@pytest.mark.parametrize("n_samples", [256, 9])  # 2^4 - 2 = 14 coalitions: enumerated, sampled
def test_kernelshap_of_a_linear_model_of_cell_sums_is_coefficient_times_difference(n_samples):
    model = linear_model()
    method = KernelShap(n_samples=n_samples, segments="grid", grid=2, fill=0.5, batch_size=5)
    exp = camlens.explain(model, X, method, target=0)
    d = exp.details[0]
    fill_sums = 0.5 * 12  # a 2x2 cell of 3 channels
    want = C * (cell_sums(X) - fill_sums)  # (N, 4)
    for n in range(2):
        np.testing.assert_allclose(d["weights"][n], want[n], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(exp.raw_maps[0][:, 0, 0], want[:, 0], rtol=1e-4, atol=1e-4)
    runs = min(n_samples, 14) + 2
    assert d["n_runs"].tolist() == [runs, runs]
    # the copies went to the model 5 at a time (after the one capture pass of both images)
    sizes = [b for what, b in model.calls if what == "score"]
    assert sizes == ([5] * (runs // 5) + ([runs % 5] if runs % 5 else [])) * 2


def shapley_by_hand(f, m):
    phi = np.zeros(m)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for r in range(m):
            for s in combinations(others, r):
                z = np.zeros(m)
                z[list(s)] = 1
                zi = z.copy()
                zi[i] = 1
                phi[i] += factorial(r) * factorial(m - r - 1) / factorial(m) * (f(zi) - f(z))
    return phi


def test_kernelshap_enumerated_gives_exact_shapley_values_of_a_nonlinear_score():
    x = np.array([[[[1.0], [2.0], [-1.5], [0.5]]]])  # 4 features on a 1x4 grid

    def score(n, b):
        v = b[:, 0, :, 0].astype(np.float64)
        return v[:, 0] * v[:, 1] + np.maximum(v[:, 2], 0) + v[:, 3] ** 2 * v[:, 0]

    a, info = KernelShap(segments="grid", grid=(1, 4)).attribute(PixelData(x, score))
    want = shapley_by_hand(lambda z: score(0, (x * z[None, None, :, None]))[0], 4)
    np.testing.assert_allclose(a[0, 0, :, 0], want, rtol=1e-5, atol=1e-6)
    assert info["n_runs"].tolist() == [16]


def test_shapley_fit_holds_the_constraint_exactly():
    z = RNG.integers(0, 2, size=(20, 5)).astype(float)
    phi = shapley_fit(z, RNG.normal(size=20), np.ones(20), 3.0)
    assert abs(phi.sum() - 3.0) < 1e-12
    assert shapley_fit(np.zeros((0, 1)), np.zeros(0), np.zeros(0), 2.5).tolist() == [2.5]


def test_lime_without_penalty_recovers_a_linear_model_exactly():
    exp = camlens.explain(linear_model(), X, Lime(segments="grid", grid=2, n_samples=40, alpha=0.0), target=0)
    d = exp.details[0]
    for n in range(2):
        np.testing.assert_allclose(d["weights"][n], C * cell_sums(X)[n], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(d["intercept"][n], 0.0, atol=1e-3)
    assert d["n_runs"].tolist() == [40, 40] and d["segments"].shape == (2, 4, 4)


def test_weighted_ridge_equals_sklearn_ridge_with_sample_weights():
    linear_model_ = pytest.importorskip("sklearn.linear_model")
    z = RNG.integers(0, 2, size=(30, 6)).astype(float)
    y, w = RNG.normal(size=30), RNG.random(30)
    coef, b = weighted_ridge(z, y, w, 0.7)
    ref = linear_model_.Ridge(alpha=0.7).fit(z, y, sample_weight=w)
    np.testing.assert_allclose(coef, ref.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b, ref.intercept_, rtol=1e-8)


def test_lime_weights_by_hand():
    # 2 features; given coalitions; pi from the cosine distance of the flattened images
    x = np.array([[[[1.0], [2.0]]]])
    z = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]])
    score = lambda n, b: 3 * b[:, 0, 0, 0] - b[:, 0, 1, 0] ** 2
    a, info = Lime(segments="grid", grid=(1, 2), n_samples=5, alpha=0.5, coalitions=lambda *_: z).attribute(
        PixelData(x, score))
    imgs = z * np.array([1.0, 2.0])
    cos = imgs @ np.array([1.0, 2.0]) / (np.maximum(np.linalg.norm(imgs, axis=1), 1e-8) * np.sqrt(5))
    pi = np.exp(-((1 - cos) ** 2) / 2)
    y = 3 * imgs[:, 0] - imgs[:, 1] ** 2
    zm, ym = pi @ z / pi.sum(), pi @ y / pi.sum()
    coef = np.linalg.solve((z - zm).T @ ((z - zm) * pi[:, None]) + 0.5 * np.eye(2), (z - zm).T @ (pi * (y - ym)))
    np.testing.assert_allclose(a[0, 0, :, 0], coef, rtol=1e-5)
    np.testing.assert_allclose(info["intercept"][0], ym - zm @ coef, rtol=1e-5)


@pytest.mark.parametrize("cls", [Lime, KernelShap])
def test_draws_follow_the_noise_rule(cls):
    score = lambda n, b: np.tanh(b.reshape(len(b), -1) @ np.linspace(-1, 1, 48))
    both = cls(segments="grid", grid=4, n_samples=20, batch_size=3).attribute(PixelData(X, score))[0]
    alone = cls(segments="grid", grid=4, n_samples=20, batch_size=20).attribute(PixelData(X[1:], score))[0]
    np.testing.assert_allclose(alone[0], both[1], rtol=1e-6, atol=1e-9)
    other = cls(segments="grid", grid=4, n_samples=20, seed=1).attribute(PixelData(X[1:], score))[0]
    assert not np.allclose(other, alone)


def test_fill_mean_uses_each_channels_mean():
    x = X[:1]
    seen = []
    score = lambda n, b: seen.append(b.copy()) or b.sum(axis=(1, 2, 3))
    KernelShap(segments="grid", grid=1, fill="mean").attribute(PixelData(x, score))
    np.testing.assert_allclose(seen[0][0], np.broadcast_to(x[0].mean(axis=(0, 1)), x[0].shape), rtol=1e-6)


def test_slic_segments():
    pytest.importorskip("skimage")
    img = np.zeros((1, 16, 16, 3), np.float32)
    img[:, :, 8:] = 1.0
    labels = segment(img, "slic", n_segments=4)
    assert labels.min() == 0 and set(np.unique(labels)) == set(range(labels.max() + 1))
    assert labels.max() >= 1
    # no superpixel straddles the edge between the two halves
    assert not set(np.unique(labels[0, :, :8])) & set(np.unique(labels[0, :, 8:]))


def test_slic_without_scikit_image_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(ImportError, match=r"pip install scikit-image.*segments='grid'"):
        Lime(n_samples=2).attribute(PixelData(X, lambda n, b: b.sum(axis=(1, 2, 3))))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_samples": 0}, "n_samples"), ({"fill": "black"}, "fill"), ({"seed": 1.5}, "seed"),
     ({"coalitions": 3}, "coalitions"), ({"batch_size": 0}, "batch_size")],
)
@pytest.mark.parametrize("cls", [Lime, KernelShap])
def test_bad_settings(cls, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cls(**kwargs)


def test_bad_segments_and_coalitions_name_the_fix():
    data = PixelData(X, lambda n, b: b.sum(axis=(1, 2, 3)))
    with pytest.raises(ValueError, match="'slic', 'grid' or an integer array"):
        Lime(segments="quickshift").attribute(data)
    with pytest.raises(ValueError, match=r"\(H, W\) = \(4, 4\)"):
        Lime(segments=np.zeros((3, 3), int)).attribute(data)
    with pytest.raises(ValueError, match="grid must be"):
        Lime(segments="grid", grid=0).attribute(data)
    with pytest.raises(ValueError, match=r"0 / 1 of shape \(2, 4\)"):
        KernelShap(n_samples=2, segments="grid", grid=2, coalitions=lambda *_: np.ones((3, 4))).attribute(data)
    with pytest.raises(ValueError, match="kernel_width"):
        Lime(kernel_width=0.0)


def test_through_keras_the_numbers_of_the_numpy_model():
    keras = pytest.importorskip("keras")
    # a Keras model of the same linear score of cell sums: Dense weights C repeated per cell pixel
    kernel = np.repeat(np.repeat(C.reshape(2, 2), 2, 0), 2, 1)[..., None].repeat(3, -1).reshape(-1, 1)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(1, use_bias=False)])
    model.layers[-1].set_weights([kernel.astype(np.float32)])
    for method in (KernelShap(n_samples=6, segments="grid", grid=2), Lime(n_samples=12, segments="grid", grid=2)):
        k = camlens.explain(model, X, method, target=0)
        f = camlens.explain(linear_model(), X, method, target=0)
        np.testing.assert_allclose(k.raw_maps[0], f.raw_maps[0], rtol=1e-4, atol=1e-4)


def test_slic_in_one_piece_is_refused_with_the_fix():
    pytest.importorskip("skimage")
    noise = np.random.default_rng(0).random((1, 32, 32, 3)).astype(np.float32)
    data = PixelData(noise, lambda n, b: b.sum(axis=(1, 2, 3)))
    with pytest.raises(ValueError, match=r"single superpixel.*segments='grid' or a higher compactness"):
        KernelShap(n_samples=2).attribute(data)
    _, info = KernelShap(n_samples=2, compactness=100.0).attribute(data)
    assert info["segments"].max() >= 2
