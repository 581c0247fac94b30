"""Issue 14: the stochastic methods are deterministic and position-free, and the score-based
methods say so (and give zeros) when the model's score never moves.

Stochastic methods: each sample's noise comes from the method's ``seed`` (0 by default) and the
sample's content, so the same call twice is identical and a batch equals its images one by one
(also when ``explain`` splits it in parts), on the Keras backend of this run and on a torch
module. Score-based methods on a model that ignores its input (its output is a constant bias)
return all-zero maps with one ``UserWarning`` naming the method and the images; gradient
methods on it return zeros too.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

import camlens
from camlens.methods import (
    ISCAM,
    RISE,
    SSCAM,
    FastScoreCAM,
    Occlusion,
    PixelData,
    ScoreCAM,
    SiteData,
    SmoothGrad,
    SmoothGradCAMPlusPlus,
    get_method,
)

STOCHASTIC = ["smoothgrad", "smoothgradcam++", "sscam", "rise"]
# cheap enough for a test on a 16x16 model, and the default seed (0) in every one of them
SMALL = {
    "smoothgrad": lambda **kw: SmoothGrad(n_samples=4, **kw),
    "smoothgradcam++": lambda **kw: SmoothGradCAMPlusPlus(n_samples=4, **kw),
    "sscam": lambda **kw: SSCAM(n_samples=2, **kw),
    "rise": lambda **kw: RISE(n_masks=32, cell=4, **kw),
}


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(11).normal(size=(n, 16, 16, 3)).astype(np.float32)


@functools.lru_cache(maxsize=None)  # one model of each kind for the file: programs compile once
def _keras_model(constant: bool = False):
    keras = pytest.importorskip("keras")
    from keras import layers as L

    keras.utils.set_random_seed(5)
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    out = L.Dense(4, name="head")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    if constant:  # the input is ignored: the output is the head's bias
        head = model.get_layer("head")
        head.set_weights([np.zeros((8, 4), "float32"), np.array([0.5, 2.0, -1.0, 3.0], "float32")])
    return model


@functools.lru_cache(maxsize=None)
def _torch_model(constant: bool = False):
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()
    if constant:
        with torch.no_grad():
            net[6].weight.zero_()
            net[6].bias.copy_(torch.tensor([0.5, 2.0, -1.0, 3.0]))
    return net


MODELS = {"keras": _keras_model, "torch": _torch_model}


def _maps(model, x, method, **kw) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return camlens.explain(model, x, method=method, target=1, **kw).maps[0]


# --- 1. deterministic, position-free noise --------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("name", STOCHASTIC)
def test_a_batch_equals_its_images_one_by_one_and_twice_is_the_same(kind, name):
    model, x = MODELS[kind](), _images()
    batch = _maps(model, x, SMALL[name]())
    np.testing.assert_allclose(_maps(model, x, SMALL[name]()), batch, atol=1e-6)
    alone = np.concatenate([_maps(model, x[i : i + 1], SMALL[name]()) for i in range(len(x))])
    np.testing.assert_allclose(alone, batch, atol=1e-5)
    # explain's own parts (batch_size) and the image order change nothing either
    np.testing.assert_allclose(_maps(model, x[::-1], SMALL[name](), batch_size=2)[::-1], batch, atol=1e-5)
    assert not np.allclose(_maps(model, x[:1], SMALL[name](seed=1)), batch[:1], atol=1e-3)


@pytest.mark.parametrize("name", ["smoothgrad", "smoothgradcam++", "sscam"])
def test_the_default_instance_by_name_is_deterministic(name):
    model, x = _keras_model(), _images(2)
    method = get_method(name)
    assert method.seed == 0
    if name == "sscam":  # 35 copies per channel: fewer samples, the same default seed
        method.n_samples = 3
    np.testing.assert_allclose(_maps(model, x, method), _maps(model, x, method), atol=1e-6)
    np.testing.assert_allclose(_maps(model, x[1:], method)[0], _maps(model, x, method)[1], atol=1e-5)


def test_every_stochastic_method_defaults_to_seed_zero():
    for name in STOCHASTIC:
        assert get_method(name).seed == 0, name


def _pixel_data(images: np.ndarray) -> PixelData:
    w = np.linspace(-1, 1, images[0].size).reshape(images.shape[1:])

    def score(n, b):
        return np.tanh((b * w).sum(axis=(1, 2, 3)) + (b**2).sum(axis=(1, 2, 3)) / 10)

    def gradient(n, b):
        s = (b * w).sum(axis=(1, 2, 3)) + (b**2).sum(axis=(1, 2, 3)) / 10
        return np.tanh(s), (1 - np.tanh(s) ** 2)[:, None, None, None] * (w + b / 5)

    return PixelData(images, score, gradient)


def _site_data(images: np.ndarray) -> SiteData:
    # the layer is the image itself (h, w = H, W; C = c): masks come from the image's channels
    def score(n, b):
        return np.tanh(b.mean(axis=(1, 2, 3)) * 3 + b[:, 0, 0, 0])

    def capture(n, b):
        return np.tanh(b), (1 - np.tanh(b) ** 2) * (1 + b)

    return SiteData(images, images=images, score=score, capture=capture)


ARRAY_METHODS = {
    "smoothgrad": (lambda **kw: SmoothGrad(n_samples=5, batch_size=2, **kw), _pixel_data),
    "rise": (lambda **kw: RISE(n_masks=20, cell=2, batch_size=7, **kw), _pixel_data),
    "sscam": (lambda **kw: SSCAM(n_samples=3, sigma=0.5, batch_size=4, **kw), _site_data),
    "smoothgradcam++": (lambda **kw: SmoothGradCAMPlusPlus(n_samples=5, batch_size=3, **kw), _site_data),
}


@pytest.mark.parametrize("name", sorted(ARRAY_METHODS))
def test_noise_follows_the_content_not_the_position(name):
    make, data = ARRAY_METHODS[name]
    x = np.random.default_rng(3).normal(size=(3, 4, 4, 2)).astype(np.float32)
    batch = make()(data(x))
    np.testing.assert_array_equal(make()(data(x)), batch)
    for i in range(3):
        np.testing.assert_allclose(make()(data(x[i : i + 1]))[0], batch[i], rtol=1e-6, atol=1e-7)
    # the same image twice in one batch: the same map twice
    twin = make()(data(np.stack([x[0], x[1], x[0]])))
    np.testing.assert_array_equal(twin[0], twin[2])
    assert not np.allclose(make(seed=7)(data(x)), batch)


def test_seed_none_still_draws_fresh_noise():
    data = _pixel_data(np.random.default_rng(3).normal(size=(1, 4, 4, 2)).astype(np.float32))
    a, b = SmoothGrad(n_samples=2, seed=None)(data), SmoothGrad(n_samples=2, seed=None)(data)
    assert not np.array_equal(a, b)


# --- 2. a model whose score never moves -----------------------------------------------------

SCORE_BASED = {
    "scorecam": lambda: ScoreCAM(),
    "fastscorecam": lambda: FastScoreCAM(k=4),
    "iscam": lambda: ISCAM(n_steps=2),
    "sscam": lambda: SSCAM(n_samples=2),
    "rise": lambda: RISE(n_masks=24, cell=4),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("name", sorted(SCORE_BASED))
def test_score_methods_on_a_constant_model_warn_and_give_zeros(kind, name):
    model, x = MODELS[kind](constant=True), _images(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = camlens.explain(model, x, method=SCORE_BASED[name](), target=1)
    mine = [w for w in caught if issubclass(w.category, UserWarning) and "did not change" in str(w.message)]
    assert len(mine) == 1, [str(w.message) for w in caught]
    text = str(mine[0].message)
    assert name in text and "images [0, 1]" in text and "meaningless (all zero)" in text
    np.testing.assert_array_equal(exp.raw_maps[0], 0)
    np.testing.assert_array_equal(exp.maps[0], 0)
    assert np.isfinite(exp.maps[0]).all()


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("name", sorted(SCORE_BASED))
def test_score_methods_on_a_real_model_do_not_warn(kind, name):
    model, x = MODELS[kind](), _images(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = camlens.explain(model, x, method=SCORE_BASED[name](), target=1)
    assert not [w for w in caught if "did not change" in str(w.message)]
    assert all(m.max() > 0 for m in exp.maps[0])


def test_only_the_flat_samples_are_zeroed():
    x = np.random.default_rng(3).normal(size=(3, 4, 4, 2)).astype(np.float32)

    def score(n, b):  # sample 1 is explained by a constant score, the others are not
        return np.full(len(b), 2.5) if n == 1 else b[:, 0, 0, 0] + b.mean(axis=(1, 2, 3))

    site = SiteData(x, images=x, score=score)
    with pytest.warns(UserWarning, match=r"scorecam: the model's score did not change under any mask for images \[1\]"):
        out = ScoreCAM()(site)
    np.testing.assert_array_equal(out[1], 0)
    assert out[0].max() > 0 and out[2].max() > 0
    with pytest.warns(UserWarning, match=r"rise: .* for images \[1\]"):
        sal = RISE(n_masks=16, cell=2)(PixelData(x, score))
    np.testing.assert_array_equal(sal[1], 0)
    assert np.ptp(sal[0]) > 0 and np.ptp(sal[2]) > 0


def test_flat_means_equal_to_a_relative_tolerance():
    x = np.ones((1, 4, 4, 2), np.float32)
    x[0, 0, 0, 0] = 3.0
    big = 1e6

    def tiny_change(n, b):  # relative change 1e-9: float noise, flat
        return big + 1e-3 * b[:, 0, 0, 0]

    with pytest.warns(UserWarning, match="did not change"):
        ScoreCAM()(SiteData(x, images=x, score=tiny_change))

    def small_but_real(n, b):  # scores near 1e-7 that change by half of themselves: not flat
        return 1e-7 * (1 + 0.5 * b[:, 0, 0, 0])

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert ScoreCAM()(SiteData(x, images=x, score=small_but_real)).max() > 0


def test_one_scored_channel_is_not_judged():
    # FastScoreCAM(k=1) scores one channel: one score says nothing about whether it moves
    A = np.zeros((1, 2, 2, 2))
    A[0, 0, 0, 0] = 1
    A[0, 1, 1, 1] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        FastScoreCAM(k=1)(SiteData(A, images=np.ones((1, 2, 2, 1)), score=lambda n, b: b[:, 0, 0, 0]))


def test_occlusion_on_a_constant_score_is_zero_already():
    x = np.random.default_rng(3).normal(size=(2, 4, 4, 1)).astype(np.float32)
    out = Occlusion(window=2, stride=2)(PixelData(x, lambda n, b: np.full(len(b), 4.0)))
    np.testing.assert_array_equal(out, 0)


GRADIENT_AND_OTHER = [
    "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigengradcam", "smoothgradcam++",
    "ablationcam", "saliency", "smoothgrad", "integratedgradients", "occlusion",
]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_gradient_methods_on_a_constant_model_give_zeros(kind):
    model, x = MODELS[kind](constant=True), _images(2)
    small = {"smoothgrad": SmoothGrad(n_samples=2), "smoothgradcam++": SmoothGradCAMPlusPlus(n_samples=2),
             "integratedgradients": camlens.methods.IntegratedGradients(steps=4)}
    for name in GRADIENT_AND_OTHER:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "the map is constant; set to zero"
            exp = camlens.explain(model, x, method=small.get(name, name), target=1)
        np.testing.assert_array_equal(exp.raw_maps[0], 0, err_msg=name)
        np.testing.assert_array_equal(exp.maps[0], 0, err_msg=name)
