"""ReLU gradient rules are objects the adapters apply (camlens.rules): a rule written outside
the adapters works on Keras (every backend, compiled or eager) and native torch. The rule that
passes where the input is positive is the ReLU's own derivative, so it must give the plain
gradient; a rule that passes nothing gives zero through every ReLU."""

from __future__ import annotations

import numpy as np
import pytest

from camlens.adapters import adapt
from camlens.rules import GUIDED, ReluRule
from camlens.targets import ClassScore

PLAIN = ReluRule("plain", lambda x, dy: x > 0)
NOTHING = ReluRule("nothing", lambda x, dy: (x > 0) & (x < 0))
DECONV = ReluRule("deconvnet", lambda x, dy: dy > 0)  # Zeiler & Fergus: the gradient's sign only


def _keras():
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    h = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, padding="same")(h))
    return keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))


def _torch():
    import torch

    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1),
        torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()


@pytest.mark.parametrize("kind", ["keras", "torch"])
def test_rules_written_outside_the_adapters(kind):
    model = _keras() if kind == "keras" else _torch()
    adapter = adapt(model)
    x = np.random.default_rng(5).normal(size=(2, 6, 6, 3)).astype("float32")
    arrays = adapter.prepare(x if kind == "keras" else np.moveaxis(x, -1, 1))
    target = ClassScore([0, 2])
    s0, plain = adapter.input_gradients(arrays, 0, target)
    s1, same = adapter.input_gradients(arrays, 0, target, rule=PLAIN)
    np.testing.assert_allclose(s1, s0, rtol=1e-6)
    np.testing.assert_allclose(same, plain, rtol=1e-4, atol=1e-7)
    _, none = adapter.input_gradients(arrays, 0, target, rule=NOTHING)
    assert np.abs(plain).max() > 0 and np.abs(none).max() == 0
    _, guided = adapter.input_gradients(arrays, 0, target, rule=GUIDED)
    _, deconv = adapter.input_gradients(arrays, 0, target, rule=DECONV)
    assert not np.allclose(guided, plain) and not np.allclose(deconv, guided)
    _, again = adapter.input_gradients(arrays, 0, target)  # no rule is left on the model
    np.testing.assert_array_equal(again, plain)


def _gelu_model(kind):
    if kind == "keras":
        import keras

        keras.utils.set_random_seed(4)
        inp = keras.Input((6, 6, 3))
        h = keras.layers.Conv2D(4, 3, padding="same", activation="gelu")(inp)
        return keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))
    import torch

    torch.manual_seed(4)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.GELU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()


@pytest.mark.parametrize("kind", ["keras", "torch"])
def test_guided_backprop_on_a_model_without_relu_says_it_is_plain_saliency(kind):
    """ConvNeXt and ViTs use GELU: the guided rule has nothing to act on, and the map is the
    plain gradient; that is said, not left to look like a guided map."""
    import camlens

    model = _gelu_model(kind)
    x = np.random.default_rng(4).random((1, 6, 6, 3)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match=r"no ReLU or ReLU6 \(its activations: (gelu|GELU)\).*plain input gradient"):
        guided = camlens.explain(model, x, method="guidedbackprop", target=1)
    plain = camlens.explain(model, x, method="saliency", target=1)
    np.testing.assert_allclose(guided.raw_maps[0], plain.raw_maps[0], rtol=1e-5, atol=1e-7)
