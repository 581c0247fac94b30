"""Test-time augmentation: geometry of flips and zooms, and tta() on tiny Keras models."""

from __future__ import annotations

import numpy as np
import pytest
import keras
from keras import layers as L

import camlens
from camlens.smooth import transform, tta, untransform
from camlens.viz import resize_bilinear


def minmax(m: np.ndarray) -> np.ndarray:
    return (m - m.min()) / (m.max() - m.min())


def position_net(size: int, heads: np.ndarray) -> keras.Model:
    """x (size x size x 1) -> identity 1x1 conv 'conv' -> flatten -> Dense, kernel ``heads``
    (size, size, K), no bias. HiResCAM at 'conv' for class c is relu(heads[..., c] * x):
    position dependent, so a flip that is not undone shows."""
    inp = keras.Input((size, size, 1))
    a = L.Conv2D(1, 1, use_bias=False, name="conv")(inp)
    out = L.Dense(heads.shape[-1], use_bias=False, name="head")(L.Flatten()(a))
    model = keras.Model(inp, out)
    model.get_layer("conv").set_weights([np.ones((1, 1, 1, 1), "float32")])
    model.get_layer("head").set_weights([heads.reshape(size * size, -1).astype("float32")])
    return model


def test_transform_flip_and_zooms_by_hand():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(transform(x, flip=True)[0, :, :, 0], x[0, :, ::-1, 0])
    zin = transform(x, scale=2.0)  # the central 2x2 crop, resized to 4x4
    np.testing.assert_allclose(zin[0, ..., 0], resize_bilinear(x[0, 1:3, 1:3, 0], (4, 4)))
    zout = transform(x, scale=0.5)  # shrunk to 2x2 in the centre, the rest the image mean 7.5
    want = np.full((4, 4), 7.5, dtype=np.float32)
    want[1:3, 1:3] = resize_bilinear(x[0, ..., 0], (2, 2))
    np.testing.assert_allclose(zout[0, ..., 0], want)
    rgb = np.random.default_rng(0).random((2, 6, 6, 3)).astype(np.float32)
    pad = transform(rgb, scale=0.5)
    np.testing.assert_allclose(pad[:, 0, 0], rgb.mean(axis=(1, 2)), rtol=1e-6)  # per image and channel


def test_untransform_weights():
    maps = np.random.default_rng(1).random((1, 8, 8)).astype(np.float32)
    back, w = untransform(maps, scale=2.0)
    want_w = np.zeros((8, 8))
    want_w[2:6, 2:6] = 1  # a 2x zoom on 8x8 sees only the central 4x4
    np.testing.assert_array_equal(w, want_w)
    np.testing.assert_allclose(back[0, 2:6, 2:6], resize_bilinear(maps[0], (4, 4)))
    assert np.count_nonzero(back[0] * (1 - want_w)) == 0
    back, w = untransform(maps, scale=0.5)
    np.testing.assert_array_equal(w, np.ones((8, 8)))
    np.testing.assert_allclose(back[0], resize_bilinear(maps[0, 2:6, 2:6], (8, 8)))
    back, w = untransform(maps, flip=True, scale=2.0)  # flip is undone last, weights included
    np.testing.assert_array_equal(w, want_w[:, ::-1])
    np.testing.assert_allclose(back[0], untransform(maps, scale=2.0)[0][0, :, ::-1])
    with pytest.raises(ValueError, match="scales must be positive numbers.*got 0"):
        untransform(maps, scale=0)


def test_flips_on_a_left_right_symmetric_model_change_nothing():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    conv = L.Conv2D(3, 3, padding="same", activation="relu", name="conv")
    out = L.Dense(2, name="head")(L.GlobalAveragePooling2D()(conv(inp)))
    model = keras.Model(inp, out)
    k, b = conv.get_weights()
    conv.set_weights([(k + k[:, ::-1]) / 2, b])  # kernels mirror-symmetric: the model commutes with flips
    x = np.random.default_rng(2).random((2, 8, 8, 1)).astype(np.float32)
    plain = camlens.explain(model, x, "gradcam", layer="conv")
    smooth = tta(model, x, "gradcam", flips=True, layer="conv")
    assert smooth.method == "gradcam+tta"
    np.testing.assert_allclose(smooth.map, plain.map, atol=1e-5)
    assert not np.allclose(plain.map, plain.map[:, :, ::-1], atol=1e-2)  # the maps themselves are not symmetric


