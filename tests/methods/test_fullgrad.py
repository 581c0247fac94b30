"""FullGrad: exact values on given arrays, and the same map from a Keras model and a torch
module with the same weights (through ``camlens.explain``, on every Keras backend)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import camlens
from camlens.methods import FullGrad, PixelData, get_method

X = np.array([[[[1.0], [-2.0]], [[3.0], [0.5]]]], dtype=np.float32)  # (1, 2, 2, 1)
G = np.array([[[[2.0], [1.0]], [[-1.0], [4.0]]]])  # dS/dx
BIAS = np.array([0.5, -1.0])
LAYER_G = np.array([[[[1.0, 2.0], [3.0, 2.0]]]])  # (1, 1, 2, 2): gradient at a 1x2 layer, 2 channels


def _data(layers: list) -> PixelData:
    def gradient(n, b):
        return (b * G).sum(axis=(1, 2, 3)), np.broadcast_to(G, b.shape)

    return PixelData(X, score=None, gradient=gradient, bias_gradients=lambda n, b: layers)


def test_registered():
    assert type(get_method("fullgrad")) is FullGrad


def test_hand_computed():
    attr, info = FullGrad().attribute(_data([("conv", BIAS, LAYER_G)]))
    # |x * dS/dx| = [[2, 2], [3, 2]] -> min-max per channel -> [[0, 0], [1, 0]]
    np.testing.assert_array_equal(info["input_term"][0], [[0, 0], [1, 0]])
    # |0.5 * [1, 3]| -> [0, 1]; |-1 * [2, 2]| is constant -> 0; summed, 1x2 upsampled to 2x2
    np.testing.assert_array_equal(info["bias_term"][0], [[0, 1], [0, 1]])
    np.testing.assert_array_equal(attr[0, :, :, 0], [[0, 1], [1, 1]])
    assert info["layers"] == ["conv"] and info["scores"].tolist() == [-1.0]


def test_scale_of_the_gradients_changes_nothing():
    a, _ = FullGrad().attribute(_data([("conv", BIAS, LAYER_G)]))
    b, _ = FullGrad().attribute(_data([("conv", BIAS * 1e-9, LAYER_G)]))
    np.testing.assert_array_equal(a, b)


def test_no_bias_layer_is_input_times_gradient_with_a_warning():
    with pytest.warns(UserWarning, match="input-gradient term"):
        attr, info = FullGrad().attribute(_data([]))
    assert info["layers"] == []
    np.testing.assert_array_equal(attr[0, :, :, 0], [[0, 0], [1, 0]])


def test_needs_bias_gradients():
    with pytest.raises(ValueError, match="bias_gradients"):
        FullGrad().attribute(PixelData(X, score=None, gradient=lambda n, b: (None, b)))


# -- through explain -------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
nn = torch.nn


class TorchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1, self.r = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.c2 = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.c2(self.r(self.b1(self.c1(x)))))
        return self.fc(x.mean((2, 3)))


def _torch_net():
    torch.manual_seed(0)
    net = TorchNet().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        net.b1.running_mean.copy_(0.3 * torch.randn(8, generator=gen))
        net.b1.running_var.copy_(0.5 + torch.rand(8, generator=gen))
        net.b1.weight.copy_(torch.randn(8, generator=gen))
        net.b1.bias.copy_(0.2 * torch.randn(8, generator=gen))
    return net


def _keras_twin(net, c2_activation="relu"):
    """The same network in Keras; c2's ReLU is the layer's own activation."""
    inp = keras.Input((15, 15, 3))
    y = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    y = keras.layers.BatchNormalization(epsilon=net.b1.eps, name="b1")(y)
    y = keras.layers.Activation("relu")(y)
    y = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation=c2_activation, name="c2")(y)
    y = keras.layers.Dense(4, name="fc")(keras.layers.GlobalAveragePooling2D()(y))
    model = keras.Model(inp, y)

    def t(p):
        return p.detach().numpy()

    model.get_layer("c1").set_weights([t(net.c1.weight).transpose(2, 3, 1, 0), t(net.c1.bias)])
    b = net.b1
    model.get_layer("b1").set_weights([t(b.weight), t(b.bias), t(b.running_mean), t(b.running_var)])
    model.get_layer("c2").set_weights([t(net.c2.weight).transpose(2, 3, 1, 0), t(net.c2.bias)])
    model.get_layer("fc").set_weights([t(net.fc.weight).T, t(net.fc.bias)])
    return model


# 15x15: Keras's "same" padding of the stride-2 convolution is then torch's padding=1
IMAGES = np.random.default_rng(0).standard_normal((3, 15, 15, 3)).astype(np.float32)
CLASSES = [1, 2, 0]


def test_keras_and_torch_give_the_same_map():
    net = _torch_net()
    km = _keras_twin(net)
    et = camlens.explain(net, IMAGES.transpose(0, 3, 1, 2), method="fullgrad", target=CLASSES)
    ek = camlens.explain(km, IMAGES, method="fullgrad", target=CLASSES)
    assert et.details[0]["layers"] == ["c1", "b1", "c2"] == ek.details[0]["layers"]
    np.testing.assert_allclose(ek.scores, et.scores, atol=1e-5)
    assert np.abs(ek.map - et.map).max() < 1e-5
    assert np.abs(ek.details[0]["bias_term"] - et.details[0]["bias_term"]).max() < 1e-4


def test_a_batch_equals_its_images_one_by_one():
    net = _torch_net()
    x = IMAGES.transpose(0, 3, 1, 2)
    whole = camlens.explain(net, x, method="fullgrad", target=CLASSES).map
    for n in range(len(x)):
        one = camlens.explain(net, x[n : n + 1], method="fullgrad", target=CLASSES[n]).map
        np.testing.assert_allclose(one[0], whole[n], atol=1e-6)


def test_another_fused_activation_is_refused():
    km = _keras_twin(_torch_net(), c2_activation="sigmoid")
    with pytest.raises(ValueError, match="activation 'sigmoid'.*activation=None"):
        camlens.explain(km, IMAGES[:1], method="fullgrad")


def test_batchnorm_with_batch_statistics_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(),
                        nn.LazyLinear(2))
    net(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        camlens.explain(net.eval(), np.zeros((1, 3, 8, 8), np.float32), method="fullgrad")


def test_model_without_biases_warns_and_gives_input_times_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2)).eval()
    x = IMAGES[:1].transpose(0, 3, 1, 2)
    with pytest.warns(UserWarning, match="no convolution or batch normalisation with a bias"):
        exp = camlens.explain(net, x, method="fullgrad", target=1)
    xt = torch.from_numpy(x).requires_grad_(True)
    (g,) = torch.autograd.grad(net(xt)[0, 1], xt)
    term = np.abs((g * xt).detach().numpy()[0])  # (3, H, W)
    lo, hi = term.min(axis=(1, 2), keepdims=True), term.max(axis=(1, 2), keepdims=True)
    expected = ((term - lo) / (hi - lo)).sum(axis=0)
    np.testing.assert_allclose(exp.raw_maps[0][0], expected, atol=1e-5)


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                    reason="the layers read do not depend on the backend")
def test_keras_depthwise_separable_and_batchnorm_without_center():
    inp = keras.Input((8, 8, 3))
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(inp)
    y = keras.layers.SeparableConv2D(4, 3, name="sep", use_bias=False)(y)
    y = keras.layers.BatchNormalization(center=False, name="bn")(y)
    y = keras.layers.Conv2D(2, 1, name="no_bias", use_bias=False)(y)
    y = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(y))
    model = keras.Model(inp, y)
    exp = camlens.explain(model, IMAGES[:1, :8, :8], method="fullgrad", target=0)
    assert exp.details[0]["layers"] == ["dw", "bn"]
