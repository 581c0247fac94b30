"""Input x Gradient and GradientSHAP on numpy "models" with analytic gradients: exact values."""

from __future__ import annotations

import numpy as np
import pytest

import camlens
from camlens.adapters.arrays import FunctionModel
from camlens.methods import GradientShap, InputXGradient, PixelData, get_method
from camlens.methods.base import noise_key
from tests.methods.pixel_toys import linear_toy

RNG, X, W, linear = linear_toy(3)  # S_n(x) = sum(W[n] * x): a different linear model per sample


def square() -> PixelData:
    """S(x) = sum(x^2), dS/dx = 2x."""
    score = lambda n, b: (b.astype(np.float64) ** 2).sum(axis=(1, 2, 3))
    return PixelData(X, score, lambda n, b: (score(n, b), 2 * b.astype(np.float64)))


def test_registered_names():
    assert type(get_method("inputxgradient")) is InputXGradient
    assert type(get_method("input_x_gradient")) is InputXGradient
    assert type(get_method("gradientshap")) is GradientShap
    assert type(get_method("Gradient-SHAP")) is GradientShap


def test_inputxgradient_of_a_linear_score_is_w_times_x_summed_over_channels():
    attr, info = InputXGradient().attribute(linear())
    np.testing.assert_allclose(attr, W * X, rtol=1e-6)
    np.testing.assert_allclose(info["scores"], (W * X).sum(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(InputXGradient()(linear()), (W * X).sum(-1), rtol=1e-5, atol=1e-6)
    assert InputXGradient.signed and InputXGradient.cost == ""


def test_inputxgradient_of_a_square_is_2x_squared():
    attr, _ = InputXGradient().attribute(square())
    np.testing.assert_allclose(attr, 2 * X.astype(np.float64) ** 2, rtol=1e-6)


def test_gradientshap_of_a_linear_score_is_w_times_x_minus_baseline_for_any_draws():
    base = RNG.normal(size=X.shape[1:]).astype(np.float32)
    attr, info = GradientShap(baselines=base, n_samples=5).attribute(linear())
    np.testing.assert_allclose(attr, W * (X - base), rtol=1e-5, atol=1e-6)
    assert info["n_samples"].tolist() == [5, 5]
    attr0, _ = GradientShap().attribute(linear())  # black baseline
    np.testing.assert_allclose(attr0, W * X, rtol=1e-5, atol=1e-6)


def test_gradientshap_of_a_square_by_hand_with_given_draws():
    # S = sum(x^2): grad at b + a (x_k - b) is 2 (b + a (x_k - b)); one image, two baselines
    x = X[:1]
    bases = np.stack([np.zeros(x.shape[1:]), np.ones(x.shape[1:])]).astype(np.float32)
    noise = RNG.normal(size=(3, *x.shape[1:]))
    idx, alpha = np.array([1, 0, 1]), np.array([0.25, 0.5, 0.9])
    data = PixelData(x, None, square().gradient)
    attr, _ = GradientShap(bases, n_samples=3, draws=lambda n, im, k: (idx, noise, alpha)).attribute(data)
    want = np.zeros(x.shape[1:])
    for k in range(3):
        xk, b = x[0] + noise[k], bases[idx[k]]
        want += (xk - b) * 2 * (b + alpha[k] * (xk - b))
    np.testing.assert_allclose(attr[0], want / 3, rtol=1e-5, atol=1e-5)


def test_gradientshap_draws_follow_the_noise_rule_and_batching_changes_nothing():
    calls: list[int] = []
    method = GradientShap(baselines=np.stack([X[0] * 0, X[0] * 0 + 1]), n_samples=7, stdevs=0.3, batch_size=3)
    data = PixelData(X, None, square().gradient)
    a = method.attribute(data)[0]
    b = GradientShap(baselines=method.baselines, n_samples=7, stdevs=0.3, batch_size=7).attribute(data)[0]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # one image alone, or second in the batch: the same draws
    alone = method.attribute(PixelData(X[1:], None, lambda n, bb: square().gradient(n, bb)))[0]
    np.testing.assert_allclose(alone[0], a[1], rtol=1e-6)
    # the draws are those of noise_key(seed, image): indices, then noise, then alphas
    rng = np.random.default_rng(np.random.SeedSequence(noise_key(0, X[0])))
    idx, noise, alpha = rng.integers(0, 2, 7), rng.standard_normal((7, *X.shape[1:])) * 0.3, rng.random(7)
    got = method._draw(0, X[0], 2)
    np.testing.assert_array_equal(got[0], idx)
    np.testing.assert_allclose(got[1], noise)
    np.testing.assert_allclose(got[2], alpha)
    lin_calls: list[int] = []
    method.attribute(linear(lin_calls))
    assert lin_calls == [3, 3, 1, 3, 3, 1]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_samples": 0}, "n_samples"), ({"stdevs": -1.0}, "stdevs"), ({"seed": -1}, "seed"),
     ({"batch_size": 0}, "batch_size"), ({"draws": 3}, "draws")],
)
def test_gradientshap_bad_settings(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GradientShap(**kwargs)


def test_gradientshap_bad_baselines_and_draws_name_the_fix():
    with pytest.raises(ValueError, match=r"baselines of shape \(2, 2\).*\(H, W, c\)"):
        GradientShap(baselines=np.zeros((2, 2))).attribute(linear())
    bad = GradientShap(n_samples=2, draws=lambda n, im, k: ([0], np.zeros((2, *im.shape)), [0.5, 0.5]))
    with pytest.raises(ValueError, match="draws must return index"):
        bad.attribute(linear())
    out = GradientShap(n_samples=1, draws=lambda n, im, k: ([4], np.zeros((1, *im.shape)), [0.5]))
    with pytest.raises(ValueError, match="outside 0..0"):
        out.attribute(linear())


def test_function_model_has_no_gradients_and_says_so():
    model = FunctionModel(lambda x: x.sum(axis=(1, 2, 3))[:, None], input_shape=(2, 2, 1))
    with pytest.raises(NotImplementedError, match="no gradients"):
        camlens.explain(model, np.ones((1, 2, 2, 1), np.float32), "inputxgradient", target=0)


def test_through_keras_and_torch_a_linear_model_gives_w_times_x():
    keras = pytest.importorskip("keras")
    w = RNG.normal(size=(4, 4, 3)).astype(np.float32)
    x = RNG.normal(size=(2, 4, 4, 3)).astype(np.float32)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(1, use_bias=False)])
    model.layers[-1].set_weights([w.reshape(-1, 1)])
    exp = camlens.explain(model, x, "inputxgradient", target=0)
    np.testing.assert_allclose(exp.details[0]["attributions"], w * x, rtol=1e-5, atol=1e-6)
    shap = camlens.explain(model, x, GradientShap(baselines=np.ones((4, 4, 3)), n_samples=3), target=0)
    np.testing.assert_allclose(shap.details[0]["attributions"], w * (x - 1), rtol=1e-4, atol=1e-5)
    torch = pytest.importorskip("torch")
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 1, bias=False))
    with torch.no_grad():  # torch flattens (N, C, H, W): the same weights in that order
        lin[1].weight.copy_(torch.from_numpy(np.moveaxis(w, -1, 0).reshape(1, -1)))
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    got = camlens.explain(lin, xt, "inputxgradient", target=0).details[0]["attributions"]
    np.testing.assert_allclose(got, w * x, rtol=1e-5, atol=1e-6)