def test_flip_is_undone_and_the_class_is_pinned():
    cols = np.arange(1.0, 5.0)
    v0 = np.tile(cols, (4, 1))  # class 0 weighs the right, class 1 the left
    model = position_net(4, np.stack([v0, v0[:, ::-1]], axis=-1))
    x = (np.tile(cols, (4, 1)) + np.arange(4.0)[:, None] * 0.5)[None, :, :, None].astype(np.float32)
    assert model.predict(x, verbose=0).argmax() == 0 and model.predict(x[:, :, ::-1], verbose=0).argmax() == 1
    exp = tta(model, x, "hirescam", layer="conv")
    # base: minmax(v0 x); flipped copy, still class 0: minmax(v0 flip(x)), flipped back = minmax(flip(v0) x)
    want = (minmax(v0 * x[0, ..., 0]) + minmax(v0[:, ::-1] * x[0, ..., 0])) / 2
    np.testing.assert_allclose(exp.map[0], want, atol=1e-5)
    np.testing.assert_allclose(exp.raw_maps[0], exp.map)
    assert list(exp.class_indices) == [0]


def test_zoom_in_averages_only_the_centre():
    v = np.random.default_rng(3).random((8, 8)) + 0.5
    model = position_net(8, v[..., None])
    x = np.random.default_rng(4).random((1, 8, 8, 1)).astype(np.float32) + 0.1
    exp = tta(model, x, "hirescam", flips=False, scales=(1.0, 2.0), layer="conv")
    base = minmax(v * x[0, ..., 0])
    zoomed = resize_bilinear(x[0, 2:6, 2:6, 0], (8, 8))
    back = resize_bilinear(minmax(v * zoomed), (4, 4))
    want = base.copy()
    want[2:6, 2:6] = (base[2:6, 2:6] + back) / 2
    np.testing.assert_allclose(exp.map[0], want, atol=1e-5)
    border = np.ones((8, 8), bool)
    border[2:6, 2:6] = False
    plain = camlens.explain(model, x, "hirescam", layer="conv").map[0]
    np.testing.assert_array_equal(exp.map[0][border], plain[border])  # only the plain run saw it


def test_zoom_out_and_flip_together_match_a_manual_average():
    v = np.random.default_rng(5).random((8, 8)) + 0.5
    model = position_net(8, v[..., None])
    x = np.random.default_rng(6).random((1, 8, 8, 1)).astype(np.float32) + 0.1
    exp = tta(model, x, "hirescam", flips=True, scales=(0.5,), layer="conv")
    runs = []
    for scale in (1.0, 0.5):
        for flip in (False, True):
            m = camlens.explain(model, transform(x, flip, scale), "hirescam", layer="conv").map
            runs.append(untransform(m, flip, scale)[0][0])  # weights all 1: nothing is cut away
    np.testing.assert_allclose(exp.map[0], np.mean(runs, axis=0), atol=1e-6)


def test_torch_copies_go_back_as_channels_first_tensors():
    """A 2-channel image 3 pixels high looks channels-first to the numpy layout guess; tta
    hands the module tensors, so nothing is guessed: each flipped copy's map is the base map
    of the flipped input, flipped back."""
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, (1, 3), padding=(0, 1)), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    x = torch.randn(1, 2, 3, 8)
    exp = tta(net, x, "gradcam", flips=True, target=1, layer="1")
    base = camlens.explain(net, x, "gradcam", target=1, layer="1").maps[0]
    mirrored = camlens.explain(net, torch.flip(x, dims=[3]), "gradcam", target=1, layer="1").maps[0]
    assert exp.maps[0].shape == (1, 3, 8)
    np.testing.assert_allclose(exp.maps[0], (base + mirrored[..., ::-1]) / 2, rtol=1e-5, atol=1e-6)


def test_multiply_matches_a_manual_average_of_flips_and_factors():
    keras.utils.set_random_seed(7)
    inp = keras.Input((8, 8, 2))
    a = L.Conv2D(3, 3, padding="same", activation="relu", name="conv")(inp)
    model = keras.Model(inp, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(a)))
    k, _ = model.get_layer("conv").get_weights()
    model.get_layer("conv").set_weights([k, np.array([0.5, -0.3, 0.2], "float32")])  # not homogeneous
    x = np.random.default_rng(8).standard_normal((2, 8, 8, 2)).astype(np.float32)
    exp = tta(model, x, "gradcam", flips=True, multiply=(0.5, 3.0), layer="conv", target=[0, 1])
    runs = []
    for flip in (False, True):
        for factor in (1.0, 0.5, 3.0):  # 1.0 is always in
            m = camlens.explain(model, transform(x, flip) * factor, "gradcam", layer="conv", target=[0, 1]).map
            runs.append(untransform(m, flip)[0])
    np.testing.assert_allclose(exp.map, np.mean(runs, axis=0), atol=1e-6)
    # the factors matter on this model (biases before the relu): without them the map differs
    assert not np.allclose(exp.map, tta(model, x, "gradcam", flips=True, layer="conv", target=[0, 1]).map, atol=1e-3)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), True, "x"])
def test_multiply_refuses_non_positive_factors(bad):
    model = position_net(4, np.ones((4, 4, 1)))
    with pytest.raises(ValueError, match="multiply must hold positive numbers"):
        tta(model, np.ones((1, 4, 4, 1), np.float32), "hirescam", multiply=(bad,), layer="conv")
